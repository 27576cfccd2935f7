// Starts the reference server (the binary in $TRAILMARK_SERVER, or target/debug) on a free port.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

// Not from helpers.mjs, which loads the built SDK: tests/compat starts servers without it.
const repo = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

export const ADMIN = 'adm1n-key-0123456789';

// Databases made here outlive a server (a test may restart one on the same file); they go
// when the test process ends.
const madeDirs = [];
process.on('exit', () => {
  for (const dir of madeDirs) rmSync(dir, { recursive: true, force: true });
});

export function serverBinary() {
  const bin = process.env.TRAILMARK_SERVER ?? join(process.env.CARGO_TARGET_DIR ?? join(repo, 'target'), 'debug', 'trailmark-server');
  if (!existsSync(bin)) throw new Error(`no reference server at ${bin}: cargo build -p trailmark-examples --bin trailmark-server`);
  return bin;
}

/** `{base, stop, events(query)}`; `listen` fixes the address (to restart on the same port). */
export async function startServer({ args = [], listen = '127.0.0.1:0', db } = {}) {
  if (db === undefined) {
    const dir = mkdtempSync(join(tmpdir(), 'tm-js-'));
    madeDirs.push(dir);
    db = join(dir, 's.db');
  }
  const child = spawn(serverBinary(), ['--listen', listen, '--db', db, '--admin-key', ADMIN, ...args], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, RUST_LOG: 'warn' },
  });
  const base = await new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stdout });
    lines.on('line', (line) => {
      if (line.startsWith('listening ')) resolve(line.slice('listening '.length).trim());
    });
    child.on('exit', (code) => reject(new Error(`server exited with ${code}`)));
  });
  const stop = () =>
    new Promise((resolve) => {
      if (child.exitCode !== null) return resolve();
      child.on('exit', resolve);
      child.kill('SIGTERM');
    });
  const events = async (query) => {
    const r = await fetch(`${base}/v1/events?${query}&limit=1000`, { headers: { Authorization: `Bearer ${ADMIN}` } });
    if (r.status !== 200) throw new Error(`GET /v1/events: ${r.status} ${await r.text()}`);
    return (await r.json()).events;
  };
  return { base, db, stop, events };
}
