// The dashboard's pages (issue 26) in headless Chromium against the reference server, filled
// with a fixed fixture: two weeks of cohorts (organic installs on their day, then visits and
// purchases), three campaigns with daily costs, and today's clicks and installs — by Play
// referrer, by advertising id, one by fingerprint, one rejected as click injection.
// Checks: the trend chart's points are the report API's numbers for the same range; the
// campaign page shows the fixture's CPI; the attribution explorer shows the candidates of the
// fingerprinted install; the retention heatmap and the paths are the API's; hostile strings
// stay inert on every page; the overview fits a phone's width. Screenshots of every page are
// kept as artifacts.
//
//   node --test tests/browser/dashboard-pages.mjs   (part of ./tests/run.sh browser)
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ADMIN, startServer } from '../../bindings/js/test/server.mjs';

const repo = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const { chromium } = createRequire(join(repo, 'bindings', 'js', 'package.json'))('playwright-core');
const artifacts = process.env.TM_ARTIFACTS ?? join(process.env.CARGO_TARGET_DIR ?? join(repo, 'target'), 'test-artifacts');

const APP = 'shop';
const SECRET = 's3cret';
const DAY = 86_400_000;
const ANDROID_UA = 'Mozilla/5.0 (Linux; Android 14; Pixel 8 Build/UQ1A.240205.004) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36';
const IPHONE_17_UA = 'Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1';
const IPHONE_18_UA = 'Mozilla/5.0 (iPhone; CPU iPhone OS 18_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.6 Mobile/15E148 Safari/604.1';
const HOSTILE_NAME = '<img src=x onerror=alert(1)> "Black Friday"';
const HOSTILE_NETWORK = '"><script>alert(3)</script>';

let browser;
let server;
/** What the fixture made: campaign ids by key, the fingerprinted install, the costs. */
const made = { campaigns: {}, links: {}, costs: {} };

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const dateOf = (ms) => new Date(ms).toISOString().slice(0, 10);
const today = Math.floor(Date.now() / DAY) * DAY;
const FROM = dateOf(today - 13 * DAY);
const TO = dateOf(today);

