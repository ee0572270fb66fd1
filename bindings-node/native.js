// Finds and loads the native addon, the napi-rs way: an addon built in this directory from
// source (`npm run build`, iris-rpc.node), else the prebuilt package of this platform, one of
// the main package's optionalDependencies (`@iris-rpc/node-<platform>`, e.g.
// `@iris-rpc/node-linux-x64-gnu`), which npm installs only where its os/cpu/libc match.
// scripts/package writes those packages from scripts/platforms.txt.
'use strict';

const fs = require('fs');
const path = require('path');

/** `linux-x64-gnu`, `linux-arm64-musl`, `darwin-arm64`, `win32-x64-msvc`: napi-rs's names. */
function platformName() {
  const { platform, arch } = process;
  if (platform === 'linux') return `${platform}-${arch}-${isMusl() ? 'musl' : 'gnu'}`;
  if (platform === 'win32') return `${platform}-${arch}-msvc`;
  return `${platform}-${arch}`;
}

function isMusl() {
  try {
    // glibc's Node reports the glibc it runs on; musl's does not.
    const report = typeof process.report?.getReport === 'function' ? process.report.getReport() : null;
    const header = report && (typeof report === 'string' ? JSON.parse(report) : report).header;
    if (header && header.glibcVersionRuntime) return false;
    if (header) return true;
  } catch {
    // Some runtimes (Bun, Deno) have no usable report: look at the loader instead.
  }
  try {
    return fs.readFileSync('/usr/bin/ldd', 'latin1').includes('musl');
  } catch {
    return false;
  }
}

function loadNative() {
  const platform = platformName();
  const candidates = [path.join(__dirname, 'iris-rpc.node'), `@iris-rpc/node-${platform}`];
  const failures = [];
  for (const candidate of candidates) {
    if (path.isAbsolute(candidate) && !fs.existsSync(candidate)) {
      failures.push(`${candidate}: not built`);
      continue;
    }
    try {
      return require(candidate);
    } catch (e) {
      if (e && e.code === 'MODULE_NOT_FOUND' && !path.isAbsolute(candidate)) {
        failures.push(`${candidate}: not installed`);
      } else {
        failures.push(`${candidate}: ${e && e.message}`);
      }
    }
  }
  const err = new Error(
    `iris-rpc: no native addon for this platform (${platform}); tried ${failures.join('; ')}. ` +
      `Install the prebuilt package (npm install @iris-rpc/node-${platform}; npm skips it when ` +
      'optional dependencies are omitted), or build the addon from source with `npm run build` ' +
      'in a checkout of the repository (needs Rust).',
  );
  err.code = 'config';
  throw err;
}

module.exports = { loadNative, platformName };
