// Starts the real `herald` binary on free loopback ports for the SDK tests
// and builds official SDK clients pointed at it.
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { accessSync, constants as fsConstants } from 'node:fs';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import Pusher from 'pusher';
import PusherJS from 'pusher-js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const APP = { id: 'sdk-app', key: 'sdk-key', secret: 'sdk-secret' };
export const MASTER_KEY = Buffer.alloc(32, 7).toString('base64');

// Every child process the suite starts, killed if the test process exits
// for any reason (a failed hook, an uncaught error, --test-force-exit).
const children = new Set();
function killChildren() {
  for (const child of children) {
    try {
      child.kill('SIGKILL');
    } catch {
      /* already gone */
    }
  }
}
process.on('exit', killChildren);
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    killChildren();
    process.exit(128 + (signal === 'SIGINT' ? 2 : 15));
  });
}

/** `spawn`, with the child tracked so it never outlives the test process. */
export function spawnTracked(bin, args, options) {
  const child = spawn(bin, args, options);
  children.add(child);
  child.on('exit', () => children.delete(child));
  child.on('error', () => children.delete(child));
  return child;
}

/** Stops `child` with `signal`, then SIGKILL if it is still running after `graceMs`. */
export function stopChild(child, { signal = 'SIGTERM', graceMs = 5000 } = {}) {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    child.kill(signal);
  });
}

/**
 * Spawns herald and resolves once it logs the address it listens on.
 * `extraEnv` is merged over the app settings; `args` are appended to the
 * command line. Resolves with `port`, `metricsPort`, `logs` (the last JSON
 * log lines), `child` and `stop()`.
 */
export async function startHerald(extraEnv = {}, { args = [] } = {}) {
  const bin = process.env.HERALD_BIN || path.join(root, 'target/debug/herald');
  const child = spawnTracked(bin, ['--host', '127.0.0.1', '--port', '0', '--metrics-port', '0', '--log-format', 'json', ...args], {
    env: {
      ...process.env,
      HERALD_APP_ID: APP.id,
      HERALD_APP_KEY: APP.key,
      HERALD_APP_SECRET: APP.secret,
      HERALD_NODE_ID: 'sdk',
      ...extraEnv,
    },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const logs = [];
  const lines = createInterface({ input: child.stdout });
  let started;
  try {
    started = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('herald did not start in 10 s')), 10_000);
      child.on('error', (e) => reject(new Error(`cannot run herald at ${bin}: ${e.message}`)));
      child.on('exit', (code) => reject(new Error(`herald exited with ${code}: ${logs.slice(-5).join('\n')}`)));
      lines.on('line', (line) => {
        logs.push(line);
        if (logs.length > 200) logs.shift();
        try {
          const entry = JSON.parse(line);
          if (entry.addr) {
            clearTimeout(timer);
            resolve({
              port: Number(entry.addr.split(':').pop()),
              metricsPort: entry.metrics_addr ? Number(entry.metrics_addr.split(':').pop()) : undefined,
            });
          }
        } catch {
          /* not a JSON log line */
        }
      });
    });
  } catch (e) {
    await stopChild(child, { signal: 'SIGKILL' });
    throw e;
  }
  return {
    ...started,
    logs,
    child,
    stop: () => stopChild(child),
  };
}

/** A loopback port nothing listens on right now (never a default fabric port). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => (port === 6379 || port === 4222 ? freePort().then(resolve, reject) : resolve(port)));
    });
  });
}

/** The path of `name`, or an error naming the Debian package to install. */
export function findBinary(name, debianPackage) {
  const dirs = [...(process.env.PATH || '').split(path.delimiter), '/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'];
  for (const dir of dirs.filter(Boolean)) {
    const candidate = path.join(dir, name);
    try {
      accessSync(candidate, fsConstants.X_OK);
      return candidate;
    } catch {
      /* not here */
    }
  }
  throw new Error(`${name} is not installed: the cluster tests need it; install the Debian package ${debianPackage} (apt-get install ${debianPackage})`);
}

/**
 * Starts a private fabric server on a free loopback port: spawns
 * `argsFor(port)` and resolves once a line of its output matches `ready`.
 * Retries on another port if the chosen one was taken in between.
 */
