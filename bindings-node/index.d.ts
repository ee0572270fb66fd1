// Types of the iris-rpc package (a drop-in replacement for the legacy iris-rpc 0.2.20).

import { EventEmitter } from 'events';

/** Module-wide settings. `cipher = false` turns the legacy line cipher off for new instances. */
export interface Config {
  /** 0 = quiet; 1 = basic; 2 = full. */
  verbose: number;
  /** Default of the `cipher` option. */
  cipher: boolean;
  debug: boolean;
}
export const config: Config;

/**
 * The process's metrics in the Prometheus text format (version 0.0.4): every instance in the
 * process adds into them. Beyond legacy (not an enumerable export).
 */
export function metrics(): string;

/** One of the core's log records. */
export interface LogRecord {
  level: 'error' | 'warn' | 'info' | 'debug' | 'trace';
  /** The Rust module that wrote it. */
  target: string;
  message: string;
  fields: Record<string, string>;
  /** The spans it happened in, outermost first (a stream's: `connection` with peer, designation, address, mode). */
  spans: Array<{ name: string } & Record<string, string>>;
}

/**
 * The core's log records, instead of stderr: listen for `log`; `level` (default 'warn') is the
 * most verbose level delivered. Beyond legacy (not an enumerable export).
 */
export const log: {
  level: 'off' | 'error' | 'warn' | 'info' | 'debug' | 'trace';
  on(event: 'log', listener: (record: LogRecord) => void): unknown;
  once(event: 'log', listener: (record: LogRecord) => void): unknown;
  off(event: 'log', listener: (record: LogRecord) => void): unknown;
  removeListener(event: 'log', listener: (record: LogRecord) => void): unknown;
};

/** PEM text (or Buffers holding it). */
export type PemInput = string | Buffer;

export interface CertificateSet {
  key: PemInput;
  cert?: PemInput;
  /** Legacy spelling of `cert`. */
  crt?: PemInput;
  ca?: PemInput | PemInput[];
}

/** Any JSON object; `op` names it. */
export interface Message {
  op?: string;
  [key: string]: unknown;
}

/** The `security` option: which session modes are spoken. */
export type Security = 'legacy' | 'prefer-v2' | 'require-v2';

/** The session mode negotiated with one peer. */
export type Mode = 'v2' | 'legacy';

