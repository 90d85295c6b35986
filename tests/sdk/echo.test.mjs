// Laravel Echo (pusher broadcaster, pusher-js client) against Herald, with
// events triggered the way Laravel's broadcaster does: the pusher server SDK.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import Echo from 'laravel-echo';
import { startHerald, serverSdk, client, connected } from './herald.mjs';

let herald;
let sdk;
let echo;
let other;

before(async () => {
  herald = await startHerald();
  sdk = serverSdk(herald.port);
  const pusher = client(herald.port, { presence: { user_id: 'echo-user', user_info: { name: 'Echo' } } });
  echo = new Echo({ broadcaster: 'pusher', key: 'sdk-key', client: pusher });
  // A second browser, to receive whispers.
  const otherPusher = client(herald.port);
  other = new Echo({ broadcaster: 'pusher', key: 'sdk-key', client: otherPusher });
  await Promise.all([connected(pusher), connected(otherPusher)]);
});

after(async () => {
  echo.disconnect();
  other.disconnect();
  await herald.stop();
});

function subscribed(channel) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('not subscribed')), 5000);
    channel.subscribed(() => {
      clearTimeout(timer);
      resolve();
    });
    channel.error((e) => reject(new Error(JSON.stringify(e))));
  });
}

test('Echo public channel receives a namespaced Laravel event', async () => {
  const channel = echo.channel('orders');
  await subscribed(channel);
  const got = new Promise((resolve) => channel.listen('OrderShipped', resolve));
  await sdk.trigger('orders', 'App\\Events\\OrderShipped', { order: { id: 7 } });
  assert.deepEqual(await got, { order: { id: 7 } });
});

test('Echo private channel with a dotted event name and a whisper', async () => {
  const channel = echo.private('chat.1');
  await subscribed(channel);
  const got = new Promise((resolve) => channel.listen('.message.sent', resolve));
  await sdk.trigger('private-chat.1', 'message.sent', { text: 'hi' });
  assert.deepEqual(await got, { text: 'hi' });
  // A whisper is a client event: it reaches the channel's other subscribers
  // and does not come back to its sender.
  const otherChannel = other.private('chat.1');
  await subscribed(otherChannel);
  const whispered = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the whisper never reached the other subscriber')), 5000);
    otherChannel.listenForWhisper('typing', (data) => {
      clearTimeout(timer);
      resolve(data);
    });
  });
  const echoed = [];
  channel.listenForWhisper('typing', (data) => echoed.push(data));
  channel.whisper('typing', { who: 'me' });
  assert.deepEqual(await whispered, { who: 'me' });
  // The whisper was relayed before `other` got it, so an echo to the sender
  // would be queued ahead of this marker (one connection's frames keep order).
  const marker = new Promise((resolve) => channel.listen('.marker', resolve));
  await sdk.trigger('private-chat.1', 'marker', { after: 'whisper' });
  assert.deepEqual(await marker, { after: 'whisper' });
  assert.deepEqual(echoed, [], 'the whisper came back to its sender');
});

test('Echo presence channel: here() lists the members', async () => {
  const members = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no here()')), 5000);
    echo.join('room.1').here((users) => {
      clearTimeout(timer);
      resolve(users);
    });
  });
  assert.deepEqual(members, [{ name: 'Echo' }]);
});
