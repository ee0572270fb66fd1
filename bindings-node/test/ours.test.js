// Our package on its own: what goes beyond legacy (promise requests, close(), errors with
// codes), deliberate differences, and the legacy helpers (Multiplexer, createFromConfig,
// Certificates), all in-process over loopback.
'use strict';

const { test, describe } = require('node:test');
const assert = require('node:assert/strict');
const { once, EventEmitter } = require('node:events');
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const iris = require('..');
const { Proc, exitsWithin, INTEROP } = require('./helpers');

iris.config.verbose = 0;
const { key, cert } = iris.Certificates.selfSigned();
const certificates = { key, cert };

const bounded = (ms = 10000) => ({ signal: AbortSignal.timeout(ms) });

async function listening(server) {
  const [err] = await once(server, 'server::listen', bounded());
  assert.equal(err, undefined);
  return server;
}

/** A connected server and client of ours. */
async function pair(serverOpts = {}, clientOpts = {}) {
  const server = await listening(
    new iris.Server({ port: '127.0.0.1:0', auth: 'secret', certificates, uuid: 'srv', ...serverOpts }),
  );
  const client = new iris.Client({
    address: `127.0.0.1:${server.localPort}`,
    auth: 'secret',
    certificates,
    uuid: 'cli',
    ...clientOpts,
  });
  await Promise.all([once(client, 'connect', bounded()), once(server, 'connect', bounded())]);
  return { server, client, close: () => Promise.all([client.close(), server.close()]) };
}

describe('exports', () => {
  test('exactly the legacy names', () => {
    const legacy = JSON.parse(
      execFileSync(process.execPath, [
        '-e',
        `process.stdout.write(JSON.stringify(Object.keys(require(require.resolve('iris-rpc', { paths: [${JSON.stringify(INTEROP)}] })))))`,
      ]).toString(),
    );
    assert.deepEqual(Object.keys(iris), legacy);
    assert.equal(typeof iris.IrisError, 'function');
  });

  test('Router constructor errors (legacy shape)', () => {
    assert.throws(() => new iris.Router({ port: 1, certificates }), /missing 'auth'/);
    assert.throws(() => new iris.Router({ auth: 's', port: 1, certificates }), /requires client or server/);
    assert.throws(() => new iris.Router({ auth: 's', certificates, client: { address: 'x:1' } }), /requires port/);
    assert.throws(() => new iris.Router({ auth: 's', port: 1, certificates, client: {} }), /requires client.address/);
  });

  test('constructor errors as in legacy', () => {
    assert.throws(() => new iris.Client({ address: '127.0.0.1:1', certificates }), /missing 'auth'/);
    assert.throws(() => new iris.Client({ auth: 's', certificates }), /requires address/);
    assert.throws(() => new iris.Server({ auth: 's', certificates }), /requires port/);
    assert.throws(() => new iris.Server({ auth: 's', port: 1 }), /missing 'certificates'/);
  });
});

