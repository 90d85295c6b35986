// Starts the real `herald` binary on free loopback ports for the SDK tests
// and builds official SDK clients pointed at it.
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import Pusher from 'pusher';
import PusherJS from 'pusher-js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const APP = { id: 'sdk-app', key: 'sdk-key', secret: 'sdk-secret' };
export const MASTER_KEY = Buffer.alloc(32, 7).toString('base64');

/** Spawns herald and resolves once it logs the address it listens on. */
export async function startHerald(extraEnv = {}) {
  const bin = process.env.HERALD_BIN || path.join(root, 'target/debug/herald');
  const child = spawn(bin, ['--host', '127.0.0.1', '--port', '0', '--metrics-port', '0', '--log-format', 'json'], {
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
  const lines = createInterface({ input: child.stdout });
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('herald did not start in 10 s')), 10_000);
    child.on('exit', (code) => reject(new Error(`herald exited with ${code}`)));
    lines.on('line', (line) => {
      try {
        const entry = JSON.parse(line);
        if (entry.addr) {
          clearTimeout(timer);
          resolve(Number(entry.addr.split(':').pop()));
        }
      } catch {
        /* not a JSON log line */
      }
    });
  });
  return {
    port,
    stop: () =>
      new Promise((resolve) => {
        child.on('exit', resolve);
        child.kill('SIGTERM');
      }),
  };
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
