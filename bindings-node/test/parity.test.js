// The parity suite: one scenario run for every pairing of implementations (legacy-legacy as
// the reference, ours-ours, legacy client with our server, our client with legacy server), with
// the cipher on and off; every pairing's transcript must equal the reference's.
'use strict';

const { test, describe, before } = require('node:test');
const assert = require('node:assert/strict');

const { Proc, PEER } = require('./helpers');
const { Certificates } = require('..');

const { key, cert } = Certificates.selfSigned();

/** Keeps what must be identical across implementations (drops the `ev` tag). */
const pick = (e, ...keys) => Object.fromEntries(keys.filter((k) => k in e).map((k) => [k, e[k]]));

async function scenario({ clientImpl, serverImpl, cipher, cipherVia = 'config' }) {
  const t = {};
  const server = new Proc(PEER, {
    impl: serverImpl,
    role: 'server',
    auth: 'secret',
    uuid: 'srv-uuid',
    designation: 'srv',
    mac: 'aabbccddeeff',
    cipher,
    cipherVia,
    port: '127.0.0.1:0',
    key,
    cert,
    // Ours leaves a handler's stack out of its answers unless asked (a deliberate difference,
    // tested in dropin.test.js); asked, it answers as legacy does, which this suite checks.
    sendStack: serverImpl === 'ours',
  });
  let client;
  try {
    const listen = await server.wait((e) => e.ev === 'listen', { what: 'listen' });
    t.listen = { err: listen.err, hasPort: listen.port > 0 };

    client = new Proc(PEER, {
      impl: clientImpl,
      role: 'client',
      auth: 'secret',
      uuid: 'cli-uuid',
      designation: 'cli',
      cipher,
      cipherVia,
      address: `127.0.0.1:${listen.port}`,
      key,
      cert,
      timeout: 1500,
      pingFreq: 200,
      pingData: { k: 1 },
    });

    // connect, on both sides and on the registered listener
    const cc = await client.wait((e) => e.ev === 'connect', { what: 'client connect' });
    const sc = await server.wait((e) => e.ev === 'connect', { what: 'server connect' });
    t.clientConnect = pick(cc, 'addressType', 'uuid', 'designation', 'mac', 'streamUuid');
    t.serverConnect = pick(sc, 'addressType', 'uuid', 'designation', 'mac', 'streamUuid');
    t.serverExtConnect = pick(await server.wait((e) => e.ev === 'ext' && e.op === 'connect'), 'uuid');
    let m = client.mark();
    client.send({ cmd: 'connected' });
    t.clientConnected = pick(await client.wait((e) => e.ev === 'connected', { after: m }), 'value', 'streams');

    // events: a filtered one, then hello answered with world; digest and registered listener
    m = server.mark();
    client.send({ cmd: 'dispatch', msg: { op: 'blocked', n: 1 } });
    client.send({ cmd: 'dispatch', msg: { op: 'hello', text: 'hi' } });
    const hello = await server.wait((e) => e.ev === 'message' && e.msg.op === 'hello', { after: m });
    t.serverHello = pick(hello, 'msg', 'uuid', 'streamUuid');
    t.serverExtHello = pick(await server.wait((e) => e.ev === 'ext' && e.op === 'hello', { after: m }), 'uuid', 'text', 'streamUuid');
    t.blockedFiltered = server.events.some((e) => e.ev === 'filter' && e.op === 'blocked');
    t.blockedDelivered = server.events.some((e) => e.ev === 'message' && e.msg.op === 'blocked');
    t.clientWorld = pick(await client.wait((e) => e.ev === 'message' && e.msg.op === 'world'), 'msg', 'uuid');

    // server to client: broadcast and targeted
    m = client.mark();
    const note = { op: 'note', n: 1.5, nested: { a: [1, 2, { b: null }], t: true }, text: 'ünï "q" \\ \n\t €' };
    server.send({ cmd: 'dispatch', msg: note });
    server.send({ cmd: 'dispatch', uuid: 'cli-uuid', msg: { op: 'direct', x: 1 } });
    t.clientNote = pick(await client.wait((e) => e.ev === 'message' && e.msg.op === 'note', { after: m }), 'msg', 'uuid');
    t.clientDirect = pick(await client.wait((e) => e.ev === 'message' && e.msg.op === 'direct', { after: m }), 'msg', 'uuid');

    // requests, client to server: answered, errors, no handler, too many handlers, filtered
    const requests = {
      add: { op: 'add', a: 2, b: 3 },
      echo: { op: 'echo', x: [1, 'two', { three: 3 }], s: 'ü' },
      fail: { op: 'fail' },
      nope: { op: 'nope' },
      twice: { op: 'twice' },
      secret: { op: 'secret' },
    };
    t.requests = {};
    for (const [id, msg] of Object.entries(requests)) {
      m = client.mark();
      client.send({ cmd: 'request', id, msg });
      const r = await client.wait((e) => e.ev === 'response' && e.id === id, { after: m, what: `response ${id}` });
      t.requests[id] = pick(r, 'err', 'resp');
    }

    // requests, server to client, and to an unknown uuid
    m = server.mark();
    server.send({ cmd: 'request', id: 's-add', uuid: 'cli-uuid', msg: { op: 'add', a: 10, b: -3 } });
    t.serverRequest = pick(await server.wait((e) => e.ev === 'response' && e.id === 's-add', { after: m }), 'err', 'resp');
    server.send({ cmd: 'request', id: 's-unknown', uuid: 'nobody', msg: { op: 'add' } });
    t.unknownUuid = pick(await server.wait((e) => e.ev === 'response' && e.id === 's-unknown', { after: m }), 'err', 'resp');

    // timeout (client timeout option: 1500 ms)
    m = client.mark();
    client.send({ cmd: 'request', id: 'slow', msg: { op: 'slow' } });
    t.timeout = pick(await client.wait((e) => e.ev === 'response' && e.id === 'slow', { after: m }), 'err', 'resp');

    // ping from the client, with its data object
    const ping = await server.wait((e) => e.ev === 'message' && e.msg.op === 'ping', { what: 'ping' });
    t.ping = pick(ping, 'msg', 'uuid');

    // disconnect with a request pending on the client, then the client reconnects
    m = client.mark();
    let ms = server.mark();
    client.send({ cmd: 'request', id: 'pending', msg: { op: 'slow', tag: 'p' } });
    await server.wait((e) => e.ev === 'filter' && e.tag === 'p', { after: ms, what: 'pending request at server' });
    server.send({ cmd: 'end' });
    t.pendingOnDisconnect = pick(await client.wait((e) => e.ev === 'response' && e.id === 'pending', { after: m }), 'err', 'resp');
    t.clientDisconnect = pick(await client.wait((e) => e.ev === 'disconnect', { after: m }), 'uuid', 'streamUuid');
    t.serverDisconnect = pick(await server.wait((e) => e.ev === 'disconnect', { after: ms }), 'uuid', 'streamUuid');
    t.clientReconnect = pick(await client.wait((e) => e.ev === 'connect', { after: m, what: 'reconnect' }), 'uuid');
    t.serverReconnect = pick(await server.wait((e) => e.ev === 'connect', { after: ms, what: 'reconnect' }), 'uuid');
    m = client.mark();
    client.send({ cmd: 'request', id: 'again', msg: { op: 'add', a: 1, b: 1 } });
    t.afterReconnect = pick(await client.wait((e) => e.ev === 'response' && e.id === 'again', { after: m }), 'err', 'resp');

    // the server goes away: the client disconnects and requests fail as not connected
    m = client.mark();
    await server.stop();
    t.serverGone = pick(await client.wait((e) => e.ev === 'disconnect', { after: m }), 'uuid');
    client.send({ cmd: 'request', id: 'gone', msg: { op: 'add', a: 1, b: 2 } });
    t.notConnected = pick(await client.wait((e) => e.ev === 'response' && e.id === 'gone', { after: m }), 'err', 'resp');
    client.send({ cmd: 'connected' });
    t.clientConnectedAfter = pick(await client.wait((e) => e.ev === 'connected', { after: m }), 'value');
    return t;
  } finally {
    await server.stop();
    if (client) await client.stop();
  }
}

