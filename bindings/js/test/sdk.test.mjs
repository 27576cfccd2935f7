// The web SDK's own behaviour in Node, on the built wasm: hashing equal to the Rust core's,
// calls before start (kept by the first script, replayed by the lazily loaded core), the core's
// codes in English, misuse never thrown, offline queue across restarts, consent, storage
// adapters, and delivery to the real reference server.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { Trailmark, TrailmarkError, MemoryStorage, repo, root, scripted, until, wasm } from './helpers.mjs';
import { LocalStorageStorage, openStorage } from '../dist/index.js';
import { coreError, refusal, retryAfter } from '../dist/core.js';
import { ADMIN, startServer } from './server.mjs';

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

test('every kind of call made before start is replayed in order, each with its own time', async () => {
  let clock = Date.UTC(2026, 0, 1);
  const tick = () => (clock += 1000);
  const errors = [];
  const { transport, captured } = scripted();
  const tm = Trailmark.init({ ...base, transport, storage: 'memory', requireConsent: true, now: () => clock, onError: (e) => errors.push(e) });
  const circular = {};
  circular.self = circular;
  // None of these waits: the core is not up yet.
  assert.equal(tm.anonymousId(), undefined);
  assert.deepEqual(tm.stats(), {});
  assert.equal(tm.consent().optedOut, false);
  assert.equal(tm.attribution(), null);
  assert.throws(() => tm.hashEmail('jane@example.com'), (e) => e instanceof TrailmarkError && e.code === 'InvalidInput');
  tm.setConsent({ analytics: true, attribution: true });
  tick();
  assert.equal(tm.identify('u-1', { plan: 'pro' }), true);
  tick();
  assert.equal(tm.page('Home', { section: 'top' }), true);
  tick();
  assert.equal(tm.screen('Cart'), true);
  tick();
  const props = { n: 1 };
  assert.equal(tm.track('early', props), true);
  props.n = 2; // read at the call, not at the replay
  tick();
  assert.equal(tm.handleOpenUrl('https://shop.example/landing?utm_source=news&tm_click_id=clk_9'), true);
  tick();
  assert.equal(tm.track('unwritable', circular), true, 'kept; refused when replayed');
  tick();
  assert.equal(tm.track('Bad Type!'), true, 'kept; refused when replayed');
  const flushed = tm.flush(); // waits for the core
  assert.equal(errors.length, 0, 'nothing is reported before the core is up');
  clock += 60_000;
  await tm.ready;
  await flushed;
  assert.equal(errors.length, 2);
  assert.ok(errors.every((e) => e instanceof TrailmarkError && e.code === 'InvalidInput' && e.message), `${errors}`);
  assert.equal(tm.stats().refusedInvalid, 2);
  assert.equal(tm.userId(), 'u-1');
  assert.equal(tm.consent().analytics, true);
  const start = Date.UTC(2026, 0, 1);
  const at = (s) => new Date(start + s * 1000).toISOString();
  const replayed = sent(captured)
    .filter((e) => !['session_start', 'install'].includes(e.type))
    .map((e) => [e.type, e.timestamp]);
  assert.deepEqual(replayed, [
    ['identify', at(1)],
    ['page_view', at(2)],
    ['screen_view', at(3)],
    ['early', at(4)],
    ['deep_link_opened', at(5)],
  ]);
  const events = sent(captured);
  assert.equal(events.find((e) => e.type === 'early').properties.n, 1);
  assert.equal(events.find((e) => e.type === 'early').user_id, 'u-1');
  assert.equal(events.find((e) => e.type === 'deep_link_opened').context.campaign.click_id, 'clk_9');
  await tm.shutdown();
  assert.equal(tm.track('after_shutdown'), false);
  assert.equal(tm.anonymousId(), undefined);
});

