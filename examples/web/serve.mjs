// A static server for the example page: examples/web/* at /, the built SDK
// (bindings/js/dist) at /trailmark/, and the page's settings at /config.json.
//
//   node examples/web/serve.mjs --port 5173 --endpoint http://127.0.0.1:8080 --app shop:s3cret
//
// The tracking server must allow this page's origin: --cors-origin http://localhost:5173.
import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { dirname, extname, join, normalize } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, '..', '..', 'bindings', 'js', 'dist');
const types = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.wasm': 'application/wasm',
  '.json': 'application/json',
  '.css': 'text/css',
};

/** Serves the page; `config` (an object, changeable while running) is `/config.json`. */
export function serve(config, port = 0, host = '127.0.0.1') {
  const server = createServer(async (req, res) => {
    const path = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    if (path === '/config.json') {
      res.writeHead(200, { 'Content-Type': types['.json'], 'Cache-Control': 'no-store' });
      return res.end(JSON.stringify(config));
    }
    const [rootDir, rel] = path.startsWith('/trailmark/') ? [dist, path.slice('/trailmark/'.length)] : [here, path.slice(1) || 'index.html'];
    const file = normalize(join(rootDir, rel));
    if (!file.startsWith(rootDir)) {
      res.writeHead(403);
      return res.end();
    }
    try {
      const body = await readFile(file);
      res.writeHead(200, { 'Content-Type': types[extname(file)] ?? 'application/octet-stream', 'Cache-Control': 'no-store' });
      res.end(body);
    } catch {
      res.writeHead(404, { 'Content-Type': 'text/plain' });
      res.end('not found');
    }
  });
  return new Promise((resolve) =>
    server.listen(port, host, () => {
      const { port: actual } = server.address();
      resolve({ url: `http://${host}:${actual}`, close: () => new Promise((r) => server.close(r)), config });
    }),
  );
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const arg = (name, fallback) => {
    const i = process.argv.indexOf(`--${name}`);
    return i > 0 ? process.argv[i + 1] : fallback;
  };
  const [appId, appSecret] = arg('app', 'shop:s3cret').split(':');
  const config = { appId, appSecret, endpoint: arg('endpoint', 'http://127.0.0.1:8080') };
  const { url } = await serve(config, Number(arg('port', '5173')), arg('host', 'localhost'));
  console.log(`example page on ${url}/ (sending to ${config.endpoint})`);
}
