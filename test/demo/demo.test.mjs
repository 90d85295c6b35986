// The demo page in headless Chromium against a real three-node cluster on a
// private redis-server: every panel sees every node's viewer in presence, a
// message sent through one node's REST API appears on the panels of the
// other nodes, a node that stops leaves no ghost member, and the page loads
// nothing from outside this machine. A screenshot is kept under
// target/demo-artifacts/ (not committed).
//
// Needs Debian's chromium (or CHROMIUM_PATH) and the SDK suite's packages
// (tests/sdk: `npm ci` there), whose process helpers it shares.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { APP, startHerald, startRedis, clusterReady, findBinary } from '../../tests/sdk/herald.mjs';
import { startDemo } from './server.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const ARTIFACTS = process.env.DEMO_ARTIFACTS || path.join(root, 'target/demo-artifacts');
const NAMES = ['node-1', 'node-2', 'node-3'];

let redis;
const nodes = [];
let demo;
let browser;
let page;
const requested = [];

before(
  async () => {
    const executablePath = process.env.CHROMIUM_PATH || findBinary('chromium', 'chromium');
    redis = await startRedis();
    const prefix = `demo-${process.pid}-${Date.now().toString(36)}`;
    const started = await Promise.allSettled(
      NAMES.map((name) =>
        startHerald(
          { HERALD_NODE_ID: `demo-${name}`, HERALD_HEARTBEAT_INTERVAL_MS: '200', HERALD_NODE_TIMEOUT_MS: '3000' },
          { args: ['--adapter', 'redis', '--redis-url', redis.url, '--adapter-prefix', prefix, '--shutdown-grace', '1'] },
        ),
      ),
    );
    for (const r of started) if (r.status === 'fulfilled') nodes.push(r.value);
    const failed = started.find((r) => r.status === 'rejected');
    if (failed) throw failed.reason;
    await Promise.all(nodes.map((node, i) => clusterReady(NAMES[i], node, NAMES.length)));

    demo = await startDemo({ nodes: nodes.map((n, i) => ({ name: NAMES[i], host: '127.0.0.1', port: n.port })), app: APP });
    browser = await chromium.launch({
      executablePath,
      headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    page = await browser.newPage();
    page.on('request', (req) => requested.push(req.url()));
    const errors = [];
    page.on('pageerror', (e) => errors.push(e.message));
    page.on('console', (m) => m.type() === 'error' && errors.push(`${m.text()} ${JSON.stringify(m.location())}`));
    await page.goto(demo.url);
    await page
      .waitForSelector('body[data-ready="true"]', { state: 'attached', timeout: 10_000 })
      .catch((e) => assert.fail(`the page did not start: ${errors.join('; ') || e.message}`));
    assert.deepEqual(errors, [], 'the page reported errors');
  },
  { timeout: 60_000 },
);

after(async () => {
  if (page) {
    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: path.join(ARTIFACTS, 'demo.png'), fullPage: true }).catch(() => {});
  }
  await browser?.close();
  await demo?.close();
  await Promise.all(nodes.map((n) => n.stop()));
  await redis?.stop();
});

const panel = (name) => page.locator(`section.node[data-node="${name}"]`);

/** Waits until panel `name` lists exactly `ids` (sorted) as presence members. */
async function membersAre(name, ids, timeout = 15_000) {
  const want = [...ids].sort();
  try {
    await page.waitForFunction(
      ([n, expected]) => {
        const items = [...document.querySelectorAll(`section.node[data-node="${n}"] .members li`)];
        const got = items.map((li) => li.dataset.member).sort();
        return JSON.stringify(got) === JSON.stringify(expected);
      },
      [name, want],
      { timeout },
    );
  } catch {
    const got = await panel(name).locator('.members li').evaluateAll((lis) => lis.map((li) => li.dataset.member));
    assert.fail(`${name}: members ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
  }
}

async function viewers() {
  return Promise.all(
    NAMES.map(async (name) => {
      const own = await panel(name).locator('.members li', { hasText: '(this panel)' }).first().getAttribute('data-member');
      return own;
    }),
  );
}

/** Sends `text` through node `via` with the page's form; resolves once the page reports success. */
async function send(via, text) {
  await page.selectOption('#via', via);
  await page.fill('#message', text);
  await page.click('#send-button');
  await page.waitForSelector('#send-status[data-ok]', { timeout: 5_000 });
  const status = await page.textContent('#send-status');
  assert.equal(await page.getAttribute('#send-status', 'data-ok'), 'true', `send through ${via}: ${status}`);
  await page.evaluate(() => delete document.getElementById('send-status').dataset.ok);
}

async function shows(name, text, timeout = 5_000) {
  await panel(name).locator(`.events li[data-text="${text}"]`).waitFor({ timeout });
}

test('every panel connects to its own node and sees all three viewers in presence', async () => {
  for (const name of NAMES) {
    await panel(name).locator('xpath=self::*[@data-state="connected"]').waitFor({ timeout: 10_000 });
  }
  // Each panel's own viewer appears once it is subscribed; then every panel
  // must list all three, two of them members of other nodes.
  for (const name of NAMES) await panel(name).locator('.members li', { hasText: '(this panel)' }).waitFor({ timeout: 10_000 });
  const ids = await viewers();
  assert.equal(new Set(ids).size, 3, `three distinct viewers: ${ids}`);
  for (const name of NAMES) await membersAre(name, ids);
});

test('a message sent through one node appears on the panels of the other nodes', async () => {
  const first = `through-node-1-${Date.now()}`;
  await send('node-1', first);
  for (const name of NAMES) await shows(name, first);

  const second = `through-node-3-${Date.now()}`;
  await send('node-3', second);
  for (const name of NAMES) await shows(name, second);
  const meta = await panel('node-2').locator(`.events li[data-text="${second}"] small`).textContent();
  assert.match(meta, /sent through node-3, received on node-2/);
});

test('a node that stops leaves no ghost member on the others', async () => {
  const ids = await viewers();
  await nodes[1].stop();
  const remaining = ids.filter((_, i) => i !== 1);
  await membersAre('node-1', remaining);
  await membersAre('node-3', remaining);
  const text = `after-node-2-left-${Date.now()}`;
  await send('node-1', text);
  await shows('node-3', text);
});

test('the page loads nothing from outside this machine (pusher-js is served locally)', () => {
  assert.ok(requested.some((u) => u.endsWith('/vendor/pusher.min.js')), 'pusher-js came from the demo server');
  const outside = requested.filter((u) => !/^(https?|wss?):\/\/127\.0\.0\.1(:\d+)?\//.test(u));
  assert.deepEqual(outside, []);
});
