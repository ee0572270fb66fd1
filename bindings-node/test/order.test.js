// Call order: a synchronous burst mixing dispatch(msg) and dispatch(msg, cb) reaches the peer in
// call order, as legacy writes each message in the call. Each peer runs in its own process;
// every pairing with the legacy package, cipher on and off. Our addon used to write requests
// from a task spawned per request, so events overtook them.
'use strict';

const { test, describe } = require('node:test');
const assert = require('node:assert/strict');

const { Proc, PEER } = require('./helpers');
const { Certificates } = require('..');

const { key, cert } = Certificates.selfSigned();
const N = 3000;

async function burst({ clientImpl, serverImpl, cipher, from }) {
  const server = new Proc(PEER, {
    impl: serverImpl, role: 'server', auth: 'secret', uuid: 'srv', cipher, port: '127.0.0.1:0', key, cert,
  });
  let client;
  try {
    const listen = await server.wait((e) => e.ev === 'listen', { what: 'listen' });
    client = new Proc(PEER, {
      impl: clientImpl, role: 'client', auth: 'secret', uuid: 'cli', cipher,
      address: `127.0.0.1:${listen.port}`, key, cert,
    });
    await client.wait((e) => e.ev === 'connect', { what: 'client connect' });
    await server.wait((e) => e.ev === 'connect', { what: 'server connect' });
    const [sender, receiver] = from === 'client' ? [client, server] : [server, client];
    const mark = receiver.mark();
    sender.send(from === 'client' ? { cmd: 'burst', n: N } : { cmd: 'burst', n: N, uuid: 'cli' });
    await sender.wait((e) => e.ev === 'burst-done', { what: 'every answer', ms: 60000 });
    const seen = () =>
      receiver.events
        .slice(mark)
        .filter((e) => e.ev === 'seq' || (e.ev === 'message' && e.msg.op === 'e'))
        .map((e) => (e.ev === 'seq' ? e.n : e.msg.n));
    const last = (e) => (e.ev === 'seq' ? e.n : e.ev === 'message' && e.msg.op === 'e' ? e.msg.n : -1);
    await receiver.wait((e) => last(e) === N - 1, { after: mark, what: 'the last message', ms: 60000 });
    for (let i = 0; i < 200 && seen().length < N; i++) await new Promise((r) => setTimeout(r, 50));
    const got = seen();
    assert.equal(got.length, N, 'every message arrives');
    const first = got.findIndex((n, i) => n !== i);
    assert.equal(first, -1, `out of call order at ${first}: ${got.slice(first, first + 5)}`);
  } finally {
    if (client) client.kill();
    server.kill();
  }
}

for (const cipher of [true, false]) {
  describe(`call order, cipher ${cipher ? 'on' : 'off'}`, () => {
    const pairings = [
      ['legacy', 'legacy', 'client'],
      ['ours', 'legacy', 'client'],
      ['legacy', 'ours', 'server'],
      ['ours', 'ours', 'client'],
      ['ours', 'ours', 'server'],
    ];
    for (const [clientImpl, serverImpl, from] of pairings) {
      test(`${clientImpl} client, ${serverImpl} server: a burst from the ${from} keeps call order`, async () => {
        await burst({ clientImpl, serverImpl, cipher, from });
      });
    }
  });
}