async function admin(method, path, body) {
  const r = await fetch(`${server.base}${path}`, {
    method,
    headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  assert.ok(r.status < 300, `${method} ${path}: ${r.status} ${text}`);
  return JSON.parse(text);
}

/** A request signed as the app, as an SDK signs it; retried when the server says 429. */
async function signed(path, payload) {
  const body = JSON.stringify(payload);
  for (let attempt = 0; ; attempt++) {
    const ts = Math.floor(Date.now() / 1000);
    const sig = 'v1=' + createHmac('sha256', SECRET).update(`${ts}.${body}`).digest('hex');
    const r = await fetch(`${server.base}${path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-trailmark-app': APP, 'x-trailmark-timestamp': String(ts), 'x-trailmark-signature': sig },
      body,
    });
    const text = await r.text();
    if (r.status === 429 && attempt < 20) {
      await sleep(250);
      continue;
    }
    assert.equal(r.status, 200, `${path}: ${text}`);
    return JSON.parse(text);
  }
}

async function install(anonymous_id, at, device, extra = {}) {
  return signed('/v1/install', {
    event_id: crypto.randomUUID(),
    anonymous_id,
    timestamp: new Date(at).toISOString(),
    platform: device.os === 'iOS' ? 'ios' : 'android',
    device,
    ...extra,
  });
}

async function click(code, ua, query = '') {
  const r = await fetch(`${server.base}/c/${code}${query}`, {
    redirect: 'manual',
    headers: { 'user-agent': ua, 'accept-language': 'en-US,en;q=0.9' },
  });
  assert.equal(r.status, 302, `click ${code}`);
  return new URL(r.headers.get('location'));
}

const event = (type, anonymous_id, at, properties = {}) => ({
  event_id: crypto.randomUUID(),
  type,
  timestamp: new Date(at).toISOString(),
  anonymous_id,
  properties,
});

async function ingest(events) {
  for (let i = 0; i < events.length; i += 200) {
    const r = await signed('/v1/event', { batch: events.slice(i, i + 200), sent_at: new Date().toISOString() });
    assert.equal(r.accepted, Math.min(200, events.length - i), JSON.stringify(r));
  }
}

/** Fourteen days of cohorts (8 organic installs a day), their visits on later days (fewer as
 *  days pass), views and purchases; today's campaign traffic. Deterministic. */
async function fixture() {
  // Campaigns, links, a cost for each of the fourteen days.
  for (const [key, name, network, daily] of [
    ['meta', 'Summer video', 'meta', 40],
    ['google', 'Brand search', 'google', 25],
    ['tiktok', 'UGC creators', 'tiktok', 15],
    ['hostile', HOSTILE_NAME, HOSTILE_NETWORK, 5],
  ]) {
    const c = await admin('POST', '/v1/campaigns', { app_id: APP, name, network });
    made.campaigns[key] = c.campaign_id;
    const link = await admin('POST', '/v1/links', {
      campaign_id: c.campaign_id,
      utm: { source: network, medium: 'paid', campaign: key },
      destinations: {
        ios: 'https://apps.apple.com/app/id1234567890',
        android: `https://play.google.com/store/apps/details?id=com.example.${APP}`,
        web: `https://shop.example.com/${key}`,
      },
    });
    made.links[key] = link.code;
    made.costs[key] = 0;
    for (let d = 0; d < 14; d++) {
      const amount = daily + (d % 3) * 5;
      await admin('POST', `/v1/campaigns/${c.campaign_id}/cost`, { date: dateOf(today - d * DAY), amount, currency: 'EUR' });
      made.costs[key] += amount;
    }
  }

  // Today's traffic. Android visitors click and install through the Play referrer; iPhones on
  // iOS 18 by the advertising id the network passes on; Anna's iPhone (iOS 17, no id on the
  // click, tracking allowed at install) only a fingerprint finds.
  const referrers = [];
  for (const [who, key] of [['ivy', 'meta'], ['kim', 'meta'], ['gus', 'google'], ['zed', 'meta']]) {
    const to = await click(made.links[key], ANDROID_UA, '?gclid=fixture');
    referrers.push([who, to.searchParams.get('referrer')]);
  }
  for (const [who, n] of [['jo', 1], ['hana', 2]]) {
    await click(made.links.google, IPHONE_18_UA, `?idfa=AAAAAAAA-0000-4000-8000-00000000000${n}`);
  }
  await click(made.links.tiktok, IPHONE_17_UA);
  await click(made.links.hostile, 'facebookexternalhit/1.1');
  const android = { os: 'Android', os_version: '14', model: 'Pixel 8', locale: 'en_US' };
  // Four seconds after its click: click injection, rejected.
  await sleep(4000);
  const zed = await install('zed', Date.now(), android, { install_referrer: referrers[3][1] });
  assert.equal(zed.fraud.rejected, true, JSON.stringify(zed));
  // Real installs take longer than the 10-second click-to-install minimum.
  await sleep(7000);
  for (const [who, referrer] of referrers.slice(0, 3)) {
    const r = await install(who, Date.now(), android, { install_referrer: referrer });
    assert.equal(r.match_type, 'referrer', `${who}: ${JSON.stringify(r)}`);
  }
  for (const [who, n] of [['jo', 1], ['hana', 2]]) {
    const r = await install(who, Date.now(), { os: 'iOS', os_version: '18.6', locale: 'en_US', idfa: `aaaaaaaa-0000-4000-8000-00000000000${n}` });
    assert.equal(r.match_type, 'device_id', `${who}: ${JSON.stringify(r)}`);
  }
  const anna = await install('anna', Date.now(), {
    os: 'iOS', os_version: '17.1.2', locale: 'en_US', model: 'iPhone15,2', idfa: 'bbbbbbbb-0000-4000-8000-000000000004',
  });
  assert.equal(anna.match_type, 'fingerprint', JSON.stringify(anna));
  assert.equal(anna.campaign_id, made.campaigns.tiktok);
  made.attributed = { meta: 2, google: 3, tiktok: 1 };
  // Their first day in the app, after their installs.
  const now = Date.now();
  await sleep(1000);
  const buyers = [['ivy', 24.5], ['gus', 39], ['jo', 12], ['anna', 59.9]];
  const todays = [];
  for (const who of ['ivy', 'kim', 'gus', 'jo', 'hana', 'anna']) {
    todays.push(event('app_opened', who, now + 100), event('view_item', who, now + 200));
  }
  for (const [who, revenue] of buyers) {
    todays.push(event('add_to_cart', who, now + 300), event('purchase', who, now + 400, { revenue, currency: 'EUR' }));
  }
  await ingest(todays);

  // The cohorts, organic, installed on their day; visits on later days.
  const events = [];
  for (let d = 13; d >= 0; d--) {
    const day = today - d * DAY;
    for (let i = 0; i < 8; i++) {
      const anon = `c${d}-u${i}`;
      const at = day + (8 + i) * 3_600_000 + d * 60_000;
      if (at > Date.now() - 120_000) continue;
      const r = await install(anon, at, { os: 'Android', os_version: String(12 + (i % 3)), model: `Phone ${i}`, locale: 'de_DE' });
      assert.equal(r.match_type, 'organic');
      made.organic = (made.organic ?? 0) + 1;
      events.push(event('app_opened', anon, at + 60_000), event('view_item', anon, at + 120_000));
      if (i % 3 === 0) {
        // One in three of those who buy skips the product page (a second path to purchase).
        if (i === 6) events.pop();
        events.push(event('add_to_cart', anon, at + 180_000));
        if (i % 2 === 0) events.push(event('purchase', anon, at + 240_000, { revenue: 10 + i + d, currency: 'EUR' }));
      }
      for (let k = 1; day + k * DAY < Date.now() - 120_000 && k <= 13; k++) {
        // Fewer come back as days pass: about half on day 1, a third by day 3, a fifth later.
        const back = (i * 7 + k * 3) % 10 < (k === 1 ? 5 : k <= 3 ? 3 : 2);
        if (back && at + k * DAY < Date.now() - 120_000) events.push(event('app_opened', anon, at + k * DAY));
      }
    }
  }
  await ingest(events);
  // Hostile strings in what the pages show: a property and an anonymous id.
  await ingest([event('app_opened', 'x"><img src=x onerror=alert(4)>', now, { note: '<script>window.__xss = 1; alert(5)</script>' })]);
}

