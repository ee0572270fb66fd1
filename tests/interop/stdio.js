// The stdio plumbing of the peer scripts driven by tests (legacy-peer.js here, and
// bindings-node/test/fixtures' peer.js and dropin.js): JSON events out on stdout, JSON
// commands in on stdin, one a line. Requiring it sends console.log to stderr, since the
// packages log with it and stdout must stay JSON lines.
'use strict';

console.log = (...args) => console.error(...args);

/** Writes one event line to stdout. */
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');

/** Calls `handle` with each command line read from stdin, parsed; exits when stdin ends. */
function readCommands(handle) {
  let buffer = '';
  process.stdin.setEncoding('utf8');
  process.stdin.on('data', (chunk) => {
    buffer += chunk;
    let idx;
    while ((idx = buffer.indexOf('\n')) >= 0) {
      const line = buffer.slice(0, idx).trim();
      buffer = buffer.slice(idx + 1);
      if (line) handle(JSON.parse(line));
    }
  });
  process.stdin.on('end', () => process.exit(0));
}

module.exports = { out, readCommands };
