// Builds the native addon (iris-rpc.node) from the Rust sources in this repository with cargo
// (a napi-rs cdylib needs nothing more: Node resolves the N-API symbols when it loads it).
//
//   node scripts/build.js                release build, copied to iris-rpc.node
//   node scripts/build.js --if-missing   only when iris-rpc.node is not there yet (npm install)
//   node scripts/build.js --debug        debug build
//
// CARGO_TARGET_DIR is respected; an unchanged tree rebuilds nothing.
'use strict';

const { spawnSync } = require('child_process');
const fs = require('fs');
const path = require('path');

const root = path.join(__dirname, '..');
const manifest = path.join(root, 'Cargo.toml');
const out = path.join(root, 'iris-rpc.node');
const debug = process.argv.includes('--debug');

if (process.argv.includes('--if-missing') && fs.existsSync(out)) process.exit(0);

const build = spawnSync('cargo', ['build', '--lib', '--manifest-path', manifest, ...(debug ? [] : ['--release'])], {
  cwd: root,
  stdio: 'inherit',
});
if (build.error) {
  console.error(`iris-rpc: cannot run cargo (${build.error.message}); install Rust from https://rustup.rs`);
  process.exit(1);
}
if (build.status !== 0) process.exit(build.status || 1);

const meta = spawnSync('cargo', ['metadata', '--format-version', '1', '--no-deps', '--manifest-path', manifest], {
  cwd: root,
  encoding: 'utf8',
  maxBuffer: 256 * 1024 * 1024,
});
if (meta.status !== 0) {
  process.stderr.write(meta.stderr || '');
  process.exit(meta.status || 1);
}
const targetDir = JSON.parse(meta.stdout).target_directory;
const lib = { darwin: 'libiris_rpc_node.dylib', win32: 'iris_rpc_node.dll' }[process.platform] || 'libiris_rpc_node.so';
// Copy to a temporary name and rename, so a running process never sees a half-written file.
const tmp = `${out}.${process.pid}.tmp`;
fs.copyFileSync(path.join(targetDir, debug ? 'debug' : 'release', lib), tmp);
fs.renameSync(tmp, out);