export interface CommonOptions {
  /** The shared secret. */
  auth?: string;
  /** Legacy alias of `auth`. */
  secret?: string;
  /** This instance's uuid; generated when absent (legacy required it). */
  uuid?: string;
  designation?: string;
  mac?: string;
  certificates?: CertificateSet;
  /** The legacy line cipher; default `config.cipher` (on). */
  cipher?: boolean | 'aes-256-cbc';
  signatures?: boolean;
  /**
   * Beyond legacy: the session modes spoken. `'prefer-v2'` (default): the v2 session (mutual,
   * channel-bound authentication; AEAD records when the cipher is on) with peers that offer it,
   * the legacy protocol with iris-rpc 0.2.20 peers. `'legacy'`: exactly as 0.2.20.
   * `'require-v2'`: refuse legacy peers (a server emits `rpc::stream::error` with code `auth`;
   * a client never connects and emits the same). Any other value throws from the constructor.
   * The mode in use is each stream's `mode`.
   */
  security?: Security;
  /**
   * Beyond legacy: throw from the constructor when `auth` is a weak secret (below 128 bits by a
   * conservative estimate) instead of logging a warning (default false). A client proves the
   * secret to any server it reaches, so a weak one falls to offline guessing.
   */
  refuseWeakSecret?: boolean;
  /**
   * Beyond legacy (clients): the server certificate's key must match one of these pins
   * (`sha256/<base64>` of its SubjectPublicKeyInfo, as `iris-rpc cert` prints). Checked before
   * anything is sent: a fake server or a man in the middle gets no proof of the secret.
   */
  serverPins?: string | string[];
  /**
   * Beyond legacy (clients): trust on first use. A file path; the first connection to an
   * address that authenticates records the server key's pin there (replaced atomically, mode
   * 0600), and a later server at that address with another key is refused in the TLS handshake
   * (`rpc::stream::error` with code `tls`, naming `pin_store`) before anything is sent.
   */
  pinStore?: string;
  /**
   * Beyond legacy (clients): the uuid, or one of the uuids, the server must authenticate as; a
   * server announcing another is refused (code `auth`, naming `expect_server_uuid`).
   */
  expectServerUuid?: string | string[];
  /**
   * Beyond legacy (servers): bind each client's uuid to its TLS client certificate. Needs
   * `rejectUnauthorized` and a `ca` in `certificates`; the uuid a client claims must be a DNS
   * name of its certificate's subjectAltName or `urn:uuid:<uuid>` among its URIs, or the client
   * is refused (code `auth`, naming `client_cert_uuid`). Legacy clients present their
   * certificate as they always did.
   */
  clientCertUuid?: boolean;
  /** Default request timeout in ms (60000); a message's `op_timeout` overrides it. */
  timeout?: number;
  /** Ping every `pingFreq` ms (default 3000) when `ping`, `pingFreq` or `pingDataObject` is set. */
  ping?: boolean;
  pingFreq?: number;
  pingDataObject?: unknown;
  rejectUnauthorized?: boolean;
  /**
   * Differs from legacy: an Error a request handler throws or passes to its callback reaches
   * the peer as `{_Error, name, message}`; its `stack` (paths, sometimes values) is added only
   * with `sendStack: true`, which is what legacy always did. Thrown errors are logged locally
   * with their stack either way (unless `config.verbose` is 0).
   */
  sendStack?: boolean;
  /** Uuids announced as reachable through this instance. */
  routes?: string[] | Record<string, unknown>;
  /**
   * Beyond legacy: first and longest reconnect delay in ms (1000, 1000: a retry every second,
   * as legacy; a larger reconnectMax doubles the delay after each failure up to it).
   */
  reconnectInitial?: number;
  reconnectMax?: number;
  /** Beyond legacy: limits (see the core's `Limits`). */
  maxLine?: number;
  authTimeout?: number;
  maxUnauthenticated?: number;
  /** Longest line before the peer proves the secret, bytes (8192). */
  maxHandshakeLine?: number;
  /** Bytes all unauthenticated connections of a server may hold together (4 MiB). */
  maxUnauthenticatedBytes?: number;
  /** Uuids one peer may announce as reachable through it (100000); past it, it is dropped. */
  maxRoutesPerPeer?: number;
  maxConnections?: number;
  maxPending?: number;
  maxQueueBytes?: number;
  eventQueue?: number;
}

export interface ClientOptions extends CommonOptions {
  /** `host:port`, or several (one stream each). */
  address: string | string[];
}

export interface ServerOptions extends CommonOptions {
  /** A port number or `"host:port"`. */
  port: number | string;
  host?: string;
  certificates: CertificateSet;
}

/**
 * What user code reads of legacy's `stream.tlsStream` (the TLS socket), read-only: the socket
 * stays in the core. Emits 'end' (or 'error', when listened to) and then 'close' when the
 * stream has ended.
 */
export interface TlsStream extends EventEmitter {
  /** The peer's host (an IP address on a server; on a client, the host it was given). */
  readonly remoteAddress: string;
  readonly remotePort?: number;
  readonly remoteFamily: 'IPv4' | 'IPv6';
  readonly encrypted: true;
  readonly destroyed: boolean;
  /** Ends the stream (as `stream.end()`). */
  end(): this;
  destroy(): this;
}

/** What user code reads of legacy's `rpc.tlsServer` (the listening `tls.Server`). */
export interface TlsServer extends EventEmitter {
  readonly listening: boolean;
  /** The bound address, as Node's `server.address()`; null when not listening. */
  address(): { address: string; family: 'IPv4' | 'IPv6'; port: number } | null;
  /**
   * Stops accepting connections (streams already up go on); `callback` once none is left, or
   * with `ERR_SERVER_NOT_RUNNING` when not listening.
   */
  close(callback?: (err?: Error) => void): this;
}

