#!/usr/bin/env node
// An independent check of the v2 known-answer vectors: written from docs/PROTOCOL-V2.md alone,
// with Node's own crypto (no iris-rpc code), it rebuilds every line of each recorded session from
// the inputs and compares byte for byte, and decrypts every record.
//
//   node tests/interop/v2-vectors.js core/tests/vectors/protocol-v2.json
'use strict';
const crypto = require('crypto');
const fs = require('fs');
const assert = require('assert');

const file = process.argv[2];
if (!file) {
  console.error('usage: v2-vectors.js VECTORS.json');
  process.exit(2);
}
const v = JSON.parse(fs.readFileSync(file, 'utf8'));
const inp = v.inputs;
const hex = (b) => Buffer.from(b).toString('hex');
const unhex = (s) => Buffer.from(s, 'hex');

// Section "Transcript": 4-byte big-endian length, then the bytes, per field.
function field(bytes) {
  const b = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes, 'utf8');
  const len = Buffer.alloc(4);
  len.writeUInt32BE(b.length);
  return Buffer.concat([len, b]);
}
// The offered modes: one field holding each mode as a field of its own.
function listField(items) {
  return field(Buffer.concat(items.map((m) => field(m))));
}
function identityFields(id) {
  return [field(id.uuid), field(id.designation || ''), field(id.mac || '')];
}

// Section "Key schedule": HKDF-SHA256, salt = TH, IKM = the secret, one expand per label.
function derive(th) {
  const out = (label, n) =>
    Buffer.from(crypto.hkdfSync('sha256', Buffer.from(inp.secret, 'utf8'), th, Buffer.from(label), n));
  return {
    cp: out('iris-rpc v2 client proof', 32),
    sp: out('iris-rpc v2 server proof', 32),
    c2s: { key: out('iris-rpc v2 c2s key', 32), iv: out('iris-rpc v2 c2s iv', 12) },
    s2c: { key: out('iris-rpc v2 s2c key', 32), iv: out('iris-rpc v2 s2c iv', 12) },
  };
}
const hmac = (key, data) => crypto.createHmac('sha256', key).update(data).digest();

// Section "Records": nonce = IV XOR (4 zero bytes || 64-bit big-endian sequence number).
function nonce(iv, seq) {
  const n = Buffer.from(iv);
  const s = Buffer.alloc(12);
  s.writeBigUInt64BE(BigInt(seq), 4);
  for (let i = 0; i < 12; i++) n[i] ^= s[i];
  return n;
}
function seal(dir, seq, text) {
  const c = crypto.createCipheriv('chacha20-poly1305', dir.key, nonce(dir.iv, seq), { authTagLength: 16 });
  const body = Buffer.concat([c.update(Buffer.from(text, 'utf8')), c.final()]);
  return hex(Buffer.concat([body, c.getAuthTag()]));
}
function open(dir, seq, line) {
  const b = unhex(line);
  const d = crypto.createDecipheriv('chacha20-poly1305', dir.key, nonce(dir.iv, seq), { authTagLength: 16 });
  d.setAuthTag(b.subarray(b.length - 16));
  return Buffer.concat([d.update(b.subarray(0, b.length - 16)), d.final()]).toString('utf8');
}

