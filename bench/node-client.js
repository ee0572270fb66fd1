// The Node client side of a benchmark pairing (see bench/README.md for the contract).
//   node bench/node-client.js --address H:P --auth S --key F --cert F [--no-cipher]
//        --workload events|requests|openloop|idle [--size B] [--duration S] [--inflight N]
//        [--rate R] [--connections N] [--concurrency N] [--module PATH]
// Prints one {"result":{..}} line.
'use strict';

const { parseArgs, loadModule, certificates, randomUuid, out, paddedBody, now } = require(
  './node-common',
);

const args = parseArgs(process.argv.slice(2));
const mod = loadModule(args);
const certs = certificates(args);
const duration = parseFloat(args.duration || '1.5') * 1e6; // microseconds

function newClient() {
  const options = {
    address: args.address,
    auth: args.auth || 'bench-secret',
    uuid: randomUuid(),
    designation: 'bench-client',
    certificates: certs,
  };
  if (args.noCipher) options.cipher = false;
  // The addon's session modes (legacy, prefer-v2, require-v2); the legacy package ignores it.
  if (args.security) options.security = args.security;
  return new mod.Client(options);
}

function finish(result) {
  out({ result });
  process.exit(0);
}

function percentiles(samples, n) {
  const s = samples.subarray(0, n).sort();
  const at = (q) => (n ? s[Math.min(n - 1, Math.max(0, Math.ceil(q * n) - 1))] : NaN);
  return { p50_us: at(0.5), p99_us: at(0.99), p999_us: at(0.999), max_us: n ? s[n - 1] : NaN };
}

function events(rpc) {
  const size = parseInt(args.size || '64', 10);
  const window = Math.min(65536, Math.max(64, Math.floor((4 << 20) / size)));
  const ackEvery = Math.max(1, Math.floor(window / 4));
  const body = paddedBody('bench.ev', size);
  let sent = 0;
  let acked = 0;
  let ended = false;
  let start = 0;
  const pump = () => {
    while (!ended && sent - acked < window) {
      rpc.dispatch(body);
      sent++;
      if ((sent & 255) === 0 && now() - start >= duration) {
        ended = true;
        rpc.dispatch({ op: 'bench.end', sent });
      }
    }
  };
  rpc.on('bench.ack', (msg) => {
    acked = msg.n;
    // Let I/O run between bursts.
    setImmediate(pump);
  });
  rpc.on('bench.done', (msg) => {
    const secs = (now() - start) / 1e6;
    finish({
      sent,
      count: msg.n,
      secs,
      size,
      msgs_per_s: msg.n / secs,
      mb_per_s: (msg.n * size) / secs / 1e6,
    });
  });
  rpc.dispatch({ op: 'bench.start', ack: ackEvery });
  start = now();
  pump();
}

function requests(rpc) {
  const inflight = parseInt(args.inflight || '1', 10);
  const req = paddedBody('bench.echo', 64);
  const lat = new Float64Array(1 << 22);
  let n = 0;
  let errors = 0;
  let active = inflight;
  const start = now();
  const worker = () => {
    if (now() - start >= duration) {
      if (--active === 0) {
        const secs = (now() - start) / 1e6;
        finish({ count: n, errors, secs, inflight, req_per_s: n / secs, ...percentiles(lat, n) });
      }
      return;
    }
    const t = now();
    rpc.dispatch(req, (err) => {
      if (err) errors++;
      else if (n < lat.length) lat[n++] = now() - t;
      worker();
    });
  };
  for (let i = 0; i < inflight; i++) worker();
}

function openLoop(rpc) {
  const rate = parseFloat(args.rate || '1000');
  const total = Math.max(1, Math.round((rate * duration) / 1e6));
  const req = paddedBody('bench.echo', 64);
  const lat = new Float64Array(total);
  const interval = 1e6 / rate; // microseconds
  let i = 0;
  let settled = 0;
  let n = 0;
  let errors = 0;
  const start = now();
  const tick = () => {
    const t = now();
    while (i < total && start + i * interval <= t) {
      const due = start + i * interval;
      i++;
      rpc.dispatch(req, (err) => {
        if (err) errors++;
        else lat[n++] = now() - due;
        if (++settled === total) {
          const secs = (now() - start) / 1e6;
          finish({ count: n, errors, secs, rate, ...percentiles(lat, n) });
        }
      });
    }
    if (i < total) {
      // Timers have millisecond resolution: sleep when far ahead, else yield to I/O only.
      const wait = start + i * interval - now();
      if (wait > 2000) setTimeout(tick, Math.floor(wait / 1000) - 1);
      else setImmediate(tick);
    }
  };
  tick();
}

function idle() {
  const connections = parseInt(args.connections || '5000', 10);
  const concurrency = parseInt(args.concurrency || '256', 10);
  const clients = [];
  let started = 0;
  let connected = 0;
  const start = now();
  const next = () => {
    if (started >= connections) return;
    started++;
    const c = newClient();
    let counted = false;
    c.on('connect', () => {
      if (counted) return;
      counted = true;
      connected++;
      if (connected === connections) {
        const secs = (now() - start) / 1e6;
        out({ result: { connected, failed: 0, secs, handshakes_per_s: connected / secs } });
      } else next();
    });
    clients.push(c);
  };
  for (let k = 0; k < Math.min(concurrency, connections); k++) next();
  process.stdin.resume();
  process.stdin.on('end', () => process.exit(0));
}

if (args.workload === 'idle') {
  idle();
} else {
  const rpc = newClient();
  let began = false;
  rpc.on('connect', () => {
    if (began) return;
    began = true;
    if (args.workload === 'events') events(rpc);
    else if (args.workload === 'requests') requests(rpc);
    else if (args.workload === 'openloop') openLoop(rpc);
    else {
      process.stderr.write(`unknown workload ${args.workload}\n`);
      process.exit(2);
    }
  });
  setTimeout(() => {
    if (!began) {
      process.stderr.write('could not connect within 15 s\n');
      process.exit(1);
    }
  }, 15000).unref();
}
