// The lazily loaded part of the web SDK (dist/core.js): the driver, the storage adapters and
// the wasm glue. The core decides everything; the driver gives it the clock, timers, fetch and
// sendBeacon, the page's storage and lifecycle events, and turns its short refusal codes into
// English.

import init, { Core, hash_email, hash_phone } from './wasm/trailmark_wasm.js';
import { MemoryStorage, openStorage } from './storage.js';
import type { Attribution, Consent, Op, Options, Queued, Stats, StorageAdapter, TrailmarkError, UploadRequest, UploadResponse, WasmSource, Write } from './index.js';

/** `Retry-After` as the core reads it, delay seconds: an HTTP-date is turned into seconds here
 * (the wasm leaves date parsing to the page). */
export const retryAfter = (value: string | null | undefined, at: number): string | undefined => {
  const v = value?.trim();
  if (!v) return undefined;
  if (/^\d+$/.test(v)) return v;
  const date = Date.parse(v);
  return Number.isNaN(date) ? undefined : String(Math.max(0, Math.ceil((date - at) / 1000)));
};

export { MemoryStorage, LocalStorageStorage, IndexedDbStorage, openStorage } from './storage.js';

type ErrorClass = typeof TrailmarkError;

const BEACON_BYTES = 60_000;
const KEEPALIVE_BYTES = 60_000;
const camel = (s: string) => s.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());
const browser = typeof window !== 'undefined' && typeof document !== 'undefined';

/** A non-negative whole number for the core's integer settings (screen sizes may be fractional). */
const whole = (n: number | undefined): number | undefined => (n === undefined || !(n >= 0) ? undefined : Math.round(n));
const text = (e: unknown) => (e instanceof Error ? e.message : String(e));

// ---------------------------------------------------------------------------------------------
// The core's codes in English. A recording call is refused with `<code>` or `<code>:<field>`; the
// constructor throws `InvalidConfig`, `InvalidConfig:<field>` or `Storage`; the hashes throw
// `InvalidInput`. Anything else (an older core's own sentence) passes through unchanged.
// ---------------------------------------------------------------------------------------------

// Without a prototype, so that no code (`constructor`...) finds a sentence it does not have.
const REFUSALS: Record<string, string | undefined> = Object.setPrototypeOf({
  empty_type: 'the event type is empty',
  type_too_long: 'the event type is longer than 64 bytes',
  invalid_type_char: 'the event type may only contain a-z, 0-9 and _',
  empty_id: '$ is empty',
  id_too_long: '$ is longer than 256 bytes',
  too_deep: 'properties nest deeper than 32 levels',
  too_large: 'the event is larger than 32 KB serialised (the limit is 32768 bytes)',
  invalid_utf8: 'the input is not valid UTF-8',
  invalid_json: 'properties are not valid JSON',
  not_an_object: 'properties must be a JSON object',
  invalid_field: 'invalid $',
  // Not the core's: the page could not write the properties as JSON (a cycle, a BigInt).
  unwritable: 'properties cannot be written as JSON',
}, null);

/** English for a refusal code, `<field>` put in place of `$` (or after the sentence). */
export function refusal(code: string): string {
  const i = code.indexOf(':');
  const field = i < 0 ? '' : code.slice(i + 1);
  const sentence = REFUSALS[i < 0 ? code : code.slice(0, i)];
  if (sentence === undefined) return code;
  if (sentence.includes('$')) return sentence.replace('$', field || 'the id');
  return field ? `${sentence} (${field})` : sentence;
}

const CONFIG: Record<string, string | undefined> = Object.setPrototypeOf({
  endpoint: 'endpoint must be an https:// URL (http:// only for a loopback host)',
  device_id: 'invalid context.deviceId',
  advertising_id: 'invalid context.advertisingId',
  context: 'a context value is too long',
  sdk: 'sdkName or sdkVersion is too long',
}, null);

/** A thrown core error as a `TrailmarkError`: `Kind`, `Kind:<field>` (this core) or `Kind: sentence`
 * (older cores); `fallback` is the sentence for a bare `Kind`. */
export function coreError(E: ErrorClass, e: unknown, fallback?: string): TrailmarkError {
  const t = text(e);
  const m = /^(InvalidConfig|InvalidInput|Storage)(?:: ([^]*)|:([^]*))?$/.exec(t);
  if (!m) return new E('InvalidInput', t);
  const [, code, sentence, field] = m;
  const message =
    sentence ??
    (field
      ? (CONFIG[field] ?? `invalid ${camel(field)}`)
      : (fallback ??
        (code === 'Storage' ? 'the stored queue could not be read' : code === 'InvalidConfig' ? 'invalid configuration' : 'invalid input')));
  return new E(code as TrailmarkError['code'], message);
}

