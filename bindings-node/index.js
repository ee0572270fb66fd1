// iris-rpc on the Rust core: a drop-in replacement for the legacy `iris-rpc` 0.2.20 package.
//
// The exports are the legacy ones (Client, Server, Multiplexer, Router, createFromConfig,
// config, Certificates), with the same constructor options, events and argument orders. The
// protocol runs in the native addon; this file only maps the legacy API onto it:
//
// - Every native object calls back into JavaScript through one function, `onBatch(text)`, with
//   one JSON array of entries per call (see bindings-node/src/batch.rs for the format). Message
//   bodies inside are parsed by V8 with that single JSON.parse.
// - Filters, digest, listeners and request handlers run here, with the legacy rules; requests
//   are answered through `respond`.
// - The native object keeps the process alive while it is open and lets it go after close().
'use strict';

const { EventEmitter } = require('events');
const crypto = require('crypto');
const fs = require('fs');

// The addon: built here from source, or this platform's prebuilt package (native.js).
const native = require('./native.js').loadNative();

// Module-wide settings, as in legacy: `config.cipher = false` turns the cipher off for every
// instance created afterwards that does not say otherwise.
const config = {
  verbose: 1, // 0 = suppress; 1 = basic; 2 = full
  cipher: true,
  debug: false,
};

// Entry kinds of a batch (bindings-node/src/batch.rs).
const LISTEN = 0;
const CONNECT = 1;
const DISCONNECT = 2;
const MESSAGE = 3;
const REQUEST = 4;
const CONN_ERROR = 5;
const SETTLED = 6;
const CLOSED = 7;

// Standard constructors an `_Error` from a peer may name. Anything else becomes a plain Error
// with that name: a peer never chooses which code runs here (legacy looked names up in
// `global`).
const ERROR_TYPES = {
  Error,
  TypeError,
  RangeError,
  SyntaxError,
  ReferenceError,
  EvalError,
  URIError,
};

const isObject = (v) => v !== null && (typeof v === 'object' || typeof v === 'function');

function log(...args) {
  if (config.verbose) console.log(...args);
}

/** `designation@address` for log lines, leaving out what is unknown (legacy printed `undefined@`). */
function peerLabel(designation, address) {
  const parts = [designation, address].filter((p) => p !== undefined && p !== null && p !== '');
  return parts.length ? parts.map(String).join('@') : 'unknown peer';
}

function logError(...args) {
  if (config.verbose) console.error(...args);
}

/** Rebuilds an Error sent by a peer as `{_Error, name, message, stack}`. */
function rebuildError(v) {
  const Ctor = Object.prototype.hasOwnProperty.call(ERROR_TYPES, v.name) ? ERROR_TYPES[v.name] : Error;
  const err = new Ctor(typeof v.message === 'string' ? v.message : String(v.message));
  if (typeof v.name === 'string' && err.name !== v.name) {
    Object.defineProperty(err, 'name', { value: v.name, writable: true, configurable: true });
  }
  if (v.stack !== undefined) err.stack = v.stack;
  return err;
}

/**
 * An error value as it goes on the wire: Errors become `_Error` objects, as in legacy. Unlike
 * legacy, the stack (file paths, sometimes values) goes to the peer only with `sendStack`.
 */
function wireError(err, sendStack) {
  if (err instanceof Error) {
    const v = { _Error: true, name: err.name, message: err.message };
    if (sendStack) v.stack = err.stack;
    return v;
  }
  return err;
}

/** The value a legacy callback gets for a failed request. */
function legacyError(e) {
  const v = e.legacy;
  if (e.code === 'remote' && isObject(v) && v._Error) return rebuildError(v);
  return v;
}

/**
 * The Error a promise-returning `request()` rejects with: `code` is the core's stable error
 * kind (`timeout`, `disconnected`, `closed`, `not_connected`, `remote`, ...), `error` the value
 * the legacy callback would have received, and for a remote error `remote` is the peer's own
 * error value and `cause` the rebuilt Error when the peer sent one.
 */
class IrisError extends Error {
  constructor(e) {
    const v = e.legacy;
    let message = e.message;
    let cause;
    if (e.code === 'remote') {
      if (isObject(v) && v._Error) {
        cause = rebuildError(v);
        message = `${cause.name}: ${cause.message}`;
      } else if (isObject(v) && typeof v.error === 'string') {
        message = v.error;
      } else {
        message = `remote error: ${JSON.stringify(v)}`;
      }
    } else if (isObject(v) && typeof v.error === 'string') {
      message = v.error;
    }
    super(message, cause ? { cause } : undefined);
    this.name = 'IrisError';
    this.code = e.code;
    this.error = legacyError(e);
    if (e.code === 'remote') this.remote = v;
  }
}

/** An error thrown synchronously by the addon ("kind: text") as {code, message, legacy}. */
function nativeThrow(ex) {
  const m = /^([a-z_]+): /.exec(ex.message);
  const code = m ? m[1] : 'config';
  return { code, message: ex.message, legacy: { error: ex.message } };
}

const CLOSED_ERROR = { code: 'closed', message: 'closed', legacy: { error: 'Closed', closed: true } };

/** Throws `ex` on the next tick: the native caller cannot do anything with it, so it surfaces
 * as an uncaught exception, as it would in plain Node. */
function rethrowLater(ex) {
  process.nextTick(() => {
    throw ex;
  });
}

/** Handles one batch of native entries (a JSON array text): each goes to `entry`; the first
 * exception a listener throws is rethrown once the whole batch is handled, so one listener
 * cannot make the others miss their entries. A batch that does not parse goes to `onBadBatch`. */
function runBatch(text, entry, onBadBatch) {
  let entries;
  try {
    entries = JSON.parse(text);
  } catch (ex) {
    onBadBatch(ex);
    return;
  }
  let failure = null;
  for (let i = 0; i < entries.length; i++) {
    try {
      entry(entries[i]);
    } catch (ex) {
      failure = failure || ex;
    }
  }
  if (failure) rethrowLater(failure);
}

