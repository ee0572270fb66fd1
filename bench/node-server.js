// The Node server side of a benchmark pairing (see bench/README.md for the contract).
//   node bench/node-server.js --port 127.0.0.1:0 --auth S --key F --cert F [--no-cipher]
//        [--module PATH]
'use strict';

const net = require('net');
const { parseArgs, loadModule, certificates, randomUuid, out } = require('./node-common');

const args = parseArgs(process.argv.slice(2));
const mod = loadModule(args);
const [host, portText] = String(args.port || '127.0.0.1:0').split(':');

// Legacy cannot report the port it bound, so pick a free one first.
function freePort(cb) {
  const want = parseInt(portText, 10);
  if (want) return cb(want);
  const probe = net.createServer();
  probe.listen(0, host, () => {
    const { port } = probe.address();
    probe.close(() => cb(port));
  });
}

freePort((port) => {
  const options = {
    port: `${host}:${port}`,
    auth: args.auth || 'bench-secret',
    uuid: randomUuid(),
    designation: 'bench-server',
    certificates: certificates(args),
  };
  if (args.noCipher) options.cipher = false;
  // The addon's session modes (legacy, prefer-v2, require-v2); the legacy package ignores it.
  if (args.security) options.security = args.security;
  let rpc;
  rpc = new mod.Server(options, (err) => {
    if (err) {
      process.stderr.write(`listen failed: ${err}\n`);
      process.exit(1);
    }
    out({ ready: true, port, pid: process.pid });
  });

  let count = 0;
  let ack = Infinity;
  rpc.on('bench.start', (msg) => {
    count = 0;
    ack = msg.ack > 0 ? msg.ack : Infinity;
  });
  rpc.on('bench.ev', (msg, uuid) => {
    count++;
    if (count % ack === 0) rpc.dispatch(uuid, { op: 'bench.ack', n: count });
  });
  rpc.on('bench.end', (msg, uuid) => rpc.dispatch(uuid, { op: 'bench.done', n: count }));
  rpc.on('bench.echo', (req, cb) => cb(null, { ok: true }));
});

process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
