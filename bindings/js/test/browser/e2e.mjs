// The web SDK in headless Chromium (Debian's chromium, driven by playwright-core), against the
// reference server, cross-origin with CORS, on the example page (examples/web) and on a bare page
// of its origin (the lazily loaded core, calls before it is up).
//
//   node --test test/browser/e2e.mjs        (after npm run build and cargo build of the server)
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { repo, sleep, until } from '../helpers.mjs';
import { startServer } from '../server.mjs';
import { serve } from '../../../../examples/web/serve.mjs';

const APP = { appId: 'shop', appSecret: 's3cret' };
let browser;
let page_server;

/** A free loopback port (for a server that will come up later). */
const freePort = () =>
  new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });

before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
  page_server = await serve({ ...APP, endpoint: '' });
});

after(async () => {
  await browser?.close();
  await page_server?.close();
});

/** The tracking server allowing the example page's origin. */
const tracking = (opts = {}) => startServer({ ...opts, args: ['--app', 'shop:s3cret', '--cors-origin', page_server.url] });

/** A fresh browser profile on the example page; records every request to `endpoint`. */
async function open(context, query = '') {
  const page = await context.newPage();
  page.on('console', (m) => m.type() === 'error' && console.log(`[page] ${m.text()}`));
  await page.goto(`${page_server.url}/index.html${query}`);
  await page.waitForFunction(() => document.body.dataset.ready === 'true', null, { timeout: 10_000 });
  return page;
}

function recordRequests(context, endpoint) {
  const seen = [];
  context.on('request', (r) => r.url().startsWith(endpoint) && seen.push({ url: r.url(), method: r.method(), type: r.resourceType() }));
  return seen;
}

test('offline, reload, server up: every event arrives exactly once', async () => {
  const port = await freePort();
  const endpoint = `http://127.0.0.1:${port}`;
  Object.assign(page_server.config, { endpoint, flushAt: 3, flushIntervalMs: 200, requireConsent: false });
  const context = await browser.newContext();
  const page = await open(context, '?utm_source=newsletter&utm_campaign=spring');
  for (let n = 0; n < 5; n++) await page.evaluate((n) => window.tm.track('tick', { n }), n);
  await page.waitForFunction(() => window.tm.stats().uploadFailures >= 1, null, { timeout: 10_000 });
  const anon = await page.evaluate(() => window.tm.anonymousId());
  const dbs = await page.evaluate(async () => (await indexedDB.databases()).map((d) => d.name));
  assert.ok(dbs.includes('trailmark:shop'), `the queue is in IndexedDB: ${dbs}`);

  await page.reload();
  await page.waitForFunction(() => document.body.dataset.ready === 'true');
  assert.equal(await page.evaluate(() => window.tm.anonymousId()), anon, 'the anonymous id survives the reload');
  for (let n = 5; n < 8; n++) await page.evaluate((n) => window.tm.track('tick', { n }), n);
  const server = await tracking({ listen: `127.0.0.1:${port}` });
  try {
    await page.waitForFunction(() => window.tm.stats().queued === 0, null, { timeout: 60_000 });
    const events = await server.events(`app_id=shop&anonymous_id=${anon}`);
    const ticks = events.filter((e) => e.type === 'tick').map((e) => e.properties.n).sort((a, b) => a - b);
    assert.deepEqual(ticks, [0, 1, 2, 3, 4, 5, 6, 7], 'every event once');
    assert.equal(new Set(events.map((e) => e.event_id)).size, events.length);
    const views = events.filter((e) => e.type === 'page_view');
    assert.equal(views.length, 2, 'one page view per load');
    assert.equal(views[0].properties.path, '/index.html');
    assert.deepEqual(views[0].context.campaign, { utm_source: 'newsletter', utm_campaign: 'spring' });
    assert.equal(events.filter((e) => e.type === 'install').length, 1);
  } finally {
    await context.close();
    await server.stop();
  }
});