function pemText(v) {
  if (v === undefined || v === null) return undefined;
  if (Buffer.isBuffer(v) || v instanceof Uint8Array) return Buffer.from(v).toString('utf8');
  return String(v);
}

function nativeCertificates(c) {
  const out = { key: pemText(c.key), cert: pemText(c.cert || c.crt) };
  if (c.ca !== undefined && c.ca !== null) {
    const list = (Array.isArray(c.ca) ? c.ca : [c.ca]).map(pemText).filter((x) => x);
    if (list.length) out.ca = list;
  }
  return out;
}

// Options beyond legacy that are handed to the core unchanged (the v2 security policy, limits,
// reconnect backoff). A bad value is a configuration error thrown by the constructor.
const PASS_THROUGH = [
  'security',
  'refuseWeakSecret',
  'serverPins',
  'pinStore',
  'expectServerUuid',
  'clientCertUuid',
  'reconnectInitial',
  'reconnectMax',
  'maxLine',
  'authTimeout',
  'maxUnauthenticated',
  'maxHandshakeLine',
  'maxUnauthenticatedBytes',
  'maxRoutesPerPeer',
  'routerEventQueue',
  'maxConnections',
  'maxPending',
  'maxQueueBytes',
  'eventQueue',
];

/** `host` and `port` of a `host:port` address (IPv6 hosts without brackets). */
function splitAddress(address) {
  const s = String(address || '');
  const i = s.lastIndexOf(':');
  if (i < 0) return { host: s, port: undefined };
  const port = Number(s.slice(i + 1));
  return { host: s.slice(0, i).replace(/^\[|\]$/g, ''), port: Number.isInteger(port) ? port : undefined };
}

const familyOf = (host) => (host.includes(':') ? 'IPv6' : 'IPv4');

/**
 * What user code reads of legacy's `stream.tlsStream` (the TLS socket), read-only: the socket
 * itself stays in the core, where nothing can write unsigned or unencrypted lines to it.
 * `end()`/`destroy()` end the stream; 'end' and 'close' are emitted when it has ended.
 */
class TlsStreamShim extends EventEmitter {
  constructor(stream) {
    super();
    Object.defineProperty(this, '_stream', { value: stream });
    const { host, port } = splitAddress(stream.address);
    this.remoteAddress = host;
    this.remotePort = port;
    this.remoteFamily = familyOf(host);
    this.encrypted = true;
    this.destroyed = false;
  }

  end() {
    this._stream.end();
    return this;
  }

  destroy() {
    this._stream.end();
    return this;
  }

  _ended(error) {
    this.destroyed = true;
    if (!error) this.emit('end');
    else if (this.listenerCount('error')) this.emit('error', error);
    // Later, as a socket's: after what the stream's end set off (tlsServer.close's callback).
    setImmediate(() => this.emit('close', !!error));
  }
}

/**
 * What user code reads of legacy's `rpc.tlsServer` (the listening `tls.Server`): `address()`,
 * `listening`, and `close(cb)`, which stops accepting connections (streams already up go on)
 * and calls `cb` once none is left, as Node's does.
 */
class TlsServerShim extends EventEmitter {
  constructor(iface) {
    super();
    Object.defineProperty(this, '_iface', { value: iface });
    this.listening = false;
  }

  address() {
    const a = this._iface.localAddress;
    if (!a || !this.listening) return null;
    const { host, port } = splitAddress(a);
    return { address: host, family: familyOf(host), port };
  }

  close(callback) {
    if (!this.listening) {
      const err = new Error('Server is not running.');
      err.code = 'ERR_SERVER_NOT_RUNNING';
      if (callback) process.nextTick(callback, err);
      return this;
    }
    this.listening = false;
    this._iface._stopListening(() => {
      this.emit('close');
      if (callback) callback();
    });
    return this;
  }
}

/** The stream of one authenticated peer, as legacy passes it to listeners. */
class Stream {
  constructor(iface, sid, uuid, address, designation, mac, cipher, mode) {
    Object.defineProperty(this, '_iface', { value: iface });
    Object.defineProperty(this, '_sid', { value: sid });
    // Settlements of its requests held back until its 'disconnect' has been emitted; requests
    // not settled yet; set once it has ended ('stream::end' waits for its requests to settle).
    Object.defineProperty(this, '_failed', { value: [] });
    Object.defineProperty(this, '_open', { value: 0, writable: true });
    Object.defineProperty(this, '_ending', { value: null, writable: true });
    this.uuid = uuid;
    this.address = address;
    this.designation = designation === null ? undefined : designation;
    this.mac = mac === null ? undefined : mac;
    // As legacy: the cipher's name when lines are encrypted, else undefined ('aes-256-cbc' in
    // the legacy session mode, 'chacha20-poly1305' in v2). Beyond legacy: the session mode.
    this.cipher = cipher === true ? (mode === 'v2' ? 'chacha20-poly1305' : 'aes-256-cbc') : undefined;
    this.mode = mode;
    this.connected = true;
    this.tlsStream = new TlsStreamShim(this);
  }

  /** Closes this stream; a client reconnects after a second. */
  end() {
    this._iface._endStream(this._sid);
  }
}

/** What Client and Server share (legacy `Interface`). */
class Interface extends EventEmitter {
  #native = null;
  #byId = new Map();
  /** Streams by uuid, oldest first; `streams[uuid]` is the newest (legacy: the last to connect). */
  #byUuid = new Map();
  #count = 0;
  #unlistenWaiters = [];
  #calls = new Map();
  #nextCall = 0;
  #pingTimer = null;
  #closePromise = null;
  #resolveClosed = null;
  #nativeClosed = false;

