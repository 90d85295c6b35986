// Two pusher-js nodes and one REST node of a three-node Herald cluster, for
// each fabric: pusher-js clients on nodes A and B, the `pusher` server SDK on
// node C. Each fabric gets its own private redis-server / nats-server on a
// free loopback port (never a server that is already running).
import { describe, test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { isDeepStrictEqual } from 'node:util';
import { startHerald, startRedis, startNats, serverSdk, client, once, connected, subscribed, clusterReady } from './herald.mjs';

const NODES = ['A', 'B', 'C'];

const FABRICS = [
  { name: 'redis', start: startRedis, args: (url) => ['--adapter', 'redis', '--redis-url', url] },
  { name: 'nats', start: startNats, args: (url) => ['--adapter', 'nats', '--nats-servers', url] },
];

/** Resolves when `channel` (a presence channel) holds member `id`, from the
 * subscription_succeeded snapshot or a later member_added. Resolves with
 * which of the two it was. */
function memberSeen(channel, id, ms = 5000) {
  return new Promise((resolve, reject) => {
    const check = (via) => () => {
      if (channel.subscribed && channel.members.get(id)) {
        cleanup();
        resolve(via);
      }
    };
    const onSnapshot = check('subscription_succeeded');
    const onAdded = check('member_added');
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`${channel.name}: member ${id} never seen; members ${JSON.stringify(channel.members.members)}`));
    }, ms);
    function cleanup() {
      clearTimeout(timer);
      channel.unbind('pusher:subscription_succeeded', onSnapshot);
      channel.unbind('pusher:member_added', onAdded);
    }
    channel.bind('pusher:subscription_succeeded', onSnapshot);
    channel.bind('pusher:member_added', onAdded);
    check('already')();
  });
}

/** Resolves once pusher-js has signed in and subscribed its #server-to-user channel. */
function signedIn(c, ms = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      clearInterval(poll);
      reject(new Error('no server-to-user subscription'));
    }, ms);
    const poll = setInterval(() => {
      const ch = c.user.serverToUserChannel;
      if (ch && ch.subscribed) {
        clearInterval(poll);
        clearTimeout(timer);
        resolve();
      }
    }, 20);
  });
}

/** Resolves with the state pusher-js leaves `connected` for. */
function leftConnected(c, ms = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`still ${c.connection.state}`)), ms);
    c.connection.bind('state_change', (s) => {
      if (s.previous === 'connected') {
        clearTimeout(timer);
        resolve(s.current);
      }
    });
  });
}

/**
 * Polls `read` until it returns `expected` (deep-equal) or `ms` pass;
 * resolves with the last value read. Only for answers Herald serves from a
 * node's replica of cluster state, which settles shortly after the clients
 * were told.
 */
async function settles(read, expected, ms = 2000) {
  const deadline = Date.now() + ms;
  const first = await read();
  let value = first;
  for (;;) {
    if (isDeepStrictEqual(value, expected)) break;
    if (Date.now() > deadline) break;
    await new Promise((r) => setTimeout(r, 20));
    value = await read();
  }
  if (process.env.HERALD_SDK_VERBOSE && !isDeepStrictEqual(first, expected)) {
    console.log(`settled after ${JSON.stringify(first)}: ${JSON.stringify(value)}`);
  }
  return value;
}

/** Counts every emission of `event` on `channel`. */
function counter(channel, event) {
  const seen = [];
  channel.bind(event, (data) => seen.push(data));
  return seen;
}

