// How the SDK's JavaScript is bundled and minified, shared by build.mjs (dist/) and size.mjs
// (the lazily loaded part piece by piece): esbuild (bundle, TypeScript, minify), then terser
// over its output with safe options (a second compression pass: about 3% less gzip on core.js).
import { build } from 'esbuild';
import { minify } from 'terser';

/** The minified ES module of an esbuild build (`entryPoints` or `stdin`, plus any option). */
export async function bundle(options) {
  const result = await build({
    bundle: true,
    format: 'esm',
    platform: 'neutral',
    target: 'es2020',
    minify: true,
    legalComments: 'none',
    // The glue's console warnings (deprecated arguments, a wasm served with the wrong MIME type)
    // are all the console output there is; what they describe still works.
    drop: ['console'],
    logLevel: 'warning',
    write: false,
    ...options,
  });
  const out = await minify(result.outputFiles[0].text, { module: true, ecma: 2020, compress: { passes: 2 }, mangle: true, format: { comments: false } });
  return out.code;
}
