// The Trailmark web SDK's first script: the public API and nothing else. Every decision
// (validation, consent, sessions, batching, retries, hashing, signing) is made by the Rust core
// compiled to wasm, which this file loads lazily with the driver, the storage adapters and the
// wasm glue (core.ts, built into core.js) without blocking the page. Until they are up, every
// call is kept with its time and replayed in order with that time.

import type { Driver } from './core.js';

/** An HTTP request the SDK wants sent (always a POST). */
export interface UploadRequest {
  url: string;
  headers: Record<string, string>;
  body: string;
  /** True when the body is small enough for `fetch(..., {keepalive: true})` (under 60 KB). */
  keepalive: boolean;
}

/** The server's answer. A transport that gets no answer (offline, DNS, CORS) rejects. */
export interface UploadResponse {
  status: number;
  retryAfter?: string | null;
  body: string;
}

export type Transport = (request: UploadRequest) => Promise<UploadResponse>;

export type ErrorCode = 'InvalidConfig' | 'InvalidInput' | 'Storage';

/** What the SDK reports through `onError`, and what `ready` rejects with. */
export class TrailmarkError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'TrailmarkError';
  }
}

/** The wasm: a URL, a `Response` (or a promise of one), its bytes or a compiled module. */
export type WasmSource = RequestInfo | URL | Response | Promise<Response> | BufferSource | WebAssembly.Module;

/** One queued event as stored: `body` is the event's JSON text. */
export interface StoredEvent {
  seq: number;
  held: boolean;
  created_at: number;
  body: string;
}

/** Everything a store holds, read once at start. */
export interface Snapshot {
  events: StoredEvent[];
  state: string | null;
}

/** One committed change, applied in this order: delete_all, delete_held, release_held, deletes,
 * inserts, state. */
export interface Write {
  delete_all: boolean;
  delete_held: boolean;
  release_held: boolean;
  deletes: number[];
  inserts: StoredEvent[];
  state: string | null;
}

/** A storage backend. `apply` gets the writes in commit order and must keep that order. */
export interface StorageAdapter {
  readonly kind: string;
  load(): Promise<Snapshot>;
  apply(writes: Write[]): Promise<void>;
  close?(): void;
}

export interface Options {
  appId: string;
  /** The app's signing secret. In a web page it is public: it proves integrity, not identity. */
  appSecret: string;
  /** The collector's base URL, e.g. `https://collect.example.com`. */
  endpoint: string;
  /** Hold events (capped) until `setConsent({analytics: true})`; nothing is sent before. */
  requireConsent?: boolean;
  /** Record a `page_view` at start and on history navigation (default true in a browser). */
  autoPageViews?: boolean;
  /** Send on `pagehide`/`visibilitychange` (fetch keepalive, sendBeacon). Default true in a browser. */
  autoLifecycle?: boolean;
  /** Upload when this many events are queued (default 20). */
  flushAt?: number;
  /** Upload queued events at least this often (default 30,000 ms). */
  flushIntervalMs?: number;
  /** Most events kept waiting; past it the oldest are dropped and counted (default 10,000). */
  maxQueueEvents?: number;
  /**
   * More `identify` traits sent only as SHA-256 (`<name>_sha256`), besides the e-mail and phone
   * names always hashed. Names match ignoring case and `_`, `-`, `.`, spaces.
   */
  hashedTraits?: string[];
  /** Where the queue lives: `auto` (IndexedDB, else localStorage, else memory) or an adapter. */
  storage?: 'auto' | 'memory' | StorageAdapter;
  /** How requests go out (default: `fetch`). Tests script it. */
  transport?: Transport;
  /** The wasm (default: `trailmark_wasm_bg.wasm` next to this file, fetched at `init`). */
  wasm?: WasmSource;
  /** Receives refused calls and storage failures; the SDK never throws at the page. */
  onError?: (error: TrailmarkError) => void;
  /** The clock (Unix ms); default `Date.now`. */
  now?: () => number;
  /** Logs each decision (a call queued, held or dropped and why, a batch sent, the answer, a
   * retry) to `logger`, by default `console.debug`. */
  debug?: boolean;
  logger?: (line: string) => void;
  /** `app_opened` and `app_backgrounded` events on the page's visibility changes (with
   * `autoLifecycle`). Default false on the web: a tab switch is not an app open (the mobile SDKs
   * default to true); hybrid apps turn it on. */
  lifecycleEvents?: boolean;
  /** How long after the start a pending ATT decision holds the install request (default 5000). */
  trackingAuthorizationWaitMs?: number;
  /** The ATT status at the start (hybrid iOS apps); later changes: `setTrackingAuthorization`. */
  trackingAuthorization?: 'not_determined' | 'restricted' | 'denied' | 'authorized';
  /** Context sent with every event; locale, time zone and screen (CSS pixels) default to the
   * browser's. */
  context?: {
    appVersion?: string;
    appBuild?: string;
    manufacturer?: string;
    screenWidth?: number;
    screenHeight?: number;
    locale?: string;
    timezone?: string;
    os?: string;
    osVersion?: string;
    model?: string;
    deviceId?: string;
    advertisingId?: string;
  };
  /** The SDK's name and version on the wire (wrappers set their own). */
  sdkName?: string;
  sdkVersion?: string;
}