  constructor(options) {
    super();
    if (!isObject(options)) throw new Error('iris-rpc options - missing options argument');
    if (!options.auth && !options.secret) throw new Error("iris-rpc options - missing 'auth' argument");
    // Legacy required a uuid; a random one is generated here when there is none.
    this.uuid = options.uuid ? String(options.uuid) : crypto.randomUUID();
    this.designation = options.designation;
    this.mac = options.mac;
    this.filters = [];
    this.listeners_ = [this];
    this.streams = {};
    this.timeout = options.timeout || 60 * 1000;
    this.pingFreq = options.pingFreq || 3 * 1000;
    this.pingDataObject = options.pingDataObject;
    this.rejectUnauthorized = options.rejectUnauthorized || false;
    // Beyond legacy: a handler's Error goes to the peer without its stack unless this is set.
    this.sendStack = options.sendStack === true;
    // Unlike legacy, `cipher: false` on the instance counts too (legacy only honoured the
    // module-wide config.cipher).
    this.cipher = options.cipher === undefined || options.cipher === null ? config.cipher : options.cipher;
    this.routes = { local: options.routes || null, remote: {} };
    this.digestCallback = null;
  }

  // ---- construction (used by Client and Server) ----------------------------------------

  _nativeOptions(options) {
    const o = {
      auth: String(options.auth || options.secret),
      uuid: this.uuid,
      designation: this.designation ? String(this.designation) : '',
      cipher: this.cipher !== false && this.cipher !== 0 && this.cipher !== '',
    };
    if (typeof this.cipher === 'string') o.cipher = this.cipher;
    if (this.mac !== undefined && this.mac !== null) o.mac = String(this.mac);
    if (options.certificates) o.certificates = nativeCertificates(options.certificates);
    if (options.timeout) o.timeout = Number(options.timeout);
    if (options.rejectUnauthorized) o.rejectUnauthorized = true;
    if (options.signatures === false) o.signatures = false;
    const routes = options.routes;
    if (Array.isArray(routes)) o.routes = routes.map(String);
    else if (isObject(routes)) o.routes = Object.keys(routes);
    for (const k of PASS_THROUGH) if (options[k] !== undefined) o[k] = options[k];
    return o;
  }

  _open(kind, nativeOptions) {
    const onBatch = (text) => this.#onBatch(text);
    this.#native = native.NativePeer[kind](JSON.stringify(nativeOptions), onBatch);
  }

