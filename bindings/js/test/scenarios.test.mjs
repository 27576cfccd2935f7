// The shared scenarios (tests/scenarios/*.json, format in its README) through the public
// TypeScript API on the built wasm: the same requests, byte for byte in meaning, as the Rust,
// Kotlin and Swift harnesses see.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Trailmark, MemoryStorage, repo, scripted, until, wasm } from './helpers.mjs';

const dir = join(repo, 'tests', 'scenarios');
const camel = (s) => s.replace(/_([a-z])/g, (_, c) => c.toUpperCase());

function options(c, transport, storage) {
  return {
    appId: c.app_id ?? '',
    appSecret: c.app_secret ?? '',
    endpoint: c.endpoint ?? '',
    requireConsent: c.require_consent ?? false,
    flushAt: c.flush_at,
    flushIntervalMs: c.flush_interval_ms,
    maxQueueEvents: c.max_queue_events,
    hashedTraits: c.hashed_traits,
    trackingAuthorizationWaitMs: c.tracking_authorization_wait_ms,
    trackingAuthorization: c.tracking_authorization,
    // The scenarios hold the mobile default (the web SDK's is off: a tab switch is no app open).
    lifecycleEvents: c.lifecycle_events ?? true,
    context: {
      deviceId: c.device_id,
      advertisingId: c.advertising_id,
      appVersion: c.app_version,
      os: c.os,
      osVersion: c.os_version,
      model: c.model,
      locale: c.locale,
      timezone: c.timezone,
    },
    sdkName: c.sdk_name,
    sdkVersion: c.sdk_version,
    storage,
    transport,
    wasm,
  };
}

const shapes = {
  '<any>': () => true,
  '<uuid>': (a) => /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(a),
  '<timestamp>': (a) => /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/.test(a),
  '<digits>': (a) => /^\d+$/.test(a),
  '<signature>': (a) => /^v1=[0-9a-fA-F]{64}$/.test(a),
  '<traceparent>': (a) => /^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/.test(a),
};

/** The scenario matcher: exact keys, numbers by value, shapes, and `$name` bindings. */
export function matches(expected, actual, vars, path) {
  const fail = () => {
    throw new Error(`${path}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`);
  };
  if (typeof expected === 'string' && expected.startsWith('$')) {
    if (vars.has(expected)) {
      if (JSON.stringify(vars.get(expected)) !== JSON.stringify(actual)) fail();
      return;
    }
    for (const [name, v] of vars) {
      if (JSON.stringify(v) === JSON.stringify(actual)) throw new Error(`${path}: ${expected} would equal ${name}`);
    }
    vars.set(expected, actual);
    return;
  }
  if (typeof expected === 'string' && expected.startsWith('<') && expected.endsWith('>')) {
    const shape = shapes[expected];
    if (!shape) throw new Error(`${path}: unknown pattern ${expected}`);
    if (typeof actual !== 'string' || !shape(actual)) fail();
    return;
  }
  if (Array.isArray(expected)) {
    if (!Array.isArray(actual) || actual.length !== expected.length) fail();
    expected.forEach((e, i) => matches(e, actual[i], vars, `${path}[${i}]`));
    return;
  }
  if (expected !== null && typeof expected === 'object') {
    if (actual === null || typeof actual !== 'object' || Array.isArray(actual)) fail();
    const ek = Object.keys(expected).sort();
    const ak = Object.keys(actual).sort();
    if (JSON.stringify(ek) !== JSON.stringify(ak)) throw new Error(`${path}: keys ${ek} expected, got ${ak}`);
    for (const k of ek) matches(expected[k], actual[k], vars, `${path}.${k}`);
    return;
  }
  if (expected !== actual) fail();
}

function expand(v, defs) {
  if (typeof v === 'string' && v.startsWith('@')) {
    if (!(v.slice(1) in defs)) throw new Error(`undefined ${v}`);
    return expand(defs[v.slice(1)], defs);
  }
  if (Array.isArray(v)) return v.map((x) => expand(x, defs));
  if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, expand(x, defs)]));
  return v;
}

function requestJson(r) {
  const url = new URL(r.url);
  const headers = Object.fromEntries(Object.entries(r.headers).map(([k, v]) => [k.toLowerCase(), v]));
  let body;
  try {
    body = JSON.parse(r.body);
  } catch {
    body = r.body;
  }
  return { path: url.pathname, headers, body };
}

/** A middleware doing what an `add_middleware` step says (tests/scenarios/README.md). */
function scriptedMiddleware(rule) {
  return (e) => {
    if (rule.drop_type === e.type) return null;
    if (rule.fail_type === e.type) throw new Error('scripted failure');
    const out = { ...e, properties: { ...e.properties } };
    if (rule.rename?.from === e.type) out.type = rule.rename.to;
    for (const k of rule.remove ?? []) delete out.properties[k];
    Object.assign(out.properties, rule.set ?? {});
    for (const [k, from] of Object.entries(rule.copy_context ?? {})) out.properties[k] = e.context[from] ?? null;
    return out;
  };
}