export interface Consent {
  analytics?: boolean;
  attribution?: boolean;
  doNotSell?: boolean;
}

export interface Attribution {
  attributed: boolean;
  matchType: string;
  confidence: number;
  campaignId: string | null;
  linkId: string | null;
  clickId: string | null;
  network: string | null;
  deepLinkPath: string | null;
  deepLinkParams: Record<string, string>;
  fraudFlags: string[];
  fraudRejected: boolean;
  reinstall: boolean;
  /** Why the install is not attributed (`no_click_in_window`, `below_threshold`, `consent_denied`, …). */
  reason: string | null;
}

/** The SDK's counters over the life of the installation (camelCase of the core's), and why the
 * server last refused something. */
export interface Stats {
  recorded: number;
  delivered: number;
  /** Events the server rejected as invalid or refused for good (dropped); why: `lastRejection*`. */
  rejectedByServer: number;
  droppedQueueFull: number;
  droppedExpired: number;
  droppedPreConsentFull: number;
  droppedConsentDenied: number;
  droppedOptedOut: number;
  refusedInvalid: number;
  droppedBackpressure: number;
  ignoredNoConsent: number;
  uploads: number;
  uploadFailures: number;
  storeErrors: number;
  queued: number;
  held: number;
  beacons: number;
  /** 2xx answers that were not the protocol's (a captive portal's or a proxy's page, an empty
   * body): not an acknowledgement, retried. */
  badAnswers: number;
  /** Events a middleware dropped, and events dropped because a middleware threw. */
  droppedByMiddleware: number;
  middlewareErrors: number;
  /** The HTTP status of the last refusal: 200 for events rejected in a batch the server took, the
   * 4xx of a request refused for good; 0 before any. */
  lastRejectionStatus: number;
  /** Its reason: the rejected event's `reason`, or the refusal's error `code`
   * (`payload_too_large`...); empty when the answer was not the protocol's. */
  lastRejectionReason: string;
  inFlight: number;
}

type Properties = Record<string, unknown>;

/** An event as middleware sees it: its type, its properties and the context it will carry (app,
 * device, SDK, consent, group id; empty before `ready`). `context` is read-only. */
export interface TrailmarkEvent {
  type: string;
  properties: Properties;
  context: Properties;
}

/** Gets each `track`, `screen` and `page` event before it is queued, on the caller's turn, and
 * returns it (changed or not) or `null`/`undefined` to drop it (counted in `droppedByMiddleware`).
 * One that throws drops the event (counted in `middlewareErrors`); the SDK never throws it at the
 * caller. A changed `type` is recorded as a custom event (the automatic page view keeps its own). */
export type Middleware = (event: TrailmarkEvent) => TrailmarkEvent | null | undefined | void;

/** @internal A recording call as the core takes it: its method (the time of the call is its first
 * argument). `refuse` stands for a call whose properties could not be written as JSON. */
