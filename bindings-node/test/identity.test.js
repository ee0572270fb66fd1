// Issue 19, attack 4 (identity) and server identity, through the Node package and against the
// legacy package (tests/interop/node_modules/iris-rpc, run by fixtures/peer.js in its own
// process): a legacy-mode stream never takes over a uuid a v2 stream holds; `expectServerUuid`
// refuses a server that authenticates as another uuid; `clientCertUuid` binds each client's
// uuid to its TLS client certificate (the legacy client presents one as it always did);
// `pinStore` records a server key on first use and refuses another key at that address later.
'use strict';

const { test, describe } = require('node:test');
const assert = require('node:assert/strict');
const { once } = require('node:events');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const iris = require('..');
const { Proc, PEER } = require('./helpers');

iris.config.verbose = 0;
const { key, cert } = iris.Certificates.selfSigned();
const certificates = { key, cert };
const bounded = (ms = 10000) => ({ signal: AbortSignal.timeout(ms) });

async function ourServer(opts) {
  const server = new iris.Server({ port: '127.0.0.1:0', auth: 'secret', certificates, uuid: 'srv', ...opts });
  const [err] = await once(server, 'server::listen', bounded());
  assert.equal(err, undefined);
  return server;
}

function ourClient(port, opts) {
  return new iris.Client({
    address: `127.0.0.1:${port}`,
    auth: 'secret',
    uuid: 'cli',
    reconnectInitial: 100,
    reconnectMax: 300,
    ...opts,
  });
}

/** The next `rpc::stream::error` of `rpc` (or a failure after `ms`). */
function nextError(rpc, ms = 8000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('timed out waiting for rpc::stream::error')), ms);
    rpc.once('rpc::stream::error', (err) => {
      clearTimeout(timer);
      resolve(err);
    });
  });
}

function legacyClient(port, extra) {
  return new Proc(PEER, { impl: 'legacy', role: 'client', auth: 'secret', uuid: 'legacy-cli', cipher: true, address: `127.0.0.1:${port}`, key, cert, ...extra });
}

describe('identity: a uuid held by a v2 stream', () => {
  test('is not taken over by the legacy client claiming it; the v2 holder stays reachable', async () => {
    const server = await ourServer();
    const holder = ourClient(server.localPort, { uuid: 'twin' });
    holder.on('echo', (req, cb) => cb(null, { who: 'v2 holder' }));
    let client;
    try {
      const [[, , stream]] = await Promise.all([once(holder, 'connect', bounded()), once(server, 'connect', bounded())]);
      assert.equal(stream.mode, 'v2');
      const refused = nextError(server);
      client = legacyClient(server.localPort, { uuid: 'twin' });
      const e = await refused;
      assert.equal(e.code, 'auth');
      assert.match(e.message, /uuid "twin".*held by a v2 stream.*legacy-mode peer.*may not take over/);
      // Through the legacy client's reconnects, the v2 holder is the one reached.
      for (let i = 0; i < 3; i++) {
        assert.deepEqual(await server.request('twin', { op: 'echo' }), { who: 'v2 holder' });
        await new Promise((r) => setTimeout(r, 300));
      }
      assert.equal(holder.isConnected(), true);
    } finally {
      if (client) await client.stop();
      await holder.close();
      await server.close();
    }
  });

  test('the legacy client under its own uuid still connects and works', async () => {
    const server = await ourServer();
    server.on('add', (req, cb) => cb(null, { sum: req.a + req.b }));
    const client = legacyClient(server.localPort);
    try {
      const [, uuid, stream] = await once(server, 'connect', bounded());
      assert.equal(uuid, 'legacy-cli');
      assert.equal(stream.mode, 'legacy');
      await client.wait((e) => e.ev === 'connect', { what: 'legacy connect' });
      assert.deepEqual(await server.request('legacy-cli', { op: 'add', a: 5, b: 6 }), { sum: 11 });
    } finally {
      await client.stop();
      await server.close();
    }
  });
});