let checked = 0;
for (const s of v.sessions) {
  const cipher = s.cipher;
  const cn = unhex(inp.client_nonce_hex);
  const sn = unhex(inp.server_nonce_hex);
  const transcript = Buffer.concat([
    field('iris-rpc v2 transcript'),
    listField(['v2']), // offered modes
    field(cn),
    field('v2'), // chosen mode
    field(sn),
    ...identityFields(inp.client),
    field(cipher ? '1' : '0'),
    field(unhex(inp.channel_binding_hex)),
  ]);
  assert.strictEqual(hex(transcript), s.transcript_hex, 'transcript encoding');
  const th = crypto.createHash('sha256').update(transcript).digest();
  assert.strictEqual(hex(th), s.transcript_hash_hex, 'transcript hash');
  const k = derive(th);
  assert.strictEqual(hex(k.c2s.key), s.c2s_key_hex);
  assert.strictEqual(hex(k.c2s.iv), s.c2s_iv_hex);
  assert.strictEqual(hex(k.s2c.key), s.s2c_key_hex);
  assert.strictEqual(hex(k.s2c.iv), s.s2c_iv_hex);
  const clientProof = hex(hmac(k.cp, th));
  const serverIdentity = Buffer.concat(identityFields(inp.server));
  const serverProof = hex(hmac(k.sp, Buffer.concat([th, serverIdentity])));
  assert.strictEqual(clientProof, s.client_proof_hex, 'client proof');
  assert.strictEqual(serverProof, s.server_proof_hex, 'server proof');

  // The five handshake lines, as JSON.stringify writes them in the member order of the spec.
  const ident = (id) => {
    const o = { uuid: id.uuid };
    if (id.mac) o.mac = id.mac;
    o.designation = id.designation || '';
    return o;
  };
  const plainInitS = JSON.stringify({ op: 'rpc::init', v: 2, data: ident(inp.server), routes: inp.server.routes, proof: serverProof });
  const plainInitC = JSON.stringify({ op: 'rpc::init', v: 2, routes: inp.client.routes });
  const expected = [
    JSON.stringify({ op: 'rpc::auth::request', v2: { modes: ['v2'], nonce: inp.client_nonce_hex } }),
    JSON.stringify({ op: 'rpc::auth::challenge', v: 2, mode: 'v2', nonce: inp.server_nonce_hex }),
    JSON.stringify({ op: 'rpc::auth::response', v: 2, cipher, data: ident(inp.client), proof: clientProof }),
    cipher ? seal(k.s2c, 0, plainInitS) : plainInitS,
    cipher ? seal(k.c2s, 0, plainInitC) : plainInitC,
  ];
  s.lines.forEach((l, i) => {
    assert.strictEqual(l.line, expected[i], `cipher ${cipher}: handshake line ${i + 1} (${l.what})`);
    checked++;
  });
  if (cipher) {
    assert.strictEqual(open(k.s2c, 0, s.lines[3].line), plainInitS);
  }
  // Records after the handshake: each direction counts from 1 (record 0 was rpc::init).
  const seq = { client: 1, server: 1 };
  for (const r of s.records) {
    const dir = r.from === 'client' ? k.c2s : k.s2c;
    const n = seq[r.from]++;
    if (cipher) {
      assert.strictEqual(open(dir, n, r.line), r.plain, `record ${n} from ${r.from}`);
      assert.strictEqual(seal(dir, n, r.plain), r.line);
      // Any other sequence number fails: replay and reordering are detected.
      assert.throws(() => open(dir, n + 1, r.line));
    } else {
      assert.strictEqual(r.line, r.plain);
    }
    checked++;
  }
}
// Section "Downgrade marker": a server that speaks v2 overwrites the last 16 characters of its
// legacy challenge vector with hex("irisv2dg"); a legacy client HMACs the vector as any string;
// a client that offered v2 refuses a marked legacy challenge and accepts an unmarked one.
const d = v.downgrade;
const MARKER = Buffer.from('irisv2dg', 'ascii').toString('hex');
assert.strictEqual(d.marker_hex, MARKER, 'marker');
assert.match(d.fresh_vector, /^[0-9a-f]{128}$/);
const markedVector = d.fresh_vector.slice(0, 128 - MARKER.length) + MARKER;
const challenge = (vector) => JSON.stringify({ op: 'rpc::auth::challenge', v: 1, vector });
assert.strictEqual(d.challenge_from_prefer_v2_server, challenge(markedVector), 'marked challenge');
assert.strictEqual(d.challenge_from_legacy_server, challenge(d.fresh_vector), 'unmarked challenge');
checked += 2;
// The legacy client's answer to the marked challenge, as iris-rpc 0.2.20 writes it (cipher off).
const pk = crypto.createHash('sha512').update(inp.secret).digest('hex');
const auth = crypto.createHmac('sha256', pk).update(markedVector).digest('hex');
const legacyData = { auth, signatures: true, uuid: inp.client.uuid };
if (inp.client.mac) legacyData.mac = inp.client.mac;
legacyData.designation = inp.client.designation || '';
assert.strictEqual(
  d.legacy_client_response_cipher_off,
  JSON.stringify({ op: 'rpc::auth::response', v: 1, cipher: false, data: legacyData }),
  'legacy response to the marked challenge',
);
checked++;
// The rule of a client that offered v2, applied here to each challenge it was shown.
const refuses = (line) => {
  const c = JSON.parse(line);
  return c.mode === undefined && typeof c.vector === 'string' && c.vector.length > MARKER.length && c.vector.endsWith(MARKER);
};
for (const seen of d.prefer_v2_client_that_offered_v2) {
  assert.strictEqual(seen.refused, refuses(seen.challenge), `refusal of ${seen.challenge}`);
  if (seen.refused) assert.match(seen.error, /downgrade/);
  checked++;
}
console.log(`v2 vectors: ${checked} lines and records match, rebuilt with Node ${process.version} crypto`);
