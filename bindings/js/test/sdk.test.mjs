// The web SDK's own behaviour in Node, on the built wasm: hashing equal to the Rust core's,
// calls before start, misuse never thrown, offline queue across restarts, consent, storage
// adapters, and delivery to the real reference server.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Trailmark, TrailmarkError, MemoryStorage, repo, scripted, until, wasm } from './helpers.mjs';
import { LocalStorageStorage } from '../dist/index.js';
import { startServer } from './server.mjs';

const base = { appId: 'shop', appSecret: 's3cret', endpoint: 'https://collect.example.test', wasm };
const sent = (captured) => captured.flatMap((r) => JSON.parse(r.body).batch ?? []);

test('PII hashes equal the Rust core (tests/pii_vectors.json)', async () => {
  const vectors = JSON.parse(readFileSync(join(repo, 'tests', 'pii_vectors.json'), 'utf8'));
  const { transport, captured } = scripted();
  const tm = Trailmark.init({ ...base, transport, storage: 'memory' });
  await tm.ready;
  for (const v of vectors.email) assert.equal(tm.hashEmail(v.input), v.sha256, v.input);
  for (const v of vectors.phone) assert.equal(tm.hashPhone(v.input), v.sha256, v.input);
  for (const bad of vectors.invalid_email) assert.throws(() => tm.hashEmail(bad), (e) => e instanceof TrailmarkError && e.code === 'InvalidInput');
  for (const bad of vectors.invalid_phone) assert.throws(() => tm.hashPhone(bad), (e) => e.code === 'InvalidInput');
  tm.identify('u1', { email: vectors.email[0].input, phone: vectors.phone[0].input, plan: 'pro' });
  await tm.flush();
  const identify = sent(captured).find((e) => e.type === 'identify');
  assert.deepEqual(identify.properties, { email_sha256: vectors.email[0].sha256, phone_sha256: vectors.phone[0].sha256, plan: 'pro' });
  assert.ok(!captured.some((r) => r.body.includes(vectors.email[0].input.trim())), 'the raw email never leaves');
  await tm.shutdown();
});

test('calls before start are kept with their own time and replayed', async () => {
  let clock = Date.UTC(2026, 0, 1);
  const { transport, captured } = scripted();
  const tm = Trailmark.init({ ...base, transport, storage: 'memory', now: () => clock });
  assert.equal(tm.track('early', { n: 1 }), true);
  clock += 5000;
  await tm.ready;
  tm.track('late', { n: 2 });
  await tm.flush();
  const events = sent(captured);
  assert.deepEqual(events.map((e) => e.type), ['session_start', 'install', 'early', 'late']);
  assert.equal(events[2].timestamp, '2026-01-01T00:00:00.000Z');
  assert.equal(events[3].timestamp, '2026-01-01T00:00:05.000Z');
  assert.equal(events[0].context.sdk.name, 'trailmark-web');
  await tm.shutdown();
});

test('misuse is refused, reported and counted, never thrown', async () => {
  const errors = [];
  const { transport, captured } = scripted();
  const tm = Trailmark.init({ ...base, transport, storage: 'memory', onError: (e) => errors.push(e) });
  await tm.ready;
  const circular = {};
  circular.self = circular;
  assert.equal(tm.track('', {}), false);
  assert.equal(tm.track('Bad Type!', {}), false);
  assert.equal(tm.track('ok', circular), false);
  assert.equal(tm.identify('', {}), false);
  assert.equal(tm.handleOpenUrl('not a url'), false);
  assert.equal(tm.track('ok', { big: 'x'.repeat(40_000) }), false);
  assert.equal(tm.track('fine', { nested: { a: [1, null, true] } }), true);
  assert.equal(errors.length, 6);
  assert.ok(errors.every((e) => e instanceof TrailmarkError && e.code === 'InvalidInput' && e.message.length > 0), `${errors}`);
  assert.equal(tm.stats().refusedInvalid, 6);
  await tm.flush();
  assert.deepEqual(sent(captured).map((e) => e.type), ['session_start', 'install', 'fine']);
  await tm.shutdown();
});

test('a bad configuration rejects ready with a typed error and reports it', async () => {
  const errors = [];
  const tm = Trailmark.init({ ...base, endpoint: 'http://collect.example.test', storage: 'memory', onError: (e) => errors.push(e) });
  await assert.rejects(tm.ready, (e) => e instanceof TrailmarkError && e.code === 'InvalidConfig' && /endpoint/.test(e.message));
  assert.equal(errors.length, 1);
  assert.equal(tm.track('after', {}), true, 'kept, never thrown');
  await tm.shutdown();
});