async function run(file) {
  const scenario = JSON.parse(readFileSync(join(dir, file), 'utf8'));
  const { transport, captured } = scripted(scenario.responses ?? []);
  const storage = new MemoryStorage();
  const start = async (config, store = storage) => {
    const tm = Trailmark.init(options(config, transport, store));
    await tm.ready;
    return tm;
  };
  let tm = await start(scenario.config);
  const vars = new Map();
  for (const [i, step] of (scenario.steps ?? []).entries()) {
    const at = `step ${i} (${JSON.stringify(step)})`;
    switch (step.call) {
      case 'track':
        tm.track(step.type ?? '', step.properties);
        break;
      case 'screen':
        tm.screen(step.name ?? '', step.properties);
        break;
      case 'identify':
        tm.identify(step.user_id ?? '', step.traits);
        break;
      case 'register':
        tm.register(step.properties);
        break;
      case 'unregister':
        tm.unregister(step.key);
        break;
      case 'group':
        tm.group(step.group_id, step.traits);
        break;
      case 'alias':
        tm.alias(step.user_id);
        break;
      case 'set_advertising_id':
        tm.setAdvertisingId(step.id);
        break;
      case 'set_tracking_authorization':
        tm.setTrackingAuthorization(step.status);
        break;
      case 'add_middleware':
        tm.addMiddleware(scriptedMiddleware(step));
        break;
      case 'set_consent':
        tm.setConsent({ analytics: step.analytics, attribution: step.attribution, doNotSell: step.do_not_sell });
        break;
      case 'opt_out':
        tm.optOut();
        break;
      case 'opt_in':
        tm.optIn();
        break;
      case 'reset':
        tm.reset();
        break;
      case 'on_foreground':
        tm.onForeground();
        break;
      case 'on_background':
        tm.onBackground();
        break;
      case 'handle_open_url':
        tm.handleOpenUrl(step.url ?? '');
        break;
      case 'flush':
        await tm.flush();
        break;
      case 'restart':
        await tm.shutdown();
        tm = await start(scenario.config);
        break;
      case 'wait_requests':
        await until(() => captured.length >= step.count && tm.stats().inFlight === 0, `${at}: ${step.count} requests`);
        break;
      case 'expect_stats': {
        const stats = tm.stats();
        for (const [k, v] of Object.entries(step.stats)) {
          assert.equal(stats[camel(k)], v, `${at}: stat ${k}; all: ${JSON.stringify(stats)}`);
        }
        break;
      }
      case 'attribution': {
        const a = tm.attribution();
        const got = a && Object.fromEntries(Object.entries(a).map(([k, v]) => [k.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`), v]));
        matches(step.expect, got, vars, at);
        break;
      }
      case 'anonymous_id':
        matches(step.expect, tm.anonymousId(), vars, at);
        break;
      case 'hash_email': {
        let got;
        try {
          got = { hash: tm.hashEmail(step.email ?? '') };
        } catch (e) {
          got = { error: e.code };
        }
        if (step.expect !== undefined) assert.deepEqual(got, { hash: step.expect }, at);
        else assert.deepEqual(got, { error: step.error }, at);
        break;
      }
      case 'start_error': {
        const other = Trailmark.init(options({ ...scenario.config, ...step.config }, transport, new MemoryStorage()));
        await assert.rejects(other.ready, (e) => e.code === step.error, at);
        break;
      }
      default:
        throw new Error(`${at}: unknown call ${step.call}`);
    }
  }
  await tm.shutdown();
  const expected = expand(scenario.requests ?? [], scenario.defs ?? {});
  matches(expected, captured.map(requestJson), vars, 'requests');
}

const files = readdirSync(dir).filter((f) => f.endsWith('.json')).sort();
test('the shared scenarios exist', () => assert.ok(files.length >= 7, `${files}`));
for (const file of files) {
  test(`scenario ${file}`, () => run(file));
}

test('the matcher is strict', () => {
  const vars = new Map();
  const e = { id: '$a', n: 1, t: '<timestamp>', u: '<uuid>' };
  matches(e, { id: 'x', n: 1.0, t: '2026-01-02T03:04:05.678Z', u: '0b5e2c4e-8f43-4c8e-9a55-0e6a1b3c2d4f' }, vars, '');
  assert.throws(() => matches(e, { id: 'x', n: 1, t: '2026-01-02T03:04:05.678Z', u: '0b5e2c4e-8f43-4c8e-9a55-0e6a1b3c2d4f', z: 0 }, vars, ''));
  assert.throws(() => matches(e, { id: 'y', n: 1, t: '2026-01-02T03:04:05.678Z', u: '0b5e2c4e-8f43-4c8e-9a55-0e6a1b3c2d4f' }, vars, ''));
  assert.throws(() => matches('$b', 'x', vars, ''), 'distinct variables');
  assert.throws(() => matches('<uuid>', 'not-a-uuid', vars, ''));
});
