// The `security` option (v2 sessions): our client and server in-process with each setting,
// and against the legacy package (tests/interop/node_modules/iris-rpc, run by
// fixtures/peer.js). Each stream says which mode it speaks (`stream.mode`) and whether it is
// encrypted (`stream.cipher`).
'use strict';

// Polls `cond` every 5 ms until it holds; fails after 10 s.
async function until(cond) {
  const end = Date.now() + 10000;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met within 10 s');
    await new Promise((r) => setTimeout(r, 5));
  }
}

// As legacy, `stream.cipher` names the cipher when it is on.
const cipherName = (on, mode) => (on ? (mode === 'v2' ? 'chacha20-poly1305' : 'aes-256-cbc') : undefined);

const { test, describe } = require('node:test');
const assert = require('node:assert/strict');
const { once } = require('node:events');

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawn } = require('node:child_process');

const iris = require('..');
const { Proc, PEER, INTEROP } = require('./helpers');

iris.config.verbose = 0;
const { key, cert } = iris.Certificates.selfSigned();
const certificates = { key, cert };

const bounded = (ms = 10000) => ({ signal: AbortSignal.timeout(ms) });

/** The RFC 7469 pin of a PEM certificate: sha256/ and base64 of SHA-256 over its SPKI. */
const pinOf = (pem) =>
  'sha256/' +
  require('node:crypto')
    .createHash('sha256')
    .update(new (require('node:crypto').X509Certificate)(pem).publicKey.export({ type: 'spki', format: 'der' }))
    .digest('base64');
const CIPHERS = [true, false];

/** `security` when given (undefined keeps the default, prefer-v2). */
const sec = (security) => (security === undefined ? {} : { security });

async function ourServer(opts) {
  const server = new iris.Server({ port: '127.0.0.1:0', auth: 'secret', certificates, uuid: 'srv', ...opts });
  const [err] = await once(server, 'server::listen', bounded());
  assert.equal(err, undefined);
  server.on('add', (req, cb) => cb(null, { sum: req.a + req.b }));
  return server;
}

function ourClient(port, opts) {
  const client = new iris.Client({
    address: `127.0.0.1:${port}`,
    auth: 'secret',
    uuid: 'cli',
    reconnectInitial: 100,
    reconnectMax: 300,
    ...opts,
  });
  client.on('add', (req, cb) => cb(null, { sum: req.a + req.b }));
  return client;
}

/** Collects `rpc::stream::error`s and connects; `next()` resolves with the next error. */
function watch(rpc) {
  const w = { errors: [], connects: 0, waiters: [] };
  rpc.on('rpc::stream::error', (err) => {
    w.errors.push(err);
    for (const resolve of w.waiters.splice(0)) resolve(err);
  });
  rpc.on('connect', () => w.connects++);
  w.next = (ms = 5000) =>
    w.errors.length
      ? Promise.resolve(w.errors[0])
      : new Promise((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error('timed out waiting for rpc::stream::error')), ms);
          w.waiters.push((e) => {
            clearTimeout(timer);
            resolve(e);
          });
        });
  return w;
}

/** One stream each side: an event both ways and requests both ways; returns the streams. */
async function exercise(server, client) {
  const [[, , clientStream], [, , serverStream]] = await Promise.all([
    once(client, 'connect', bounded()),
    once(server, 'connect', bounded()),
  ]);
  const got = once(server, 'up', bounded());
  client.dispatch({ op: 'up', n: 1 });
  const [msg] = await got;
  assert.equal(msg.n, 1);
  const down = once(client, 'down', bounded());
  server.dispatch('cli', { op: 'down', n: 2 });
  assert.equal((await down)[0].n, 2);
  assert.deepEqual(await client.request({ op: 'add', a: 2, b: 3 }), { sum: 5 });
  assert.deepEqual(await server.request('cli', { op: 'add', a: 4, b: 5 }), { sum: 9 });
  return { clientStream, serverStream };
}

