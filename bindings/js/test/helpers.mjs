// Shared by the Node tests: the built SDK, the wasm bytes, and a scripted transport.
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const root = join(dirname(fileURLToPath(import.meta.url)), '..');
export const repo = join(root, '..', '..');
export const wasm = readFileSync(join(root, 'dist', 'trailmark_wasm_bg.wasm'));
export { Trailmark, TrailmarkError, MemoryStorage } from '../dist/index.js';

/** Records every request and answers from `responses` in order, then 200 with an empty body.
 * A response `{status: 0, error}` is a network failure (the promise rejects). */
export function scripted(responses = []) {
  const queue = [...responses];
  const captured = [];
  const transport = async (request) => {
    captured.push(request);
    const next = queue.shift() ?? { status: 200 };
    if (!next.status) throw new Error(next.error ?? 'offline');
    const body = next.body === undefined || next.body === null ? '' : JSON.stringify(next.body);
    return { status: next.status, retryAfter: next.retry_after ?? null, body };
  };
  return { transport, captured };
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Waits until `check()` is true (or fails after `ms`). */
export async function until(check, what, ms = 10_000) {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}