/** One authenticated peer's stream, as passed to listeners. */
export interface Stream {
  readonly uuid: string;
  readonly address: string;
  readonly designation?: string;
  readonly mac?: string;
  /**
   * As legacy: the cipher's name when lines are encrypted on this stream (`'aes-256-cbc'` in the
   * legacy session mode, `'chacha20-poly1305'` in v2), else `undefined`.
   */
  readonly cipher: 'aes-256-cbc' | 'chacha20-poly1305' | undefined;
  /** Beyond legacy: the session mode negotiated with this peer. */
  readonly mode: Mode;
  connected: boolean;
  /** A read-only stand-in for the TLS socket. */
  readonly tlsStream: TlsStream;
  /** Closes this stream (a client reconnects a second later). */
  end(): void;
}

/**
 * Legacy request callback: an answer gives exactly the `err` and `resp` the handler passed
 * (`undefined` for what it left out; an `Error` rebuilt), a local failure (timeout,
 * disconnect, not connected) the legacy error value alone.
 */
export type RequestCallback = (err: any, resp?: any) => void;
/** Legacy request handler, registered with `on(op, handler)`: exactly one per op. */
export type RequestHandler = (req: Message, callback: RequestCallback) => void;
export type FilterNext = (err?: any, disallow?: any) => void;
export type Filter = (msg: Message, stream: Stream, next: FilterNext) => void;
export type Digest = (msg: Message, uuid: string, stream: Stream) => void;

/** The Error a promise `request()` rejects with. */
export class IrisError extends Error {
  /**
   * The core's stable error kind: `remote` (the peer answered with an error), `timeout`,
   * `disconnected`, `closed`, `not_connected`, `limit_exceeded`, `config`, `auth`, `tls`,
   * `io`, `protocol`.
   */
  code: string;
  /** What a legacy callback would have received (an Error for a remote `_Error`). */
  error: any;
  /** For `remote`: the peer's own error value. */
  remote?: any;
  /** For a remote `_Error`: the rebuilt Error. */
  cause?: unknown;
}

declare class Interface extends EventEmitter {
  readonly uuid: string;
  designation?: string;
  mac?: string;
  /** Connected streams by peer uuid. */
  streams: Record<string, Stream>;
  filters: Filter[];
  timeout: number;
  pingFreq: number;
  pingDataObject: unknown;

  on(event: 'connect', listener: (address: string, uuid: string, stream: Stream) => void): this;
  on(event: 'disconnect', listener: (uuid: string, stream: Stream) => void): this;
  on(event: 'rpc::error', listener: (err: unknown, msg?: Message) => void): this;
  /** Beyond legacy: a connection failed or was refused (wrong secret, TLS, refused cipher...). */
  on(event: 'rpc::stream::error', listener: (err: IrisError, address?: string) => void): this;
  on(event: 'close', listener: () => void): this;
  /** Every message received on a stream after the handshake, once it has been handled. */
  on(event: 'stream::message', listener: (msg: Message, stream: Stream | null) => void): this;
  /** A stream ended (after its 'disconnect'). */
  on(event: 'stream::end', listener: (stream: Stream) => void): this;
  /** A stream ended with a socket error, or a connection failed (then `stream` has no uuid). */
  on(event: 'stream::error', listener: (err: IrisError, stream: Stream | { address?: string }) => void): this;
  /** An event message with this `op` (msg, uuid, stream), or a request handler (req, callback). */
  on(event: string, listener: ((msg: Message, uuid: string, stream: Stream) => void) | RequestHandler): this;