describe('security: our client and server', () => {
  const working = [
    { name: 'defaults on both sides', server: undefined, client: undefined, mode: 'v2' },
    { name: 'prefer-v2 server, require-v2 client', server: 'prefer-v2', client: 'require-v2', mode: 'v2' },
    { name: 'legacy on both sides', server: 'legacy', client: 'legacy', mode: 'legacy' },
    { name: 'prefer-v2 server, legacy client', server: undefined, client: 'legacy', mode: 'legacy' },
    { name: 'legacy server, prefer-v2 client', server: 'legacy', client: undefined, mode: 'legacy' },
  ];
  for (const cipher of CIPHERS) {
    for (const w of working) {
      test(`${w.name}: mode ${w.mode} (cipher ${cipher ? 'on' : 'off'})`, async () => {
        const server = await ourServer({ cipher, ...sec(w.server) });
        const client = ourClient(server.localPort, { cipher, ...sec(w.client) });
        try {
          const { clientStream, serverStream } = await exercise(server, client);
          for (const s of [clientStream, serverStream, client.streams.srv, server.streams.cli]) {
            assert.equal(s.mode, w.mode);
            assert.equal(s.cipher, cipherName(cipher, w.mode));
          }
        } finally {
          await Promise.all([client.close(), server.close()]);
        }
      });
    }
  }

  test('a require-v2 server refuses a legacy client; both say why', async () => {
    const server = await ourServer({ security: 'require-v2' });
    const sw = watch(server);
    const client = ourClient(server.localPort, { security: 'legacy' });
    const cw = watch(client);
    try {
      const [se, ce] = await Promise.all([sw.next(), cw.next()]);
      assert.ok(se instanceof iris.IrisError);
      assert.equal(se.code, 'auth');
      assert.match(se.message, /require-v2/);
      assert.equal(ce.code, 'auth');
      assert.match(ce.message, /server refused.*require-v2/);
      assert.equal(client.isConnected(), false);
      assert.equal(server.isConnected(), false);
      assert.equal(sw.connects + cw.connects, 0);
      await assert.rejects(client.request({ op: 'add', a: 1, b: 1 }), (e) => e.code === 'not_connected');
    } finally {
      await Promise.all([client.close(), server.close()]);
    }
  });

  test('a require-v2 client never connects to a legacy server, and says why', async () => {
    const server = await ourServer({ security: 'legacy' });
    const sw = watch(server);
    const client = ourClient(server.localPort, { security: 'require-v2' });
    const cw = watch(client);
    try {
      const ce = await cw.next();
      assert.equal(ce.code, 'auth');
      assert.match(ce.message, /require-v2/);
      assert.equal(client.isConnected(), false);
      assert.equal(server.isConnected(), false);
      assert.equal(sw.connects + cw.connects, 0);
    } finally {
      await Promise.all([client.close(), server.close()]);
    }
  });

  test('a stripping relay between our server and client on defaults with the cipher off is refused: downgrade detected', async () => {
    // Issue 19, attack 1: the relay (its own process, without the secret) removes the v2 offer
    // and the client's `modes`; before the downgrade marker both connected in legacy mode.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'iris-relay-'));
    fs.writeFileSync(path.join(dir, 'key.pem'), key);
    fs.writeFileSync(path.join(dir, 'cert.pem'), cert);
    const server = await ourServer({ cipher: false });
    const sw = watch(server);
    let served = 0;
    server.on('echo', (req, cb) => {
      served++;
      cb(null, req);
    });
    const relay = spawn(process.execPath, [
      path.join(INTEROP, 'stripping-relay.js'),
      '--to',
      `127.0.0.1:${server.localPort}`,
      '--key',
      path.join(dir, 'key.pem'),
      '--cert',
      path.join(dir, 'cert.pem'),
    ]);
    const edited = [];
    let client;
    try {
      const relayPort = await new Promise((resolve, reject) => {
        let buf = '';
        relay.stdout.setEncoding('utf8');
        relay.stdout.on('data', (d) => {
          buf += d;
          let i;
          while ((i = buf.indexOf('\n')) >= 0) {
            const ev = JSON.parse(buf.slice(0, i));
            buf = buf.slice(i + 1);
            if (ev.event === 'listen') resolve(ev.port);
            else edited.push(ev);
          }
        });
        relay.on('exit', (code) => reject(new Error(`relay exited (${code})`)));
      });
      client = ourClient(relayPort, { cipher: false });
      const cw = watch(client);
      const ce = await cw.next();
      assert.equal(ce.code, 'auth');
      assert.match(ce.message, /downgrade detected/);
      assert.match(ce.message, /offer was removed in transit/);
      await assert.rejects(client.request({ op: 'echo', a: 1 }), (e) => e.code === 'not_connected');
      assert.ok(edited.some((e) => e.from.includes('"v2"')), 'the relay removed the offer');
      assert.equal(client.isConnected(), false);
      assert.equal(server.isConnected(), false);
      assert.equal(sw.connects + cw.connects, 0);
      assert.equal(served, 0);
    } finally {
      relay.kill();
      await Promise.all([client && client.close(), server.close()]);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('a weak secret is refused with refuseWeakSecret: the client throws, the server reports it on server::listen', async () => {
    const weak = /config.*the shared secret is weak.*refuse_weak_secret/;
    assert.throws(
      () => new iris.Client({ address: '127.0.0.1:1', auth: 'correct horse battery staple', refuseWeakSecret: true }),
      weak,
    );
    const server = new iris.Server({ port: '127.0.0.1:0', auth: 'sunshine', certificates, refuseWeakSecret: true });
    const [err] = await once(server, 'server::listen', bounded());
    assert.match(err.message, /the shared secret is weak/);
    await server.close();
    // A generated secret passes.
    const strong = new iris.Client({ address: '127.0.0.1:1', auth: '5e0c7a1f9b3d24e8a6c0f7d9b1e3a5c72f4d6b8e0a1c3e5f7d9b2a4c6e8f0a13', refuseWeakSecret: true });
    await strong.close();
  });

  test('serverPins: a client pinned to the server key connects; pinned to another key it is refused and says why', async () => {
    const server = await ourServer({});
    const other = iris.Certificates.selfSigned();
    const wrong = ourClient(server.localPort, { serverPins: [pinOf(other.cert)] });
    const ww = watch(wrong);
    const right = ourClient(server.localPort, { serverPins: pinOf(cert) });
    try {
      const e = await ww.next();
      assert.match(e.message, /matches none of server_pins/);
      await until(() => right.isConnected());
      assert.equal(ww.connects, 0);
      assert.throws(() => ourClient(1, { serverPins: ['nope'] }), /invalid server pin/);
    } finally {
      await Promise.all([wrong.close(), right.close(), server.close()]);
    }
  });

  test('a bad security value is a configuration error from every constructor', () => {
    const bad = /config.*unknown security "v3".*legacy, prefer-v2 or require-v2/;
    assert.throws(() => new iris.Client({ address: '127.0.0.1:1', auth: 's', security: 'v3' }), bad);
    assert.throws(() => new iris.Server({ port: '127.0.0.1:0', auth: 's', certificates, security: 'v3' }), bad);
    assert.throws(() => new iris.Router({ port: '127.0.0.1:0', auth: 's', certificates, security: 'v3', server: { port: '127.0.0.1:0' } }), bad);
    assert.throws(
      () => new iris.Router({ port: '127.0.0.1:0', auth: 's', certificates, server: { port: '127.0.0.1:0', security: 'v3' } }),
      bad,
    );
    // Not a string: a configuration error too.
    assert.throws(() => new iris.Client({ address: '127.0.0.1:1', auth: 's', security: true }), /config/);
  });

  test('Router: security per side, and the mode of each peer', async () => {
    const router = new iris.Router({
      port: '127.0.0.1:0',
      auth: 'secret',
      certificates,
      security: 'require-v2',
      server: { port: '127.0.0.1:0', security: 'legacy' },
    });
    const [err] = await once(router, 'listen', bounded());
    assert.equal(err, undefined);
    const ups = [];
    router.on('connect', (side, uuid, address, designation, mode) => ups.push(`${side}:${uuid}:${mode}`));
    const front = ourClient(router.localPort, { uuid: 'front' });
    const backPort = router.backendPort;
    const clients = [front];
    try {
      const connected = once(front, 'connect', bounded());
      await connected;
      // The client sees the handshake done one line before the router does.
      await until(() => router.peers('frontend').length === 1);
      const peers = router.peers('frontend');
      assert.equal(peers.length, 1);
      assert.equal(peers[0].uuid, 'front');
      assert.equal(peers[0].mode, 'v2');
      assert.equal(peers[0].cipher, true);
      assert.ok(backPort > 0);
      const back = ourClient(backPort, { uuid: 'back' });
      clients.push(back);
      await once(back, 'connect', bounded());
      await until(() => router.peers('backend').length === 1);
      const b = router.peers('backend');
      assert.equal(b.length, 1);
      assert.equal(b[0].uuid, 'back');
      assert.equal(b[0].mode, 'legacy');
      // The connect events carry the same modes.
      await until(() => ups.length === 2);
      assert.deepEqual(ups.sort(), ['backend:back:legacy', 'frontend:front:v2']);
      // A legacy-only client is refused by the frontend (require-v2).
      const legacyOnly = ourClient(router.localPort, { uuid: 'old', security: 'legacy' });
      clients.push(legacyOnly);
      const e = await watch(legacyOnly).next();
      assert.match(e.message, /require-v2/);
      assert.ok(!ups.some((u) => u.startsWith('frontend:old')));
    } finally {
      await Promise.all([...clients.map((c) => c.close()), router.close()]);
    }
  });
});

describe('security: against the legacy package', () => {
  /** The legacy package's server (fixtures/peer.js with impl "legacy") on a free port. */
  async function legacyServer(cipher) {
    const server = new Proc(PEER, { impl: 'legacy', role: 'server', auth: 'secret', uuid: 'legacy-srv', designation: 'srv', cipher, port: '127.0.0.1:0', key, cert });
    const listen = await server.wait((e) => e.ev === 'listen', { what: 'legacy listen' });
    assert.equal(listen.err, null);
    return { server, port: listen.port };
  }

  function legacyClient(port, cipher) {
    return new Proc(PEER, { impl: 'legacy', role: 'client', auth: 'secret', uuid: 'legacy-cli', designation: 'cli', cipher, address: `127.0.0.1:${port}`, key, cert });
  }

  for (const cipher of CIPHERS) {
    const on = cipher ? 'on' : 'off';

    test(`our client (default prefer-v2) falls back to legacy with the legacy server (cipher ${on})`, async () => {
      const { server, port } = await legacyServer(cipher);
      const client = ourClient(port, { cipher });
      try {
        const [, uuid, stream] = await once(client, 'connect', bounded());
        assert.equal(uuid, 'legacy-srv');
        assert.equal(stream.mode, 'legacy');
        assert.equal(stream.cipher, cipherName(cipher, 'legacy'));
        assert.deepEqual(await client.request({ op: 'add', a: 2, b: 3 }), { sum: 5 });
        const world = once(client, 'world', bounded());
        client.dispatch({ op: 'hello', text: 'from v2-capable' });
        assert.equal((await world)[0].echo, 'from v2-capable');
        const m = server.mark();
        server.send({ cmd: 'request', id: 1, msg: { op: 'add', a: 20, b: 22 } });
        const r = await server.wait((e) => e.ev === 'response' && e.id === 1, { after: m });
        assert.deepEqual(r, { ev: 'response', id: 1, err: null, resp: { sum: 42 } });
      } finally {
        await client.close();
        await server.stop();
      }
    });

    test(`the legacy client connects to our server (default prefer-v2) (cipher ${on})`, async () => {
      const server = await ourServer({ cipher });
      const client = legacyClient(server.localPort, cipher);
      try {
        const [, uuid, stream] = await once(server, 'connect', bounded());
        assert.equal(uuid, 'legacy-cli');
        assert.equal(stream.mode, 'legacy');
        assert.equal(stream.cipher, cipherName(cipher, 'legacy'));
        await client.wait((e) => e.ev === 'connect', { what: 'legacy connect' });
        const m = client.mark();
        client.send({ cmd: 'request', id: 1, msg: { op: 'add', a: 1, b: 2 } });
        const r = await client.wait((e) => e.ev === 'response' && e.id === 1, { after: m });
        assert.deepEqual(r.resp, { sum: 3 });
        assert.deepEqual(await server.request('legacy-cli', { op: 'add', a: 5, b: 6 }), { sum: 11 });
        server.dispatch('legacy-cli', { op: 'note', n: 7 });
        const note = await client.wait((e) => e.ev === 'message' && e.msg.op === 'note', { after: m });
        assert.equal(note.msg.n, 7);
      } finally {
        await client.stop();
        await server.close();
      }
    });
  }

  test('our require-v2 server refuses the legacy client', async () => {
    const server = await ourServer({ security: 'require-v2' });
    const sw = watch(server);
    const client = legacyClient(server.localPort, true);
    try {
      const e = await sw.next();
      assert.equal(e.code, 'auth');
      assert.match(e.message, /require-v2/);
      const m = client.mark();
      client.send({ cmd: 'connected' });
      const c = await client.wait((x) => x.ev === 'connected', { after: m });
      assert.equal(c.value, false);
      assert.equal(server.isConnected(), false);
      assert.equal(sw.connects, 0);
      assert.ok(!client.events.some((x) => x.ev === 'connect'));
    } finally {
      await client.stop();
      await server.close();
    }
  });

  test('our require-v2 client never connects to the legacy server', async () => {
    const { server, port } = await legacyServer(true);
    const client = ourClient(port, { security: 'require-v2' });
    const cw = watch(client);
    try {
      const e = await cw.next();
      assert.equal(e.code, 'auth');
      assert.match(e.message, /legacy protocol.*require-v2/);
      assert.equal(client.isConnected(), false);
      assert.equal(cw.connects, 0);
      const m = server.mark();
      server.send({ cmd: 'connected' });
      const c = await server.wait((x) => x.ev === 'connected', { after: m });
      assert.equal(c.value, false);
      assert.ok(!server.events.some((x) => x.ev === 'connect'));
    } finally {
      await client.close();
      await server.stop();
    }
  });
});