before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
  server = await startServer({ args: ['--app', `${APP}:${SECRET}`] });
  await fixture();
  mkdirSync(artifacts, { recursive: true });
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

async function signedIn(viewport = { width: 1280, height: 900 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  const dialogs = [];
  page.on('dialog', (d) => {
    dialogs.push(d.message());
    d.dismiss();
  });
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(`${server.base}/dashboard/login`);
  await page.fill('#key', ADMIN);
  await Promise.all([page.waitForURL(/\/dashboard$/), page.click('#login')]);
  return { context, page, dialogs, errors };
}

/** Nothing hostile ran or became markup. */
async function inert(page, dialogs, errors) {
  assert.deepEqual(dialogs, [], 'no script ran');
  assert.deepEqual(errors, []);
  assert.equal(await page.evaluate(() => window.__xss), undefined);
  assert.equal(await page.locator('img').count(), 0, 'no injected image');
  const scripts = await page.locator('script').evaluateAll((s) => s.map((x) => x.getAttribute('src')));
  assert.deepEqual(scripts, ['/dashboard/app.js'], 'only the dashboard script');
}

/** (series, label, value) of a chart's points or bars. */
const points = (page, selector) =>
  page.locator(selector).evaluateAll((els) =>
    els.map((e) => [e.dataset.series, e.dataset.label, Number(e.dataset.value)]).sort((a, b) => `${a[0]}|${a[1]}`.localeCompare(`${b[0]}|${b[1]}`)),
  );

const fromApi = (trend, list, keepZeros) => {
  const out = [];
  for (const s of list) {
    s.values.forEach((v, i) => {
      if (keepZeros || v > 0) out.push([s.key, trend.labels[i], v]);
    });
  }
  return out.sort((a, b) => `${a[0]}|${a[1]}`.localeCompare(`${b[0]}|${b[1]}`));
};

test('overview: the trend charts are the report API numbers; filters; hostile strings inert', async () => {
  const { context, page, dialogs, errors } = await signedIn();
  await page.goto(`${server.base}/dashboard?from=${FROM}&to=${TO}`);
  const trend = await admin('GET', `/v1/reports/trends?app_id=${APP}&from=${FROM}&to=${TO}`);
  assert.equal(trend.labels.length, 14);
  assert.deepEqual(await points(page, '#trend-installs rect'), fromApi(trend, trend.installs, false));
  assert.deepEqual(await points(page, '#trend-events circle'), fromApi(trend, trend.events, true));
  assert.deepEqual(await points(page, '#trend-revenue circle').then((p) => p.filter((x) => x[0] === 'revenue of events')),
    fromApi(trend, [{ ...trend.revenue, key: 'revenue of events' }], true));
  assert.deepEqual(await points(page, '#trend-conversions circle'),
    fromApi(trend, [{ ...trend.conversions, key: 'conversions credited' }], true));
  assert.ok(trend.conversions.total > 0, 'purchases were credited to campaigns');
  const installs = trend.installs.filter((s) => s.key !== 'rejected').reduce((n, s) => n + s.total, 0);
  assert.equal(await page.textContent('#k-installs'), String(installs));
  // Today's installs by match type, as the fixture made them; the organic cohorts before.
  const todayCol = trend.labels.indexOf(TO);
  const at = (key) => trend.installs.find((s) => s.key === key).values[todayCol];
  assert.deepEqual([at('referrer'), at('device_id'), at('fingerprint'), at('rejected')], [3, 2, 1, 1]);
  assert.equal(trend.installs.find((s) => s.key === 'organic').total, made.organic);
  await page.screenshot({ path: join(artifacts, 'dashboard-overview.png'), fullPage: true });
  // The numbers behind a chart, and its text alternative.
  await page.click('#trends details.numbers summary >> nth=0');
  const rows = await page.locator('#trend-installs-table tbody tr').count();
  assert.equal(rows, 14);
  const desc = await page.textContent('#trend-installs-desc');
  assert.match(desc, new RegExp(`Installs by match type per day from ${FROM} to ${TO}\\.`));

  // Filtered to one network: the API's numbers again.
  await page.selectOption('#trend-network', 'meta');
  await Promise.all([page.waitForNavigation(), page.click('#trend-go')]);
  const meta = await admin('GET', `/v1/reports/trends?app_id=${APP}&from=${FROM}&to=${TO}&network=meta`);
  assert.deepEqual(await points(page, '#trend-installs rect'), fromApi(meta, meta.installs, false));
  assert.equal(meta.installs.find((s) => s.key === 'referrer').total, 2);
  // By hour: the last 48 hours (an explicit range, so an hour turning during the test cannot
  // move one side).
  const end = new Date(Math.floor(Date.now() / 3_600_000) * 3_600_000 + 3_599_999).toISOString();
  const start = new Date(Math.floor(Date.now() / 3_600_000) * 3_600_000 - 47 * 3_600_000).toISOString();
  const range = `from=${encodeURIComponent(start)}&to=${encodeURIComponent(end)}`;
  await page.goto(`${server.base}/dashboard?bucket=hour&${range}`);
  const hourly = await admin('GET', `/v1/reports/trends?app_id=${APP}&bucket=hour&${range}`);
  assert.equal(hourly.labels.length, 48);
  assert.deepEqual(await points(page, '#trend-events circle'), fromApi(hourly, hourly.events, true));

  // The campaign table names the hostile campaign as text.
  await page.goto(`${server.base}/dashboard?from=${FROM}&to=${TO}`);
  const table = await page.textContent('#campaign-table');
  assert.ok(table.includes(HOSTILE_NAME) && table.includes(HOSTILE_NETWORK), 'shown as text');
  const options = await page.locator('#trend-network option').allTextContents();
  assert.ok(options.includes(HOSTILE_NETWORK));
  await inert(page, dialogs, errors);

  // A phone's width: nothing wider than the screen but the tables' own scroll areas.
  const phone = await signedIn({ width: 390, height: 844 });
  await phone.page.goto(`${server.base}/dashboard?from=${FROM}&to=${TO}`);
  const overflow = await phone.page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  const wide = await phone.page.evaluate(() => [...document.querySelectorAll('body *')]
    .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1 && !e.closest('.scroll'))
    .slice(0, 8).map((e) => `${e.tagName}#${e.id}.${e.className} ${Math.round(e.getBoundingClientRect().right)}`));
  assert.ok(overflow <= 1, `the page is ${overflow}px wider than the phone: ${wide.join(', ')}`);
  await phone.page.screenshot({ path: join(artifacts, 'dashboard-overview-phone.png'), fullPage: true });
  await phone.context.close();
  await context.close();
});

