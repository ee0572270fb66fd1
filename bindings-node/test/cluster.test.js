// Our Router joined to a cluster over NATS (`cluster` option, docs/CLUSTER.md): two routers in
// this process, one NATS server (Debian's nats-server, skipped when missing), a legacy client
// on one router's backend and our client on the other's frontend: requests and events cross,
// a uuid nobody holds fails at once, and bad cluster options are clear errors.
'use strict';

const { test, describe } = require('node:test');
const assert = require('node:assert/strict');
const { spawn, spawnSync } = require('node:child_process');
const net = require('node:net');

const iris = require('..');
const { Proc, PEER } = require('./helpers');

iris.config.verbose = 0;
const { key, cert } = iris.Certificates.selfSigned();
const certificates = { key, cert };
const haveNats = spawnSync('nats-server', ['--version']).status === 0;

const freePort = () =>
  new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });

async function until(what, f, ms = 15000) {
  const end = Date.now() + ms;
  for (;;) {
    if (await f()) return;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function startNats() {
  const port = await freePort();
  const child = spawn('nats-server', ['-a', '127.0.0.1', '-p', String(port)], { stdio: 'ignore' });
  await until('nats-server listening', () =>
    new Promise((resolve) => {
      const c = net.connect(port, '127.0.0.1', () => {
        c.destroy();
        resolve(true);
      });
      c.on('error', () => resolve(false));
    }),
  );
  return { child, url: `nats://127.0.0.1:${port}` };
}

function startRouter(cluster) {
  return new Promise((resolve, reject) => {
    const router = new iris.Router({
      auth: 'secret',
      certificates,
      port: '127.0.0.1:0',
      server: { port: '127.0.0.1:0' },
      cluster,
    });
    router.on('listen', (err) => (err ? reject(err) : resolve(router)));
  });
}

describe('Router cluster', { skip: haveNats ? false : 'nats-server is not installed' }, () => {
  test('peers on two routers of one cluster meet as through one router', async () => {
    const nats = await startNats();
    let a;
    let b;
    let legacy;
    let ours;
    try {
      a = await startRouter({ servers: nats.url, name: 'nodetest' });
      b = await startRouter({ servers: [nats.url], name: 'nodetest' });

      legacy = new Proc(PEER, {
        impl: 'legacy', role: 'client', auth: 'secret', uuid: 'lw', designation: 'legacy',
        address: `127.0.0.1:${a.backendPort}`, key, cert,
      });
      await legacy.wait((e) => e.ev === 'connect', { what: 'legacy client on A' });
      ours = new iris.Client({ address: `127.0.0.1:${b.localPort}`, auth: 'secret', uuid: 'of', reconnectInitial: 100 });
      const got = [];
      ours.digest((msg, uuid) => got.push({ msg, uuid }));
      await new Promise((resolve) => ours.once('connect', resolve));

      // Our client on B reaches the legacy peer on A by uuid (`_uuid`, as through one router).
      const resp = await new Promise((resolve) =>
        ours.dispatch({ op: 'add', a: 20, b: 22, _uuid: 'lw' }, (err, r) => resolve({ err, r })),
      );
      assert.deepEqual(resp, { err: null, r: { sum: 42 } });

      // The legacy peer broadcasts: our client on the other router gets it with `_r`.
      legacy.send({ cmd: 'dispatch', msg: { op: 'news' } });
      await until('news crosses', () => got.some((g) => g.msg.op === 'news'));
      assert.equal(got.find((g) => g.msg.op === 'news').msg._r.uuid, 'lw');

      // Nobody holds the uuid: a clear error at once.
      const none = await new Promise((resolve) =>
        ours.dispatch({ op: 'add', a: 1, b: 1, _uuid: 'nobody' }, (err, r) => resolve({ err, r })),
      );
      assert.match(String(none.err && none.err.error), /no peer "nobody" in the cluster/);
    } finally {
      if (ours) await ours.close();
      if (legacy) await legacy.stop();
      if (a) await a.close();
      if (b) await b.close();
      nats.child.kill('SIGKILL');
    }
  });

  test('bad cluster options and an unreachable NATS are clear errors', async () => {
    assert.throws(
      () => new iris.Router({ auth: 'secret', certificates, port: '127.0.0.1:0', server: { port: '127.0.0.1:0' }, cluster: { servers: 'nats://127.0.0.1:1', tokn: 'x' } }),
      /unknown member 'tokn'/,
    );
    const port = await freePort();
    // A bare string is the servers.
    await assert.rejects(startRouter(`nats://127.0.0.1:${port}`), /NATS unreachable/);
    await assert.rejects(startRouter({ servers: `nats://127.0.0.1:${port}`, token: 'secret-token' }), (err) => {
      assert.match(String(err.message || err), /NATS unreachable/);
      assert.doesNotMatch(String(err.message || err), /secret-token/);
      return true;
    });
  });
});
