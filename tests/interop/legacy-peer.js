// A legacy iris-rpc peer driven over stdio, for interop tests.
//
//   node legacy-peer.js '<config JSON>'
//
// config: { role: "server"|"client", auth, cipher (default true), uuid, designation, mac,
//           port (server), address (client; string or array), key, cert (PEM text),
//           timeout (ms), module (require path, default "iris-rpc"),
//           wire (report each request line as read: {"ev":"wire","text":..}) }
//
// stdin, one JSON command per line:
//   {"cmd":"dispatch","msg":{..}}               to every stream
//   {"cmd":"dispatch","uuid":"u","msg":{..}}    to one stream
//   {"cmd":"dispatchText","text":"{..}"}        this JSON object text, as written, to every
//                                                stream (signed and encrypted as legacy does):
//                                                legacy's dispatch would re-serialize it
//   {"cmd":"request","id":1,"msg":{..}[,"uuid":"u"]}  -> {"ev":"response","id":1,"err":..,"resp":..}
//   {"cmd":"connected"}                          -> {"ev":"connected","value":bool}
//   {"cmd":"exit"}
// stdout, one JSON event per line: ready, listen, connect, disconnect, message, response, error.
// The legacy package logs with console.log; that goes to stderr so stdout stays JSON lines.
'use strict';

const crypto = require('crypto');

const { out, readCommands } = require('./stdio');

const cfg = JSON.parse(process.argv[2]);
// With "wire": true, the exact text of every request line the package reads off a stream
// (after its line cipher), as {"ev":"wire","text":..}: the package hands that text to
// JSON.parse and keeps nothing else of it, so JSON.parse is where it can be seen.
if (cfg.wire) {
  const parse = JSON.parse;
  JSON.parse = function (text, reviver) {
    const v = parse(text, reviver);
    if (typeof text === 'string' && v && typeof v === 'object' && '_req' in v) {
      out({ ev: 'wire', text });
    }
    return v;
  };
}
const rpcModule = require(cfg.module || 'iris-rpc');
rpcModule.config.verbose = 0;
// Legacy honours only the module-wide switch for turning the cipher off.
rpcModule.config.cipher = cfg.cipher !== false;

const errorValue = (err) =>
  err instanceof Error ? { _Error: true, name: err.name, message: err.message } : err;

const options = {
  auth: cfg.auth,
  uuid: cfg.uuid,
  designation: cfg.designation,
  mac: cfg.mac,
  certificates: { key: cfg.key, cert: cfg.cert },
};
if (cfg.timeout) options.timeout = cfg.timeout;

let rpc;
if (cfg.role === 'server') {
  options.port = cfg.port;
  rpc = new rpcModule.Server(options, (err) => {
    out({ ev: 'listen', err: err ? String(err) : null });
    out({ ev: 'ready' });
  });
} else {
  options.address = cfg.address;
  rpc = new rpcModule.Client(options);
  out({ ev: 'ready' });
}

rpc.on('connect', (address, uuid, stream) => {
  out({ ev: 'connect', address, uuid, designation: stream.designation, mac: stream.mac });
});
rpc.on('disconnect', (uuid) => out({ ev: 'disconnect', uuid }));
rpc.digest((msg, uuid) => {
  out({ ev: 'message', msg, uuid });
  if (msg.op === 'hello') rpc.dispatch(uuid, { op: 'world', echo: msg.text });
});

// Request handlers, one listener each, as legacy requires.
rpc.on('add', (req, cb) => cb(null, { sum: req.a + req.b }));
rpc.on('fail', (req, cb) => cb(new TypeError('bad input')));
rpc.on('echo', (req, cb) => cb(null, { echo: req }));
rpc.on('slow', () => {});
// Requests reported in arrival order beside the digest's events, for order checks.
rpc.on('seq', (req, cb) => {
  out({ ev: 'message', msg: req, uuid: null });
  cb(null, true);
});

readCommands(handle);

function handle(c) {
  switch (c.cmd) {
    case 'dispatch':
      if (c.uuid) rpc.dispatch(c.uuid, c.msg);
      else rpc.dispatch(c.msg);
      break;
    case 'dispatchText':
      for (const s of Object.values(rpc.streams)) {
        let text = c.text;
        if (s.signatures) {
          const sig = crypto
            .createHmac('sha256', rpc.pk)
            .update(s.sequenceTX + '')
            .digest('hex')
            .substring(0, 16);
          s.sequenceTX++;
          text = text.replace(/}\s*$/, ',"_sig":"' + sig + '"}');
        }
        if (s.cipher) {
          const enc = crypto.createCipher(s.cipher, rpc.pk);
          text = enc.update(text, 'utf8', 'hex') + enc.final('hex');
        }
        s.writeTEXT(text);
      }
      break;
    case 'request': {
      const cb = (err, resp) =>
        out({ ev: 'response', id: c.id, err: err === undefined ? null : errorValue(err), resp });
      if (c.uuid) rpc.dispatch(c.uuid, c.msg, cb);
      else rpc.dispatch(c.msg, cb);
      break;
    }
    case 'connected':
      out({ ev: 'connected', value: Object.keys(rpc.streams).length > 0 });
      break;
    case 'exit':
      process.exit(0);
      break;
    default:
      out({ ev: 'error', error: 'unknown command ' + c.cmd });
  }
}