// ---------------------------------------------------------------------------------------------
// The driver
// ---------------------------------------------------------------------------------------------

/** What the first script calls once the core is up. */
export interface Driver {
  /** A recording call (made at `at`); false when refused. */
  run(op: Op, at: number, args: unknown[]): boolean;
  flush(): Promise<void>;
  shutdown(): Promise<void>;
  anonymousId(): string | undefined;
  userId(): string | undefined;
  consent(): Consent & { optedOut: boolean };
  stats(): Partial<Stats>;
  attribution(): Attribution | null;
  /** The super properties registered. */
  registered(): Record<string, unknown>;
  /** The context the next event will carry. */
  context(): Record<string, unknown>;
  /** `hash_email` (0) or `hash_phone` (1); throws a `TrailmarkError`. */
  hash(which: 0 | 1, input: string): string;
}

async function fetchTransport(r: UploadRequest): Promise<UploadResponse> {
  const response = await fetch(r.url, {
    method: 'POST',
    headers: r.headers,
    body: r.body,
    keepalive: r.keepalive,
    credentials: 'omit',
  });
  return { status: response.status, retryAfter: response.headers.get('Retry-After'), body: await response.text() };
}

/** Holds a Web Lock for this app while the page lives, so one tab at a time owns the stored
 * queue. Resolves false when another tab holds it. */
function ownQueue(name: string, released: Promise<void>): Promise<boolean> {
  const locks = (globalThis.navigator as Navigator | undefined)?.locks;
  if (!locks) return Promise.resolve(true);
  return new Promise((resolve) => {
    locks
      .request(name, { ifAvailable: true }, (lock) => {
        resolve(lock !== null);
        return lock ? released : undefined;
      })
      .catch(() => resolve(true));
  });
}

/** Loads the wasm and the stored queue, starts the core, hands the driver to the first script
 * (`attach`) and replays the calls kept until then (`queue`), in order, each with its own time.
 * Rejects with a `TrailmarkError` (also sent to `onError`) when the SDK cannot start. */
