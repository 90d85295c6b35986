// pusher-js (Node build) and the official `pusher` server SDK against Herald.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startHerald, serverSdk, client, once, onceWithMeta, connected, subscribed } from './herald.mjs';

let herald;
let sdk;
const clients = [];
function track(c) {
  clients.push(c);
  return c;
}

before(async () => {
  herald = await startHerald();
  sdk = serverSdk(herald.port);
});

after(async () => {
  for (const c of clients) c.disconnect();
  await herald.stop();
});

test('pusher-js connects and gets a socket id the server SDK accepts', async () => {
  const c = track(client(herald.port));
  await connected(c);
  assert.match(c.connection.socket_id, /^\d+\.\d+$/);
  assert.doesNotThrow(() => sdk.authorizeChannel(c.connection.socket_id, 'private-x'));
});

test('public channel receives trigger() from the server SDK', async () => {
  const c = track(client(herald.port));
  const channel = c.subscribe('public-news');
  await subscribed(channel);
  const got = once(channel, 'headline');
  const res = await sdk.trigger('public-news', 'headline', { title: 'hello' });
  assert.equal(res.status, 200);
  assert.deepEqual(await got, { title: 'hello' });
});

test('private channel with auth from authorizeChannel, and client events', async () => {
  const a = track(client(herald.port));
  const b = track(client(herald.port));
  const ca = a.subscribe('private-chat');
  const cb = b.subscribe('private-chat');
  await Promise.all([subscribed(ca), subscribed(cb)]);
  const got = once(cb, 'client-typing');
  assert.equal(ca.trigger('client-typing', { who: 'a' }), true);
  assert.deepEqual(await got, { who: 'a' });
});

test('presence channel members, member_added and member_removed', async () => {
  const alice = track(client(herald.port, { presence: { user_id: 'alice', user_info: { name: 'Alice' } } }));
  const room = alice.subscribe('presence-room');
  const members = await subscribed(room);
  assert.equal(members.count, 1);
  assert.equal(members.me.id, 'alice');

  const bob = track(client(herald.port, { presence: { user_id: 'bob', user_info: { name: 'Bob' } } }));
  const added = once(room, 'pusher:member_added');
  const bobRoom = bob.subscribe('presence-room');
  await subscribed(bobRoom);
  const member = await added;
  assert.equal(member.id, 'bob');
  assert.deepEqual(member.info, { name: 'Bob' });
  assert.equal(room.members.count, 2);

  const users = await (await sdk.get({ path: '/channels/presence-room/users' })).json();
  assert.deepEqual(users.users.map((u) => u.id).sort(), ['alice', 'bob']);
  const info = await (await sdk.get({ path: '/channels/presence-room', params: { info: 'user_count,subscription_count' } })).json();
  assert.deepEqual(info, { occupied: true, user_count: 2, subscription_count: 2 });
  const list = await (await sdk.get({ path: '/channels', params: { filter_by_prefix: 'presence-', info: 'user_count' } })).json();
  assert.equal(list.channels['presence-room'].user_count, 2);

  const removed = once(room, 'pusher:member_removed');
  bob.disconnect();
  assert.equal((await removed).id, 'bob');
});

test('presence client events carry the sender as metadata.user_id', async () => {
  const a = track(client(herald.port, { presence: { user_id: 'ua', user_info: {} } }));
  const b = track(client(herald.port, { presence: { user_id: 'ub', user_info: {} } }));
  const ca = a.subscribe('presence-meta');
  await subscribed(ca);
  const cb = b.subscribe('presence-meta');
  await subscribed(cb);
  const got = onceWithMeta(ca, 'client-wave');
  cb.trigger('client-wave', { hi: true });
  const { data, meta } = await got;
  assert.deepEqual(data, { hi: true });
  assert.equal(meta.user_id, 'ub');
});

test('private-encrypted channel: server SDK encrypts, pusher-js decrypts', async () => {
  const c = track(client(herald.port));
  const channel = c.subscribe('private-encrypted-vault');
  await subscribed(channel);
  const got = once(channel, 'secret');
  await sdk.trigger('private-encrypted-vault', 'secret', { code: 42 });
  assert.deepEqual(await got, { code: 42 });
});

