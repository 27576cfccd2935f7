// The dashboard in headless Chromium (Debian's chromium, driven by playwright-core), against
// the reference server: login, a live counter rising while events are ingested, the link
// generator with its audit entry, the funnel chart (screenshot kept), hostile strings inert.
//
//   node --test tests/browser/dashboard.mjs   (part of ./tests/run.sh browser)
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac, randomUUID } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ADMIN, startServer } from '../../bindings/js/test/server.mjs';

const repo = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
// playwright-core is a dev dependency of the npm package, installed by the js build.
const { chromium } = createRequire(join(repo, 'bindings', 'js', 'package.json'))('playwright-core');
const artifacts = process.env.TM_ARTIFACTS ?? join(process.env.CARGO_TARGET_DIR ?? join(repo, 'target'), 'test-artifacts');

let browser;
let server;

before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
  server = await startServer({ args: ['--app', 'shop:s3cret'] });
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

/** Posts events to /v1/event, signed as the app (what an SDK does). */
async function ingest(events) {
  const body = JSON.stringify({ batch: events, sent_at: new Date().toISOString() });
  const ts = Math.floor(Date.now() / 1000);
  const sig = 'v1=' + createHmac('sha256', 's3cret').update(`${ts}.${body}`).digest('hex');
  const r = await fetch(`${server.base}/v1/event`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-trailmark-app': 'shop', 'x-trailmark-timestamp': String(ts), 'x-trailmark-signature': sig },
    body,
  });
  const text = await r.text();
  assert.equal(r.status, 200, text);
  return JSON.parse(text);
}

const event = (type, anonymous_id, properties = {}) => ({
  event_id: randomUUID(),
  type,
  timestamp: new Date().toISOString(),
  anonymous_id,
  properties,
});

test('the dashboard: login, live counters, link generator, funnel chart, inert hostile strings', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  const dialogs = [];
  page.on('dialog', (d) => {
    dialogs.push(d.message());
    d.dismiss();
  });
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));

  // Signing in.
  await page.goto(`${server.base}/dashboard`);
  assert.match(page.url(), /\/dashboard\/login$/);
  await page.fill('#key', 'not the key');
  await page.click('#login');
  assert.match(await page.textContent('.error'), /Wrong key/);
  await page.fill('#key', ADMIN);
  await Promise.all([page.waitForURL(/\/dashboard$/), page.click('#login')]);
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === 'tm_dash');
  assert.ok(session?.httpOnly, 'HttpOnly session cookie');
  assert.equal(session.sameSite, 'Strict');
  assert.equal(await page.evaluate(() => document.cookie), '', 'the page script cannot read the session');

  // A live counter rises while events are ingested, without a reload.
  await page.waitForFunction(() => document.body.dataset.live === 'on', null, { timeout: 10_000 });
  const before = Number(await page.textContent('#c-events'));
  await ingest([
    event('app_opened', 'u1'),
    event('app_opened', 'u2'),
    event('purchase', 'u1', { revenue: 9.5, currency: 'EUR' }),
    event('app_opened', 'x"><img src=x onerror=alert(1)>', { note: '<script>window.__xss = 1; alert(2)</script>' }),
  ]);
  await page.waitForFunction((n) => Number(document.getElementById('c-events').textContent) >= n + 4, before, {
    timeout: 10_000,
  });
  assert.ok(Number(await page.textContent('#c-events_per_min')) >= 4);

  // The link generator: a campaign, then a link; the link shows with its audit entry.
  await page.fill('#campaign-form input[name=name]', '<i>Autumn</i> sale');
  await page.fill('#campaign-form input[name=network]', 'meta');
  await Promise.all([page.waitForNavigation(), page.click('#campaign-form button')]);
  assert.match(await page.textContent('#flash'), /Campaign cmp_\w+ created/);
  assert.equal(await page.locator('#link-form select[name=campaign_id] option').count(), 1);
  assert.match(await page.textContent('#link-form option'), /<i>Autumn<\/i> sale \(meta\)/, 'shown as text');
  await page.fill('#link-form input[name=web]', 'https://shop.example.com/autumn');
  await page.fill('#link-form input[name=utm_source]', 'meta');
  await Promise.all([page.waitForNavigation(), page.click('#link-form button')]);
  assert.match(await page.textContent('#flash'), /Link lnk_\w+ created: \/c\/\w{8}/);
  const link = page.locator('article.link', { hasText: 'https://shop.example.com/autumn' });
  assert.equal(await link.count(), 1);
  const audit = await link.locator('table.audit tbody tr').allInnerTexts();
  assert.equal(audit.length, 1);
  assert.match(audit[0], /dashboard:admin-key\s*create/);

  // The funnel chart, on the journeys page.
  await Promise.all([page.waitForNavigation(), page.click('nav a:text("Journeys")')]);
  await page.fill('#steps', 'app_opened,purchase');
  await Promise.all([page.waitForNavigation(), page.click('#funnel-go')]);
  const rows = await page.locator('#funnel-table tbody tr').allInnerTexts();
  assert.deepEqual(
    rows.map((r) => r.replace(/\s+/g, ' ').trim()),
    ['app_opened 3 100.0%', 'purchase 1 33.3%'],
  );
  assert.equal(await page.locator('#funnel-chart rect').count(), 2);
  const bars = await page.locator('#funnel-chart rect').evaluateAll((rs) => rs.map((r) => Number(r.getAttribute('height'))));
  assert.ok(bars[0] > bars[1] && bars[1] > 0, `bar heights ${bars}`);
  mkdirSync(artifacts, { recursive: true });
  await page.locator('#funnel').screenshot({ path: join(artifacts, 'dashboard-funnel.png') });
  await page.screenshot({ path: join(artifacts, 'dashboard.png'), fullPage: true });

  // Hostile strings are shown as text and never run.
  await page.goto(`${server.base}/dashboard`);
  const props = await page.locator('#recent-events').textContent();
  assert.ok(props.includes('<script>window.__xss = 1; alert(2)</script>'), 'the property, as text');
  assert.ok(props.includes('x"><img src=x onerror=alert(1)>'), 'the anonymous id, as text');
  assert.equal(await page.locator('#recent-events script, #recent-events img').count(), 0);
  assert.equal(await page.evaluate(() => window.__xss), undefined);
  assert.deepEqual(dialogs, [], 'no script ran');
  assert.deepEqual(errors, []);

  // Signing out ends the session.
  await Promise.all([page.waitForURL(/\/dashboard\/login$/), page.click('#logout')]);
  await page.goto(`${server.base}/dashboard`);
  assert.match(page.url(), /\/dashboard\/login$/);
  await context.close();
});