  _startPing(options) {
    if (!(options.ping || options.pingFreq || options.pingDataObject)) return;
    const tick = () => {
      this.#pingTimer = null;
      if (this.#closePromise) return;
      this.ping();
      this.#pingTimer = setTimeout(tick, this.pingFreq);
    };
    this.#pingTimer = setTimeout(tick, 0);
  }

  // ---- the legacy API -------------------------------------------------------------------

  /**
   * Sends `msg` to every connected stream, or `dispatch(uuid, msg)` to one. With a callback it
   * is a request: `callback(err, resp)`.
   */
  dispatch(uuid, msg, callback) {
    if (isObject(uuid)) {
      callback = msg;
      msg = uuid;
      if (callback) {
        if (!this.#count) {
          return callback({ error: 'RPC stream is not connected', disconnected: true, req: msg });
        }
        if (this.#count > 1) {
          return callback({ error: 'Multiple streams connected (not supported by RPC)', req: msg });
        }
        this.#request(null, msg, legacyDone(callback));
        return;
      }
      if (this.#native) this.#native.dispatch(JSON.stringify(msg));
      return;
    }
    // Beyond legacy: a uuid routed through a peer (a router) is reached too.
    const stream = this.streams[uuid];
    if (!stream && !(this.#native && this.#native.reaches(String(uuid)))) {
      logError('iris-rpc: no such stream present:', uuid);
      if (callback) callback(new Error('iris-rpc: no such stream present'));
      return;
    }
    if (!msg) {
      logError('iris-rpc: dispatch() got empty message');
      if (callback) callback(new Error('iris-rpc: no such stream present'));
      return;
    }
    if (callback) this.#request(String(uuid), msg, legacyDone(callback));
    else this.#native.dispatchTo(String(uuid), JSON.stringify(msg));
  }

  /**
   * Sends `msg` on `stream` (legacy `dispatchToStream`); with a callback it is a request:
   * `callback(err, resp)`. It goes to the stream's uuid: with two streams of one uuid, the
   * newest.
   */
  dispatchToStream(stream, msg, callback) {
    if (!(stream instanceof Stream)) throw new TypeError('iris-rpc: dispatchToStream() needs a stream');
    if (callback) {
      this.#request(stream.uuid, msg, legacyDone(callback), stream);
    } else if (this.#native && stream.connected) {
      this.#native.dispatchTo(stream.uuid, JSON.stringify(msg));
    }
    return true;
  }

  /**
   * `await rpc.request(msg)` or `await rpc.request(uuid, msg)`: the response, or a rejection
   * with an IrisError carrying the peer's error (see IrisError).
   */
  request(uuid, msg) {
    if (isObject(uuid)) {
      msg = uuid;
      uuid = null;
    } else {
      uuid = String(uuid);
    }
    return new Promise((resolve, reject) => {
      this.#request(uuid, msg, (ok, payload) => {
        if (!ok) reject(new IrisError(payload));
        else if (payload.err !== undefined && payload.err !== null) {
          reject(new IrisError({ code: 'remote', message: 'remote error', legacy: payload.err }));
        } else resolve(payload.resp);
      });
    });
  }

  /** Adds `fn(msg, stream, next(err, disallow))`, run in order before delivery. */
  filter(callback) {
    this.filters.push(callback);
  }

  /** Sets the callback that sees every event message: `fn(msg, uuid, stream)`. */
  digest(callback) {
    this.digestCallback = callback;
  }

  /** Also emits events (connect, disconnect, ops, ...) on `listener`. */
  registerListener(listener) {
    this.listeners_.push(listener);
  }

  /** Sets the `data` of ping messages (kept by reference, as in legacy). */
  setPingDataObject(o) {
    this.pingDataObject = o;
  }

  /** Sends `{op: 'ping', data: pingDataObject}` to every stream now. */
  ping() {
    this.dispatch({ op: 'ping', data: this.pingDataObject });
  }

  /** True while any stream is authenticated and up. */
  isConnected() {
    return this.#native ? this.#native.isConnected() : false;
  }

  /**
   * Ends every stream and stops listening or reconnecting; pending requests settle with a
   * `closed` error. Resolves when everything is done; the process can exit afterwards.
   */
  close() {
    if (!this.#closePromise) {
      this.#closePromise = new Promise((resolve) => {
        this.#resolveClosed = resolve;
      });
      if (this.#pingTimer) clearTimeout(this.#pingTimer);
      this.#pingTimer = null;
      if (this.#nativeClosed || !this.#native) this.#closed();
      else this.#native.close();
    }
    return this.#closePromise;
  }

  /** Emits on this object and on every registered listener (legacy `emitToListeners`). */
  emitToListeners(...args) {
    for (const listener of this.listeners_) {
      try {
        listener.emit(...args);
      } catch (ex) {
        if (args[0] === 'rpc::error') {
          // An 'rpc::error' listener that throws would loop forever: let it surface instead.
          process.nextTick(() => {
            throw ex;
          });
        } else {
          logError('iris-rpc: error while processing message');
          logError(ex && ex.stack);
          this.emitToListeners('rpc::error', ex);
        }
      }
    }
  }

  // ---- internals ------------------------------------------------------------------------

  _endStream(sid) {
    if (this.#native) this.#native.endStream(sid);
  }

  /** tlsServer.close(): stops accepting; `done` once no stream is left. */
  _stopListening(done) {
    if (this.#native && !this.#nativeClosed) this.#native.stopListening();
    this.#unlistenWaiters.push(done);
    this.#checkUnlisten();
  }

  #checkUnlisten() {
    if (!this.#unlistenWaiters.length || this.#byId.size) return;
    for (const done of this.#unlistenWaiters.splice(0)) process.nextTick(done);
  }

  /** Settles a call; an exception from the callback is logged, as legacy does for answers. */
  #settle(call, ok, payload) {
    const stream = call.stream;
    if (stream) stream._open--;
    try {
      call.done(ok, payload);
    } catch (ex) {
      logError('Error in callback for response:', ok ? payload : payload.legacy);
      logError(ex && ex.stack);
    }
    if (stream && stream._ending && !stream._open) this.#ended(stream);
  }

  #request(uuid, msg, done, stream) {
    const call = { done, msg, ts: Date.now(), stream: null };
    if (this.#closePromise || this.#nativeClosed || !this.#native) {
      process.nextTick(() => this.#settle(call, false, CLOSED_ERROR));
      return;
    }
    let text;
    try {
      text = JSON.stringify(msg);
    } catch (ex) {
      const failure = { code: 'config', message: ex.message, legacy: { error: ex.message } };
      process.nextTick(() => this.#settle(call, false, failure));
      return;
    }
    // The stream it goes to: its disconnect is emitted before the request fails, and filters
    // see the answer with it (legacy order).
    call.stream = stream || (uuid === null ? this.#onlyStream() : this.streams[uuid]) || null;
    if (call.stream) call.stream._open++;
    this.#nextCall = (this.#nextCall + 1) >>> 0;
    const id = this.#nextCall;
    this.#calls.set(id, call);
    try {
      this.#native.request(id, uuid, text);
    } catch (ex) {
      this.#calls.delete(id);
      const failure = nativeThrow(ex);
      process.nextTick(() => this.#settle(call, false, failure));
    }
  }

  #onlyStream() {
    for (const k in this.streams) return this.streams[k];
    return null;
  }

  /** An answer arrived: filters see it first, as `{_resp, err, resp}` (legacy). */
  #answered(id, call, answer) {
    const seen = this.listenerCount('stream::message') > 0;
    if (!this.filters.length && !seen) {
      this.#settle(call, true, answer);
      return;
    }
    const msg = { _resp: String(id) };
    if ('err' in answer) msg.err = answer.err;
    if ('resp' in answer) msg.resp = answer.resp;
    if (!this.filters.length) {
      this.#settle(call, true, answer);
    } else {
      this.#filtered(msg, call.stream, () => this.#settle(call, true, answer), () => {
        // Legacy drops a refused answer: the request times out as if none had come.
        const timeout = (isObject(call.msg) && call.msg.op_timeout) || this.timeout;
        const failure = {
          code: 'timeout',
          message: 'Connection Timed Out',
          legacy: { error: 'Connection Timed Out', timeout: this.timeout, req: call.msg },
        };
        setTimeout(() => this.#settle(call, false, failure), Math.max(0, call.ts + timeout - Date.now()));
      });
    }
    if (seen) this.emit('stream::message', msg, call.stream);
  }

  #closed() {
    this.#nativeClosed = true;
    if (this.#pingTimer) clearTimeout(this.#pingTimer);
    this.#pingTimer = null;
    if (this.#resolveClosed) {
      this.#resolveClosed();
      this.#resolveClosed = null;
      this.emit('close');
    }
  }

  #onBatch(text) {
    runBatch(text, (e) => this.#entry(e), (ex) => this.emitToListeners('rpc::error', ex));
  }

  #entry(e) {
    // Exceptions thrown by user code (listeners, filters, callbacks) are logged and emitted
    // as 'rpc::error', as legacy does: they never take the process down.
    try {
      this.#handle(e);
    } catch (ex) {
      logError('iris-rpc: error while processing message');
      logError(ex && ex.stack);
      this.emitToListeners('rpc::error', ex);
    }
  }

  #handle(e) {
    switch (e[0]) {
      case MESSAGE: {
        const stream = this.#byId.get(e[1]);
        this.#incoming(e[3], stream, e[2], null);
        if (this.listenerCount('stream::message')) this.emit('stream::message', e[3], stream);
        break;
      }
      case SETTLED: {
        const call = this.#calls.get(e[1]);
        if (!call) break;
        this.#calls.delete(e[1]);
        if (e[2] === 1) {
          this.#answered(e[1], call, e[3]);
        } else if (e[3].code === 'disconnected' && call.stream && this.#byId.get(call.stream._sid) === call.stream) {
          // Its stream's 'disconnect' comes first (legacy order): held until then.
          call.stream._failed.push(() => this.#settle(call, false, e[3]));
        } else {
          this.#settle(call, false, e[3]);
        }
        break;
      }
      case REQUEST: {
        const stream = this.#byId.get(e[1]);
        this.#incoming(e[4], stream, e[3], e[2]);
        if (this.listenerCount('stream::message')) this.emit('stream::message', { _req: String(e[2]), req: e[4] }, stream);
        break;
      }
      case CONNECT: {
        const stream = new Stream(this, e[1], e[2], e[3], e[4], e[5], e[6], e[7]);
        this.#byId.set(e[1], stream);
        const same = this.#byUuid.get(stream.uuid);
        if (same) same.push(stream);
        else {
          this.#byUuid.set(stream.uuid, [stream]);
          this.#count++;
        }
        this.streams[stream.uuid] = stream;
        this.emitToListeners('connect', stream.address, stream.uuid, stream);
        break;
      }
      case DISCONNECT: {
        const stream = this.#byId.get(e[1]);
        if (!stream) break;
        this.#byId.delete(e[1]);
        stream.connected = false;
        // Legacy order: 'disconnect' while the stream is still in `streams`, then its pending
        // requests fail, then it is forgotten; 'stream::end' (or 'stream::error') last.
        this.emitToListeners('disconnect', stream.uuid, stream);
        for (const fail of stream._failed.splice(0)) fail();
        this.#forget(stream);
        const reason = e[2];
        stream._ending = {
          error: /^(read error|dead peer)/.test(reason)
            ? new IrisError({ code: 'io', message: reason, legacy: { error: reason } })
            : null,
        };
        // Once all its requests have failed (some settlements may still be on their way).
        if (!stream._open) this.#ended(stream);
        break;
      }
      case LISTEN:
        this._listened(e[1] ? legacyListenError(e[1]) : undefined, e[2]);
        if (e[1]) this.#nativeClosed = true;
        break;
      case CONN_ERROR: {
        const err = e[1];
        if (config.verbose > 1 || (config.verbose && err.code !== 'io')) {
          console.log('iris-rpc tls stream error:', err.message, ' | ', peerLabel(this.designation, e[2]));
        }
        const error = new IrisError(err);
        this.emit('rpc::stream::error', error, e[2]);
        // Legacy emits 'stream::error' for a connection that failed before authenticating too,
        // with a stream that has no uuid.
        if (this.listenerCount('stream::error')) this.emit('stream::error', error, { address: e[2] === null ? undefined : e[2] });
        break;
      }
      case CLOSED:
        for (const stream of this.#byId.values()) for (const fail of stream._failed.splice(0)) fail();
        this.#closed();
        break;
      default:
        break;
    }
  }

  /** The last of a stream: 'stream::end' (or 'stream::error'), as legacy emits them. */
  #ended(stream) {
    const { error } = stream._ending;
    if (stream._ending.done) return;
    stream._ending.done = true;
    // Legacy's socket listeners emitted these first; the user's own socket listeners ran after.
    if (error) this.emit('stream::error', error, stream);
    else this.emit('stream::end', stream);
    stream.tlsStream._ended(error);
    this.#checkUnlisten();
  }

  /** Forgets an ended stream; an older stream of the same uuid takes its place (as in the core). */
  #forget(stream) {
    const same = this.#byUuid.get(stream.uuid);
    if (!same) return;
    const i = same.indexOf(stream);
    if (i >= 0) same.splice(i, 1);
    if (!same.length) {
      this.#byUuid.delete(stream.uuid);
      if (this.streams[stream.uuid] === stream) delete this.streams[stream.uuid];
      this.#count--;
    } else if (this.streams[stream.uuid] === stream) {
      this.streams[stream.uuid] = same[same.length - 1];
    }
  }

  /** Runs the filters (legacy order and arguments) on `msg`, then `pass()` or `refuse(err)`. */
  #filtered(msg, stream, pass, refuse) {
    const filters = this.filters.slice();
    const next = () => {
      const filter = filters.shift();
      if (!filter) return pass();
      try {
        filter.call(this, msg, stream, (err, disallow) => {
          if (err) return refuse(err);
          if (disallow) return refuse(disallow);
          next();
        });
      } catch (ex) {
        // Legacy: a filter that throws ends the stream the message came on.
        logError(ex && ex.stack);
        if (stream && stream.connected) stream.end();
      }
    };
    next();
  }