test('cache channel: cache_miss first, then the last event replayed', async () => {
  const first = track(client(herald.port));
  const ch = first.subscribe('cache-scores');
  const miss = once(ch, 'pusher:cache_miss');
  await subscribed(ch);
  await miss;
  // Listen before triggering: the frame can arrive before the REST answer.
  const live = once(ch, 'score');
  await sdk.trigger('cache-scores', 'score', { v: 7 });
  await live;

  const second = track(client(herald.port));
  const ch2 = second.subscribe('cache-scores');
  const replay = once(ch2, 'score');
  await subscribed(ch2);
  assert.deepEqual(await replay, { v: 7 });
});

test('triggerBatch delivers every event and channel info reports counts', async () => {
  const c = track(client(herald.port));
  const ch = c.subscribe('batch-target');
  await subscribed(ch);
  const first = once(ch, 'one');
  const second = once(ch, 'two');
  const res = await sdk.triggerBatch([
    { channel: 'batch-target', name: 'one', data: { n: 1 } },
    { channel: 'batch-target', name: 'two', data: { n: 2 } },
  ]);
  assert.equal(res.status, 200);
  assert.deepEqual(await first, { n: 1 });
  assert.deepEqual(await second, { n: 2 });
  const info = await (await sdk.get({ path: '/channels/batch-target', params: { info: 'subscription_count' } })).json();
  assert.deepEqual(info, { occupied: true, subscription_count: 1 });
});

test('socket_id exclusion through the server SDK', async () => {
  const a = track(client(herald.port));
  const b = track(client(herald.port));
  const ca = a.subscribe('exclusive');
  const cb = b.subscribe('exclusive');
  await Promise.all([subscribed(ca), subscribed(cb), connected(a)]);
  let aGot = false;
  ca.bind('ping', () => {
    aGot = true;
  });
  const bGot = once(cb, 'ping');
  await sdk.trigger('exclusive', 'ping', {}, { socket_id: a.connection.socket_id });
  await bGot;
  // A later event for everyone reaches A after the excluded one would have.
  const marker = once(ca, 'marker');
  await sdk.trigger('exclusive', 'marker', {});
  await marker;
  assert.equal(aGot, false);
});

test('user sign-in, sendToUser and terminateUserConnections', async () => {
  const c = track(client(herald.port, { user: { id: 'user-1', user_info: { name: 'One' } } }));
  await connected(c);
  c.signin();
  // pusher-js subscribes to #server-to-user-user-1 after signin_success.
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no server-to-user subscription')), 5000);
    const poll = setInterval(() => {
      const ch = c.user.serverToUserChannel;
      if (ch && ch.subscribed) {
        clearInterval(poll);
        clearTimeout(timer);
        resolve();
      }
    }, 20);
  });
  const got = new Promise((resolve) => c.user.bind('note', resolve));
  await sdk.sendToUser('user-1', 'note', { hello: 'you' });
  assert.deepEqual(await got, { hello: 'you' });

  const gone = new Promise((resolve) => c.connection.bind('state_change', (s) => s.current === 'unavailable' || s.current === 'disconnected' || s.current === 'failed' ? resolve(s.current) : null));
  const res = await sdk.terminateUserConnections('user-1');
  assert.equal(res.status, 200);
  await gone;
});

test('wrong secret is refused with 401 and nothing is delivered', async () => {
  const c = track(client(herald.port));
  const ch = c.subscribe('guarded');
  await subscribed(ch);
  let got = false;
  ch.bind('x', () => {
    got = true;
  });
  const bad = serverSdk(herald.port);
  bad.config.token.secret = 'wrong';
  await assert.rejects(bad.trigger('guarded', 'x', {}), (e) => e.status === 401);
  // A properly signed event after it arrives; the refused one never did.
  const marker = once(ch, 'marker');
  await sdk.trigger('guarded', 'marker', {});
  await marker;
  assert.equal(got, false);
});
