// node preauth-memory.js PORT CONNS MIB SERVER_PID: CONNS TLS connections each send MIB MiB of one
// unfinished line before authenticating; prints the server's RSS before and at its peak.
const tls = require('tls');
const fs = require('fs');
const [port, conns, mib, pid] = process.argv.slice(2).map(Number);
const rss = () => Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))[1]);
const before = rss();
let peak = before, closed = 0, sentTotal = 0;
const chunk = Buffer.alloc(256 * 1024, 'a');
for (let i = 0; i < conns; i++) {
  const s = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false }, () => {
    let sent = 0;
    const pump = () => {
      while (sent < mib * 1024 * 1024) {
        sent += chunk.length; sentTotal += chunk.length;
        if (!s.write(chunk)) return s.once('drain', pump);
      }
    };
    pump();
  });
  s.on('error', () => {});
  s.on('close', () => closed++);
}
const timer = setInterval(() => { peak = Math.max(peak, rss()); }, 50);
setTimeout(() => {
  clearInterval(timer);
  console.log(JSON.stringify({ conns, mib, rss_before_kib: before, rss_peak_kib: peak,
    growth_mib: +((peak - before) / 1024).toFixed(1), closed_by_server: closed,
    sent_mib: +(sentTotal / 1048576).toFixed(1) }));
  process.exit(0);
}, 9500);
