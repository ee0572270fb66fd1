// Benchmark: one-way events per second delivered to JS listeners between two Node processes,
// the legacy iris-rpc 0.2.20 package and ours side by side in one run (cipher on, the default).
//
//   node bench/events.js [legacyCount] [oursCount] [payloadBytes]
//
// A client process dispatches `count` events `{op:'tick', i, payload}` to a server process,
// whose `rpc.on('tick')` listener counts them; the receiver acks every 1,000 events and the
// sender keeps at most 20,000 unacknowledged, so neither side buffers without bound. The rate is
// measured at the receiver, from the first event delivered to the last.
'use strict';

const { spawn } = require('child_process');
const path = require('path');
const { Certificates } = require('..');

const legacyCount = Number(process.argv[2] || 50000);
const oursCount = Number(process.argv[3] || 500000);
const pad = Number(process.argv[4] || 32);
const { key, cert } = Certificates.selfSigned();

function start(cfg) {
  const child = spawn(process.execPath, [path.join(__dirname, 'peer.js'), JSON.stringify(cfg)], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const waiters = [];
  let buf = '';
  child.stdout.on('data', (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const ev = JSON.parse(buf.slice(0, i));
      buf = buf.slice(i + 1);
      for (const w of waiters.splice(0)) (w.pred(ev) ? w.resolve : (x) => waiters.push(w))(ev);
    }
  });
  const wait = (pred, ms) =>
    new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`benchmark peer timed out (${cfg.impl} ${cfg.role})`)), ms);
      waiters.push({ pred, resolve: (ev) => (clearTimeout(t), resolve(ev)) });
    });
  return { child, wait };
}

async function run(impl, count) {
  const recv = start({ impl, role: 'recv', count, key, cert });
  let send;
  try {
    const { port } = await recv.wait((e) => e.ev === 'listen', 20000);
    send = start({ impl, role: 'send', count, pad, key, cert, address: `127.0.0.1:${port}` });
    const done = await recv.wait((e) => e.ev === 'done', 300000);
    if (done.lastIndex !== count - 1) throw new Error(`${impl}: events out of order`);
    return done;
  } finally {
    recv.child.kill();
    if (send) send.child.kill();
  }
}

(async () => {
  const rows = [];
  for (const [impl, count] of [
    ['legacy', legacyCount],
    ['ours', oursCount],
  ]) {
    const r = await run(impl, count);
    rows.push({ impl, events: r.count, seconds: r.seconds, rate: r.count / r.seconds });
  }
  const fmt = (n) => Math.round(n).toLocaleString('en-US');
  console.log(`one-way events/s to JS listeners, two Node ${process.version} processes, loopback, cipher on, payload ${pad} B`);
  console.log('implementation | events    | seconds | events/s');
  console.log('---------------|-----------|---------|-----------');
  for (const r of rows) {
    console.log(`${r.impl.padEnd(14)} | ${fmt(r.events).padStart(9)} | ${r.seconds.toFixed(2).padStart(7)} | ${fmt(r.rate).padStart(10)}`);
  }
  console.log(`ours / legacy: ${(rows[1].rate / rows[0].rate).toFixed(1)}x`);
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