test('the first script loads alone; calls made before the core is up keep their time, survive an offline reload and arrive once', async () => {
  const port = await freePort();
  const endpoint = `http://127.0.0.1:${port}`;
  const context = await browser.newContext();
  const sdk = [];
  context.on('request', (r) => r.url().startsWith(`${page_server.url}/trailmark/`) && sdk.push(new URL(r.url()).pathname));
  // core.js comes late, so that the calls below are surely made before the core is up.
  await context.route('**/trailmark/core.js', async (route) => {
    await sleep(400);
    await route.continue();
  });
  const config = { ...APP, endpoint, flushAt: 1, flushIntervalMs: 200, autoPageViews: false };
  // A page of the example's origin without the SDK on it (the server's 404), then the SDK.
  const load = async (page, from) => {
    sdk.length = 0;
    await page.goto(`${page_server.url}/nothing-here`);
    await page.evaluate(() => import('/trailmark/index.js'));
    assert.deepEqual(sdk, ['/trailmark/index.js'], 'importing the SDK loads the first script only');
    const r = await page.evaluate(
      async ({ config, from }) => {
        const { Trailmark } = await import('/trailmark/index.js');
        const tm = Trailmark.init(config);
        window.tm = tm;
        const called = Date.now();
        const kept = [tm.track('early', { n: from }), tm.identify('u-early'), tm.track('early', { n: from + 1 })];
        const before = tm.anonymousId();
        await tm.ready;
        return { called, ready: Date.now(), kept, before, after: tm.anonymousId() };
      },
      { config, from },
    );
    assert.deepEqual(r.kept, [true, true, true]);
    assert.equal(r.before, undefined, 'the core was not up when the calls were made');
    assert.ok(r.after);
    assert.ok(r.ready - r.called >= 300, `ready ${r.ready - r.called} ms after the calls`);
    assert.deepEqual([...new Set(sdk)].sort(), ['/trailmark/core.js', '/trailmark/index.js', '/trailmark/trailmark_wasm_bg.wasm']);
    return r;
  };
  const page = await context.newPage();
  page.on('console', (m) => m.type() === 'error' && console.log(`[page] ${m.text()}`));
  const first = await load(page, 0);
  await page.waitForFunction(() => window.tm.stats().uploadFailures >= 1, null, { timeout: 10_000 });
  await page.reload();
  const second = await load(page, 2);
  assert.equal(second.after, first.after, 'the anonymous id survives the reload');
  const server = await tracking({ listen: `127.0.0.1:${port}` });
  try {
    await page.waitForFunction(() => window.tm.stats().queued === 0, null, { timeout: 60_000 });
    const events = await server.events(`app_id=shop&anonymous_id=${first.after}`);
    assert.equal(new Set(events.map((e) => e.event_id)).size, events.length, 'no event twice');
    const early = events.filter((e) => e.type === 'early').sort((a, b) => a.properties.n - b.properties.n);
    assert.deepEqual(early.map((e) => e.properties.n), [0, 1, 2, 3], 'every event once');
    assert.deepEqual(early.map((e) => e.user_id ?? null), [null, 'u-early', 'u-early', 'u-early'], 'identify replayed between the first two tracks');
    for (const [e, load] of [[early[0], first], [early[1], first], [early[2], second], [early[3], second]]) {
      const at = Date.parse(e.timestamp);
      assert.ok(at >= load.called && at < load.ready - 200, `recorded at the call (${at - load.called} ms after it), not at the replay`);
    }
    assert.equal(events.filter((e) => e.type === 'identify').length, 2);
  } finally {
    await context.close();
    await server.stop();
  }
});

test('when the rest of the SDK cannot load, ready rejects and onError hears it', async () => {
  const context = await browser.newContext();
  await context.route('**/trailmark/core.js', (route) => route.abort());
  try {
    const page = await context.newPage();
    await page.goto(`${page_server.url}/nothing-here`);
    const r = await page.evaluate(async (config) => {
      const { Trailmark } = await import('/trailmark/index.js');
      const errors = [];
      const tm = Trailmark.init({ ...config, onError: (e) => errors.push(e.code) });
      const kept = tm.track('kept');
      const ready = await tm.ready.then(() => 'resolved', (e) => [e.name, e.code, e.message.length > 0]);
      return { kept, ready, errors };
    }, { ...APP, endpoint: 'https://collect.example.test' });
    assert.deepEqual(r, { kept: true, ready: ['TrailmarkError', 'InvalidConfig', true], errors: ['InvalidConfig'] });
  } finally {
    await context.close();
  }
});

