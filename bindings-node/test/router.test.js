// Our Router (the legacy constructor shape, which legacy itself could not construct): legacy
// and our clients through it to a legacy server and to our Server, events and requests both
// ways, targeted delivery, a restart on the same port, a backend server, and the process
// exiting after close(). Every wait is bounded; nothing asserts on timing.
'use strict';

const { test, describe } = require('node:test');
const assert = require('node:assert/strict');
const { once } = require('node:events');
const path = require('node:path');

const iris = require('..');
const { Proc, PEER, exitsWithin } = require('./helpers');

iris.config.verbose = 0;
const { key, cert } = iris.Certificates.selfSigned();
const certificates = { key, cert };
const ROUTER_EXIT = path.join(__dirname, 'fixtures', 'router-exit.js');

/** Records what in-process objects report, with bounded waits (like helpers' Proc). */
class Log {
  constructor() {
    this.events = [];
    this.waiters = [];
  }

  push(ev) {
    this.events.push(ev);
    for (const w of [...this.waiters]) {
      if (w.pred(ev, this.events.length - 1)) {
        clearTimeout(w.timer);
        this.waiters = this.waiters.filter((x) => x !== w);
        w.resolve(ev);
      }
    }
  }

  mark() {
    return this.events.length;
  }

  wait(pred, { after = 0, ms = 15000, what = 'event' } = {}) {
    for (let i = after; i < this.events.length; i++) if (pred(this.events[i], i)) return Promise.resolve(this.events[i]);
    return new Promise((resolve, reject) => {
      const w = { pred: (ev, i) => i >= after && pred(ev), resolve };
      w.timer = setTimeout(() => {
        this.waiters = this.waiters.filter((x) => x !== w);
        reject(new Error(`timed out waiting for ${what}; events: ${JSON.stringify(this.events.slice(-15))}`));
      }, ms);
      this.waiters.push(w);
    });
  }
}

/** A Router with its events recorded in `router.log`; resolves once it listens. */
async function startRouter(options) {
  const router = new iris.Router({ auth: 'secret', certificates, ...options });
  const log = new Log();
  router.log = log;
  router.on('listen', (err) => log.push({ ev: 'listen', err }));
  router.on('connect', (side, uuid, address, designation) => log.push({ ev: 'connect', side, uuid, address, designation }));
  router.on('disconnect', (side, uuid) => log.push({ ev: 'disconnect', side, uuid }));
  router.on('refused', (uuid) => log.push({ ev: 'refused', uuid }));
  const { err } = await log.wait((e) => e.ev === 'listen', { what: 'router listen' });
  assert.equal(err, undefined);
  assert.ok(router.localPort > 0);
  return router;
}

/** Our client, with what it receives recorded in `client.log`. */
function ourClient(port, uuid) {
  const client = new iris.Client({
    address: `127.0.0.1:${port}`,
    auth: 'secret',
    uuid,
    designation: 'ours',
    reconnectInitial: 100,
    reconnectMax: 500,
  });
  const log = new Log();
  client.log = log;
  client.on('connect', (address, u) => log.push({ ev: 'connect', uuid: u }));
  client.on('disconnect', (u) => log.push({ ev: 'disconnect', uuid: u }));
  client.digest((msg, u) => log.push({ ev: 'message', msg, uuid: u }));
  client.on('mul', (req, cb) => cb(null, { product: req.a * req.b }));
  return client;
}

function legacyClient(port, uuid) {
  return new Proc(PEER, { impl: 'legacy', role: 'client', auth: 'secret', uuid, designation: 'legacy', address: `127.0.0.1:${port}`, key, cert });
}

const frontendUp = (router, uuid, after = 0) =>
  router.log.wait((e) => e.ev === 'connect' && e.side === 'frontend' && e.uuid === uuid, { after, what: `frontend connect ${uuid}` });

/**
 * Closes the router, starts a new one on the same port and waits for both clients to come
 * back through it. Returns the new router.
 */
