// The demo's backend: serves the page and pusher-js from this package's own
// node_modules (no CDN), and plays the app backend a Pusher user would write:
// it signs private/presence subscriptions and triggers events through the
// REST API of whichever node the page names, with the official `pusher`
// server SDK.
//
//   node server.mjs                       # nodes 127.0.0.1:6001-6003, page on :8080
//   HERALD_NODES=127.0.0.1:6001,127.0.0.1:6002 DEMO_PORT=8081 node server.mjs
//
// Environment: HERALD_NODES (host:port list), DEMO_HOST (127.0.0.1),
// DEMO_PORT (8080), HERALD_APP_ID / HERALD_APP_KEY / HERALD_APP_SECRET
// (app-id / app-key / app-secret, the defaults of a local Herald).
import http from 'node:http';
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import Pusher from 'pusher';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);

/** Request bodies larger than this are refused (413): the demo takes short messages. */
const MAX_BODY = 16 * 1024;

const STATIC = {
  '/': { file: path.join(here, 'index.html'), type: 'text/html; charset=utf-8' },
  '/demo.js': { file: path.join(here, 'demo.js'), type: 'text/javascript; charset=utf-8' },
  '/demo.css': { file: path.join(here, 'demo.css'), type: 'text/css; charset=utf-8' },
  '/vendor/pusher.min.js': { file: require.resolve('pusher-js/dist/web/pusher.min.js'), type: 'text/javascript; charset=utf-8' },
};

/** Parses "host:port,host:port" into the node list the page shows. */
export function parseNodes(spec) {
  return spec
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
    .map((hostPort, i) => {
      const at = hostPort.lastIndexOf(':');
      const host = at > 0 ? hostPort.slice(0, at) : '127.0.0.1';
      const port = Number(at > 0 ? hostPort.slice(at + 1) : hostPort);
      if (!Number.isInteger(port) || port <= 0 || port > 65535) throw new Error(`HERALD_NODES: bad port in "${hostPort}"`);
      return { name: `node-${i + 1}`, host, port };
    });
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY) {
        reject(Object.assign(new Error('body too large'), { status: 413 }));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function send(res, status, body, type = 'application/json') {
  const payload = typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body);
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
  res.end(payload);
}

/**
 * Starts the demo backend. `nodes` is a list of `{ name, host, port }`;
 * `app` is `{ id, key, secret }`. Resolves with `{ url, close() }`.
 */
export async function startDemo({ nodes, app, host = '127.0.0.1', port = 0 }) {
  if (!nodes.length) throw new Error('startDemo: no Herald nodes given');
  // One server-SDK client per node: a trigger goes through the node the page chose.
  const backends = nodes.map(
    (n) => new Pusher({ appId: app.id, key: app.key, secret: app.secret, host: n.host, port: String(n.port), useTLS: false }),
  );

  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, 'http://demo');
    try {
      if (req.method === 'GET' && STATIC[url.pathname]) {
        const { file, type } = STATIC[url.pathname];
        return send(res, 200, await readFile(file), type);
      }
      if (req.method === 'GET' && url.pathname === '/favicon.ico') {
        res.writeHead(204).end();
        return undefined;
      }
      if (req.method === 'GET' && url.pathname === '/config.json') {
        return send(res, 200, { key: app.key, nodes });
      }
      if (req.method === 'POST' && url.pathname === '/auth') {
        // pusher-js posts socket_id and channel_name form-encoded, plus the
        // page's `user` param: the demo trusts it (a real backend uses its session).
        const form = new URLSearchParams(await readBody(req));
        const socketId = form.get('socket_id');
        const channel = form.get('channel_name');
        const user = form.get('user') || 'anonymous';
        if (!socketId || !channel) return send(res, 400, { error: 'socket_id and channel_name are required' });
        if (!channel.startsWith('private-') && !channel.startsWith('presence-')) {
          return send(res, 403, { error: `${channel} needs no authorization` });
        }
        const presence = channel.startsWith('presence-') ? { user_id: user, user_info: { name: user } } : undefined;
        return send(res, 200, backends[0].authorizeChannel(socketId, channel, presence));
      }
      if (req.method === 'POST' && url.pathname === '/trigger') {
        let body;
        try {
          body = JSON.parse(await readBody(req));
        } catch {
          return send(res, 400, { error: 'body must be JSON' });
        }
        const index = nodes.findIndex((n) => n.name === body.node);
        if (index < 0) return send(res, 400, { error: `unknown node ${JSON.stringify(body.node)}` });
        if (typeof body.channel !== 'string' || typeof body.event !== 'string') {
          return send(res, 400, { error: 'channel and event must be strings' });
        }
        try {
          const answer = await backends[index].trigger(body.channel, body.event, body.data ?? {});
          return send(res, 200, { node: body.node, status: answer.status });
        } catch (e) {
          // The SDK's RequestError carries Herald's status and body.
          return send(res, 502, { node: body.node, status: e.status ?? null, error: e.body || e.message });
        }
      }
      return send(res, 404, { error: 'not found' });
    } catch (e) {
      return send(res, e.status || 500, { error: e.message });
    }
  });

  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, resolve);
  });
  const address = server.address();
  return {
    url: `http://${address.address}:${address.port}/`,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections?.();
        server.close(() => resolve());
      }),
  };
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const nodes = parseNodes(process.env.HERALD_NODES || '127.0.0.1:6001,127.0.0.1:6002,127.0.0.1:6003');
  const app = {
    id: process.env.HERALD_APP_ID || 'app-id',
    key: process.env.HERALD_APP_KEY || 'app-key',
    secret: process.env.HERALD_APP_SECRET || 'app-secret',
  };
  const demo = await startDemo({
    nodes,
    app,
    host: process.env.DEMO_HOST || '127.0.0.1',
    port: Number(process.env.DEMO_PORT || 8080),
  });
  console.log(`Herald demo page: ${demo.url} (nodes ${nodes.map((n) => `${n.host}:${n.port}`).join(', ')})`);
  for (const signal of ['SIGINT', 'SIGTERM']) process.once(signal, () => demo.close().then(() => process.exit(0)));
}