describe('metrics', () => {
  test('metrics() is the Prometheus text, counting what this process did', async () => {
    const count = (text, series) => {
      const line = text.split('\n').find((l) => l.startsWith(series + ' '));
      return line === undefined ? 0 : Number(line.slice(series.length + 1));
    };
    const answered = 'iris_rpc_requests_total{outcome="answered"}';
    const before = count(iris.metrics(), answered);
    const { server, client, close } = await pair();
    try {
      server.on('hello', (msg, respond) => respond(null, { hi: true }));
      await client.request({ op: 'hello' });
      const text = iris.metrics();
      assert.match(text, /^# TYPE iris_rpc_connections gauge$/m);
      assert.equal(count(text, answered), before + 1);
      assert.ok(count(text, 'iris_rpc_streams') >= 2, text);
    } finally {
      await close();
    }
  });
});

describe('log', () => {
  test("the core's records reach log listeners with the connection's span", async () => {
    const records = [];
    const listener = (r) => records.push(r);
    iris.log.level = 'info';
    iris.log.on('log', listener);
    try {
      // Let the listener be installed (next tick), then make the core log: a stream that ends.
      await new Promise((resolve) => setImmediate(resolve));
      const { server, client } = await pair({}, { uuid: 'log-cli', designation: 'logger' });
      const ended = once(server, 'disconnect', bounded());
      client.close();
      await ended;
      const deadline = Date.now() + 10000;
      const found = () => records.find((r) => r.message === 'stream ended' && r.spans.some((s) => s.peer === 'log-cli'));
      while (!found() && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
      const r = found();
      assert.ok(r, JSON.stringify(records));
      assert.equal(r.level, 'info');
      assert.equal(r.target, 'iris_rpc::connection');
      const span = r.spans.find((s) => s.name === 'connection');
      assert.equal(span.designation, 'logger');
      assert.equal(span.mode, 'v2');
      assert.match(span.address, /^127\.0\.0\.1:/);
      assert.ok(r.fields.reason, JSON.stringify(r));
      await server.close();
    } finally {
      iris.log.off('log', listener);
      iris.log.level = 'warn';
    }
    assert.throws(() => { iris.log.level = 'loud'; }, TypeError);
  });
});

describe('requests', () => {
  test('await request(): responses and every kind of failure', async () => {
    const { server, client, close } = await pair();
    try {
      server.on('add', (req, cb) => cb(null, { sum: req.a + req.b }));
      server.on('fail', (req, cb) => cb(new RangeError('too big')));
      server.on('throws', () => {
        throw new Error('handler blew up');
      });
      server.on('nothing', (req, cb) => cb(null));
      server.on('slow', () => {});
      client.on('whoami', (req, cb) => cb(null, { me: client.uuid }));

      assert.deepEqual(await client.request({ op: 'add', a: 2, b: 40 }), { sum: 42 });
      assert.equal(await client.request({ op: 'nothing' }), undefined);
      assert.deepEqual(await server.request('cli', { op: 'whoami' }), { me: 'cli' });

      let e = await client.request({ op: 'fail' }).catch((x) => x);
      assert.ok(e instanceof iris.IrisError);
      assert.equal(e.code, 'remote');
      assert.ok(e.cause instanceof RangeError);
      assert.equal(e.cause.message, 'too big');
      assert.equal(e.remote._Error, true);
      assert.match(e.message, /RangeError: too big/);

      // A thrown exception is answered as an error (legacy sent `{}`, an Error's JSON).
      e = await client.request({ op: 'throws' }).catch((x) => x);
      assert.equal(e.code, 'remote');
      assert.equal(e.cause.message, 'handler blew up');

      e = await client.request({ op: 'missing' }).catch((x) => x);
      assert.equal(e.code, 'remote');
      assert.deepEqual(e.error, { error: "No such handler 'missing'" });
      assert.equal(e.message, "No such handler 'missing'");

      e = await client.request({ op: 'slow', op_timeout: 200 }).catch((x) => x);
      assert.equal(e.code, 'timeout');
      assert.deepEqual(e.error, { error: 'Connection Timed Out', timeout: 200, req: { op: 'slow', op_timeout: 200 } });

      e = await server.request('nobody', { op: 'add' }).catch((x) => x);
      assert.equal(e.code, 'not_connected');

      // close() settles what is still pending
      const pending = client.request({ op: 'slow' }).catch((x) => x);
      await client.close();
      e = await pending;
      assert.equal(e.code, 'closed');
      e = await client.request({ op: 'add', a: 1, b: 1 }).catch((x) => x);
      assert.equal(e.code, 'closed');
    } finally {
      await close();
    }
  });

  test('a handler answers once; later callbacks are ignored', async () => {
    const { server, client, close } = await pair();
    try {
      server.on('double', (req, cb) => {
        cb(null, 1);
        cb(null, 2);
      });
      assert.equal(await client.request({ op: 'double' }), 1);
      assert.equal(await client.request({ op: 'double' }), 1);
    } finally {
      await close();
    }
  });

  test('legacy callbacks: not connected and multiple streams', async () => {
    const { server, client, close } = await pair();
    const second = new iris.Client({ address: `127.0.0.1:${server.localPort}`, auth: 'secret', uuid: 'cli2' });
    try {
      await once(second, 'connect', bounded());
      while (Object.keys(server.streams).length < 2) await once(server, 'connect', bounded());
      const err = await new Promise((resolve) => server.dispatch({ op: 'x' }, resolve));
      assert.deepEqual(err, { error: 'Multiple streams connected (not supported by RPC)', req: { op: 'x' } });
      const lonely = new iris.Client({ address: '127.0.0.1:1', auth: 'secret' });
      const err2 = await new Promise((resolve) => lonely.dispatch({ op: 'x' }, resolve));
      assert.deepEqual(err2, { error: 'RPC stream is not connected', disconnected: true, req: { op: 'x' } });
      await lonely.close();
    } finally {
      await second.close();
      await close();
    }
  });
});

describe('events', () => {
  test('many events arrive complete and in order', async () => {
    const { server, client, close } = await pair();
    try {
      const n = 20000;
      let next = 0;
      let bad = 0;
      const done = new Promise((resolve) => {
        client.on('seq', (msg, uuid, stream) => {
          if (msg.i !== next || uuid !== 'srv' || stream.uuid !== 'srv') bad++;
          next++;
          if (next === n) resolve();
        });
      });
      for (let i = 0; i < n; i++) server.dispatch({ op: 'seq', i });
      await Promise.race([done, once(new EventEmitter(), 'never', bounded(20000))]);
      assert.equal(next, n);
      assert.equal(bad, 0);
    } finally {
      await close();
    }
  });

  test('ping() and setPingDataObject', async () => {
    const { server, client, close } = await pair();
    try {
      const data = { v: 1 };
      server.setPingDataObject(data);
      data.v = 2; // kept by reference, as in legacy
      const got = once(client, 'ping', bounded());
      server.ping();
      const [msg, uuid] = await got;
      assert.deepEqual(msg, { op: 'ping', data: { v: 2 } });
      assert.equal(uuid, 'srv');
    } finally {
      await close();
    }
  });

  test('rpc::error reports a throwing listener; delivery goes on', async () => {
    const { server, client, close } = await pair();
    try {
      client.on('boom', () => {
        throw new Error('listener failed');
      });
      const errs = [];
      client.on('rpc::error', (ex) => errs.push(ex));
      const after = once(client, 'after', bounded());
      server.dispatch({ op: 'boom' });
      server.dispatch({ op: 'after' });
      await after;
      assert.equal(errs.length, 1);
      assert.equal(errs[0].message, 'listener failed');
    } finally {
      await close();
    }
  });

  test('stream objects, isConnected, end() and disconnect', async () => {
    const { server, client, close } = await pair({ designation: 'S', mac: '001122334455' }, { designation: 'C' });
    try {
      assert.equal(client.isConnected(), true);
      const s = client.streams.srv;
      assert.equal(s.uuid, 'srv');
      assert.equal(s.designation, 'S');
      assert.equal(s.mac, '001122334455');
      assert.equal(typeof s.address, 'string');
      assert.equal(server.streams.cli.designation, 'C');
      assert.equal(server.streams.cli.mac, undefined);
      const gone = once(client, 'disconnect', bounded());
      server.streams.cli.end();
      const [uuid, stream] = await gone;
      assert.equal(uuid, 'srv');
      assert.equal(stream, s);
      assert.equal(client.streams.srv, undefined);
      await once(client, 'connect', bounded()); // reconnects by itself
      assert.equal(client.isConnected(), true);
    } finally {
      await close();
    }
  });
});

describe('servers', () => {
  test('a uuid is generated when absent; init callback and server::listen', async () => {
    let initErr = null;
    const server = new iris.Server({ port: '127.0.0.1:0', auth: 'secret', certificates }, (err) => {
      initErr = err;
    });
    try {
      await listening(server);
      assert.equal(initErr, undefined);
      assert.match(server.uuid, /^[0-9a-f-]{36}$/);
      const client = new iris.Client({ address: `127.0.0.1:${server.localPort}`, auth: 'secret' });
      const [, uuid] = await once(client, 'connect', bounded());
      assert.equal(uuid, server.uuid);
      await client.close();
    } finally {
      await server.close();
    }
  });

  test('a port in use is reported to the init callback', async () => {
    const first = await listening(new iris.Server({ port: '127.0.0.1:0', auth: 's', certificates }));
    try {
      const second = new iris.Server({ port: `127.0.0.1:${first.localPort}`, auth: 's', certificates });
      const [err] = await once(second, 'server::listen', bounded());
      assert.ok(err instanceof Error);
      assert.equal(err.code, 'config');
      await second.close();
    } finally {
      await first.close();
    }
  });

  test('cipher on refuses clients without it; cipher off accepts both', async () => {
    const strict = await listening(new iris.Server({ port: '127.0.0.1:0', auth: 's', certificates }));
    const open = await listening(new iris.Server({ port: '127.0.0.1:0', auth: 's', certificates, cipher: false }));
    const refused = new iris.Client({ address: `127.0.0.1:${strict.localPort}`, auth: 's', cipher: false });
    const a = new iris.Client({ address: `127.0.0.1:${open.localPort}`, auth: 's', cipher: false });
    const b = new iris.Client({ address: `127.0.0.1:${open.localPort}`, auth: 's' });
    const connected = Promise.all([once(a, 'connect', bounded()), once(b, 'connect', bounded())]);
    try {
      const [err] = await once(refused, 'rpc::stream::error', bounded());
      assert.equal(err.code, 'auth');
      assert.equal(refused.isConnected(), false);
      await connected;
    } finally {
      await Promise.all([refused.close(), a.close(), b.close(), strict.close(), open.close()]);
    }
  });

  test('a wrong secret never connects', async () => {
    const server = await listening(new iris.Server({ port: '127.0.0.1:0', auth: 'right', certificates }));
    const client = new iris.Client({ address: `127.0.0.1:${server.localPort}`, auth: 'wrong' });
    try {
      const [err] = await once(client, 'rpc::stream::error', bounded());
      assert.equal(err.code, 'auth');
      assert.equal(client.isConnected(), false);
      assert.deepEqual(Object.keys(server.streams), []);
    } finally {
      await Promise.all([client.close(), server.close()]);
    }
  });
});

describe('log lines', () => {
  test('a stream error names the peer as designation@address, never undefined@...', async () => {
    const logged = [];
    const original = console.log;
    console.log = (...args) => logged.push(args.map(String).join(' '));
    iris.config.verbose = 1;
    // Neither side has a designation, as legacy's default; the client's secret is wrong.
    const server = await listening(new iris.Server({ port: '127.0.0.1:0', auth: 'right', certificates }));
    const client = new iris.Client({ address: `127.0.0.1:${server.localPort}`, auth: 'wrong' });
    try {
      await Promise.all([
        once(client, 'rpc::stream::error', bounded()),
        once(server, 'rpc::stream::error', bounded()),
      ]);
    } finally {
      iris.config.verbose = 0;
      console.log = original;
      await Promise.all([client.close(), server.close()]);
    }
    const lines = logged.filter((l) => l.includes('stream error'));
    assert.ok(lines.length >= 2, `no stream error logged: ${JSON.stringify(logged)}`);
    for (const line of lines) assert.doesNotMatch(line, /undefined/, line);
    assert.ok(lines.some((l) => /\|\s+127\.0\.0\.1:\d+/.test(l)), JSON.stringify(lines));
  });
});

describe('legacy helpers', () => {
  test('Multiplexer and createFromConfig', async () => {
    const front = new iris.Multiplexer({ auth: 'secret', certificates, uuid: 'mux-srv' }, { port: '127.0.0.1:0' }, 'front');
    const srv = front.links.front;
    assert.ok(srv instanceof iris.Server);
    await listening(srv);
    const back = new iris.Multiplexer(
      { auth: 'secret', certificates, uuid: 'mux-cli' },
      { a: { address: `127.0.0.1:${srv.localPort}` }, b: { address: `127.0.0.1:${srv.localPort}`, uuid: 'mux-cli-b' } },
    );
    try {
      assert.ok(back.links.a instanceof iris.Client);
      const seen = [];
      back.on('news', (msg, uuid) => seen.push([msg.n, uuid]));
      await Promise.all([once(back.links.a, 'connect', bounded()), once(back.links.b, 'connect', bounded())]);
      while (Object.keys(front.active).length < 2) await once(srv, 'connect', bounded());
      assert.deepEqual(Object.keys(front.active).sort(), ['mux-cli', 'mux-cli-b']);
      const got = once(back.links.b, 'news', bounded());
      front.dispatch('mux-cli-b', { op: 'news', n: 7 });
      await got;
      assert.deepEqual(seen, [[7, 'mux-srv']]);
      const err = await new Promise((resolve) => front.dispatch('nobody', { op: 'x' }, resolve));
      assert.match(err.message, /no such stream present/);
      assert.throws(() => iris.createFromConfig({ auth: 's' }, { x: {} }), /port or address required/);
      assert.throws(
        () => iris.createFromConfig({ auth: 's' }, { port: 1, address: 'a:1' }, 'x'),
        /both port and address/,
      );
    } finally {
      await back.close();
      await front.close();
    }
  });

  test('Certificates loads key, crt and a CA chain', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'iris-certs-'));
    try {
      const other = iris.Certificates.selfSigned(['other']);
      fs.writeFileSync(path.join(dir, 'node.key'), key);
      fs.writeFileSync(path.join(dir, 'node.crt'), cert);
      fs.writeFileSync(path.join(dir, 'node.ca'), cert + other.cert);
      const c = new iris.Certificates(path.join(dir, 'node'));
      await new Promise((resolve) => c.initCertificates(resolve));
      assert.equal(c.certificateData.key, key);
      assert.equal(c.certificateData.cert, cert);
      assert.equal(c.certificateData.ca.length, 2);
      const { close } = await pair({ certificates: c.certificateData });
      await close();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('process lifetime', () => {
  for (const scenario of ['idle', 'pending', 'bind-failure', 'never-connected']) {
    test(`node exits by itself after close() (${scenario})`, async () => {
      const p = new Proc(path.join(__dirname, 'fixtures', 'exit-after-close.js'), { scenario });
      const r = await exitsWithin(p, 20000);
      assert.equal(r.timedOut, false, `still running: ${p.stderr.slice(-2000)}`);
      assert.equal(r.code, 0, p.stderr.slice(-2000));
      assert.ok(p.events.some((e) => e.ev === 'done'), JSON.stringify(p.events));
    });
  }
});

describe('runtime size', () => {
  test('a bad TOKIO_WORKER_THREADS is a clear error from the constructor, not a crash', () => {
    const script =
      "const iris = require(process.argv[1]); try { new iris.Client({ address: '127.0.0.1:1', auth: 's' }); " +
      "console.log('created'); process.exit(3); } catch (e) { console.log(e.code, e.message); }";
    const out = execFileSync(process.execPath, ['-e', script, path.join(__dirname, '..')], {
      env: { ...process.env, TOKIO_WORKER_THREADS: 'zero' },
      encoding: 'utf8',
    });
    assert.match(out, /TOKIO_WORKER_THREADS must be a whole number of threads above 0, not "zero"/);
    assert.doesNotMatch(out, /created/);
  });
});
