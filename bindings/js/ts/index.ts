// The Trailmark web SDK. Every decision (validation, consent, sessions, batching, retries,
// hashing, signing) is made by the Rust core compiled to wasm; this file drives it: the clock,
// timers, fetch and sendBeacon, the page's storage and lifecycle events.

import init, { Core, hash_email, hash_phone } from './wasm/trailmark_wasm.js';
import type { InitInput } from './wasm/trailmark_wasm.js';
import { MemoryStorage, openStorage } from './storage.js';
import type { StorageAdapter, Snapshot, Write } from './storage.js';

export { MemoryStorage, LocalStorageStorage, IndexedDbStorage, openStorage } from './storage.js';
export type { StorageAdapter, Snapshot, Write, StoredEvent } from './storage.js';

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
  /** Where the queue lives: `auto` (IndexedDB, else localStorage, else memory) or an adapter. */
  storage?: 'auto' | 'memory' | StorageAdapter;
  /** How requests go out (default: `fetch`). Tests script it. */
  transport?: Transport;
  /** The wasm: bytes, a URL, a Response or a compiled module (default: fetched next to this file). */
  wasm?: InitInput;
  /** Receives refused calls and storage failures; the SDK never throws at the page. */
  onError?: (error: TrailmarkError) => void;
  /** The clock (Unix ms); default `Date.now`. */
  now?: () => number;
  debug?: boolean;
  /** Context sent with every event; locale and time zone default to the browser's. */
  context?: {
    appVersion?: string;
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
}

/** The SDK's counters (camelCase of the core's). */
export type Stats = Record<string, number>;

type Properties = Record<string, unknown>;
type Call = (core: Core, now: number) => string | undefined | void;

const BEACON_BYTES = 60_000;
const KEEPALIVE_BYTES = 60_000;
const camel = (s: string) => s.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());
const browser = typeof window !== 'undefined' && typeof document !== 'undefined';

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

export class Trailmark {
  /** Resolves when the SDK is running; rejects with a `TrailmarkError` when it cannot start. */
  readonly ready: Promise<void>;
  private core: Core | undefined;
  private storage: StorageAdapter | undefined;
  private backlog: Array<[Call, number]> = [];
  private writes: Promise<void> = Promise.resolve();
  private timer: ReturnType<typeof setTimeout> | undefined;
  private pumping = false;
  private again = false;
  private idle: Array<() => void> = [];
  private closed = false;
  private unlisten: Array<() => void> = [];
  private release: () => void = () => {};
  private readonly transport: Transport;
  private readonly now: () => number;

  private constructor(private readonly options: Options) {
    this.transport = options.transport ?? fetchTransport;
    this.now = options.now ?? Date.now;
    this.ready = this.start();
    this.ready.catch(() => {});
  }

  /** Starts the SDK. Calls made before it is ready are kept (with their time) and replayed. */
  static init(options: Options): Trailmark {
    return new Trailmark(options);
  }