export type Op =
  | 'track'
  | 'page'
  | 'page_view'
  | 'screen'
  | 'identify'
  | 'alias'
  | 'group'
  | 'note_middleware'
  | 'set_advertising_id'
  | 'set_tracking_authorization'
  | 'register'
  | 'unregister'
  | 'handle_open_url'
  | 'reset'
  | 'set_consent'
  | 'opt_out'
  | 'opt_in'
  | 'on_foreground'
  | 'on_background'
  | 'flush'
  | 'refuse';
/** @internal A call kept until the core is up: the method, the time of the call, the other arguments. */
export type Queued = [op: Op, at: number, args: unknown[]];

// The rest of the SDK. Bundlers split it into its own chunk; on a static server it is dist/core.js.
const rest = () => import('./core.js');
const browser = typeof window !== 'undefined' && typeof document !== 'undefined';
let fetched: Promise<Response> | undefined;

/** JSON of a properties object, read at the call; `undefined` when it cannot be written. */
const json = (properties: Properties | undefined): string | undefined => {
  try {
    return JSON.stringify(properties ?? {});
  } catch {
    return undefined;
  }
};

export class Trailmark {
  /** Resolves when the SDK is running; rejects with a `TrailmarkError` when it cannot start. */
  readonly ready: Promise<void>;
  private d: Driver | undefined;
  private readonly q: Queued[] = [];
  private closed = false;
  private readonly now: () => number;
  private readonly mw: Middleware[] = [];

  private constructor(options: Options) {
    this.now = options.now ?? Date.now;
    // The landing page view is taken now, with this moment's location: a single-page app may
    // rewrite the URL (dropping utm_* or tm_click_id) before the core has loaded.
    if (browser && (options.autoPageViews ?? true)) {
      this.q.push(['page_view', this.now(), [location.href, document.title, document.referrer, '{}']]);
    }
    // The wasm is fetched while the rest loads, once per page (the glue keeps the first one it
    // instantiates). A bundler sees this URL and ships the file; in an async function, a base
    // `new URL` refuses is a rejection rather than a throw.
    let wasm = options.wasm;
    if (wasm === undefined) {
      wasm = fetched ??= (async () => fetch(new URL('./trailmark_wasm_bg.wasm', import.meta.url)))();
      const forget = () => (fetched = undefined);
      fetched.then((r) => r.ok || forget(), forget);
    }
    this.ready = rest().then(
      (m) => m.start(options, wasm, this.q, (d) => (this.d = d), TrailmarkError),
      (e) => {
        const error = new TrailmarkError('InvalidConfig', `the SDK did not load: ${e}`);
        options.onError?.(error);
        throw error;
      },
    );
    // When the SDK cannot start, nothing will take the kept calls: stop keeping them.
    this.ready.catch(() => {
      this.closed = true;
      this.q.length = 0;
    });
  }

  /** Starts the SDK. Calls made before it is ready are kept (with their time) and replayed. */
  static init(options: Options): Trailmark {
    return new Trailmark(options);
  }

  /** Runs a call now, or keeps it with its time for when the core is up. False when refused. */
  private c(op: Op, ...args: unknown[]): boolean {
    if (this.closed) return false;
    const at = this.now();
    if (this.d) return this.d.run(op, at, args);
    this.q.push([op, at, args]);
    return true;
  }

  /** A call with properties (last argument, as JSON). */
  private p(op: Op, properties: Properties | undefined, ...args: unknown[]): boolean {
    const j = json(properties);
    return j === undefined ? this.c('refuse') : this.c(op, ...args, j);
  }

  /** Adds a middleware, run after those added before on every later `track`, `screen` and
   * `page` (see {@link Middleware}). */
  addMiddleware(fn: Middleware): void {
    this.mw.push(fn);
  }

