// index.d.ts type-checks the legacy API and the additions as users write them.
'use strict';

const { test } = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const path = require('node:path');

test('index.d.ts: a TypeScript user of the package compiles with --strict', () => {
  const tsc = require.resolve('typescript/bin/tsc');
  const file = path.join(__dirname, 'fixtures', 'types-check.ts');
  const r = spawnSync(
    process.execPath,
    [tsc, '--noEmit', '--strict', '--target', 'es2022', '--module', 'commonjs', '--types', 'node', file],
    { encoding: 'utf8', timeout: 120000 },
  );
  assert.equal(r.status, 0, `${r.stdout}\n${r.stderr}`);
});