  private async start(): Promise<void> {
    const o = this.options;
    try {
      await init(o.wasm === undefined ? undefined : { module_or_path: o.wasm });
    } catch (e) {
      throw this.fail(new TrailmarkError('InvalidConfig', `the wasm did not load: ${e}`));
    }
    const name = `trailmark:${o.appId}`;
    const released = new Promise<void>((resolve) => (this.release = resolve));
    let storage: StorageAdapter;
    let snapshot: Snapshot;
    try {
      storage =
        typeof o.storage === 'object' ? o.storage : o.storage === 'memory' ? new MemoryStorage() : await openStorage(name);
      snapshot = await storage.load();
      if (typeof o.storage !== 'object' && storage.kind !== 'memory' && !(await ownQueue(name, released))) {
        // Another tab owns the stored queue: this one shares its identity and consent and
        // keeps its own events in memory.
        storage.close?.();
        storage = new MemoryStorage();
        snapshot = { events: [], state: snapshot.state };
      }
    } catch (e) {
      throw this.fail(new TrailmarkError('Storage', `storage did not open: ${e}`));
    }
    const c = o.context ?? {};
    const intl = typeof Intl !== 'undefined' ? Intl.DateTimeFormat().resolvedOptions().timeZone : undefined;
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
      timezone: c.timezone ?? (browser ? intl : undefined),
      sdk_name: o.sdkName,
      sdk_version: o.sdkVersion ?? '0.1.0',
      flush_at: o.flushAt,
      flush_interval_ms: o.flushIntervalMs,
      max_queue_events: o.maxQueueEvents,
    };
    const seed = new Uint8Array(32);
    crypto.getRandomValues(seed);
    try {
      this.core = new Core(JSON.stringify(config), JSON.stringify(snapshot), this.now(), seed);
    } catch (e) {
      storage.close?.();
      this.release();
      throw this.fail(this.error(e));
    }
    this.storage = storage;
    for (const [call, at] of this.backlog.splice(0)) this.report(call(this.core, at));
    if (browser && (o.autoLifecycle ?? true)) this.listen();
    if (browser && (o.autoPageViews ?? true)) this.pageView(document.referrer);
    this.schedule(0);
  }

  private error(e: unknown): TrailmarkError {
    const text = e instanceof Error ? e.message : String(e);
    const [code, ...rest] = text.split(': ');
    const known = ['InvalidConfig', 'InvalidInput', 'Storage'].includes(code);
    return known ? new TrailmarkError(code as ErrorCode, rest.join(': ')) : new TrailmarkError('InvalidInput', text);
  }

  private fail(e: TrailmarkError): TrailmarkError {
    this.options.onError?.(e);
    return e;
  }

  private report(refusal: string | undefined | void): boolean {
    if (typeof refusal === 'string') {
      this.fail(new TrailmarkError('InvalidInput', refusal));
      return false;
    }
    return true;
  }

  /** Runs a call now, or keeps it for when the core is ready. False when refused. */
  private call(call: Call): boolean {
    if (this.closed) return false;
    const now = this.now();
    if (!this.core) {
      this.backlog.push([call, now]);
      return true;
    }
    const accepted = this.report(call(this.core, now));
    this.schedule(0);
    return accepted;
  }

  /** JSON of a properties object; `undefined` (counted as refused) when it cannot be written. */
  private json(properties: Properties | undefined): string | undefined {
    try {
      return JSON.stringify(properties ?? {});
    } catch (e) {
      return undefined;
    }
  }

  private withProperties(properties: Properties | undefined, call: (json: string) => Call): boolean {
    const json = this.json(properties);
    if (json === undefined) {
      return this.call((core) => {
        core.refuse();
        return 'properties cannot be written as JSON';
      });
    }
    return this.call(call(json));
  }

  // ---------------------------------------------------------------------------------------
  // The API
  // ---------------------------------------------------------------------------------------

  /** Records an event. Never throws: an invalid call returns false and goes to `onError`. */
  track(type: string, properties?: Properties): boolean {
    return this.withProperties(properties, (json) => (core, now) => core.track(now, type, json));
  }

  /** A page view: with no name, read from the location (url, path, search, title, referrer,
   * utm_* and tm_click_id); with a name, that name. */
  page(name?: string, properties?: Properties): boolean {
    if (name === undefined && browser) {
      return this.withProperties(properties, (json) => (core, now) =>
        core.page_view(now, location.href, document.title, document.referrer, json),
      );
    }
    return this.withProperties(properties, (json) => (core, now) => core.page(now, name ?? '', json));
  }

  /** A screen view (hybrid apps). */
  screen(name: string, properties?: Properties): boolean {
    return this.withProperties(properties, (json) => (core, now) => core.screen(now, name, json));
  }

  /** Sets the user id. Traits `email` and `phone` are hashed (SHA-256) and never sent raw. */
  identify(userId: string, traits?: Properties): boolean {
    return this.withProperties(traits, (json) => (core, now) => core.identify(now, userId, json));
  }

  alias(newUserId: string): boolean {
    return this.call((core, now) => core.alias(now, newUserId));
  }

  /** A deep link or landing URL: records `deep_link_opened` with its utm_* and tm_click_id. */
  handleOpenUrl(url: string): boolean {
    return this.call((core, now) => core.handle_open_url(now, url));
  }

  /** Forgets the user: new anonymous id, no user id, a new session. */
  reset(): void {
    this.call((core, now) => core.reset(now));
  }

  setConsent(consent: Consent): void {
    this.call((core, now) => core.set_consent(now, consent.analytics, consent.attribution, consent.doNotSell));
  }

  /** Stops collection and purges the queue until `optIn` (persists across page loads). */
  optOut(): void {
    this.call((core, now) => core.opt_out(now));
  }

  optIn(): void {
    this.call((core, now) => core.opt_in(now));
  }

  /** The page came back (lifecycle hosts that manage it themselves: autoLifecycle false). */
  onForeground(): void {
    this.call((core, now) => core.on_foreground(now));
  }

  /** The page was hidden: ends the session's activity and uploads what is queued. */
  onBackground(): void {
    this.call((core, now) => core.on_background(now));
  }

  /** Uploads everything queued now; resolves when the SDK is idle again (sent, or waiting to
   * retry) and its storage is written. */
  async flush(): Promise<void> {
    await this.ready;
    this.call((core, now) => core.flush(now));
    await new Promise<void>((resolve) => {
      this.idle.push(resolve);
      this.schedule(0);
    });
    await this.writes;
  }

  anonymousId(): string | undefined {
    return this.core?.anonymous_id();
  }

  userId(): string | undefined {
    return this.core?.user_id();
  }

  consent(): Consent & { optedOut: boolean } {
    const c = JSON.parse(this.core?.consent() ?? '{}');
    return { analytics: c.analytics ?? undefined, attribution: c.attribution ?? undefined, doNotSell: c.do_not_sell, optedOut: this.core?.opted_out() ?? false };
  }

  stats(): Stats {
    const raw = JSON.parse(this.core?.stats() ?? '{}') as Record<string, number>;
    return Object.fromEntries(Object.entries(raw).map(([k, v]) => [camel(k), v]));
  }

  /** The install's attribution, once the server answered the install request (mobile web views
   * that send one); null otherwise. */
  attribution(): Attribution | null {
    const json = this.core?.attribution();
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
    };
  }

  /** SHA-256 of a normalised email, as `identify` sends it. Throws `TrailmarkError` for input
   * that is not an email address (call after `ready`). */
  hashEmail(email: string): string {
    try {
      return hash_email(email);
    } catch (e) {
      throw this.error(e);
    }
  }

  /** SHA-256 of a phone number's E.164 digits, as `identify` sends it. */
  hashPhone(phone: string): string {
    try {
      return hash_phone(phone);
    } catch (e) {
      throw this.error(e);
    }
  }

  /** Stops timers and listeners and writes what is pending; the stored queue stays for the
   * next start. */
  async shutdown(): Promise<void> {
    await this.ready.catch(() => {});
    this.persist();
    this.closed = true;
    clearTimeout(this.timer);
    this.unlisten.splice(0).forEach((off) => off());
    await this.writes;
    this.storage?.close?.();
    this.release();
    this.core?.free();
    this.core = undefined;
    this.idle.splice(0).forEach((resolve) => resolve());
  }

  // ---------------------------------------------------------------------------------------
  // The driver
  // ---------------------------------------------------------------------------------------

  /** Hands the core's committed changes to storage, in order. */
  private persist(): void {
    const json = this.core?.take_writes();
    if (!json || !this.storage) return;
    const writes = JSON.parse(json) as Write[];
    const storage = this.storage;
    this.writes = this.writes
      .then(() => storage.apply(writes))
      .catch((e) => {
        this.fail(new TrailmarkError('Storage', `storage write failed: ${e}`));
      });
  }

  private schedule(ms: number): void {
    if (this.closed) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.pump(), ms);
  }

  /** Polls the core until it waits or idles, sending each upload it asks for. */
  private async pump(): Promise<void> {
    if (this.pumping) {
      this.again = true;
      return;
    }
    this.pumping = true;
    try {
      while (this.core && !this.closed) {
        this.again = false;
        const action = JSON.parse(this.core.poll(this.now()));
        this.persist();
        if (action.upload) {
          await this.send(action.upload);
          continue;
        }
        if (this.again) continue;
        if (action.wait !== undefined) this.schedule(action.wait);
        break;
      }
    } finally {
      this.pumping = false;
    }
    this.idle.splice(0).forEach((resolve) => resolve());
  }

  private async send(u: { id: number; url: string; headers: [string, string][]; body: string }): Promise<void> {
    const request = {
      url: u.url,
      headers: Object.fromEntries(u.headers),
      body: u.body,
      keepalive: u.body.length < KEEPALIVE_BYTES,
    };
    let response: UploadResponse | undefined;
    let failure = '';
    try {
      response = await this.transport(request);
    } catch (e) {
      failure = String(e);
    }
    if (!this.core) return;
    if (response) this.core.report(this.now(), u.id, response.status, response.retryAfter ?? undefined, response.body ?? '');
    else this.core.report_network_error(this.now(), u.id, failure || 'no response');
    this.persist();
  }

  /** Records the current location as a page view (autoPageViews). */
  private pageView(referrer: string): void {
    this.call((core, now) => core.page_view(now, location.href, document.title, referrer, '{}'));
  }

  private on(target: EventTarget, type: string, handler: (e: Event) => void): void {
    target.addEventListener(type, handler);
    this.unlisten.push(() => target.removeEventListener(type, handler));
  }

  private listen(): void {
    this.on(document, 'visibilitychange', () => {
      if (document.visibilityState === 'hidden') this.onBackground();
      else this.onForeground();
    });
    // The page is going away: what is not already in flight leaves in a beacon (signed in the
    // URL; see docs/protocol.md). The events stay queued: if the page lives on, or on the next
    // visit, they are sent again and the server keeps one copy of each.
    this.on(window, 'pagehide', () => {
      const core = this.core;
      if (!core) return;
      const beacon = core.beacon(this.now(), BEACON_BYTES);
      this.persist();
      if (beacon && typeof navigator.sendBeacon === 'function') {
        const b = JSON.parse(beacon);
        navigator.sendBeacon(b.url, b.body);
      }
    });
    if (this.options.autoPageViews ?? true) {
      // Single-page apps: a page view per history navigation.
      let last = location.href;
      const changed = () => {
        if (location.href === last) return;
        const referrer = last;
        last = location.href;
        this.pageView(referrer);
      };
      const wrap = (method: 'pushState' | 'replaceState') => {
        const original = history[method];
        history[method] = function (this: History, ...args: Parameters<History['pushState']>) {
          original.apply(this, args);
          changed();
        };
        this.unlisten.push(() => (history[method] = original));
      };
      wrap('pushState');
      this.on(window, 'popstate', changed);
    }
  }
}