export async function start(
  o: Options,
  wasm: WasmSource | undefined,
  queue: Queued[],
  attach: (driver: Driver) => void,
  E: ErrorClass,
): Promise<void> {
  // The driver's state is local to this call: a closure rather than a class, so the minifier
  // shortens its names (about 15% less code). `E` is the first script's TrailmarkError, so that
  // `instanceof` holds for every error.
  const now = o.now ?? Date.now;
  const transport = o.transport ?? fetchTransport;
  // Debug lines: what a call or an answer changed in the core's counters (its decisions).
  const sink = o.logger ?? ((line: string) => console.debug('[trailmark] ' + line));
  // A logger that throws loses its line, never a call of the page.
  const log = o.debug
    ? (line: string) => {
        try {
          sink(line);
        } catch {}
      }
    : undefined;
  const counters = (): Record<string, number> => JSON.parse(core!.stats());
  const changes = (what: string, before: Record<string, number>): void => {
    const after = counters();
    const moved = Object.keys(after).filter((k) => typeof after[k] === 'number' && after[k] !== before[k]);
    log!(what + ': ' + (moved.map((k) => `${k} ${after[k]}`).join(', ') || 'no change'));
  };
  let core: Core | undefined;
  let storage: StorageAdapter;
  let writes = Promise.resolve();
  let timer: ReturnType<typeof setTimeout> | undefined;
  let pumping = false;
  let again = false;
  let closed = false;
  const idle: Array<() => void> = [];
  const unlisten: Array<() => void> = [];
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));

  /** Reports an error to `onError` and returns it (to be thrown). */
  const fail = (e: TrailmarkError): TrailmarkError => {
    o.onError?.(e);
    return e;
  };

  /** Calls the core and reports a refusal to `onError`; false when refused. */
  const exec = (op: Op, at: number, args: unknown[]): boolean => {
    const before = log && counters();
    let refused: string | undefined | void;
    if (op === 'refuse') {
      core!.refuse();
      refused = 'unwritable';
    } else {
      refused = (core![op] as (now: number, ...args: unknown[]) => string | undefined | void).call(core, at, ...args);
    }
    if (before) changes(op === 'track' ? `${args[0]}` : op, before);
    if (typeof refused !== 'string') return true;
    fail(new E('InvalidInput', refusal(refused)));
    return false;
  };

  /** A call of the running SDK: now, then the pump. False when refused. */
  const run = (op: Op, at: number, args: unknown[]): boolean => {
    if (closed) return false;
    const accepted = exec(op, at, args);
    schedule(0);
    return accepted;
  };

  /** Hands the core's committed changes to storage, in order. */
  const persist = (): void => {
    const json = core?.take_writes();
    if (!json) return;
    const batch = JSON.parse(json) as Write[];
    writes = writes
      .then(() => storage.apply(batch))
      .catch((e) => {
        fail(new E('Storage', `storage write failed: ${e}`));
      });
  };

  const schedule = (ms: number): void => {
    if (closed) return;
    clearTimeout(timer);
    timer = setTimeout(pump, ms);
  };

  const settle = () => idle.splice(0).forEach((resolve) => resolve());

  /** Polls the core until it waits or idles, sending each upload it asks for. */
  const pump = async (): Promise<void> => {
    if (pumping) {
      again = true;
      return;
    }
    pumping = true;
    try {
      while (core && !closed) {
        again = false;
        const action = JSON.parse(core.poll(now()));
        persist();
        if (action.upload) {
          await send(action.upload);
          continue;
        }
        if (again) continue;
        if (action.wait !== undefined) schedule(action.wait);
        break;
      }
    } finally {
      pumping = false;
    }
    settle();
  };

  const send = async (u: { id: number; url: string; headers: [string, string][]; body: string }): Promise<void> => {
    let response: UploadResponse | undefined;
    let failure = '';
    try {
      response = await transport({
        url: u.url,
        headers: Object.fromEntries(u.headers),
        body: u.body,
        keepalive: u.body.length < KEEPALIVE_BYTES,
      });
    } catch (e) {
      failure = String(e);
    }
    if (!core) return;
    const before = log && counters();
    if (response) {
      const at = now();
      core.report(at, u.id, response.status, retryAfter(response.retryAfter, at), response.body ?? '');
    }
    else core.report_network_error(now(), u.id, failure || 'no response');
    log?.(`upload ${u.url}: ${u.body.length} bytes; answer ${response ? 'HTTP ' + response.status : failure}`);
    if (before) changes('answer', before);
    persist();
  };

  /** Records the current location as a page view (autoPageViews). */
  const pageView = (referrer: string) => run('page_view', now(), [location.href, document.title, referrer, '{}']);

  const on = (target: EventTarget, type: string, handler: () => void): void => {
    target.addEventListener(type, handler);
    unlisten.push(() => target.removeEventListener(type, handler));
  };

  // The wasm, the stored queue, the core.
  try {
    await init({ module_or_path: wasm! });
  } catch (e) {
    throw fail(new E('InvalidConfig', `the wasm did not load: ${e}`));
  }
  const name = `trailmark:${o.appId}`;
  let snapshot;
  try {
    storage = typeof o.storage === 'object' ? o.storage : o.storage === 'memory' ? new MemoryStorage() : await openStorage(name);
    snapshot = await storage.load();
    if (typeof o.storage !== 'object' && storage.kind !== 'memory' && !(await ownQueue(name, released))) {
      // Another tab owns the stored queue: this one shares its identity and consent and
      // keeps its own events in memory.
      storage.close?.();
      storage = new MemoryStorage();
      snapshot = { events: [], state: snapshot.state };
    }
  } catch (e) {
    throw fail(new E('Storage', `storage did not open: ${e}`));
  }
  const c = o.context ?? {};
  const config = {
    app_id: o.appId,
    app_secret: o.appSecret,
    endpoint: o.endpoint,
    require_consent: o.requireConsent ?? false,
    debug: o.debug ?? false,
    device_id: c.deviceId,
    advertising_id: c.advertisingId,
    app_version: c.appVersion,
    os: c.os,
    os_version: c.osVersion,
    model: c.model,
    locale: c.locale ?? (browser ? navigator.language : undefined),
    timezone: c.timezone ?? (browser && typeof Intl !== 'undefined' ? Intl.DateTimeFormat().resolvedOptions().timeZone : undefined),
    sdk_name: o.sdkName,
    sdk_version: o.sdkVersion ?? '0.1.0',
    flush_at: o.flushAt,
    flush_interval_ms: o.flushIntervalMs,
    max_queue_events: o.maxQueueEvents,
    hashed_traits: o.hashedTraits,
    app_build: c.appBuild,
    manufacturer: c.manufacturer,
    screen_width: whole(c.screenWidth ?? (browser ? screen.width : undefined)),
    screen_height: whole(c.screenHeight ?? (browser ? screen.height : undefined)),
    lifecycle_events: o.lifecycleEvents ?? false,
    tracking_authorization_wait_ms: whole(o.trackingAuthorizationWaitMs),
    tracking_authorization: o.trackingAuthorization,
  };
  const seed = new Uint8Array(32);
  crypto.getRandomValues(seed);
  try {
    core = new Core(JSON.stringify(config), JSON.stringify(snapshot), now(), seed);
  } catch (e) {
    storage.close?.();
    release();
    throw fail(coreError(E, e));
  }

  attach({
    run,
    async flush() {
      run('flush', now(), []);
      await new Promise<void>((resolve) => {
        idle.push(resolve);
        schedule(0);
      });
      await writes;
    },
    async shutdown() {
      persist();
      closed = true;
      clearTimeout(timer);
      unlisten.splice(0).forEach((off) => off());
      await writes;
      storage.close?.();
      release();
      core?.free();
      core = undefined;
      settle();
    },
    anonymousId: () => core?.anonymous_id(),
    userId: () => core?.user_id(),
    consent() {
      const c = JSON.parse(core?.consent() ?? '{}');
      return { analytics: c.analytics ?? undefined, attribution: c.attribution ?? undefined, doNotSell: c.do_not_sell, optedOut: core?.opted_out() ?? false };
    },
    stats() {
      const raw = JSON.parse(core?.stats() ?? '{}') as Record<string, number | string>;
      return Object.fromEntries(Object.entries(raw).map(([k, v]) => [camel(k), v])) as Partial<Stats>;
    },
    registered() {
      return JSON.parse(core?.registered_properties() ?? '{}');
    },
    context() {
      return JSON.parse(core?.context_json() ?? '{}');
    },
    attribution() {
      const json = core?.attribution();
      if (!json) return null;
      const a = JSON.parse(json);
      return {
        attributed: a.attributed,
        matchType: a.match_type,
        confidence: a.confidence,
        campaignId: a.campaign_id ?? null,
        linkId: a.link_id ?? null,
        clickId: a.click_id ?? null,
        network: a.network ?? null,
        deepLinkPath: a.deep_link?.path ?? null,
        deepLinkParams: a.deep_link?.params ?? {},
        fraudFlags: a.fraud?.flags ?? [],
        fraudRejected: a.fraud?.rejected ?? false,
        reinstall: a.reinstall ?? false,
        reason: a.reason ?? null,
      };
    },
    hash(which, input) {
      try {
        return (which ? hash_phone : hash_email)(input);
      } catch (e) {
        throw coreError(E, e, which ? 'not a phone number (8 to 15 digits with the country code)' : 'not an email address');
      }
    },
  });
  for (const [op, at, args] of queue.splice(0)) exec(op, at, args);

  if (browser && (o.autoLifecycle ?? true)) {
    on(document, 'visibilitychange', () => run(document.visibilityState === 'hidden' ? 'on_background' : 'on_foreground', now(), []));
    // With lifecycle events, a page that opened visible has its first foreground (`app_opened`).
    if (o.lifecycleEvents && document.visibilityState === 'visible') run('on_foreground', now(), []);
    // The page is going away: what is not already in flight leaves in a beacon (signed in the
    // URL; see docs/protocol.md). The events stay queued: if the page lives on, or on the next
    // visit, they are sent again and the server keeps one copy of each.
    on(window, 'pagehide', () => {
      const beacon = core?.beacon(now(), BEACON_BYTES);
      persist();
      if (beacon && typeof navigator.sendBeacon === 'function') {
        const b = JSON.parse(beacon);
        navigator.sendBeacon(b.url, b.body);
      }
    });
    if (o.autoPageViews ?? true) {
      // Single-page apps: a page view per history navigation.
      let last = location.href;
      const changed = () => {
        if (location.href === last) return;
        const referrer = last;
        last = location.href;
        pageView(referrer);
      };
      const original = history.pushState;
      history.pushState = function (this: History, ...args: Parameters<History['pushState']>) {
        original.apply(this, args);
        changed();
      };
      unlisten.push(() => (history.pushState = original));
      on(window, 'popstate', changed);
    }
  }
  // The landing page view was kept by the first script with the time and location of the load.
  schedule(0);
}
