// Shared by bench/node-server.js and bench/node-client.js: argument parsing and loading the
// iris-rpc module under test (the legacy package by default, or any drop-in such as the Node
// addon, with --module PATH relative to the repository root).
'use strict';

const fs = require('fs');
const path = require('path');

// The legacy package logs with console.log; stdout carries JSON lines only.
console.log = () => {};

function parseArgs(argv) {
  const args = { _: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) {
      args._.push(a);
      continue;
    }
    const name = a.slice(2).replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    const next = argv[i + 1];
    if (next === undefined || next.startsWith('--')) args[name] = true;
    else {
      args[name] = next;
      i++;
    }
  }
  return args;
}

function loadModule(args) {
  const root = path.join(__dirname, '..');
  const where = args.module
    ? path.resolve(root, args.module)
    : path.join(root, 'tests/interop/node_modules/iris-rpc');
  const mod = require(where);
  if (mod.config) {
    mod.config.verbose = 0;
    // Legacy honours only the module-wide switch for the cipher.
    mod.config.cipher = !args.noCipher;
  }
  return mod;
}

function certificates(args) {
  return {
    key: fs.readFileSync(args.key, 'utf8'),
    cert: fs.readFileSync(args.cert, 'utf8'),
  };
}

function randomUuid() {
  return require('crypto').randomUUID();
}

const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');

// A JSON object {"op":op,"d":"xxx.."} exactly `size` bytes long as JSON text.
function paddedBody(op, size) {
  const head = `{"op":"${op}","d":"`.length + 2;
  return { op, d: 'x'.repeat(Math.max(0, size - head)) };
}

const now = () => Number(process.hrtime.bigint()) / 1e3; // microseconds

module.exports = { parseArgs, loadModule, certificates, randomUuid, out, paddedBody, now };