test('campaign page: the fixture CPI, links with their clicks and installs, fraud by rule', async () => {
  const { context, page, dialogs, errors } = await signedIn();
  await page.goto(`${server.base}/dashboard`);
  await Promise.all([page.waitForNavigation(), page.click('#campaign-table a:text("Summer video")')]);
  assert.match(page.url(), new RegExp(`/dashboard/campaign/${made.campaigns.meta}$`));
  // Fourteen days of cost over the two installs the campaign got (zed's was rejected).
  const cpi = made.costs.meta / made.attributed.meta;
  assert.equal(await page.textContent('#k-cpi'), `${cpi.toFixed(2)} EUR`);
  assert.equal(await page.textContent('#k-installs'), '2');
  const detail = await admin('GET', `/v1/reports/campaigns/${made.campaigns.meta}`);
  assert.equal(await page.textContent('#k-rejected'), '1', JSON.stringify(detail));
  for (const model of ['last_touch', 'first_touch', 'linear', 'time_decay']) {
    assert.equal(await page.textContent(`#model-table tr[data-model=${model}] td.cpi`), cpi.toFixed(2));
  }
  const link = page.locator('#link-table tbody tr');
  assert.equal(await link.count(), 1);
  assert.equal(await link.locator('td.clicks').textContent(), '3');
  assert.equal(await link.locator('td.installs').textContent(), '2');
  const fraud = await page.locator('#fraud-table tbody tr').allInnerTexts();
  assert.ok(fraud.some((r) => /click_injection\s+1/.test(r)), `rules: ${fraud}`);
  assert.equal(await link.locator('td:nth-child(8)').textContent(), '1', 'the rejected install, on its link');
  await page.screenshot({ path: join(artifacts, 'dashboard-campaign.png'), fullPage: true });

  // The hostile campaign's page.
  await page.goto(`${server.base}/dashboard/campaign/${made.campaigns.hostile}`);
  assert.ok((await page.textContent('#campaign-name')).includes(HOSTILE_NAME));
  await inert(page, dialogs, errors);
  await context.close();
});