async function restart(router, options, a, b) {
  const port = router.localPort;
  const am = a.mark();
  const bm = b.log.mark();
  await router.close();
  assert.deepEqual(router.peers('frontend'), []);
  await a.wait((e) => e.ev === 'disconnect', { after: am, what: 'legacy client disconnect' });
  await b.log.wait((e) => e.ev === 'disconnect', { after: bm, what: 'our client disconnect' });
  const again = await startRouter({ ...options, port: `127.0.0.1:${port}` });
  assert.equal(again.localPort, port);
  await Promise.all([frontendUp(again, 'cli-a'), frontendUp(again, 'cli-b')]);
  await a.wait((e) => e.ev === 'connect', { after: am, what: 'legacy client reconnect' });
  await b.log.wait((e) => e.ev === 'connect', { after: bm, what: 'our client reconnect' });
  return again;
}

describe('Router', () => {
  test('legacy and our clients through our Router to a legacy server', async () => {
    const server = new Proc(PEER, { impl: 'legacy', role: 'server', auth: 'secret', uuid: 'srv', designation: 'srv', port: '127.0.0.1:0', key, cert });
    let router;
    let a;
    let b;
    try {
      const listen = await server.wait((e) => e.ev === 'listen', { what: 'legacy server listen' });
      assert.equal(listen.err, null);
      const options = { port: '127.0.0.1:0', client: { address: `127.0.0.1:${listen.port}` } };
      router = await startRouter(options);
      assert.equal(router.backendPort, undefined);
      await router.log.wait((e) => e.ev === 'connect' && e.side === 'backend' && e.uuid === 'srv', { what: 'backend connect' });
      await server.wait((e) => e.ev === 'connect' && e.designation === 'router', { what: 'server sees the router' });

      a = legacyClient(router.localPort, 'cli-a');
      b = ourClient(router.localPort, 'cli-b');
      await Promise.all([frontendUp(router, 'cli-a'), frontendUp(router, 'cli-b')]);
      await a.wait((e) => e.ev === 'connect', { what: 'legacy client connect' });
      await b.log.wait((e) => e.ev === 'connect', { what: 'our client connect' });
      assert.deepEqual(router.peers('frontend').map((p) => p.uuid).sort(), ['cli-a', 'cli-b']);
      assert.deepEqual(router.peers('backend').map((p) => p.uuid), ['srv']);

      // Events to the server carry the original sender's uuid.
      let m = server.mark();
      a.send({ cmd: 'dispatch', msg: { op: 'note', from: 'a' } });
      b.dispatch({ op: 'note', from: 'b' });
      const fromA = await server.wait((e) => e.ev === 'message' && e.msg.from === 'a', { after: m });
      const fromB = await server.wait((e) => e.ev === 'message' && e.msg.from === 'b', { after: m });
      assert.equal(fromA.uuid, 'cli-a');
      assert.equal(fromB.uuid, 'cli-b');
      assert.equal(fromA.msg._r.uuid, 'cli-a');
      assert.equal(fromB.msg._r.designation, 'ours');

      // A legacy server targets one routed client with `_uuid`; a broadcast reaches both.
      let am = a.mark();
      let bm = b.log.mark();
      server.send({ cmd: 'dispatch', msg: { op: 'direct', _uuid: 'cli-b', x: 1 } });
      server.send({ cmd: 'dispatch', msg: { op: 'all', n: 1 } });
      const direct = await b.log.wait((e) => e.ev === 'message' && e.msg.op === 'direct', { after: bm });
      assert.deepEqual(direct.msg, { op: 'direct', x: 1 });
      await b.log.wait((e) => e.ev === 'message' && e.msg.op === 'all', { after: bm });
      const allA = a.events.indexOf(await a.wait((e) => e.ev === 'message' && e.msg.op === 'all', { after: am }));
      // The targeted message went out first on the same path: had it reached A, it would be here.
      assert.ok(!a.events.slice(am, allA).some((e) => e.ev === 'message' && e.msg.op === 'direct'));

      // Requests from the clients to the server.
      m = a.mark();
      a.send({ cmd: 'request', id: 1, msg: { op: 'add', a: 1, b: 2 } });
      const r1 = await a.wait((e) => e.ev === 'response' && e.id === 1, { after: m });
      assert.deepEqual([r1.err, r1.resp], [null, { sum: 3 }]);
      assert.deepEqual(await b.request({ op: 'add', a: 2, b: 3 }), { sum: 5 });
      await assert.rejects(b.request({ op: 'fail' }), (e) => e.code === 'remote' && e.cause instanceof TypeError);

      // Requests from the legacy server to one routed client (`_uuid` in the request).
      m = server.mark();
      server.send({ cmd: 'request', id: 2, msg: { op: 'add', _uuid: 'cli-a', a: 4, b: 5 } });
      server.send({ cmd: 'request', id: 3, msg: { op: 'mul', _uuid: 'cli-b', a: 2, b: 7 } });
      const r2 = await server.wait((e) => e.ev === 'response' && e.id === 2, { after: m });
      const r3 = await server.wait((e) => e.ev === 'response' && e.id === 3, { after: m });
      assert.deepEqual([r2.err, r2.resp], [null, { sum: 9 }]);
      assert.deepEqual([r3.err, r3.resp], [null, { product: 14 }]);

      // Closed and restarted on the same port: the clients come back through it.
      router = await restart(router, options, a, b);
      await router.log.wait((e) => e.ev === 'connect' && e.side === 'backend' && e.uuid === 'srv', { what: 'backend reconnect' });
      m = server.mark();
      a.send({ cmd: 'dispatch', msg: { op: 'note', from: 'a2' } });
      assert.equal((await server.wait((e) => e.ev === 'message' && e.msg.from === 'a2', { after: m })).uuid, 'cli-a');
      assert.deepEqual(await b.request({ op: 'add', a: 20, b: 22 }), { sum: 42 });
      am = a.mark();
      bm = b.log.mark();
      server.send({ cmd: 'dispatch', msg: { op: 'direct', _uuid: 'cli-a', x: 2 } });
      assert.deepEqual((await a.wait((e) => e.ev === 'message' && e.msg.op === 'direct', { after: am })).msg, { op: 'direct', x: 2 });
    } finally {
      if (b) await b.close();
      if (router) await router.close();
      if (a) await a.stop();
      await server.stop();
    }
  });

  test('legacy and our clients through our Router to our Server', async () => {
    const server = new iris.Server({ port: '127.0.0.1:0', auth: 'secret', certificates, uuid: 'srv' });
    const seen = new Log();
    server.on('server::listen', (err) => seen.push({ ev: 'listen', err }));
    server.on('connect', (address, uuid, stream) => seen.push({ ev: 'connect', uuid, designation: stream.designation }));
    server.digest((msg, uuid) => seen.push({ ev: 'message', msg, uuid }));
    server.on('add', (req, cb) => cb(null, { sum: req.a + req.b }));
    let router;
    let a;
    let b;
    try {
      assert.equal((await seen.wait((e) => e.ev === 'listen')).err, undefined);
      const options = { port: '127.0.0.1:0', secret: 'secret', client: { address: `127.0.0.1:${server.localPort}` } };
      router = await startRouter(options);
      await seen.wait((e) => e.ev === 'connect' && e.designation === 'router', { what: 'server sees the router' });

      a = legacyClient(router.localPort, 'cli-a');
      b = ourClient(router.localPort, 'cli-b');
      await Promise.all([frontendUp(router, 'cli-a'), frontendUp(router, 'cli-b')]);
      await a.wait((e) => e.ev === 'connect', { what: 'legacy client connect' });
      await b.log.wait((e) => e.ev === 'connect', { what: 'our client connect' });

      // Events to the server carry the original sender's uuid.
      let m = seen.mark();
      a.send({ cmd: 'dispatch', msg: { op: 'note', from: 'a' } });
      b.dispatch({ op: 'note', from: 'b' });
      assert.equal((await seen.wait((e) => e.ev === 'message' && e.msg.from === 'a', { after: m })).uuid, 'cli-a');
      assert.equal((await seen.wait((e) => e.ev === 'message' && e.msg.from === 'b', { after: m })).uuid, 'cli-b');

      // The server reaches each routed client by its uuid.
      let am = a.mark();
      let bm = b.log.mark();
      server.dispatch('cli-b', { op: 'direct', x: 1 });
      server.dispatch({ op: 'all', n: 1 });
      assert.deepEqual((await b.log.wait((e) => e.ev === 'message' && e.msg.op === 'direct', { after: bm })).msg, { op: 'direct', x: 1 });
      await b.log.wait((e) => e.ev === 'message' && e.msg.op === 'all', { after: bm });
      const allA = a.events.indexOf(await a.wait((e) => e.ev === 'message' && e.msg.op === 'all', { after: am }));
      assert.ok(!a.events.slice(am, allA).some((e) => e.ev === 'message' && e.msg.op === 'direct'));
      server.dispatch('cli-a', { op: 'direct', x: 2 });
      assert.deepEqual((await a.wait((e) => e.ev === 'message' && e.msg.op === 'direct', { after: am })).msg, { op: 'direct', x: 2 });

      // Requests both ways.
      m = a.mark();
      a.send({ cmd: 'request', id: 1, msg: { op: 'add', a: 1, b: 2 } });
      const r1 = await a.wait((e) => e.ev === 'response' && e.id === 1, { after: m });
      assert.deepEqual([r1.err, r1.resp], [null, { sum: 3 }]);
      assert.deepEqual(await b.request({ op: 'add', a: 2, b: 3 }), { sum: 5 });
      assert.deepEqual(await server.request('cli-a', { op: 'add', a: 4, b: 5 }), { sum: 9 });
      const viaCallback = await new Promise((resolve) => server.dispatch('cli-b', { op: 'mul', a: 3, b: 4 }, (err, resp) => resolve({ err, resp })));
      assert.deepEqual(viaCallback, { err: null, resp: { product: 12 } });
      await assert.rejects(server.request('nobody', { op: 'add', a: 1, b: 1 }), (e) => e.code === 'not_connected');
      let missing;
      server.dispatch('nobody', { op: 'add' }, (err) => {
        missing = err;
      });
      assert.match(String(missing && missing.message), /no such stream present/); // synchronously, as in legacy

      // Closed and restarted on the same port: the clients come back through it.
      router = await restart(router, options, a, b);
      m = seen.mark();
      a.send({ cmd: 'dispatch', msg: { op: 'note', from: 'a2' } });
      assert.equal((await seen.wait((e) => e.ev === 'message' && e.msg.from === 'a2', { after: m })).uuid, 'cli-a');
      assert.deepEqual(await b.request({ op: 'add', a: 20, b: 22 }), { sum: 42 });
      assert.deepEqual(await server.request('cli-b', { op: 'mul', a: 6, b: 7 }), { product: 42 });
    } finally {
      if (b) await b.close();
      if (router) await router.close();
      if (a) await a.stop();
      await server.close();
    }
  });

  // Issue 14, item 7: our router told a legacy server `rpc::offline` when a frontend client
  // left; legacy's handler for it throws and ends the stream, so the router's link dropped and
  // requests in flight failed. Here 50 clients come and go (and a peer sends events whose op
  // legacy would look up as a control handler or an Object.prototype member) while a steady
  // client asks every 20 ms: none fails, and the legacy server sees one connection, kept.
  test('50 clients come and go: a legacy server behind our Router keeps its one link', async () => {
    const server = new Proc(PEER, { impl: 'legacy', role: 'server', auth: 'secret', uuid: 'srv', port: '127.0.0.1:0', key, cert });
    let router;
    let steady;
    let hostile;
    let asking;
    let stop = false;
    try {
      const listen = await server.wait((e) => e.ev === 'listen', { what: 'legacy server listen' });
      assert.equal(listen.err, null);
      router = await startRouter({ port: '127.0.0.1:0', client: { address: `127.0.0.1:${listen.port}` } });
      await router.log.wait((e) => e.ev === 'connect' && e.side === 'backend', { what: 'backend connect' });
      const address = `127.0.0.1:${router.localPort}`;
      steady = new iris.Client({ address, auth: 'secret', uuid: 'steady' });
      await once(steady, 'connect', { signal: AbortSignal.timeout(15000) });
      const answered = [];
      const failed = [];
      asking = (async () => {
        for (let n = 1; !stop; n++) {
          try {
            const r = await steady.request({ op: 'add', a: n, b: 1 });
            (r.sum === n + 1 ? answered : failed).push(r);
          } catch (e) {
            failed.push(String(e));
          }
          await new Promise((r) => setTimeout(r, 20));
        }
      })();

      // 50 clients come and go, five at a time.
      for (let round = 0; round < 10; round++) {
        const batch = [];
        for (let i = 0; i < 5; i++) batch.push(new iris.Client({ address, auth: 'secret', uuid: `churn-${round}-${i}` }));
        try {
          await Promise.all(batch.map((c) => once(c, 'connect', { signal: AbortSignal.timeout(15000) })));
        } finally {
          await Promise.all(batch.map((c) => c.close()));
        }
      }
      hostile = new iris.Client({ address, auth: 'secret', uuid: 'hostile' });
      await once(hostile, 'connect', { signal: AbortSignal.timeout(15000) });
      for (const op of [['rpc::offline'], [['rpc::init']], '__proto__', 'toString']) {
        hostile.dispatch({ op, uuid: 'x', data: { uuid: 'hijack' } });
      }
      hostile.dispatch({ op: 'after-hostile' });
      const after = await server.wait((e) => e.ev === 'message' && e.msg.op === 'after-hostile', { what: 'the event after the hostile ones' });
      assert.equal(after.uuid, 'hostile');
      // More requests after the last client left and the last offence.
      const seen = answered.length;
      for (let i = 0; i < 750 && answered.length < seen + 10; i++) await new Promise((r) => setTimeout(r, 20));
      stop = true;
      await asking;
      assert.deepEqual(failed, []);
      assert.ok(answered.length >= seen + 10, `only ${answered.length - seen} requests answered after the churn`);

      // Everything the legacy server reported so far (its answer comes after it).
      const m = server.mark();
      server.send({ cmd: 'connected' });
      await server.wait((e) => e.ev === 'connected', { after: m, what: 'connected' });
      assert.deepEqual(server.events.filter((e) => e.ev === 'connect').map((e) => e.designation), ['router']);
      assert.deepEqual(server.events.filter((e) => e.ev === 'disconnect'), []);
      assert.deepEqual(router.log.events.filter((e) => e.ev === 'disconnect' && e.side === 'backend'), []);
    } finally {
      stop = true;
      if (asking) await asking;
      if (hostile) await hostile.close();
      if (steady) await steady.close();
      if (router) await router.close();
      await server.stop();
    }
  });

  test('a backend server: clients on both sides meet in the middle', async () => {
    const router = await startRouter({ port: '127.0.0.1:0', server: { port: '127.0.0.1:0', auth: 'backend secret' } });
    let f;
    let g;
    try {
      assert.ok(router.backendPort > 0 && router.backendPort !== router.localPort);
      f = ourClient(router.localPort, 'cli-f');
      await frontendUp(router, 'cli-f');
      g = new iris.Client({ address: `127.0.0.1:${router.backendPort}`, auth: 'backend secret', uuid: 'cli-g' });
      const got = new Log();
      g.digest((msg, uuid) => got.push({ msg, uuid }));
      g.on('add', (req, cb) => cb(null, { sum: req.a + req.b }));
      await router.log.wait((e) => e.ev === 'connect' && e.side === 'backend' && e.uuid === 'cli-g', { what: 'backend connect' });
      assert.deepEqual(router.peers('backend').map((p) => p.uuid), ['cli-g']);
      assert.equal(router.stats('frontend').streams, 1);

      // Frontend events reach the backend peers with the sender's uuid.
      f.dispatch({ op: 'note', from: 'f' });
      assert.equal((await got.wait((e) => e.msg.from === 'f')).uuid, 'cli-f');
      // A frontend request with `_uuid` reaches that backend peer.
      assert.deepEqual(await f.request({ op: 'add', _uuid: 'cli-g', a: 1, b: 2 }), { sum: 3 });
      // A backend peer reaches the frontend peer by uuid once the route is announced.
      let product;
      for (let i = 0; i < 100 && product === undefined; i++) {
        try {
          product = await g.request('cli-f', { op: 'mul', a: 5, b: 5 });
        } catch (e) {
          if (e.code !== 'not_connected') throw e;
          await new Promise((r) => setTimeout(r, 50));
        }
      }
      assert.deepEqual(product, { product: 25 });
      assert.equal(router.routes('backend')['cli-f'], undefined);
      assert.equal(router.peers('frontend')[0].designation, 'ours');
      assert.throws(() => router.peers('sideways'), /side must be/);
    } finally {
      if (f) await f.close();
      if (g) await g.close();
      await router.close();
    }
  });

  test('the router refuses a frontend peer claiming a uuid held on the backend', async () => {
    const server = new iris.Server({ port: '127.0.0.1:0', auth: 'secret', certificates, uuid: 'srv' });
    let router;
    let c;
    try {
      const [err] = await new Promise((resolve) => server.once('server::listen', (...args) => resolve(args)));
      assert.equal(err, undefined);
      router = await startRouter({ port: '127.0.0.1:0', client: { address: `127.0.0.1:${server.localPort}` } });
      await router.log.wait((e) => e.ev === 'connect' && e.side === 'backend', { what: 'backend connect' });
      c = new iris.Client({ address: `127.0.0.1:${router.localPort}`, auth: 'secret', uuid: 'srv', reconnectMax: 60000 });
      await router.log.wait((e) => e.ev === 'refused' && e.uuid === 'srv', { what: 'refused' });
      assert.ok(!router.log.events.some((e) => e.ev === 'connect' && e.side === 'frontend'));
      assert.ok(!router.log.events.some((e) => e.ev === 'disconnect' && e.side === 'frontend'));
    } finally {
      if (c) await c.close();
      if (router) await router.close();
      await server.close();
    }
  });

  test("connection failures are reported as 'error' (side, err) when listened to", async () => {
    // Nothing listens on port 1: the backend client keeps failing and retrying.
    const router = new iris.Router({ port: '127.0.0.1:0', auth: 'secret', certificates, client: { address: '127.0.0.1:1' } });
    try {
      const [side, err] = await once(router, 'error', { signal: AbortSignal.timeout(15000) });
      assert.equal(side, 'backend');
      assert.ok(err instanceof iris.IrisError);
      assert.equal(typeof err.code, 'string');
      assert.deepEqual(router.peers('backend'), []);
    } finally {
      await router.close();
    }
  });

  for (const scenario of ['used', 'close-at-once', 'start-failure', 'server-mode']) {
    test(`the process exits by itself after close() (${scenario})`, async () => {
      const proc = new Proc(ROUTER_EXIT, { scenario });
      const r = await exitsWithin(proc, 30000);
      assert.equal(r.timedOut, false, `still running; events ${JSON.stringify(proc.events)}; stderr ${proc.stderr}`);
      assert.equal(r.code, 0, proc.stderr);
      assert.ok(proc.events.some((e) => e.ev === 'done'));
    });
  }
});