  /** Sends to every connected stream; with a callback, a request to the only one. */
  dispatch(msg: Message, callback?: RequestCallback): void;
  /** Sends to the stream of peer `uuid` (or a peer routed through a Router); with a callback, a request. */
  dispatch(uuid: string, msg: Message, callback?: RequestCallback): void;
  /** Sends on `stream` (to its uuid: with two streams of one uuid, the newest); with a callback, a request. */
  dispatchToStream(stream: Stream, msg: Message, callback?: RequestCallback): true;
  /** Beyond legacy: a request to the only connected stream. */
  request<T = any>(msg: Message): Promise<T>;
  /** Beyond legacy: a request to the stream of peer `uuid`. */
  request<T = any>(uuid: string, msg: Message): Promise<T>;
  filter(fn: Filter): void;
  digest(fn: Digest): void;
  registerListener(listener: EventEmitter): void;
  emitToListeners(event: string, ...args: unknown[]): void;
  setPingDataObject(o: unknown): void;
  ping(): void;
  isConnected(): boolean;
  /** Beyond legacy: ends everything; the process may exit afterwards. */
  close(): Promise<void>;
}

export class Client extends Interface {
  constructor(options: ClientOptions);
}

export class Server extends Interface {
  constructor(options: ServerOptions, initCallback?: (err?: Error) => void);
  /** The bound `host:port`, once listening. */
  localAddress?: string;
  /** The bound port, once listening (useful with port 0). */
  localPort?: number;
  /** A stand-in for the listening `tls.Server`: `address()`, `close()`. */
  readonly tlsServer: TlsServer;
  on(event: 'server::listen', listener: (err?: Error) => void): this;
  on(event: 'connect', listener: (address: string, uuid: string, stream: Stream) => void): this;
  on(event: 'disconnect', listener: (uuid: string, stream: Stream) => void): this;
  on(event: string, listener: (...args: any[]) => void): this;
}

/** Several instances built from one config, used as one. */
export class Multiplexer {
  constructor(options: CommonOptions, config: Record<string, any>, rpcTitle?: string);
  active: Record<string, Stream>;
  links: Record<string, Client | Server>;
  on(op: string, listener: (...args: any[]) => void): void;
  registerListener(listener: EventEmitter): void;
  dispatch(msg: Message, callback?: RequestCallback): void;
  dispatch(uuid: string, msg: Message, callback?: RequestCallback): void;
  /** Beyond legacy: closes every link. */
  close(): Promise<void>;
}

/** Options shared by a router's two sides (the backend's own values take precedence). */
export interface RouterSideOptions {
  auth?: string;
  secret?: string;
  certificates?: CertificateSet;
  designation?: string;
  cipher?: boolean | 'aes-256-cbc';
  signatures?: boolean;
  /** The session modes spoken on this side (see `CommonOptions.security`). */
  security?: Security;
  timeout?: number;
  rejectUnauthorized?: boolean;
  reconnectInitial?: number;
  reconnectMax?: number;
  maxLine?: number;
  authTimeout?: number;
  maxUnauthenticated?: number;
  /** Longest line before the peer proves the secret, bytes (8192). */
  maxHandshakeLine?: number;
  /** Bytes all unauthenticated connections of a server may hold together (4 MiB). */
  maxUnauthenticatedBytes?: number;
  /** Uuids one peer may announce as reachable through it (100000); past it, it is dropped. */
  maxRoutesPerPeer?: number;
  maxConnections?: number;
  maxPending?: number;
  maxQueueBytes?: number;
  eventQueue?: number;
  /** Router events buffered for the reader (4096); past it, new ones are dropped. */
  routerEventQueue?: number;
}

/** The legacy Router options: a frontend `port` and exactly one of `client` or `server`. */
export interface RouterOptions extends RouterSideOptions {
  /** The frontend's port number or `"host:port"`. */
  port: number | string;
  host?: string;
  certificates: CertificateSet;
  /** The uuid the backend sees the router as (generated when absent). */
  uuid?: string;
  /** Relay to a server at `address` (a router in front of a server). */
  client?: RouterSideOptions & { address: string | string[]; uuid?: string };
  /** Listen on a second port for more clients (clients on both sides meet in the middle). */
  server?: RouterSideOptions & { port: number | string; host?: string; uuid?: string };
  /** Ours: join a cluster of routers over NATS (`docs/CLUSTER.md`): servers, or the options. */
  cluster?: string | ClusterOptions;
}