test('a pagehide beacon carries what is queued', async () => {
  const server = await tracking();
  Object.assign(page_server.config, { endpoint: server.base, flushAt: 100, flushIntervalMs: 600_000 });
  const context = await browser.newContext();
  const requests = recordRequests(context, server.base);
  try {
    const page = await open(context);
    // What start recorded goes first (nothing else is sent before the beacon: flushAt 100,
    // a 10-minute interval).
    await page.evaluate(() => window.tm.flush());
    assert.equal(await page.evaluate(() => window.tm.stats().queued), 0);
    const anon = await page.evaluate(() => window.tm.anonymousId());
    for (let n = 0; n < 3; n++) await page.evaluate((n) => window.tm.track('checkout_step', { n }), n);
    const before = requests.length;
    await page.goto('about:blank');
    await until(async () => (await server.events(`app_id=shop&anonymous_id=${anon}`)).some((e) => e.type === 'checkout_step'), 'the beacon', 10_000);
    const steps = (await server.events(`app_id=shop&anonymous_id=${anon}`)).filter((e) => e.type === 'checkout_step');
    assert.deepEqual(steps.map((e) => e.properties.n).sort(), [0, 1, 2]);
    // Nothing but the beacon (signed in its query string) carried them.
    assert.equal(requests.length, before, 'no fetch after the flush');
    const metrics = await (await fetch(`${server.base}/metrics`)).text();
    assert.match(metrics, /trailmark_beacon_requests_total\{app="shop"\} 1\b/);
  } finally {
    await context.close();
    await server.stop();
  }
});

test('consent denied sends nothing', async () => {
  const server = await tracking();
  Object.assign(page_server.config, { endpoint: server.base, flushAt: 1, flushIntervalMs: 100, requireConsent: true });
  const context = await browser.newContext();
  const requests = recordRequests(context, server.base);
  try {
    const page = await open(context, '?utm_source=ads');
    await page.click('#add');
    await page.click('#buy');
    await page.click('#deny');
    await page.click('#add');
    await page.click('#login');
    // Counted as the clicks' calls reach the core (no fixed wait: a loaded machine is slower).
    await page.waitForFunction(() => window.tm.stats().droppedConsentDenied >= 5, null, { timeout: 20_000 });
    await sleep(200);
    const stats = await page.evaluate(() => window.tm.stats());
    assert.equal(stats.droppedConsentDenied, 5, JSON.stringify(stats));
    assert.equal(stats.queued + stats.held, 0);
    await page.goto('about:blank');
    await sleep(500);
    assert.deepEqual(requests, [], 'no request reached the server');
    const r = await fetch(`${server.base}/metrics`);
    assert.doesNotMatch(await r.text(), /trailmark_events_accepted_total\{[^}]*\} [1-9]/);
  } finally {
    await context.close();
    await server.stop();
  }
});

test('PII hashes in the browser equal the Rust core', async () => {
  const vectors = JSON.parse(readFileSync(join(repo, 'tests', 'pii_vectors.json'), 'utf8'));
  const server = await tracking();
  Object.assign(page_server.config, { endpoint: server.base, flushAt: 1, flushIntervalMs: 100, requireConsent: false });
  const context = await browser.newContext();
  try {
    const page = await open(context);
    const got = await page.evaluate(
      (v) => ({
        email: v.email.map((c) => window.tm.hashEmail(c.input)),
        phone: v.phone.map((c) => window.tm.hashPhone(c.input)),
      }),
      vectors,
    );
    assert.deepEqual(got.email, vectors.email.map((c) => c.sha256));
    assert.deepEqual(got.phone, vectors.phone.map((c) => c.sha256));
    await page.click('#login');
    const anon = await page.evaluate(() => window.tm.anonymousId());
    let identify;
    await until(async () => {
      identify = (await server.events(`app_id=shop&anonymous_id=${anon}`)).find((e) => e.type === 'identify');
      return identify;
    }, 'the identify event');
    const expected = vectors.email.find((c) => c.input.trim().toLowerCase() === 'jane@example.com').sha256;
    assert.equal(identify.properties.email_sha256, expected);
    assert.equal(identify.user_id, 'user-42');
    assert.equal(identify.properties.email, undefined);
  } finally {
    await context.close();
    await server.stop();
  }
});

test('an origin the app does not allow is refused and its events stay queued', async () => {
  const server = await startServer({ args: ['--app', 'shop:s3cret', '--cors-origin', 'https://elsewhere.example'] });
  Object.assign(page_server.config, { endpoint: server.base, flushAt: 1, flushIntervalMs: 100, requireConsent: false });
  const context = await browser.newContext();
  try {
    const page = await open(context);
    await page.click('#add');
    await page.waitForFunction(() => window.tm.stats().uploadFailures >= 1, null, { timeout: 10_000 });
    const stats = await page.evaluate(() => window.tm.stats());
    assert.ok(stats.queued >= 1 && stats.delivered === 0, JSON.stringify(stats));
  } finally {
    await context.close();
    await server.stop();
  }
});
