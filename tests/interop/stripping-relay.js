#!/usr/bin/env node
// A man in the middle without the secret, for the downgrade tests (issue 19, attack 1): it
// terminates the client's TLS with its own certificate (clients accept any certificate by
// default, as legacy does), opens its own TLS connection to the server, and relays lines.
// On their way to the server it removes the v2 offer from the client's first line, removes
// `"modes":["v2"]` from a plain legacy auth response, and rewrites `"a":1` to `"a":1001`.
//
//   node tests/interop/stripping-relay.js --to HOST:PORT --key KEY.pem --cert CERT.pem
//
// Prints one line `{"event":"listen","port":N}` once listening (on 127.0.0.1, a free port),
// then one `{"event":"edited","from":..,"to":..}` line per line it changed.
'use strict';
const fs = require('fs');
const tls = require('tls');

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
if (!args.to || !args.key || !args.cert) {
  console.error('usage: stripping-relay.js --to HOST:PORT --key KEY.pem --cert CERT.pem');
  process.exit(2);
}
const [host, port] = [args.to.slice(0, args.to.lastIndexOf(':')), Number(args.to.slice(args.to.lastIndexOf(':') + 1))];

function strip(line) {
  let out = line;
  try {
    const msg = JSON.parse(line);
    if (msg && msg.op === 'rpc::auth::request' && 'v2' in msg) out = JSON.stringify({ op: 'rpc::auth::request' });
  } catch (_) {
    // An encrypted line: hex, left alone.
  }
  out = out.split(',"modes":["v2"]').join('').split('"a":1,').join('"a":1001,').split('"a":1}').join('"a":1001}');
  if (out !== line) console.log(JSON.stringify({ event: 'edited', from: line, to: out }));
  return out;
}

// Calls `onLine` for each complete line of `stream`.
function lines(stream, onLine) {
  let buf = '';
  stream.setEncoding('utf8');
  stream.on('data', (chunk) => {
    buf += chunk;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      onLine(buf.slice(0, i));
      buf = buf.slice(i + 1);
    }
  });
}

const server = tls.createServer({ key: fs.readFileSync(args.key), cert: fs.readFileSync(args.cert) }, (down) => {
  const up = tls.connect({ host, port, rejectUnauthorized: false, servername: 'localhost' });
  const close = () => {
    down.destroy();
    up.destroy();
  };
  down.on('error', close);
  up.on('error', close);
  down.on('end', () => up.end());
  up.on('end', () => down.end());
  lines(down, (line) => up.write(strip(line) + '\n'));
  lines(up, (line) => down.write(line + '\n'));
});
server.listen(0, '127.0.0.1', () => {
  console.log(JSON.stringify({ event: 'listen', port: server.address().port }));
});