  #incoming(msg, stream, uuid, rid) {
    if (!this.filters.length) {
      this.#digest(msg, stream, uuid, rid);
      return;
    }
    this.#filtered(
      msg,
      stream,
      () => this.#digest(msg, stream, uuid, rid),
      (err) => {
        if (rid !== null) this.#respond(rid, err, undefined);
      },
    );
  }

  #digest(msg, stream, uuid, rid) {
    if (rid === null) {
      try {
        if (this.digestCallback) this.digestCallback(msg, uuid, stream);
        if (msg.op) this.emitToListeners(msg.op, msg, uuid, stream);
      } catch (ex) {
        logError('iris-rpc: error while processing message');
        logError(ex && ex.stack);
        this.emitToListeners('rpc::error', ex, msg);
      }
      return;
    }
    const listeners = this.listeners(msg.op);
    if (listeners.length === 1) {
      try {
        listeners[0].call(this, msg, (err, resp) => this.#respond(rid, err, resp));
      } catch (ex) {
        logError('iris-rpc: responding with error', ex);
        this.#respond(rid, ex, undefined);
      }
    } else if (listeners.length) {
      this.#respond(rid, { error: `Too many handlers for '${msg.op}'` }, undefined);
    } else {
      this.#respond(rid, { error: `No such handler '${msg.op}'` }, undefined);
    }
  }

  /** Answers request `rid` as legacy's JSON.stringify writes `{_resp, err, resp}`: an
   * undefined `err` or `resp` is left out (`cb()` is `{"_resp":ID}`), null is written. */
  #respond(rid, err, resp) {
    if (!this.#native) return;
    const errText = err === undefined ? undefined : JSON.stringify(wireError(err, this.sendStack));
    const respText = resp === undefined ? undefined : JSON.stringify(resp);
    this.#native.respond(rid, errText === undefined ? null : errText, respText === undefined ? null : respText);
  }

  _listened() {}
}