  /** An event through the middleware, then the core's `op` with `args(event)` before its
   * properties; a dropped event returns true (not refused). */
  private e(op: Op, type: string, properties: Properties | undefined, args: (e: TrailmarkEvent) => unknown[]): boolean {
    if (!this.mw.length) return this.p(op, properties, ...args({ type, properties: properties ?? {}, context: {} }));
    let e: TrailmarkEvent | null | undefined | void = { type, properties: { ...properties }, context: this.d?.context() ?? {} };
    let a: unknown[];
    try {
      for (const f of [...this.mw]) {
        e = f(e);
        if (!e) return this.c('note_middleware', false);
      }
      // What came back must be an event: a string type and an object of properties.
      if (typeof e.type !== 'string' || typeof e.properties !== 'object' || !e.properties) throw 0;
      a = args(e);
    } catch {
      return this.c('note_middleware', true);
    }
    return e.type === type ? this.p(op, e.properties, ...a) : this.p('track', e.properties, e.type);
  }

  /** Records an event. Never throws: an invalid call returns false and goes to `onError`. */
  track(type: string, properties?: Properties): boolean {
    return this.e('track', type, properties, () => [type]);
  }

  /** A page view: with no name, read from the location at the call (url, path, search, title,
   * referrer, utm_* and tm_click_id); with a name, that name. */
  page(name?: string, properties?: Properties): boolean {
    return name === undefined && browser
      ? this.e('page_view', 'page_view', properties, () => [location.href, document.title, document.referrer])
      : this.e('page', 'page_view', { ...properties, name }, (e) => [String(e.properties.name ?? '')]);
  }

  /** A screen view (hybrid apps). */
  screen(name: string, properties?: Properties): boolean {
    return this.e('screen', 'screen_view', { ...properties, name }, (e) => [String(e.properties.name ?? '')]);
  }

  /** Sets the user id. Traits `email` and `phone` are hashed (SHA-256) and never sent raw. */
  identify(userId: string, traits?: Properties): boolean {
    return this.p('identify', traits, userId);
  }

  /** Links the current identity (the user id, or the anonymous id before `identify`) to
   * `newUserId` with an `alias` event; later events carry `newUserId`. The server's identity map
   * then counts both ids as one person in reports. */
  alias(newUserId: string): boolean {
    return this.c('alias', newUserId);
  }

  /** The advertising id known after the start (hybrid apps: the IDFA once App Tracking
   * Transparency allows it, the GAID), or `null` when it is gone. A pending install request
   * carries the latest; after the install, a new id goes as an update the server attaches to the
   * device. */
  setAdvertisingId(id: string | null): boolean {
    return this.c('set_advertising_id', id ?? undefined);
  }

  /** The ATT status (hybrid iOS apps): `not_determined` holds the install request (at most
   * `trackingAuthorizationWaitMs` after the start) for the answer; `denied` and `restricted` keep
   * the advertising id off the wire. */
  setTrackingAuthorization(status: 'not_determined' | 'restricted' | 'denied' | 'authorized'): boolean {
    return this.c('set_tracking_authorization', status);
  }

  /** Puts the user in a group (an account, a company): a `group` event whose properties are
   * `traits` plus `group_id`; the group id rides on every later event's `context.group_id`
   * (kept across page loads, cleared by `reset`). */
  group(groupId: string, traits?: Properties): boolean {
    return this.p('group', traits, groupId);
  }

  /** Super properties: merged into every later event (the event's own values win), kept across
   * page loads, cleared by `reset`. At most 4,096 bytes of JSON. */
  register(properties: Properties): boolean {
    return this.p('register', properties);
  }

  /** Removes one super property. */
  unregister(key: string): boolean {
    return this.c('unregister', key);
  }

  /** The super properties registered (once `ready` has resolved; `{}` before). */
  registeredProperties(): Properties {
    return this.d?.registered() ?? {};
  }

  /** A deep link or landing URL: records `deep_link_opened` with its utm_* and tm_click_id. */
  handleOpenUrl(url: string): boolean {
    return this.c('handle_open_url', url);
  }

  /** Forgets the user: new anonymous id, no user id, a new session. */
  reset(): void {
    this.c('reset');
  }

  setConsent(consent: Consent): void {
    this.c('set_consent', consent.analytics, consent.attribution, consent.doNotSell);
  }

