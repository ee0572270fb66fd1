// The stdio plumbing of the peer scripts driven by tests (legacy-peer.js here, and
// bindings-node/test/fixtures' peer.js and dropin.js): JSON events out on stdout, JSON
// commands in on stdin, one a line. Requiring it sends console.log to stderr, since the
// packages log with it and stdout must stay JSON lines.
'use strict';

const readline = require('readline');

console.log = (...args) => console.error(...args);

/** Writes one event line to stdout. */
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');

/** Calls `handle` with each command line read from stdin, parsed; exits when stdin ends. */
function readCommands(handle) {
  const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  lines.on('line', (line) => {
    if (line.trim()) handle(JSON.parse(line));
  });
  lines.on('close', () => process.exit(0));
}

module.exports = { out, readCommands };
