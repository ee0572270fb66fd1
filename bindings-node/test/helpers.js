// Shared helpers of the node --test suites: child peers driven over stdio, bounded waits.
'use strict';

const { spawn } = require('child_process');
const path = require('path');

const ROOT = path.join(__dirname, '..');
const INTEROP = path.join(ROOT, '..', 'tests', 'interop');
const PEER = path.join(__dirname, 'fixtures', 'peer.js');
const LEGACY_PEER = path.join(INTEROP, 'legacy-peer.js');

/** A child process speaking JSON lines on stdout; every wait is bounded. */
class Proc {
  constructor(script, config, { args = [], env = {} } = {}) {
    this.events = [];
    this.stderr = '';
    this.waiters = [];
    this.exited = null;
    this.child = spawn(process.execPath, [...args, script, JSON.stringify(config)], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, ...env },
    });
    let buf = '';
    this.child.stdout.setEncoding('utf8');
    this.child.stdout.on('data', (d) => {
      buf += d;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (!line.trim()) continue;
        let ev;
        try {
          ev = JSON.parse(line);
        } catch {
          ev = { ev: 'raw', line };
        }
        this.events.push(ev);
        this.#check();
      }
    });
    this.child.stderr.setEncoding('utf8');
    this.child.stderr.on('data', (d) => {
      this.stderr += d;
      if (this.stderr.length > 200000) this.stderr = this.stderr.slice(-100000);
    });
    this.exitPromise = new Promise((resolve) => {
      this.child.on('exit', (code, signal) => {
        this.exited = { code, signal };
        resolve(this.exited);
        this.#check();
      });
    });
    this.child.stdin.on('error', () => {});
  }

  /** Index to pass as `after` so that only later events match. */
  mark() {
    return this.events.length;
  }

  send(cmd) {
    if (!this.exited) this.child.stdin.write(JSON.stringify(cmd) + '\n');
  }

  /** The first event at index >= after matching `pred`, within `ms`. */
  wait(pred, { after = 0, ms = 10000, what = 'event' } = {}) {
    return new Promise((resolve, reject) => {
      const w = { pred, after, resolve, reject, what };
      w.timer = setTimeout(() => {
        this.waiters = this.waiters.filter((x) => x !== w);
        reject(
          new Error(
            `timed out after ${ms} ms waiting for ${what}; events: ${JSON.stringify(this.events.slice(-15))}; ` +
              `stderr: ${this.stderr.slice(-2000)}`,
          ),
        );
      }, ms);
      this.waiters.push(w);
      this.#check();
    });
  }

  #check() {
    for (const w of [...this.waiters]) {
      for (let i = w.after; i < this.events.length; i++) {
        if (w.pred(this.events[i])) {
          clearTimeout(w.timer);
          this.waiters = this.waiters.filter((x) => x !== w);
          w.resolve(this.events[i]);
          break;
        }
      }
      if (this.exited && this.waiters.includes(w)) {
        clearTimeout(w.timer);
        this.waiters = this.waiters.filter((x) => x !== w);
        w.reject(new Error(`process exited (${JSON.stringify(this.exited)}) while waiting for ${w.what}; stderr: ${this.stderr.slice(-2000)}`));
      }
    }
  }

  /** Asks the process to exit, killing it if it has not within `ms`. */
  async stop(ms = 5000) {
    if (this.exited) return this.exited;
    this.send({ cmd: 'exit' });
    const timer = setTimeout(() => this.child.kill('SIGKILL'), ms);
    const r = await this.exitPromise;
    clearTimeout(timer);
    return r;
  }

  kill() {
    if (!this.exited) this.child.kill('SIGKILL');
  }
}

/** Waits for a child to exit by itself; kills it and reports a failure after `ms`. */
async function exitsWithin(proc, ms) {
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    proc.child.kill('SIGKILL');
  }, ms);
  const r = await proc.exitPromise;
  clearTimeout(timer);
  return { ...r, timedOut };
}

module.exports = { Proc, PEER, LEGACY_PEER, ROOT, INTEROP, exitsWithin };