test('attribution explorer: the fingerprinted install with its candidates and evidence', async () => {
  const { context, page, dialogs, errors } = await signedIn();
  await page.click('nav a:text("Attribution explorer")');
  await page.selectOption('#explore-by', 'anonymous_id');
  await page.fill('#explore-q', 'anna');
  await Promise.all([page.waitForNavigation(), page.click('#explore-go')]);
  assert.match(await page.textContent('#verdict'), new RegExp(`Attributed to UGC creators \\[${made.campaigns.tiktok}\\] \\(tiktok\\) by fingerprint, confidence 0\\.\\d\\d`));
  const api = await admin('GET', `/v1/attribution/lookup?app_id=${APP}&anonymous_id=anna`);
  const candidates = api.install.audit.candidates;
  assert.equal(await page.locator('#candidates tbody tr').count(), candidates.length);
  const chosen = page.locator('#candidates tr.chosen');
  assert.equal(await chosen.count(), 1);
  assert.equal(await chosen.getAttribute('data-match'), 'fingerprint');
  assert.equal(await chosen.getAttribute('data-click-id'), candidates.find((c) => c.chosen).click_id);
  const evidence = await chosen.locator('dl.facts').textContent();
  assert.match(evidence, /same address\s*yes/);
  assert.match(evidence, /agree\s*os_version/);
  assert.match(await page.textContent('#fingerprint-summary'), /verdict\s*matched/);
  // Her purchase's credit: all of it to the TikTok campaign under every model.
  const credit = await page.locator('#credit-table tbody tr').allInnerTexts();
  assert.equal(credit.length, 4, credit.join('\n'));
  assert.ok(credit.every((r) => r.includes(made.campaigns.tiktok) && r.includes('100.0%')), JSON.stringify(api.credits));
  await page.screenshot({ path: join(artifacts, 'dashboard-attribution.png'), fullPage: true });

  // A rejected install explains itself; a hostile lookup stays text.
  await page.goto(`${server.base}/dashboard/attribution?by=anonymous_id&q=zed`);
  assert.match(await page.textContent('#verdict'), /rejected by fraud rules/);
  assert.match(await page.textContent('#rules'), /click_injection/);
  await page.goto(`${server.base}/dashboard/attribution?by=anonymous_id&q=${encodeURIComponent('x"><img src=x onerror=alert(4)>')}`);
  assert.equal(await page.inputValue('#explore-q'), 'x"><img src=x onerror=alert(4)>');
  await inert(page, dialogs, errors);
  await context.close();
});

