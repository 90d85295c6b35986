// Laravel Echo (pusher broadcaster, pusher-js client) against Herald, with
// events triggered the way Laravel's broadcaster does: the pusher server SDK.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import Echo from 'laravel-echo';
import { startHerald, serverSdk, client, connected } from './herald.mjs';

let herald;
let sdk;
let echo;

before(async () => {
  herald = await startHerald();
  sdk = serverSdk(herald.port);
  const pusher = client(herald.port, { presence: { user_id: 'echo-user', user_info: { name: 'Echo' } } });
  echo = new Echo({ broadcaster: 'pusher', key: 'sdk-key', client: pusher });
  await connected(pusher);
});

after(async () => {
  echo.disconnect();
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
  // A whisper is a client event: it must not come back to its sender.
  let echoed = false;
  channel.listenForWhisper('typing', () => {
    echoed = true;
  });
  channel.whisper('typing', { who: 'me' });
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(echoed, false);
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
