// Where the queue lives between page loads. The engine keeps the queue in memory and hands out
// every committed change as a `Write`; an adapter applies them in order, each one atomically
// where the backend allows (IndexedDB: one transaction per call of `apply`). Loaded lazily
// (in core.js); the first script's adapters of the same names pass their calls here.

import type { Snapshot, StorageAdapter, StoredEvent, Write } from './index.js';

/** Applies writes to a map of events; shared by the memory and localStorage stores. */
function applyTo(events: Map<number, StoredEvent>, w: Write, removed: (seq: number) => void): void {
  const drop = (seq: number) => {
    if (events.delete(seq)) removed(seq);
  };
  if (w.delete_all) [...events.keys()].forEach(drop);
  if (w.delete_held) [...events.values()].filter((e) => e.held).forEach((e) => drop(e.seq));
  if (w.release_held) events.forEach((e) => (e.held = false));
  w.deletes.forEach(drop);
  w.inserts.forEach((e) => events.set(e.seq, { ...e }));
}

/** Keeps everything in memory: gone with the page. Tests share one across SDK restarts. */
export class MemoryStorage implements StorageAdapter {
  readonly kind = 'memory';
  private events = new Map<number, StoredEvent>();
  private state: string | null = null;

  constructor(seed?: Snapshot) {
    seed?.events.forEach((e) => this.events.set(e.seq, { ...e }));
    this.state = seed?.state ?? null;
  }

  async load(): Promise<Snapshot> {
    return { events: [...this.events.values()].sort((a, b) => a.seq - b.seq).map((e) => ({ ...e })), state: this.state };
  }

  async apply(writes: Write[]): Promise<void> {
    for (const w of writes) {
      applyTo(this.events, w, () => {});
      if (w.state !== null) this.state = w.state;
    }
  }
}

/** One key per event (`<prefix>e<seq>`) and one for the state: a change rewrites only what it
 * touches. localStorage is synchronous and small (about 5 MB): the fallback when IndexedDB is
 * missing (some private modes, old WebViews). */
export class LocalStorageStorage implements StorageAdapter {
  readonly kind = 'localstorage';
  private events = new Map<number, StoredEvent>();

  constructor(
    private readonly ls: Storage,
    private readonly prefix: string,
  ) {}

  async load(): Promise<Snapshot> {
    this.events.clear();
    for (let i = 0; i < this.ls.length; i++) {
      const key = this.ls.key(i);
      if (!key?.startsWith(`${this.prefix}e`)) continue;
      try {
        const e = JSON.parse(this.ls.getItem(key) ?? '') as StoredEvent;
        this.events.set(e.seq, e);
      } catch {
        // An unreadable entry is skipped; the engine counts what it cannot read as lost.
      }
    }
    const events = [...this.events.values()].sort((a, b) => a.seq - b.seq);
    return { events, state: this.ls.getItem(`${this.prefix}state`) };
  }

  async apply(writes: Write[]): Promise<void> {
    for (const w of writes) {
      applyTo(this.events, w, (seq) => this.ls.removeItem(`${this.prefix}e${seq}`));
      w.inserts.forEach((e) => this.ls.setItem(`${this.prefix}e${e.seq}`, JSON.stringify(e)));
      if (w.state !== null) this.ls.setItem(`${this.prefix}state`, w.state);
      if (w.release_held) this.events.forEach((e) => this.ls.setItem(`${this.prefix}e${e.seq}`, JSON.stringify(e)));
    }
  }
}

const promised = <T>(r: IDBRequest<T>): Promise<T> =>
  new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });

/** IndexedDB: database `<name>` with an `events` store (key `seq`) and a `meta` store (the
 * engine state). Each `apply` is one transaction, so a closed tab leaves all of it or none. */
export class IndexedDbStorage implements StorageAdapter {
  readonly kind = 'indexeddb';

  private constructor(private readonly db: IDBDatabase) {}

  static async open(idb: IDBFactory, name: string): Promise<IndexedDbStorage> {
    const request = idb.open(name, 1);
    request.onupgradeneeded = () => {
      request.result.createObjectStore('events', { keyPath: 'seq' });
      request.result.createObjectStore('meta');
    };
    return new IndexedDbStorage(await promised(request));
  }

  async load(): Promise<Snapshot> {
    const tx = this.db.transaction(['events', 'meta'], 'readonly');
    const [events, state] = await Promise.all([
      promised(tx.objectStore('events').getAll()) as Promise<StoredEvent[]>,
      promised(tx.objectStore('meta').get('state')) as Promise<string | undefined>,
    ]);
    return { events, state: state ?? null };
  }

  apply(writes: Write[]): Promise<void> {
    return new Promise((resolve, reject) => {
      const tx = this.db.transaction(['events', 'meta'], 'readwrite');
      tx.oncomplete = () => resolve();
      tx.onerror = tx.onabort = () => reject(tx.error ?? new Error('IndexedDB transaction aborted'));
      const events = tx.objectStore('events');
      const meta = tx.objectStore('meta');
      for (const w of writes) {
        if (w.delete_all) events.clear();
        if (w.delete_held || w.release_held) {
          // Requests in one transaction run in order, so this cursor sees the writes before it.
          const cursor = events.openCursor();
          cursor.onsuccess = () => {
            const c = cursor.result;
            if (!c) return;
            const e = c.value as StoredEvent;
            if (e.held && w.delete_held) c.delete();
            else if (e.held) c.update({ ...e, held: false });
            c.continue();
          };
        }
        w.deletes.forEach((seq) => events.delete(seq));
        w.inserts.forEach((e) => events.put(e));
        if (w.state !== null) meta.put(w.state, 'state');
      }
    });
  }

  close(): void {
    this.db.close();
  }
}

/** The best storage the environment has: IndexedDB, then localStorage, then memory. */
export async function openStorage(name: string): Promise<StorageAdapter> {
  const g = globalThis as { indexedDB?: IDBFactory; localStorage?: Storage };
  if (g.indexedDB) {
    try {
      return await IndexedDbStorage.open(g.indexedDB, name);
    } catch {
      // Blocked (some private modes, storage disabled): try the next one.
    }
  }
  try {
    const ls = g.localStorage;
    if (ls) {
      ls.setItem(`${name}:probe`, '1');
      ls.removeItem(`${name}:probe`);
      return new LocalStorageStorage(ls, `${name}:`);
    }
  } catch {
    // Disabled or full.
  }
  return new MemoryStorage();
}