async function startServer(bin, argsFor, ready, what) {
  let lastError;
  for (let attempt = 0; attempt < 5; attempt += 1) {
    const port = await freePort();
    const child = spawnTracked(bin, argsFor(port), { stdio: ['ignore', 'pipe', 'pipe'] });
    const output = [];
    try {
      await new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`${what} did not start in 10 s: ${output.slice(-5).join('\n')}`)), 10_000);
        child.on('error', (e) => reject(new Error(`cannot run ${bin}: ${e.message}`)));
        child.on('exit', (code) => reject(new Error(`${what} exited with ${code}: ${output.slice(-5).join('\n')}`)));
        for (const stream of [child.stdout, child.stderr]) {
          createInterface({ input: stream }).on('line', (line) => {
            output.push(line);
            if (output.length > 100) output.shift();
            if (ready.test(line)) {
              clearTimeout(timer);
              resolve();
            }
          });
        }
      });
      return { port, child, stop: () => stopChild(child) };
    } catch (e) {
      lastError = e;
      await stopChild(child, { signal: 'SIGKILL' });
    }
  }
  throw lastError;
}

/** A private `redis-server` (Debian package redis-server), no persistence. */
export async function startRedis() {
  const bin = findBinary('redis-server', 'redis-server');
  const server = await startServer(
    bin,
    (port) => ['--bind', '127.0.0.1', '--port', String(port), '--save', '', '--appendonly', 'no'],
    /Ready to accept connections/,
    'redis-server',
  );
  return { ...server, url: `redis://127.0.0.1:${server.port}` };
}

/** A private `nats-server` (Debian package nats-server). */
export async function startNats() {
  const bin = findBinary('nats-server', 'nats-server');
  const server = await startServer(bin, (port) => ['-a', '127.0.0.1', '-p', String(port)], /Server is ready/, 'nats-server');
  return { ...server, url: `nats://127.0.0.1:${server.port}` };
}

/** Resolves once `node` answers /ready 200 and its herald_cluster_nodes gauge is `expected`. */
export async function clusterReady(name, node, expected, ms = 15_000) {
  const deadline = Date.now() + ms;
  let ready = null;
  let gauge = null;
  for (;;) {
    try {
      ready = (await fetch(`http://127.0.0.1:${node.port}/ready`)).status;
      const text = await (await fetch(`http://127.0.0.1:${node.metricsPort}/metrics`)).text();
      const m = text.match(/^herald_cluster_nodes(?:\{[^}]*\})?\s+(\S+)$/m);
      gauge = m ? Number(m[1]) : null;
      if (ready === 200 && gauge === expected) return;
    } catch {
      /* not answering yet */
    }
    if (Date.now() > deadline) {
      throw new Error(`node ${name}: /ready ${ready}, herald_cluster_nodes ${gauge} (want 200 and ${expected}) after ${ms} ms`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The official server SDK, pointed at herald. */
export function serverSdk(port) {
  return new Pusher({
    appId: APP.id,
    key: APP.key,
    secret: APP.secret,
    host: '127.0.0.1',
    port: String(port),
    useTLS: false,
    encryptionMasterKeyBase64: MASTER_KEY,
  });
}

/** A pusher-js client whose auth is signed by the server SDK, as an app backend would. */
export function client(port, { user = null, presence = null } = {}) {
  const backend = serverSdk(port);
  return new PusherJS(APP.key, {
    wsHost: '127.0.0.1',
    wsPort: port,
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    cluster: 'mt1',
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, callback) => {
        const data = channelName.startsWith('presence-') ? presence : undefined;
        callback(null, backend.authorizeChannel(socketId, channelName, data));
      },
    },
    userAuthentication: {
      customHandler: ({ socketId }, callback) => callback(null, backend.authenticateUser(socketId, user)),
    },
  });
}

/** Resolves with the first emission's data of `event` on `emitter`, or fails after `ms`. */
export async function once(emitter, event, ms = 5000) {
  return (await onceWithMeta(emitter, event, ms)).data;
}

/** Like `once`, with pusher-js's metadata (e.g. `user_id` of a client event). */
export function onceWithMeta(emitter, event, ms = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${event}`)), ms);
    const handler = (data, meta) => {
      clearTimeout(timer);
      emitter.unbind(event, handler);
      resolve({ data, meta });
    };
    emitter.bind(event, handler);
  });
}

export function connected(pusher) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('pusher-js did not connect')), 5000);
    pusher.connection.bind('connected', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

export function subscribed(channel) {
  return once(channel, 'pusher:subscription_succeeded');
}