function legacyListenError(e) {
  const err = new Error(e.message);
  err.code = e.code;
  return err;
}

/**
 * Adapts a legacy `callback(err, resp)` to the internal settle function: an answer gives
 * exactly the `err` and `resp` the peer sent (undefined when absent, an `_Error` rebuilt), a
 * local failure (timeout, disconnect, ...) the legacy error value alone.
 */
function legacyDone(callback) {
  return (ok, payload) => {
    if (!ok) return callback(legacyError(payload));
    const err = payload.err;
    callback(isObject(err) && err._Error ? rebuildError(err) : err, payload.resp);
  };
}

/** An iris-rpc client: `new Client({address, auth, certificates, uuid, ...})`. */
class Client extends Interface {
  constructor(options) {
    super(options);
    if (!options.address) throw new Error('iris-rpc::Client requires address argument');
    const o = this._nativeOptions(options);
    o.address = Array.isArray(options.address) ? options.address.map(String) : String(options.address);
    this._open('client', o);
    this._startPing(options);
  }
}

/** An iris-rpc server: `new Server({port, auth, certificates, ...}, initCallback(err))`. */
class Server extends Interface {
  constructor(options, initCallback) {
    super(options);
    if (!options.port) throw new Error('iris-rpc::Server requires port argument');
    if (!options.certificates) throw new Error("iris-rpc options - missing 'certificates' argument");
    this.initCallback = initCallback;
    this.localAddress = undefined;
    this.localPort = undefined;
    this.tlsServer = new TlsServerShim(this);
    const o = this._nativeOptions(options);
    o.port = typeof options.port === 'string' ? options.port : Number(options.port);
    if (options.host) o.host = String(options.host);
    this._open('server', o);
    this._startPing(options);
  }

  _listened(err, address) {
    if (err) {
      logError(`iris-rpc server listen error on ${this.localAddress || ''}`, err.message);
    } else {
      this.localAddress = address;
      this.localPort = Number(address.slice(address.lastIndexOf(':') + 1));
      this.tlsServer.listening = true;
    }
    this.emitToListeners('server::listen', err);
    if (this.initCallback) this.initCallback(err);
  }
}

/** Several Clients and Servers built from one config, used as one (legacy `Multiplexer`). */
function Multiplexer(options, config, rpcTitle) {
  const self = this;
  self.active = {};
  self.links = createFromConfig(options, config, rpcTitle);
  const links = () => Object.values(self.links);

  self.on = function (op, callback) {
    for (const rpc of links()) rpc.on(op, callback);
  };

  self.on('connect', (address, uuid, stream) => {
    self.active[uuid] = stream;
  });

  self.on('disconnect', (uuid) => {
    delete self.active[uuid];
  });

  self.registerListener = function (listener) {
    for (const rpc of links()) rpc.registerListener(listener);
  };

  self.dispatch = function (uuid, msg, callback) {
    const args = arguments;
    if (isObject(uuid)) {
      for (const rpc of links()) rpc.dispatch(...args);
      return;
    }
    const rpc = links().find((s) => !!s.streams[uuid]);
    if (!rpc) {
      logError('iris-rpc: no such stream present:', uuid);
      if (callback) callback(new Error('iris-rpc: no such stream present'));
      return;
    }
    rpc.dispatch(...args);
  };

  /** Closes every link. */
  self.close = function () {
    return Promise.all(links().map((rpc) => rpc.close())).then(() => undefined);
  };
}

// Entry kinds of a router batch (bindings-node/src/router.rs).
const R_LISTEN = 0;
const R_CONNECT = 1;
const R_DISCONNECT = 2;
const R_REFUSED = 3;
const R_CONN_ERROR = 5;
const R_CLOSED = 7;
const SIDES = ['frontend', 'backend'];

function portOf(address) {
  return Number(address.slice(address.lastIndexOf(':') + 1));
}

function sideName(side) {
  if (side === undefined || side === null) return 'frontend';
  const s = String(side);
  if (s !== 'frontend' && s !== 'backend') throw new Error("iris-rpc::Router side must be 'frontend' or 'backend'");
  return s;
}

/**
 * A router (legacy constructor shape): a frontend server on `port` relaying to a backend
 * client (`client: {address, auth?, certificates?}`, a router in front of a server) or a
 * backend server (`server: {port, auth?, certificates?}`, clients on both sides meet in the
 * middle). The backend's secret and certificates default to the frontend's.
 *
 * Events: 'listen'(err), 'connect'(side, uuid, address, designation, mode) (mode: 'v2' or
 * 'legacy', the session mode negotiated with that peer), 'disconnect'(side, uuid,
 * reason), 'refused'(uuid, address), 'error'(side, err, address) (only when listened to),
 * 'close'. Legacy's Router could not be constructed at all.
 */
class Router extends EventEmitter {
  #native = null;
  #closePromise = null;
  #resolveClosed = null;
  #nativeClosed = false;