for (const cipher of [true, false]) {
  describe(`parity, cipher ${cipher ? 'on' : 'off'}`, () => {
    let reference;
    before(async () => {
      reference = await scenario({ clientImpl: 'legacy', serverImpl: 'legacy', cipher });
    });

    test('legacy-legacy reference behaves as the protocol says', () => {
      const r = reference;
      assert.deepEqual(r.listen, { err: null, hasPort: true });
      assert.deepEqual(r.clientConnect, {
        addressType: 'string',
        uuid: 'srv-uuid',
        designation: 'srv',
        mac: 'aabbccddeeff',
        streamUuid: 'srv-uuid',
      });
      assert.deepEqual(r.serverConnect, { addressType: 'string', uuid: 'cli-uuid', designation: 'cli', streamUuid: 'cli-uuid' });
      assert.deepEqual(r.clientWorld, { msg: { op: 'world', echo: 'hi' }, uuid: 'srv-uuid' });
      assert.equal(r.blockedFiltered, true);
      assert.equal(r.blockedDelivered, false);
      assert.deepEqual(r.requests.add, { err: null, resp: { sum: 5 } });
      assert.deepEqual(r.requests.fail.err, {
        isError: true,
        ctor: 'TypeError',
        name: 'TypeError',
        message: 'bad input',
        hasStack: true,
      });
      assert.deepEqual(r.requests.nope, { err: { error: "No such handler 'nope'" } });
      assert.deepEqual(r.requests.twice, { err: { error: "Too many handlers for 'twice'" } });
      assert.deepEqual(r.requests.secret, { err: { error: 'denied' } });
      assert.deepEqual(r.timeout, { err: { error: 'Connection Timed Out', timeout: 1500, req: { op: 'slow' } } });
      assert.deepEqual(r.ping, { msg: { op: 'ping', data: { k: 1 } }, uuid: 'cli-uuid' });
      assert.deepEqual(r.pendingOnDisconnect, {
        err: { error: 'Connection Terminated', disconnected: true, req: { op: 'slow', tag: 'p' } },
      });
      assert.deepEqual(r.notConnected, {
        err: { error: 'RPC stream is not connected', disconnected: true, req: { op: 'add', a: 1, b: 2 } },
      });
    });

    const pairings = [
      { clientImpl: 'ours', serverImpl: 'ours' },
      { clientImpl: 'legacy', serverImpl: 'ours' },
      { clientImpl: 'ours', serverImpl: 'legacy' },
    ];
    if (!cipher) pairings.push({ clientImpl: 'ours', serverImpl: 'ours', cipherVia: 'option' });
    for (const p of pairings) {
      const name = `${p.clientImpl} client, ${p.serverImpl} server${p.cipherVia ? ' (cipher: false per instance)' : ''}`;
      test(`${name} behaves as legacy-legacy`, async () => {
        const t = await scenario({ ...p, cipher });
        assert.deepStrictEqual(t, reference);
      });
    }
  });
}