test('a wasm that does not load rejects ready and reports it', () => {
  // In a process of its own: the glue keeps the first wasm it instantiated.
  const script = `
    import { Trailmark } from './dist/index.js';
    const errors = [];
    const tm = Trailmark.init({ appId: 'shop', appSecret: 's', endpoint: 'https://c.example', storage: 'memory',
      wasm: new Uint8Array([0, 97, 115, 109, 9, 9, 9, 9]), onError: (e) => errors.push(e.code) });
    const kept = tm.track('kept');
    const ready = await tm.ready.then(() => 'resolved', (e) => [e.name, e.code, e.message.length > 0]);
    const flush = await tm.flush().then(() => 'resolved', (e) => e.code);
    await tm.shutdown();
    console.log(JSON.stringify({ kept, ready, flush, errors }));`;
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], { cwd: root, encoding: 'utf8' });
  assert.deepEqual(JSON.parse(out), { kept: true, ready: ['TrailmarkError', 'InvalidConfig', true], flush: 'InvalidConfig', errors: ['InvalidConfig'] });
});

test('the storage adapters of the first script pass through to the lazily loaded ones', async () => {
  const seed = { events: [{ seq: 2, held: false, created_at: 5, body: '{"b":2}' }, { seq: 1, held: true, created_at: 4, body: '{"a":1}' }], state: 'S' };
  const memory = new MemoryStorage(seed);
  assert.equal(memory.kind, 'memory');
  assert.deepEqual((await memory.load()).events.map((e) => e.seq), [1, 2]);
  await memory.apply([{ delete_all: false, delete_held: true, release_held: false, deletes: [], inserts: [], state: 'T' }]);
  assert.deepEqual(await memory.load(), { events: [seed.events[0]], state: 'T' });
  const auto = await openStorage('trailmark:node');
  assert.equal(auto.kind, 'memory', 'Node has neither IndexedDB nor localStorage');
});

test('the core\'s codes read as English; text that is not a code passes through', () => {
  const codes = ['empty_type', 'type_too_long', 'invalid_type_char', 'empty_id', 'id_too_long', 'too_deep', 'too_large', 'invalid_utf8', 'invalid_json', 'not_an_object', 'invalid_field'];
  for (const code of codes) {
    const message = refusal(code);
    assert.ok(message.length > 10 && !message.includes('_') || code === 'invalid_type_char', `${code}: ${message}`);
    assert.notEqual(message, code);
  }
  assert.equal(refusal('empty_id:user_id'), 'user_id is empty');
  assert.equal(refusal('invalid_field:page name'), 'invalid page name');
  assert.equal(refusal('invalid_field:url'), 'invalid url');
  assert.match(refusal('too_large'), /32768/);
  assert.match(refusal('too_deep:properties'), /^properties nest deeper than 32 levels \(properties\)$/);
  // An older core's sentences, and anything unknown, unchanged.
  for (const text of ['event type "Bad Type!" may only contain a-z, 0-9 and _', 'invalid url: relative URL without a base', 'constructor', '__proto__', 'toString:x', '']) {
    assert.equal(refusal(text), text);
  }
  const E = TrailmarkError;
  const check = (thrown, code, message) => {
    const e = coreError(E, new Error(thrown));
    assert.ok(e instanceof TrailmarkError);
    assert.equal(e.code, code, thrown);
    if (message instanceof RegExp) assert.match(e.message, message, thrown);
    else assert.equal(e.message, message, thrown);
  };
  check('InvalidConfig', 'InvalidConfig', 'invalid configuration');
  check('InvalidConfig:endpoint', 'InvalidConfig', /^endpoint must be an https:\/\/ URL/);
  check('InvalidConfig:app_id', 'InvalidConfig', 'invalid appId');
  check('InvalidConfig:flush_at', 'InvalidConfig', 'invalid flushAt');
  check('InvalidConfig:max_queue_events', 'InvalidConfig', 'invalid maxQueueEvents');
  check('InvalidConfig:device_id', 'InvalidConfig', 'invalid context.deviceId');
  check('Storage', 'Storage', /stored/);
  check('InvalidInput', 'InvalidInput', 'invalid input');
  assert.equal(coreError(E, new Error('InvalidInput'), 'not an email address').message, 'not an email address');
  // The older form, `Kind: sentence`.
  check('InvalidConfig: endpoint "http://x" must use https://', 'InvalidConfig', 'endpoint "http://x" must use https://');
  check('Storage: unreadable: x', 'Storage', 'unreadable: x');
  // Not a kind at all.
  check('RuntimeError: unreachable', 'InvalidInput', 'RuntimeError: unreachable');
  assert.equal(coreError(E, 'InvalidConfig:sdk').code, 'InvalidConfig', 'a thrown string');
});

