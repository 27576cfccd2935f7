// npm run build: the wasm (cargo, profile `web`), wasm-opt -Oz when binaryen is installed, its JS
// glue (wasm-bindgen --target web), the types (tsc), then two minified ES modules
// (scripts/bundle.mjs: esbuild, then terser):
//
//   dist/index.js                  the first script, the package's main entry: the public API;
//                                  keeps calls until the rest is up
//   dist/core.js                   loaded by it with import(): the driver, the storage adapters
//                                  and the wasm glue
//   dist/trailmark_wasm_bg.wasm    the core, fetched by index.js while core.js loads
//   dist/index.d.ts                the public API's types
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const target = process.env.CARGO_TARGET_DIR || join(root, 'target');
const dist = join(root, 'dist');
const run = (cmd, args, opts = {}) => {
  console.log(`> ${cmd} ${args.join(' ')}`);
  execFileSync(cmd, args, { stdio: 'inherit', cwd: root, ...opts });
};
const has = (cmd) => {
  try {
    execFileSync(cmd, ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
};

run('cargo', ['build', '--target', 'wasm32-unknown-unknown', '--profile', 'web'], {
  env: { ...process.env, CARGO_TARGET_DIR: target },
});
// The glue goes next to the TypeScript (ts/wasm, generated, not in git): tsc checks the driver
// against its types and esbuild bundles it into core.js.
const glue = join(root, 'ts', 'wasm');
rmSync(dist, { recursive: true, force: true });
rmSync(glue, { recursive: true, force: true });
mkdirSync(glue, { recursive: true });
// wasm-opt goes before wasm-bindgen: binaryen 108 (Debian 12) mangles the externref table
// wasm-bindgen adds, so the glue's start fails if it runs after.
let wasm = join(target, 'wasm32-unknown-unknown', 'web', 'trailmark_wasm.wasm');
if (has('wasm-opt') && !process.env.TM_NO_WASM_OPT) {
  const opt = join(target, 'wasm-opt', 'trailmark_wasm.wasm');
  mkdirSync(dirname(opt), { recursive: true });
  // --converge: -Oz again until nothing changes (a few hundred bytes gzip, a few seconds).
  run('wasm-opt', ['-Oz', '--converge', '--strip-debug', '--strip-producers', '-o', opt, wasm]);
  wasm = opt;
} else {
  console.log('wasm-opt not found (Debian: apt-get install binaryen): the wasm is left unoptimised');
}
// --omit-default-module-path: the wasm's URL is the first script's (it starts the fetch);
// --encode-into always: every browser the SDK supports has TextEncoder.encodeInto, so the glue
// needs neither the fallback nor the ASCII fast path around it.
run('wasm-bindgen', [
  '--target',
  'web',
  '--omit-default-module-path',
  '--encode-into',
  'always',
  '--remove-name-section',
  '--remove-producers-section',
  '--out-dir',
  glue,
  wasm,
]);

if (!existsSync(join(root, 'node_modules', 'esbuild')) || !existsSync(join(root, 'node_modules', 'terser'))) {
  run('npm', ['install', '--no-audit', '--no-fund']);
}

// Types: tsc checks everything and writes the declarations into a scratch directory; only the
// public API's (index.d.ts, which imports nothing) is shipped.
const types = join(root, 'node_modules', '.cache', 'trailmark-types');
rmSync(types, { recursive: true, force: true });
run(join(root, 'node_modules', '.bin', 'tsc'), ['-p', 'tsconfig.json', '--outDir', types]);
mkdirSync(dist, { recursive: true });
const dts = readFileSync(join(types, 'index.d.ts'), 'utf8');
if (/\bimport\s*\(|\bfrom\s*['"]/.test(dts)) throw new Error('dist/index.d.ts must not import other files');
copyFileSync(join(types, 'index.d.ts'), join(dist, 'index.d.ts'));

const { bundle } = await import('./bundle.mjs');
// The first script: core.js stays a separate file, loaded with import() (kept as written, it
// resolves next to index.js).
writeFileSync(join(dist, 'index.js'), await bundle({ absWorkingDir: root, entryPoints: ['ts/index.ts'], external: ['./core.js'] }));
writeFileSync(join(dist, 'core.js'), await bundle({ absWorkingDir: root, entryPoints: ['ts/core.ts'] }));
copyFileSync(join(glue, 'trailmark_wasm_bg.wasm'), join(dist, 'trailmark_wasm_bg.wasm'));
console.log('dist: index.js, core.js, trailmark_wasm_bg.wasm, index.d.ts (npm run size for their sizes)');
