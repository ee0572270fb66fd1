// One side of the events benchmark (see events.js): `send` dispatches `count` events with a
// window of unacknowledged ones; `recv` counts them in an `rpc.on('tick')` listener and acks.
'use strict';

const path = require('path');

const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
console.log = (...args) => console.error(...args);

const cfg = JSON.parse(process.argv[2]);
const iris = require(
  cfg.impl === 'legacy'
    ? require.resolve('iris-rpc', { paths: [path.join(__dirname, '..', '..', 'tests', 'interop')] })
    : path.join(__dirname, '..'),
);
iris.config.verbose = 0;

const ACK_EVERY = 1000;
const WINDOW = 20000;
const options = { auth: 'bench', certificates: { key: cfg.key, cert: cfg.cert }, uuid: `${cfg.role}-${cfg.impl}` };

if (cfg.role === 'recv') {
  options.port = '127.0.0.1:0';
  let rpc;
  let n = 0;
  let t0 = 0n;
  rpc = new iris.Server(options, () => {
    out({ ev: 'listen', port: rpc.localPort || rpc.tlsServer.address().port });
  });
  rpc.on('tick', (msg, uuid) => {
    if (n === 0) t0 = process.hrtime.bigint();
    n++;
    if (n % ACK_EVERY === 0 || n === cfg.count) rpc.dispatch(uuid, { op: 'ack', n });
    if (n === cfg.count) {
      const ns = Number(process.hrtime.bigint() - t0);
      out({ ev: 'done', count: n, seconds: ns / 1e9, lastIndex: msg.i });
    }
  });
} else {
  options.address = cfg.address;
  const rpc = new iris.Client(options);
  let sent = 0;
  let acked = 0;
  const payload = 'x'.repeat(cfg.pad || 0);
  const pump = () => {
    while (sent < cfg.count && sent - acked < WINDOW) {
      rpc.dispatch({ op: 'tick', i: sent, payload });
      sent++;
    }
  };
  rpc.on('ack', (msg) => {
    acked = msg.n;
    pump();
  });
  rpc.on('connect', () => pump());
}