/** How a router reaches NATS (ours; `docs/CLUSTER.md`). Credentials never reach logs. */
export interface ClusterOptions {
  /** `nats://HOST:PORT`, comma-separated or as an array. */
  servers: string | string[];
  /** Subject prefix: routers with one name form one router (default `iris`). */
  name?: string;
  token?: string;
  user?: string;
  password?: string;
  /** NKey seed (`SU...`). */
  nkeySeed?: string;
  credentialsFile?: string;
  requireTls?: boolean;
  rootCertificates?: string;
  clientCertificate?: string;
  clientKey?: string;
  /** How long to wait for the other routers' rosters when a peer connects (2000 ms). */
  rosterWaitMs?: number;
  /** Messages to other routers waiting for NATS (65536); past it, dropped with a warning. */
  queue?: number;
}

export type RouterSide = 'frontend' | 'backend';

export interface RouterPeer {
  uuid: string;
  address: string;
  designation?: string;
  /** Whether lines are encrypted on the peer's stream. */
  cipher: boolean;
  /** The session mode negotiated with the peer. */
  mode: Mode;
}

export interface RouterStats {
  connections: number;
  unauthenticated: number;
  streams: number;
  pending: number;
  queuedBytes: number;
}

/**
 * A router (legacy's could not even be constructed): a frontend server relaying to a backend
 * client or server. Frontend events reach the backend with `_r: {uuid, designation}`; backend
 * messages with `_uuid` go to that frontend peer only (our Server's `dispatch(uuid, msg)` adds
 * it), others to every frontend peer; requests relay both ways.
 */
export class Router extends EventEmitter {
  constructor(options: RouterOptions, initCallback?: (err?: Error) => void);
  /** The uuid the backend sees the router as. */
  readonly uuid: string;
  designation: string;
  /** True between 'listen' (without error) and close(). */
  listening: boolean;
  /** The frontend's bound `host:port` and port, once listening (useful with port 0). */
  localAddress?: string;
  localPort?: number;
  /** The backend server's bound `host:port` and port (server mode), once listening. */
  backendAddress?: string;
  backendPort?: number;

  /** Peers connected on a side (default 'frontend'). */
  peers(side?: RouterSide): RouterPeer[];
  /** Uuids reachable through peers of a side, each mapped to the uuid of the peer that reaches it. */
  routes(side?: RouterSide): Record<string, string>;
  /** Resources on a side; null when not running. */
  stats(side?: RouterSide): RouterStats | null;
  /** Stops both sides; resolves when done. The process can exit afterwards. */
  close(): Promise<void>;

  /** Listening on both sides, or the start failed (`err`). */
  on(event: 'listen', listener: (err?: Error) => void): this;
  on(event: 'connect', listener: (side: RouterSide, uuid: string, address: string, designation: string | undefined, mode: Mode) => void): this;
  on(event: 'disconnect', listener: (side: RouterSide, uuid: string, reason: string) => void): this;
  /** A frontend peer claimed a uuid held on the backend and was disconnected. */
  on(event: 'refused', listener: (uuid: string, address: string) => void): this;
  /** A connection failed on a side (emitted only while someone listens for it). */
  on(event: 'error', listener: (side: RouterSide, err: IrisError, address?: string) => void): this;
  on(event: 'close', listener: () => void): this;
  on(event: string | symbol, listener: (...args: any[]) => void): this;
}

/** `{title: Server | Client}` from a config (entries with `port` or `address`). */
export function createFromConfig(
  options: CommonOptions,
  config: Record<string, any>,
  rpcTitle?: string,
): Record<string, Client | Server>;

export interface CertificateData {
  key: string;
  cert: string;
  ca: string[];
}

/** Loads certificate files: `name.key`, `name.crt`, optional `name.ca`. */
export class Certificates {
  constructor(certificates: string | { key: string; crt: string; ca?: string });
  certificateData?: CertificateData;
  initCertificates(callback?: () => void): void;
  /** Beyond legacy: a fresh self-signed pair for demos and tests. */
  static selfSigned(names?: string[]): { key: string; cert: string };
}
