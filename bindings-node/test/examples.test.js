// The legacy package's own example client and server (test/fixtures/example, adapted only as
// NOTE.md there says) run against each other on our package.
'use strict';

const { test } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');

const { Certificates } = require('..');
const { Proc, INTEROP } = require('./helpers');

const EXAMPLE = path.join(__dirname, 'fixtures', 'example');
// eslint-disable-next-line no-control-regex
const plain = (s) => s.replace(/\x1b\[[0-9;]*m/g, '');

async function freePort() {
  const srv = net.createServer();
  await new Promise((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const { port } = srv.address();
  await new Promise((resolve) => srv.close(resolve));
  return port;
}

test('legacy example/server.js and example/client.js talk over our package', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'iris-example-'));
  const { key, cert } = Certificates.selfSigned();
  fs.writeFileSync(path.join(dir, 'example.key'), key);
  fs.writeFileSync(path.join(dir, 'example.crt'), cert);
  const port = await freePort();
  const colors = require.resolve('colors', { paths: [INTEROP] });
  const env = {
    IRIS_EXAMPLE_CERTS: dir,
    IRIS_EXAMPLE_PORT: `127.0.0.1:${port}`,
    IRIS_EXAMPLE_ADDRESS: `127.0.0.1:${port}`,
  };
  const server = new Proc(path.join(EXAMPLE, 'server.js'), {}, { args: ['--require', colors], env });
  let client;
  const line = (re) => (e) => e.ev === 'raw' && re.test(plain(e.line));
  try {
    await server.wait(line(/RPC server listening on/), { what: 'server listening' });
    client = new Proc(path.join(EXAMPLE, 'client.js'), {}, { args: ['--require', colors], env });
    const bound = await server.wait(line(/binding client \S+ at 127\.0\.0\.1:\d+/), { what: 'connect' });
    const cid = /binding client (\S+) at/.exec(plain(bound.line))[1];
    assert.match(cid, /^[0-9a-f-]{36}$/, 'the client got a generated uuid');
    await server.wait(line(/Server::digest\(\) - .*op: 'hello'/), { what: 'hello at the server' });
    // The client pings every 3 s with its data object; the server answers each with pong.
    const ping = await server.wait(line(/Server::ping - +cid: \S+ message: .*op: 'ping'/), { ms: 15000, what: 'ping' });
    assert.ok(plain(ping.line).includes(cid));
    assert.match(plain(ping.line), /data: \{ iteration: \d+/);
    await client.wait(line(/Client::on\('pong'\) - .*op: 'pong'/), { what: "rpc.on('pong')" });
    await client.wait(line(/self\.on\('pong'\) - .*op: 'pong'/), { what: "registered listener's 'pong'" });
    await client.wait(line(/Client::digest\(\) - .*op: 'pong'/), { what: 'digest of pong' });
    assert.equal(server.stderr.includes('Error'), false, server.stderr);
    assert.equal(client.stderr.includes('Error'), false, client.stderr);
  } finally {
    server.kill();
    if (client) client.kill();
    await server.exitPromise;
    if (client) await client.exitPromise;
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
