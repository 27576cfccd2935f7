// Shared by the Node tests: the built SDK, the wasm bytes, and a scripted transport.
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const root = join(dirname(fileURLToPath(import.meta.url)), '..');
export const repo = join(root, '..', '..');
export const wasm = readFileSync(join(root, 'dist', 'trailmark_wasm_bg.wasm'));
export { Trailmark, TrailmarkError, MemoryStorage } from '../dist/index.js';

/** The server's answer when the script has none left: an organic attribution for the install
 * request, every event of a batch accepted. */
export function defaultAnswer(request) {
  if (request.url.endsWith('/v1/install')) {
    return { attributed: false, match_type: 'organic', confidence: 0, campaign_id: null, link_id: null, click_id: null,
      network: null, deep_link: null, fraud: { flags: [], rejected: false }, reinstall: false };
  }
  return { accepted: JSON.parse(request.body).batch.length, duplicates: 0, rejected: [] };
}

/** Records every request and answers from `responses` in order, then as the server does when it
 * takes everything. A response `{status: 0, error}` is a network failure (the promise rejects);
 * a string `body` is sent as it is (a proxy's page). */
export function scripted(responses = []) {
  const queue = [...responses];
  const captured = [];
  const transport = async (request) => {
    captured.push(request);
    const next = queue.shift() ?? { status: 200, body: defaultAnswer(request) };
    if (!next.status) throw new Error(next.error ?? 'offline');
    const b = next.body;
    const body = b === undefined || b === null ? '' : typeof b === 'string' ? b : JSON.stringify(b);
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
