// Smoke test of an installed @iris-rpc/node (as `require('iris-rpc')`) on any runtime that runs
// Node-API addons (Node, Bun, Deno), against the real legacy iris-rpc 0.2.20.
//
//   <runtime> smoke.js            (cwd: a directory whose node_modules has iris-rpc)
//   env: LEGACY_NODE  a Node that runs the legacy package (20; it fails on 22 and later)
//        LEGACY_PEER  tests/interop/legacy-peer.js
//
// Our client connects to a legacy server; it sends an event and gets one back, makes a request,
// and gets an error from another. Prints "smoke ok" and exits 0, or names what failed.
'use strict';

const { spawn } = require('child_process');
const net = require('net');
const path = require('path');

const rpc = require('iris-rpc');

const fail = (what) => {
  console.error(`smoke: ${what}`);
  process.exit(1);
};
const deadline = setTimeout(() => fail('no result within 60 s'), 60000);

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

async function main() {
  // Where the package came from: the installed one, never a checkout.
  const resolved = require.resolve('iris-rpc');
  if (!resolved.includes(`${path.sep}node_modules${path.sep}`)) fail(`iris-rpc resolved to ${resolved}`);

  const { key, cert } = rpc.Certificates.selfSigned();
  const port = await freePort();
  const config = {
    role: 'server',
    auth: 'smoke secret',
    port: `127.0.0.1:${port}`,
    uuid: 'legacy-server',
    key,
    cert,
    module: process.env.LEGACY_MODULE,
  };
  const legacy = spawn(process.env.LEGACY_NODE || 'node', [process.env.LEGACY_PEER, JSON.stringify(config)], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  legacy.on('error', (e) => fail(`cannot start the legacy peer: ${e.message}`));
  let buffered = '';
  const listened = new Promise((resolve) => {
    legacy.stdout.on('data', (chunk) => {
      buffered += chunk;
      let i;
      while ((i = buffered.indexOf('\n')) >= 0) {
        const ev = JSON.parse(buffered.slice(0, i));
        buffered = buffered.slice(i + 1);
        if (ev.ev === 'listen') {
          if (ev.err) fail(`legacy server: ${ev.err}`);
          resolve();
        }
      }
    });
  });
  await listened;

  const client = new rpc.Client({
    address: `127.0.0.1:${port}`,
    auth: 'smoke secret',
    certificates: { key, cert },
  });
  client.on('error', (e) => fail(`client error: ${e && e.message}`));
  await new Promise((resolve) => client.once('connect', resolve));

  // An event and the legacy peer's answer to it (it answers `hello` with `world`).
  const world = new Promise((resolve) => client.on('world', (msg) => resolve(msg)));
  client.dispatch({ op: 'hello', text: 'from the smoke test' });
  const got = await world;
  if (got.echo !== 'from the smoke test') fail(`event: ${JSON.stringify(got)}`);

  // A request and its response.
  const sum = await new Promise((resolve, reject) =>
    client.dispatch({ op: 'add', a: 2, b: 3 }, (err, resp) => (err ? reject(err) : resolve(resp))),
  );
  if (sum.sum !== 5) fail(`request: ${JSON.stringify(sum)}`);

  // An error from the peer, rebuilt as the Error type it sent.
  const err = await new Promise((resolve) => client.dispatch({ op: 'fail' }, (e) => resolve(e)));
  if (!(err instanceof TypeError) || err.message !== 'bad input') fail(`error: ${err}`);

  client.close();
  legacy.stdin.end(JSON.stringify({ cmd: 'exit' }) + '\n');
  clearTimeout(deadline);
  const runtime = typeof Bun !== 'undefined' ? `bun ${Bun.version}` : typeof Deno !== 'undefined' ? `deno ${Deno.version.deno}` : `node ${process.version}`;
  console.log(`smoke ok (${runtime}): event, request, error against legacy iris-rpc`);
}

main().catch((e) => fail(e && e.stack ? e.stack : String(e)));
