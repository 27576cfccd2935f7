// npm run build: the wasm (cargo, profile `web`), its JS glue (wasm-bindgen --target web),
// wasm-opt -Oz when binaryen is installed, then the TypeScript (tsc) into dist/.
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, rmSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const target = process.env.CARGO_TARGET_DIR || join(root, 'target');
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
// The glue goes next to the TypeScript (ts/wasm, generated, not in git) so tsc sees its types;
// it is copied into dist/wasm after tsc.
const out = join(root, 'ts', 'wasm');
rmSync(join(root, 'dist'), { recursive: true, force: true });
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
// wasm-opt goes before wasm-bindgen: binaryen 108 (Debian 12) mangles the externref table
// wasm-bindgen adds, so the glue's start fails if it runs after.
let wasm = join(target, 'wasm32-unknown-unknown', 'web', 'trailmark_wasm.wasm');
if (has('wasm-opt') && !process.env.TM_NO_WASM_OPT) {
  const opt = join(target, 'wasm-opt', 'trailmark_wasm.wasm');
  mkdirSync(dirname(opt), { recursive: true });
  run('wasm-opt', ['-Oz', '--strip-debug', '--strip-producers', '-o', opt, wasm]);
  wasm = opt;
} else {
  console.log('wasm-opt not found (Debian: apt-get install binaryen): the wasm is left unoptimised');
}
run('wasm-bindgen', ['--target', 'web', '--out-dir', out, wasm]);
const tsc = join(root, 'node_modules', '.bin', 'tsc');
if (!existsSync(tsc)) run('npm', ['install', '--no-audit', '--no-fund']);
run(tsc, ['-p', 'tsconfig.json']);
cpSync(out, join(root, 'dist', 'wasm'), { recursive: true });
