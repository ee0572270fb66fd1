// The npm package's manifest: one version with the workspace, a name that is not the legacy
// package's, nothing built at install time, and every file the package needs listed.
'use strict';

const { test } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');

const root = path.join(__dirname, '..');
const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
const lock = JSON.parse(fs.readFileSync(path.join(root, 'package-lock.json'), 'utf8'));

function workspaceVersion() {
  const toml = fs.readFileSync(path.join(root, '..', 'Cargo.toml'), 'utf8');
  const section = toml.split(/^\[/m).find((s) => s.startsWith('workspace.package]'));
  const m = section && section.match(/^version\s*=\s*"([^"]+)"/m);
  assert.ok(m, 'no version in [workspace.package] of Cargo.toml');
  return m[1];
}

test('package.json and package-lock.json carry the workspace version', () => {
  const version = workspaceVersion();
  assert.equal(pkg.version, version);
  assert.equal(lock.version, version);
  assert.equal(lock.packages[''].version, version);
});

test('the name is not the legacy package\'s, and nothing runs at install time', () => {
  assert.notEqual(pkg.name, 'iris-rpc');
  assert.equal(lock.name, pkg.name);
  for (const hook of ['preinstall', 'install', 'postinstall', 'prepare']) {
    assert.equal(pkg.scripts?.[hook], undefined, `scripts.${hook}`);
  }
});

test('the published files are the ones the package loads', () => {
  for (const file of ['index.js', 'index.d.ts', 'native.js']) {
    assert.ok(pkg.files.includes(file), `files lacks ${file}`);
    assert.ok(fs.existsSync(path.join(root, file)), `${file} is missing`);
  }
  assert.equal(pkg.main, 'index.js');
});

test('the loader names the platform package napi-rs style', () => {
  const { platformName } = require('../native.js');
  const name = platformName();
  assert.match(name, /^(linux-(x64|arm64|arm|ia32|riscv64|s390x|ppc64)-(gnu|musl)|darwin-(x64|arm64)|win32-(x64|arm64|ia32)-msvc|[a-z0-9]+-[a-z0-9]+)$/);
  if (process.platform === 'linux' && process.arch === 'x64') assert.equal(name, 'linux-x64-gnu');
  const listed = fs.readFileSync(path.join(root, '..', 'scripts', 'platforms.txt'), 'utf8')
    .split('\n').filter((l) => l.trim() && !l.startsWith('#')).map((l) => l.trim().split(/\s+/)[0]);
  assert.ok(listed.includes(name), `${name} is not in scripts/platforms.txt`);
});