  constructor(options, initCallback) {
    super();
    if (!isObject(options)) throw new Error('iris-rpc options - missing options argument');
    if (!options.auth && !options.secret) throw new Error("iris-rpc options - missing 'auth' argument");
    if (!options.port) throw new Error('iris-rpc::Router requires port argument');
    if (!options.certificates) throw new Error("iris-rpc options - missing 'certificates' argument");
    const back = options.client || options.server;
    if (!isObject(back)) throw new Error('iris-rpc::Router() requires client or server');
    const backendIsServer = !options.client;
    if (backendIsServer && !back.port) throw new Error('iris-rpc::Router requires server.port');
    if (!backendIsServer && !back.address) throw new Error('iris-rpc::Router requires client.address');

    this.initCallback = initCallback;
    // The uuid the backend sees the router as; the frontend gets a uuid of its own.
    this.uuid = back.uuid ? String(back.uuid) : options.uuid ? String(options.uuid) : crypto.randomUUID();
    this.designation = options.designation ? String(options.designation) : 'router';
    this.localAddress = undefined;
    this.localPort = undefined;
    this.backendAddress = undefined;
    this.backendPort = undefined;
    this.listening = false;

    const front = this.#sideOptions(options, {});
    front.uuid = crypto.randomUUID();
    front.port = typeof options.port === 'string' ? options.port : Number(options.port);
    if (options.host) front.host = String(options.host);

    const backend = this.#sideOptions(options, back);
    backend.uuid = this.uuid;
    if (backendIsServer) {
      backend.port = typeof back.port === 'string' ? back.port : Number(back.port);
      if (back.host) backend.host = String(back.host);
    } else {
      backend.address = Array.isArray(back.address) ? back.address.map(String) : String(back.address);
    }

    const onBatch = (text) => this.#onBatch(text);
    // Ours: join a cluster of routers over NATS (docs/CLUSTER.md): a string of servers, or
    // { servers, name, token, user, password, nkeySeed, credentialsFile, requireTls, ... }.
    const cluster = options.cluster === undefined || options.cluster === null ? null : JSON.stringify(options.cluster);
    this.#native = native.NativeRouter.start(
      JSON.stringify(front),
      JSON.stringify(backend),
      backendIsServer,
      cluster,
      onBatch,
    );
  }

  /** Core options of one side: the side's own values first, then the router's. */
  #sideOptions(top, side) {
    const pick = (k) => (side[k] !== undefined && side[k] !== null ? side[k] : top[k]);
    const cipherOpt = pick('cipher');
    const cipher = cipherOpt === undefined || cipherOpt === null ? config.cipher : cipherOpt;
    const o = {
      auth: String(side.auth || side.secret || top.auth || top.secret),
      designation: side.designation ? String(side.designation) : this.designation,
      cipher: typeof cipher === 'string' ? cipher : cipher !== false && cipher !== 0 && cipher !== '',
    };
    const certificates = side.certificates || top.certificates;
    if (certificates) o.certificates = nativeCertificates(certificates);
    const timeout = pick('timeout');
    if (timeout) o.timeout = Number(timeout);
    if (pick('rejectUnauthorized')) o.rejectUnauthorized = true;
    if (pick('signatures') === false) o.signatures = false;
    for (const k of PASS_THROUGH) if (pick(k) !== undefined) o[k] = pick(k);
    return o;
  }

  /**
   * Peers connected on `side` ('frontend', the default, or 'backend'):
   * `[{uuid, address, designation, cipher, mode}]`.
   */
  peers(side) {
    const s = sideName(side);
    if (!this.#native || this.#nativeClosed) return [];
    return this.#native.peers(s).map((p) => ({
      uuid: p.uuid,
      address: p.address,
      designation: p.designation === null ? undefined : p.designation,
      cipher: p.cipher,
      mode: p.mode,
    }));
  }

  /** Uuids reachable through peers of `side`, each mapped to the peer's uuid that reaches it. */
  routes(side) {
    const s = sideName(side);
    const out = {};
    if (!this.#native || this.#nativeClosed) return out;
    for (const r of this.#native.routes(s)) out[r.uuid] = r.via;
    return out;
  }

  /** Resources on `side` (connections, streams, pending requests, ...), or null when not running. */
  stats(side) {
    const s = sideName(side);
    if (!this.#native || this.#nativeClosed) return null;
    return this.#native.stats(s);
  }

  /** Stops both sides. Resolves when everything is closed; the process can exit afterwards. */
  close() {
    if (!this.#closePromise) {
      this.#closePromise = new Promise((resolve) => {
        this.#resolveClosed = resolve;
      });
      if (this.#nativeClosed || !this.#native) this.#closed();
      else this.#native.close();
    }
    return this.#closePromise;
  }

  #closed() {
    this.#nativeClosed = true;
    this.listening = false;
    if (this.#resolveClosed) {
      this.#resolveClosed();
      this.#resolveClosed = null;
      this.emit('close');
    }
  }

  #onBatch(text) {
    runBatch(text, (e) => this.#entry(e), rethrowLater);
  }

  #entry(e) {
    switch (e[0]) {
      case R_LISTEN: {
        let err;
        if (e[1]) {
          err = legacyListenError(e[1]);
          this.#nativeClosed = true;
          logError('iris-rpc router listen error:', err.message);
        } else {
          this.localAddress = e[2];
          this.localPort = portOf(e[2]);
          if (e[3]) {
            this.backendAddress = e[3];
            this.backendPort = portOf(e[3]);
          }
          this.listening = true;
        }
        this.emit('listen', err);
        if (this.initCallback) this.initCallback(err);
        break;
      }
      case R_CONNECT:
        this.emit('connect', SIDES[e[1]], e[2], e[3], e[4] === null ? undefined : e[4], e[5]);
        break;
      case R_DISCONNECT:
        this.emit('disconnect', SIDES[e[1]], e[2], e[3]);
        break;
      case R_REFUSED:
        if (config.verbose) logError('iris-rpc router: refused a peer claiming a uuid held on the other side:', e[1]);
        this.emit('refused', e[1], e[2]);
        break;
      case R_CONN_ERROR: {
        const err = new IrisError(e[2]);
        if (config.verbose > 1 || (config.verbose && e[2].code !== 'io')) {
          console.log('iris-rpc router stream error:', SIDES[e[1]], e[2].message, ' | ', peerLabel(null, e[3]));
        }
        // Connection errors are routine (a backend restarting): an unhandled 'error' event
        // must not bring the process down.
        if (this.listenerCount('error')) this.emit('error', SIDES[e[1]], err, e[3] === null ? undefined : e[3]);
        break;
      }
      case R_CLOSED:
        this.#closed();
        break;
      default:
        break;
    }
  }
}