test('every page fits a phone\'s width', async () => {
  const phone = await signedIn({ width: 390, height: 844 });
  for (const path of [
    `/dashboard/campaign/${made.campaigns.meta}`,
    `/dashboard/journeys?from=${FROM}&to=${TO}`,
    '/dashboard/attribution?by=anonymous_id&q=anna',
  ]) {
    await phone.page.goto(`${server.base}${path}`);
    const overflow = await phone.page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    const wide = await phone.page.evaluate(() => [...document.querySelectorAll('body *')]
      .filter((e) => (e.getBoundingClientRect().right > window.innerWidth + 1 || e.scrollWidth > e.clientWidth + 1) && !e.closest('.scroll'))
      .slice(0, 6).map((e) => `${e.tagName.toLowerCase()}#${e.id}.${e.className} ${e.scrollWidth}/${e.clientWidth} ${Math.round(e.getBoundingClientRect().right)}`));
    assert.ok(overflow <= 1, `${path}: the page is ${overflow}px wider than the phone: ${wide.join(', ')}`);
  }
  await phone.page.screenshot({ path: join(artifacts, 'dashboard-attribution-phone.png'), fullPage: true });
  await inert(phone.page, phone.dialogs, phone.errors);
  await phone.context.close();
});

test('journeys: the retention heatmap and the paths are the API answers', async () => {
  const { context, page, dialogs, errors } = await signedIn();
  await page.goto(`${server.base}/dashboard/journeys?from=${FROM}&to=${TO}&steps=app_opened,view_item,add_to_cart,purchase`);
  const days = Array.from({ length: 14 }, (_, i) => i + 1).join(',');
  const retention = await admin('GET', `/v1/reports/retention?app_id=${APP}&from=${FROM}&to=${TO}&days=${days}`);
  const cells = await page.locator('#retention-heatmap td.cell').evaluateAll((els) => els.map((e) => e.dataset.share));
  const expected = retention.cohorts.flatMap((c) => c.retention.map((r) => (r.share === null ? '' : r.share.toFixed(4))));
  assert.deepEqual(cells, expected);
  const first = retention.cohorts[0];
  assert.equal(first.users, 8);
  assert.ok(first.retention[0].share > first.retention[12].share, 'fewer come back as days pass');
  const paths = await admin('GET', `/v1/reports/paths?app_id=${APP}&conversion=purchase&from=${FROM}&to=${TO}`);
  const shown = await page.locator('#path-list li').evaluateAll((els) => els.map((e) => [...e.querySelectorAll('.step')].map((s) => s.textContent)));
  assert.deepEqual(shown, paths.paths.map((p) => p.path));
  assert.deepEqual(shown[0], ['app_opened', 'view_item', 'add_to_cart', 'purchase']);
  assert.ok(shown.some((p) => p.join() === 'app_opened,add_to_cart,purchase'), JSON.stringify(shown));
  const funnel = await page.locator('#funnel-table tbody tr').allInnerTexts();
  assert.equal(funnel.length, 4);
  assert.match(await page.textContent('#funnel-chart-desc'), /^app_opened: \d+ \(100\.0%\); view_item: \d+/);
  await page.screenshot({ path: join(artifacts, 'dashboard-journeys.png'), fullPage: true });
  await inert(page, dialogs, errors);
  await context.close();
});