describe('identity: expectServerUuid', () => {
  test('refuses our server under another uuid and names the reason', async () => {
    const server = await ourServer({ uuid: 'impostor' });
    const client = ourClient(server.localPort, { expectServerUuid: 'real-server' });
    try {
      const e = await nextError(client);
      assert.equal(e.code, 'auth');
      assert.match(e.message, /authenticated as uuid "impostor".*expect_server_uuid/);
      assert.equal(client.isConnected(), false);
    } finally {
      await client.close();
      await server.close();
    }
  });

  test('accepts the legacy server under the expected uuid and refuses it under another', async () => {
    const server = new Proc(PEER, { impl: 'legacy', role: 'server', auth: 'secret', uuid: 'legacy-srv', cipher: true, port: '127.0.0.1:0', key, cert });
    const listen = await server.wait((e) => e.ev === 'listen', { what: 'legacy listen' });
    const good = ourClient(listen.port, { expectServerUuid: ['other', 'legacy-srv'] });
    const bad = ourClient(listen.port, { uuid: 'cli2', expectServerUuid: 'real-server' });
    try {
      const [, uuid] = await once(good, 'connect', bounded());
      assert.equal(uuid, 'legacy-srv');
      const e = await nextError(bad);
      assert.match(e.message, /"legacy-srv".*expect_server_uuid/);
    } finally {
      await good.close();
      await bad.close();
      await server.stop();
    }
  });
});

describe('identity: clientCertUuid (client certificates bound to uuids)', () => {
  // The legacy client's certificate, self-signed for its uuid, is the CA the server trusts.
  const legacyCert = iris.Certificates.selfSigned(['legacy-cli']);

  test('the legacy client is accepted as the uuid its certificate names, and refused as another', async () => {
    const server = await ourServer({
      certificates: { key, cert, ca: legacyCert.cert },
      rejectUnauthorized: true,
      clientCertUuid: true,
    });
    server.on('add', (req, cb) => cb(null, { sum: req.a + req.b }));
    const honest = legacyClient(server.localPort, { key: legacyCert.key, cert: legacyCert.cert });
    let liar;
    try {
      const [, uuid] = await once(server, 'connect', bounded());
      assert.equal(uuid, 'legacy-cli');
      assert.deepEqual(await server.request('legacy-cli', { op: 'add', a: 1, b: 2 }), { sum: 3 });
      // Same certificate, same secret, another uuid: refused with the reason.
      const refused = nextError(server);
      liar = legacyClient(server.localPort, { uuid: 'srv-admin', key: legacyCert.key, cert: legacyCert.cert });
      const e = await refused;
      assert.equal(e.code, 'auth');
      assert.match(e.message, /claimed uuid "srv-admin".*\["legacy-cli"\].*client_cert_uuid/);
      // Our client without a certificate the CA signed: refused in TLS.
      const refusedTls = nextError(server);
      const ours = ourClient(server.localPort, { uuid: 'legacy-cli' });
      const t = await refusedTls;
      assert.equal(t.code, 'tls');
      await ours.close();
    } finally {
      if (liar) await liar.stop();
      await honest.stop();
      await server.close();
    }
  });

  test('is a configuration error without rejectUnauthorized, reported on server::listen', async () => {
    const server = new iris.Server({ port: '127.0.0.1:0', auth: 'secret', certificates, clientCertUuid: true });
    const [err] = await once(server, 'server::listen', bounded());
    assert.match(err.message, /client_cert_uuid needs reject_unauthorized/);
    await server.close();
  });
});

describe('identity: pinStore (trust on first use)', () => {
  test('records the first key in a 0600 file and refuses another key at that address', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'iris-pins-'));
    const store = path.join(dir, 'known-servers');
    try {
      let server = await ourServer();
      const port = server.localPort;
      let client = ourClient(port, { pinStore: store });
      await once(client, 'connect', bounded());
      await client.close();
      await server.close();
      const recorded = fs.readFileSync(store, 'utf8');
      const pin =
        'sha256/' +
        require('node:crypto')
          .createHash('sha256')
          .update(new (require('node:crypto').X509Certificate)(cert).publicKey.export({ type: 'spki', format: 'der' }))
          .digest('base64');
      assert.ok(recorded.split('\n').includes(`127.0.0.1:${port} ${pin}`), recorded);
      assert.equal(fs.statSync(store).mode & 0o777, 0o600);

      // A server with another key (and the secret) at the same address.
      const other = iris.Certificates.selfSigned();
      server = await ourServer({ port: `127.0.0.1:${port}`, certificates: other });
      client = ourClient(port, { pinStore: store });
      const e = await nextError(client);
      assert.equal(e.code, 'tls');
      assert.match(e.message, /pin_store.*recorded/);
      assert.equal(client.isConnected(), false);
      await client.close();
      await server.close();
      assert.equal(fs.readFileSync(store, 'utf8'), recorded);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