for (const fabric of FABRICS) {
  describe(`cluster over ${fabric.name}: pusher-js on A and B, server SDK on C`, () => {
    let server;
    const nodes = {};
    let sdk;
    let clients = [];
    const track = (c) => {
      clients.push(c);
      return c;
    };
    const on = (name, options) => track(client(nodes[name].port, options));

    before(
      async () => {
        server = await fabric.start();
        const prefix = `sdk-${fabric.name}-${process.pid}-${Date.now().toString(36)}`;
        const started = await Promise.allSettled(
          NODES.map((name) =>
            startHerald(
              {
                HERALD_NODE_ID: `sdk-${fabric.name}-${name}`,
                HERALD_HEARTBEAT_INTERVAL_MS: '200',
                HERALD_NODE_TIMEOUT_MS: '3000',
              },
              { args: [...fabric.args(server.url), '--adapter-prefix', prefix, '--shutdown-grace', '1'] },
            ),
          ),
        );
        started.forEach((r, i) => {
          if (r.status === 'fulfilled') nodes[NODES[i]] = r.value;
        });
        const failed = started.find((r) => r.status === 'rejected');
        if (failed) throw failed.reason;
        await Promise.all(NODES.map((name) => clusterReady(name, nodes[name], NODES.length)));
        sdk = serverSdk(nodes.C.port);
      },
      { timeout: 30_000 },
    );

    afterEach(() => {
      for (const c of clients) c.disconnect();
      clients = [];
    });

    after(async () => {
      for (const c of clients) c.disconnect();
      await Promise.all(Object.values(nodes).map((n) => n.stop()));
      if (server) await server.stop();
    });

    test('public channel: trigger() through C reaches A and B exactly once each', async () => {
      const a = on('A');
      const b = on('B');
      const ca = a.subscribe('cluster-news');
      const cb = b.subscribe('cluster-news');
      await Promise.all([subscribed(ca), subscribed(cb)]);
      const seenA = counter(ca, 'headline');
      const seenB = counter(cb, 'headline');
      const gotA = once(ca, 'headline');
      const gotB = once(cb, 'headline');
      const res = await sdk.trigger('cluster-news', 'headline', { title: 'hello' });
      assert.equal(res.status, 200);
      assert.deepEqual(await gotA, { title: 'hello' });
      assert.deepEqual(await gotB, { title: 'hello' });
      // A later event on the same channel from the same node: any duplicate
      // of the first would have arrived before it.
      const endA = once(ca, 'end');
      const endB = once(cb, 'end');
      await sdk.trigger('cluster-news', 'end', {});
      await Promise.all([endA, endB]);
      assert.deepEqual(seenA, [{ title: 'hello' }]);
      assert.deepEqual(seenB, [{ title: 'hello' }]);
    });

    test('presence: users on A and B see each other; C lists both; B leaving reaches A', async () => {
      const a = on('A', { presence: { user_id: 'ann', user_info: { name: 'Ann' } } });
      const ca = a.subscribe('presence-cluster');
      await subscribed(ca);
      const addedOnA = counter(ca, 'pusher:member_added');
      const annSeesBen = memberSeen(ca, 'ben');
      const b = on('B', { presence: { user_id: 'ben', user_info: { name: 'Ben' } } });
      const cb = b.subscribe('presence-cluster');
      const addedOnB = counter(cb, 'pusher:member_added');
      const benSeesAnn = memberSeen(cb, 'ann');
      // The members pusher-js holds at subscription_succeeded (read before any
      // later frame can change them).
      const snapshotB = [];
      (await subscribed(cb)).each((m) => snapshotB.push(m.id));
      assert.ok(snapshotB.includes('ben'), `B's snapshot lacks B itself: ${JSON.stringify(snapshotB)}`);
      await Promise.all([annSeesBen, benSeesAnn]);
      assert.deepEqual(ca.members.get('ben').info, { name: 'Ben' });
      assert.deepEqual(cb.members.get('ann').info, { name: 'Ann' });
      assert.equal(ca.members.me.id, 'ann');
      assert.equal(cb.members.me.id, 'ben');
      assert.equal(ca.members.count, 2);
      assert.equal(cb.members.count, 2);

      // C serves /users from its replica of the presence state, which may
      // trail what A and B already told their clients by a few ms.
      const ids = await settles(
        async () => (await (await sdk.get({ path: '/channels/presence-cluster/users' })).json()).users.map((u) => u.id).sort(),
        ['ann', 'ben'],
      );
      assert.deepEqual(ids, ['ann', 'ben']);

      // Each side learns of the other once: B either from its snapshot or from
      // one member_added, never both. The event through C is a positive
      // control that both connections are drained.
      const controlA = once(ca, 'control');
      const controlB = once(cb, 'control');
      await sdk.trigger('presence-cluster', 'control', {});
      await Promise.all([controlA, controlB]);
      assert.deepEqual(addedOnA.map((m) => m.id), ['ben']);
      const annInSnapshot = snapshotB.filter((id) => id === 'ann');
      assert.deepEqual([...annInSnapshot, ...addedOnB.map((m) => m.id)], ['ann']);
      if (process.env.HERALD_SDK_VERBOSE) console.log(`B learnt of ann via ${annInSnapshot.length ? 'its snapshot' : 'member_added'}`);

      const removed = once(ca, 'pusher:member_removed');
      b.disconnect();
      assert.equal((await removed).id, 'ben');
      assert.equal(ca.members.count, 1);
    });

    test('client events cross nodes: A sends client-x, B receives it, A does not', async () => {
      const a = on('A');
      const b = on('B');
      const ca = a.subscribe('private-cluster-chat');
      const cb = b.subscribe('private-cluster-chat');
      await Promise.all([subscribed(ca), subscribed(cb)]);
      const echoed = counter(ca, 'client-x');
      const got = once(cb, 'client-x');
      assert.equal(ca.trigger('client-x', { from: 'a' }), true);
      assert.deepEqual(await got, { from: 'a' });
      // Positive control: an event through C reaches A after the client
      // event went by, so an echo to A would have come before it.
      const control = once(ca, 'control');
      await sdk.trigger('private-cluster-chat', 'control', {});
      await control;
      assert.deepEqual(echoed, []);
    });

    test('socket_id exclusion across nodes: trigger through C skips A, reaches B', async () => {
      const a = on('A');
      const b = on('B');
      const ca = a.subscribe('cluster-exclusive');
      const cb = b.subscribe('cluster-exclusive');
      await Promise.all([subscribed(ca), subscribed(cb)]);
      const pingsA = counter(ca, 'ping');
      const gotB = once(cb, 'ping');
      await sdk.trigger('cluster-exclusive', 'ping', { n: 1 }, { socket_id: a.connection.socket_id });
      assert.deepEqual(await gotB, { n: 1 });
      assert.deepEqual(pingsA, [], 'A got the excluded event before B did');
      // Positive control: a later, non-excluded event reaches A, so the
      // excluded one (published before it on the same path) is not on its way.
      const pongA = once(ca, 'pong');
      await sdk.trigger('cluster-exclusive', 'pong', { n: 2 });
      assert.deepEqual(await pongA, { n: 2 });
      assert.deepEqual(pingsA, [], 'A got the excluded event');
    });

    test('sendToUser through C reaches B; terminateUserConnections through C closes A and B', async () => {
      const uA = on('A', { user: { id: 'uma', user_info: { name: 'Uma' } } });
      const uB = on('B', { user: { id: 'uma', user_info: { name: 'Uma' } } });
      const bystander = on('A', { user: { id: 'val', user_info: {} } });
      await Promise.all([connected(uA), connected(uB), connected(bystander)]);
      uA.signin();
      uB.signin();
      bystander.signin();
      await Promise.all([signedIn(uA), signedIn(uB), signedIn(bystander)]);

      const noteB = new Promise((resolve) => uB.user.bind('note', resolve));
      const noteA = new Promise((resolve) => uA.user.bind('note', resolve));
      const res = await sdk.sendToUser('uma', 'note', { hello: 'you' });
      assert.equal(res.status, 200);
      assert.deepEqual(await noteB, { hello: 'you' });
      assert.deepEqual(await noteA, { hello: 'you' });

      const closes = [];
      for (const c of [uA, uB]) c.connection.bind('message', (m) => m.event === 'pusher:error' && closes.push(m.data));
      const goneA = leftConnected(uA);
      const goneB = leftConnected(uB);
      const term = await sdk.terminateUserConnections('uma');
      assert.equal(term.status, 200);
      assert.deepEqual(await Promise.all([goneA, goneB]), ['disconnected', 'disconnected'], `errors seen: ${JSON.stringify(closes)}`);
      // The other user on A stays connected and reachable.
      const stillThere = new Promise((resolve) => bystander.user.bind('note', resolve));
      await sdk.sendToUser('val', 'note', { still: 'here' });
      assert.deepEqual(await stillThere, { still: 'here' });
      assert.equal(bystander.connection.state, 'connected');
    });

    test('channel info through C counts subscribers on A and B', async () => {
      const subs = [on('A'), on('A'), on('B')].map((c) => c.subscribe('cluster-counted'));
      await Promise.all(subs.map(subscribed));
      const info = await (await sdk.get({ path: '/channels/cluster-counted', params: { info: 'subscription_count' } })).json();
      assert.deepEqual(info, { occupied: true, subscription_count: 3 });
    });
  });
}