test('the package ships types for its public API (dist/index.d.ts, on its own)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tm-types-'));
  try {
    const consumer = join(dir, 'consumer.ts');
    writeFileSync(
      consumer,
      `import { Trailmark, TrailmarkError, MemoryStorage, IndexedDbStorage, openStorage } from ${JSON.stringify(join(root, 'dist', 'index.js'))};
      import type { Options, StorageAdapter, Attribution, Consent, Stats, UploadRequest, Write } from ${JSON.stringify(join(root, 'dist', 'index.js'))};
      const options: Options = { appId: 'a', appSecret: 's', endpoint: 'https://c.example', storage: new MemoryStorage(), onError: (e: TrailmarkError) => e.code };
      const tm: Trailmark = Trailmark.init(options);
      const ok: boolean = tm.track('t', { a: 1 }) && tm.page() && tm.identify('u') && tm.handleOpenUrl('https://x.example');
      tm.setConsent({ analytics: true } satisfies Consent);
      const s: Partial<Stats> = tm.stats();
      const why: [number | undefined, string | undefined, number | undefined] = [s.lastRejectionStatus, s.lastRejectionReason, s.badAnswers];
      // @ts-expect-error the reason is text
      const notANumber: number | undefined = s.lastRejectionReason;
      const a: Attribution | null = tm.attribution();
      const hash: string = tm.hashEmail('a@b.example');
      const later: Promise<void> = tm.ready.then(() => tm.flush()).then(() => tm.shutdown());
      const opened: Promise<IndexedDbStorage> = IndexedDbStorage.open(indexedDB, 'n');
      const any: Promise<StorageAdapter> = openStorage('n');
      const w: Write[] = [];
      const r: UploadRequest | undefined = undefined;
      // @ts-expect-error the constructor is private: Trailmark.init
      new Trailmark(options);
      export { ok, s, why, notANumber, a, hash, later, opened, any, w, r };\n`,
    );
    execFileSync(join(root, 'node_modules', '.bin', 'tsc'), ['--noEmit', '--strict', '--target', 'ES2020', '--module', 'ES2020', '--moduleResolution', 'bundler', '--lib', 'ES2020,DOM', consumer], {
      encoding: 'utf8',
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
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
  // Nothing will take calls after a failed start: they are not kept (no growing queue), and
  // never thrown.
  assert.equal(tm.track('after', {}), false, 'not kept, never thrown');
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
    const lines = [];
    const tm = Trailmark.init({ appId: 'shop', appSecret: 's3cret', endpoint: server.base, wasm, storage: 'memory', debug: true, logger: (l) => lines.push(l) });
    await tm.ready;
    tm.handleOpenUrl('https://shop.example/landing?utm_source=News&tm_click_id=clk_1');
    for (let n = 0; n < 30; n++) tm.track('add_to_cart', { sku: `A-${n}`, price: 1.5, currency: 'EUR' });
    tm.track('purchase', { revenue: 10 });
    await tm.flush();
    await until(() => tm.stats().queued === 0, 'delivery');
    const stats = tm.stats();
    assert.equal(stats.rejectedByServer, 1, 'a purchase without currency is invalid: rejected alone');
    assert.equal(stats.lastRejectionStatus, 200, 'rejected in a batch the server took');
    assert.match(stats.lastRejectionReason, /currency/, 'the server\'s reason');
    assert.equal(stats.badAnswers, 0);
    assert.equal(stats.delivered, stats.recorded - 1);
    const events = await server.events(`app_id=shop&anonymous_id=${tm.anonymousId()}`);
    assert.equal(events.length, stats.delivered);
    assert.equal(new Set(events.map((e) => e.event_id)).size, events.length);
    const link = events.find((e) => e.type === 'deep_link_opened');
    assert.equal(link.context.campaign.click_id, 'clk_1');
    // debug: each decision in the log, as what it changed.
    assert.ok(lines.some((l) => /^add_to_cart: recorded \d+, queued \d+/.test(l)), lines.join('\n'));
    assert.ok(lines.some((l) => l.startsWith(`upload ${server.base}/v1/event: `) && l.endsWith('answer HTTP 200')), lines.join('\n'));
    assert.ok(lines.some((l) => l.startsWith('answer: ') && l.includes('delivered') && l.includes('rejected_by_server 1')), lines.join('\n'));
    await tm.shutdown();
  } finally {
    await server.stop();
  }
});