  /** Stops collection and purges the queue until `optIn` (persists across page loads). */
  optOut(): void {
    this.c('opt_out');
  }

  optIn(): void {
    this.c('opt_in');
  }

  /** The page came back (lifecycle hosts that manage it themselves: autoLifecycle false). */
  onForeground(): void {
    this.c('on_foreground');
  }

  /** The page was hidden: ends the session's activity and uploads what is queued. */
  onBackground(): void {
    this.c('on_background');
  }

  /** Uploads everything queued now; resolves when the SDK is idle again (sent, or waiting to
   * retry) and its storage is written. Rejects like `ready` when the SDK could not start. */
  async flush(): Promise<void> {
    await this.ready;
    await this.d?.flush();
  }

  /** The anonymous id (once ready). */
  anonymousId(): string | undefined {
    return this.d?.anonymousId();
  }

  userId(): string | undefined {
    return this.d?.userId();
  }

  consent(): Consent & { optedOut: boolean } {
    return this.d?.consent() ?? { optedOut: false };
  }

  /** The counters; empty before `ready`. */
  stats(): Partial<Stats> {
    return this.d?.stats() ?? {};
  }

  /** The install's attribution, once the server answered the install request (mobile web views
   * that send one); null otherwise. */
  attribution(): Attribution | null {
    return this.d?.attribution() ?? null;
  }

  /** SHA-256 of a normalised email, as `identify` sends it. Throws `TrailmarkError` for input
   * that is not an email address (call after `ready`). */
  hashEmail(email: string): string {
    return this.running().hash(0, email);
  }

  /** SHA-256 of a phone number's E.164 digits, as `identify` sends it (call after `ready`). */
  hashPhone(phone: string): string {
    return this.running().hash(1, phone);
  }

  private running(): Driver {
    if (!this.d) throw new TrailmarkError('InvalidInput', 'the SDK is not ready');
    return this.d;
  }

  /** Stops timers and listeners and writes what is pending; the stored queue stays for the
   * next start. */
  async shutdown(): Promise<void> {
    await this.ready.catch(() => {});
    this.closed = true;
    await this.d?.shutdown();
    this.d = undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// Storage adapters. Their code is in the lazily loaded part; these load it on first use (as
// `Trailmark.init` does anyway) and then pass every call through.
// ---------------------------------------------------------------------------------------------

class LazyStorage implements StorageAdapter {
  protected constructor(
    readonly kind: string,
    protected readonly s: Promise<StorageAdapter>,
  ) {
    s.catch(() => {});
  }

  load(): Promise<Snapshot> {
    return this.s.then((s) => s.load());
  }

  apply(writes: Write[]): Promise<void> {
    return this.s.then((s) => s.apply(writes));
  }

  close(): void {
    this.s.then((s) => s.close?.(), () => {});
  }
}

/** Keeps everything in memory: gone with the page. Tests share one across SDK restarts. */
export class MemoryStorage extends LazyStorage {
  constructor(seed?: Snapshot) {
    super('memory', rest().then((m) => new m.MemoryStorage(seed)));
  }
}

/** One key per event (`<prefix>e<seq>`) and one for the state: the fallback when IndexedDB is
 * missing (some private modes, old WebViews). */
export class LocalStorageStorage extends LazyStorage {
  constructor(ls: Storage, prefix: string) {
    super('localstorage', rest().then((m) => new m.LocalStorageStorage(ls, prefix)));
  }
}

/** IndexedDB: database `<name>` with an `events` store (key `seq`) and a `meta` store (the
 * engine state). Each `apply` is one transaction, so a closed tab leaves all of it or none. */
export class IndexedDbStorage extends LazyStorage {
  static async open(idb: IDBFactory, name: string): Promise<IndexedDbStorage> {
    const storage = new IndexedDbStorage('indexeddb', rest().then((m) => m.IndexedDbStorage.open(idb, name)));
    await storage.s;
    return storage;
  }
}

/** The best storage the environment has: IndexedDB, then localStorage, then memory. */
export const openStorage = (name: string): Promise<StorageAdapter> => rest().then((m) => m.openStorage(name));