/**
 * Builds Servers (entries with `port`) and Clients (entries with `address`) from a config: one
 * entry `{port|address, ...}`, or an object of named entries. Returns `{title: instance}`.
 */
function createFromConfig(options, config, rpcTitle) {
  function createInstance(options, config, rpcTitle) {
    const rpcConfig = Object.assign({}, options, config);
    if (!rpcConfig.port && !rpcConfig.address) {
      logError('Error:', rpcConfig);
      throw new Error('port or address required in rpc config');
    }
    if (rpcConfig.port && rpcConfig.address) {
      logError('Error:', rpcConfig);
      throw new Error('both port and address present in rpc config');
    }
    if (rpcConfig.port) {
      return new Server(rpcConfig, (err) => {
        if (!err) log(`${String(rpcTitle).toUpperCase()} RPC server listening on`, String(rpcConfig.port));
      });
    }
    return new Client(rpcConfig);
  }

  if (config.address || config.port) {
    const ret = {};
    ret[rpcTitle] = createInstance(options, config, rpcTitle || options.designation);
    return ret;
  }
  const ret = {};
  for (const title of Object.keys(config)) ret[title] = createInstance(options, config[title], title);
  return ret;
}

/**
 * Loads certificate files (legacy `Certificates`): `new Certificates('path/name')` reads
 * `name.key`, `name.crt` and optionally `name.ca`; `new Certificates({key, crt, ca})` names the
 * files. `initCertificates(cb)` fills `certificateData` with `{key, cert, ca}`.
 */
function Certificates(certificates) {
  const self = this;

  function locateCertificateFile(filename, ignore) {
    const file = filename;
    const parts = file.split('.');
    parts.splice(parts.length - 1, 0, 'local');
    const local = parts.join('.');
    if (fs.existsSync(local)) return local;
    if (!ignore && !fs.existsSync(file)) {
      console.log('Unable to locate certificate file:', file);
      throw new Error('Unable to locate certificate file');
    } else if (ignore && !fs.existsSync(file)) {
      return null;
    }
    return file;
  }

  self.initCertificates = function (callback) {
    if (self.verbose) console.log('iris-app: loading certificates from ', certificates);
    if (self.certificateData) {
      console.error('Warning! initCertificates() is called twice!');
      if (callback) callback();
      return;
    }
    let caChain;
    if (typeof certificates === 'string') {
      self.certificateData = {
        key: fs.readFileSync(locateCertificateFile(certificates + '.key')).toString(),
        cert: fs.readFileSync(locateCertificateFile(certificates + '.crt')).toString(),
        ca: [],
      };
      caChain = certificates + '.ca';
    } else {
      self.certificateData = {
        key: fs.readFileSync(locateCertificateFile(certificates.key)).toString(),
        cert: fs.readFileSync(locateCertificateFile(certificates.crt)).toString(),
        ca: [],
      };
      caChain = certificates.ca;
    }
    if (caChain) {
      const file = locateCertificateFile(caChain, true);
      if (file) {
        let cert = [];
        for (const line of fs.readFileSync(file).toString().split('\n')) {
          cert.push(line);
          if (/-END CERTIFICATE-/.test(line)) {
            self.certificateData.ca.push(cert.join('\n'));
            cert = [];
          }
        }
      }
    }
    if (callback) callback();
  };
}

/**
 * A fresh self-signed `{key, cert}` (PEM) for `names` (default localhost, 127.0.0.1, ::1), for
 * demos and tests.
 */
Certificates.selfSigned = function (names) {
  return native.selfSigned(names);
};

module.exports = {
  Client,
  Server,
  Multiplexer,
  Router,
  createFromConfig,
  config,
  Certificates,
};

/**
 * The process's metrics in the Prometheus text format (version 0.0.4): every Client, Server,
 * Multiplexer and Router in the process adds into them. Serve it as-is for Prometheus, e.g.
 * `res.setHeader('Content-Type', 'text/plain; version=0.0.4'); res.end(metrics())`.
 */
function metrics() {
  return native.metrics();
}

const LOG_LEVELS = { off: 0, error: 1, warn: 2, info: 3, debug: 4, trace: 5 };

/**
 * The core's log records, instead of stderr: `log.on('log', (record) => ...)` receives
 * `{ level, target, message, fields, spans }` for each record at `log.level` ('warn' by
 * default; 'error', 'info', 'debug', 'trace' or 'off') or above, where `spans` names the
 * connection (`{ name: 'connection', peer, designation, address, mode }`). Nothing is
 * collected while no listener is attached, and listening never keeps the process alive.
 */
class LogEmitter extends EventEmitter {
  #level = 'warn';

  constructor() {
    super();
    this.on('newListener', (event) => {
      if (event === 'log' && this.listenerCount('log') === 0) process.nextTick(() => this.#install());
    });
    this.on('removeListener', (event) => {
      if (event === 'log' && this.listenerCount('log') === 0) this.#install();
    });
  }

  get level() {
    return this.#level;
  }

  set level(level) {
    if (!(level in LOG_LEVELS)) throw new TypeError(`log.level must be one of ${Object.keys(LOG_LEVELS).join(', ')}`);
    this.#level = level;
    this.#install();
  }

  #install() {
    if (this.listenerCount('log') === 0) {
      native.setLogListener(undefined, 0);
      return;
    }
    native.setLogListener((text) => this.emit('log', JSON.parse(text)), LOG_LEVELS[this.#level]);
  }
}

const coreLog = new LogEmitter();

// Beyond legacy, not enumerable so the exports keep the legacy names exactly.
Object.defineProperty(module.exports, 'IrisError', { value: IrisError, enumerable: false });
Object.defineProperty(module.exports, 'metrics', { value: metrics, enumerable: false });
Object.defineProperty(module.exports, 'log', { value: coreLog, enumerable: false });