test('register, middleware, group and alias against the reference server (issue 21)', async () => {
  const server = await startServer({ args: ['--app', 'shop:s3cret'] });
  const init = () => Trailmark.init({ appId: 'shop', appSecret: 's3cret', endpoint: server.base, wasm, storage: 'memory' });
  const delivered = async (tm) => {
    await tm.flush();
    await until(() => tm.stats().queued === 0 && tm.stats().delivered > 0, 'delivery');
  };
  try {
    // Device B: u1 opens the app.
    const b = init();
    await b.ready;
    b.identify('u1');
    b.track('app_open');
    await delivered(b);
    // Device A: u1 becomes u2, joins a group, and buys; a middleware drops type `secret`.
    const a = init();
    await a.ready;
    a.register({ plan: 'pro' });
    const seen = [];
    a.addMiddleware((e) => {
      seen.push(e.type);
      return e.type === 'secret' ? null : e;
    });
    a.addMiddleware((e) => {
      if (e.type === 'boom') throw new Error('middleware bug');
      delete e.properties.password;
      return { ...e, properties: { ...e.properties, group_seen: e.context.group_id ?? 'none' } };
    });
    a.addMiddleware((e) => (e.type === 'malformed' ? { type: 7, properties: null } : e));
    a.identify('u1');
    a.alias('u2');
    a.group('acme', { seats: 5 });
    assert.equal(a.track('x', { password: 'hunter2' }), true);
    assert.equal(a.track('secret', { token: 't' }), true, 'a dropped event is not a refused call');
    assert.equal(a.track('boom'), true);
    assert.equal(a.screen('malformed_screen', { x: 1 }), true);
    a.track('malformed');
    a.screen('Home');
    a.track('purchase', { revenue: 12, currency: 'EUR' });
    await delivered(a);
    const stats = a.stats();
    assert.equal(stats.droppedByMiddleware, 1);
    assert.equal(stats.middlewareErrors, 2, 'a throw and something that is not an event');
    assert.deepEqual(seen, ['x', 'secret', 'boom', 'screen_view', 'malformed', 'screen_view', 'purchase'], 'identify, alias and group do not go through middleware');
    const events = await server.events(`app_id=shop&anonymous_id=${a.anonymousId()}`);
    const byType = (t) => events.filter((e) => e.type === t);
    assert.equal(byType('secret').length + byType('boom').length, 0, 'never stored');
    const [x] = byType('x');
    assert.deepEqual(x.properties, { plan: 'pro', group_seen: 'acme' }, 'super property in, password out');
    assert.equal(x.context.group_id, 'acme');
    const [group] = byType('group');
    assert.deepEqual(group.properties, { group_id: 'acme', seats: 5, plan: 'pro' });
    assert.deepEqual(byType('screen_view').map((e) => e.properties.name).sort(), ['Home', 'malformed_screen']);
    assert.equal(byType('malformed').length, 0);
    const [alias] = byType('alias');
    assert.equal(alias.user_id, 'u2');
    // The funnel counts u1's app_open (device B) and u2's purchase (device A) as one person.
    const r = await fetch(`${server.base}/v1/reports/funnel?app_id=shop&steps=app_open,purchase`, {
      headers: { Authorization: `Bearer ${ADMIN}` },
    });
    const funnel = await r.json();
    assert.equal(r.status, 200, JSON.stringify(funnel));
    assert.deepEqual(funnel.steps.map((s) => s.users), [1, 1], JSON.stringify(funnel));
    await a.shutdown();
    await b.shutdown();
  } finally {
    await server.stop();
  }
});

test('Retry-After reaches the core as seconds: HTTP-dates are converted by the page', () => {
  const at = Date.parse('Sun, 06 Nov 1994 08:49:37 GMT');
  assert.equal(retryAfter(' 120 ', at), '120');
  assert.equal(retryAfter('Sun, 06 Nov 1994 08:51:37 GMT', at), '120');
  assert.equal(retryAfter('Sun, 06 Nov 1994 08:49:36 GMT', at), '0', 'a date in the past is no wait');
  assert.equal(retryAfter('tomorrow', at), undefined);
  assert.equal(retryAfter(null, at), undefined);
  assert.equal(retryAfter('', at), undefined);
});
