// npm run size: the bytes a page loads for the SDK (after npm run build), raw and gzip -9.
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';

const dist = join(dirname(fileURLToPath(import.meta.url)), '..', 'dist');
const files = ['index.js', 'storage.js', 'wasm/trailmark_wasm.js', 'wasm/trailmark_wasm_bg.wasm'];
let raw = 0;
let gz = 0;
for (const f of files) {
  const bytes = readFileSync(join(dist, f));
  const zipped = gzipSync(bytes, { level: 9 }).length;
  raw += bytes.length;
  gz += zipped;
  console.log(`${f.padEnd(30)} ${String(bytes.length).padStart(8)} B  ${String(zipped).padStart(7)} B gzip`);
}
console.log(`web size: ${(gz / 1024).toFixed(1)} KiB gzip (${(raw / 1024).toFixed(1)} KiB raw) for everything a page loads`);