test('offline: the queue survives restarts and every event is delivered once', async () => {
  const storage = new MemoryStorage();
  let online = false;
  const received = [];
  const transport = async (r) => {
    if (!online) throw new Error('offline');
    const batch = JSON.parse(r.body).batch;
    received.push(...batch);
    return { status: 200, body: JSON.stringify({ accepted: batch.length, duplicates: 0, rejected: [] }) };
  };
  const opts = { ...base, transport, storage, flushAt: 5, flushIntervalMs: 50 };
  let tm = Trailmark.init(opts);
  await tm.ready;
  for (let n = 0; n < 12; n++) tm.track('tick', { n });
  await until(() => tm.stats().uploadFailures >= 1, 'a failed upload');
  await tm.shutdown();
  tm = Trailmark.init(opts);
  await tm.ready;
  for (let n = 12; n < 15; n++) tm.track('tick', { n });
  assert.equal(tm.stats().queued, 17);
  online = true;
  await tm.flush();
  await until(() => tm.stats().queued === 0, 'delivery');
  const ticks = received.filter((e) => e.type === 'tick').map((e) => e.properties.n);
  assert.deepEqual(ticks, [...Array(15).keys()]);
  assert.equal(new Set(received.map((e) => e.event_id)).size, received.length, 'no event twice');
  assert.equal((await storage.load()).events.length, 0, 'acknowledged events leave storage');
  await tm.shutdown();
});

test('consent: required holds, denied sends nothing, opt-out persists', async () => {
  const storage = new MemoryStorage();
  const { transport, captured } = scripted();
  let tm = Trailmark.init({ ...base, transport, storage, requireConsent: true, flushIntervalMs: 10 });
  await tm.ready;
  tm.track('before_consent', {});
  await tm.flush();
  assert.equal(captured.length, 0);
  assert.equal(tm.stats().held, 3);
  tm.setConsent({ analytics: false });
  tm.track('after_denial', {});
  await tm.flush();
  assert.equal(captured.length, 0, 'consent denied sends nothing');
  assert.equal(tm.stats().droppedConsentDenied, 3);
  assert.equal(tm.consent().analytics, false);
  tm.setConsent({ analytics: true });
  tm.optOut();
  tm.track('opted_out', {});
  await tm.shutdown();
  tm = Trailmark.init({ ...base, transport, storage, requireConsent: true });
  await tm.ready;
  assert.equal(tm.consent().optedOut, true, 'opt-out survives a restart');
  tm.track('still_out', {});
  await tm.flush();
  assert.equal(captured.length, 0);
  tm.optIn();
  tm.track('back', {});
  await tm.flush();
  assert.deepEqual(sent(captured).map((e) => e.type), ['session_start', 'back']);
  await tm.shutdown();
});

test('the localStorage adapter keeps the queue and state across restarts', async () => {
  const map = new Map();
  const ls = {
    get length() {
      return map.size;
    },
    key: (i) => [...map.keys()][i] ?? null,
    getItem: (k) => map.get(k) ?? null,
    setItem: (k, v) => map.set(k, String(v)),
    removeItem: (k) => map.delete(k),
  };
  const storage = () => new LocalStorageStorage(ls, 'trailmark:shop:');
  const { transport, captured } = scripted([{ status: 0, error: 'offline' }]);
  let tm = Trailmark.init({ ...base, transport, storage: storage(), requireConsent: true });
  await tm.ready;
  const anon = tm.anonymousId();
  tm.track('a', {});
  tm.setConsent({ analytics: true });
  tm.track('b', {});
  await tm.shutdown();
  assert.ok([...map.keys()].some((k) => k.startsWith('trailmark:shop:e')));
  tm = Trailmark.init({ ...base, transport, storage: storage(), requireConsent: true });
  await tm.ready;
  assert.equal(tm.anonymousId(), anon);
  await tm.flush();
  await until(() => tm.stats().queued === 0, 'delivery', 15_000);
  assert.deepEqual([...new Set(sent(captured).map((e) => e.type))], ['session_start', 'install', 'a', 'b']);
  await tm.shutdown();
  assert.deepEqual([...map.keys()], ['trailmark:shop:state'], 'only the state is left');
});

test('delivers to the reference server over HTTP, stored exactly once', async () => {
  const server = await startServer({ args: ['--app', 'shop:s3cret'] });
  try {
    const tm = Trailmark.init({ appId: 'shop', appSecret: 's3cret', endpoint: server.base, wasm, storage: 'memory' });
    await tm.ready;
    tm.handleOpenUrl('https://shop.example/landing?utm_source=News&tm_click_id=clk_1');
    for (let n = 0; n < 30; n++) tm.track('add_to_cart', { sku: `A-${n}`, price: 1.5, currency: 'EUR' });
    tm.track('purchase', { revenue: 10 });
    await tm.flush();
    await until(() => tm.stats().queued === 0, 'delivery');
    const stats = tm.stats();
    assert.equal(stats.rejectedByServer, 1, 'a purchase without currency is invalid: rejected alone');
    assert.equal(stats.delivered, stats.recorded - 1);
    const events = await server.events(`app_id=shop&anonymous_id=${tm.anonymousId()}`);
    assert.equal(events.length, stats.delivered);
    assert.equal(new Set(events.map((e) => e.event_id)).size, events.length);
    const link = events.find((e) => e.type === 'deep_link_opened');
    assert.equal(link.context.campaign.click_id, 'clk_1');
    await tm.shutdown();
  } finally {
    await server.stop();
  }
});
