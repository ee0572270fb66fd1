"""Client and Server: handlers, dispatch and requests over one native core object. The
reader and listener threads, the hand-off to an event loop and the lifecycle are in ``_dispatch``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import json
import os
import time
import traceback
from dataclasses import dataclass, field
from datetime import timedelta
from typing import (
    Any,
    Callable,
    Coroutine,
    Dict,
    Hashable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
    cast,
    overload,
)

from . import _dispatch, _native
from ._dispatch import F, Handler, _Dispatcher, _on_loop, log
from ._errors import (
    ClosedError,
    ConfigError,
    NotConnectedError,
    RemoteError,
    TimeoutError,
    make_error,
)

__all__ = ["Certificates", "self_signed", "Client", "Server", "Peer"]

Peer = _native.Peer
"""The other end of one authenticated stream (legacy ``stream``): ``uuid``, ``address``,
``designation``, ``mac``, ``cipher`` (whether lines are encrypted), ``mode`` (the session mode
negotiated with the peer, ``"v2"`` or ``"legacy"``), ``end()``."""

_native.set_error_factory(make_error)

_TAG_LISTEN, _TAG_CONNECT, _TAG_DISCONNECT, _TAG_MESSAGE, _TAG_REQUEST, _TAG_ERROR, _TAG_DONE = (
    _native.EVENT_TAGS
)

# One encoder for every message: json.dumps with any non-default argument builds a new
# JSONEncoder on each call, which costs about as much as encoding a small message.
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_loads = json.loads
# The scanner json.loads itself runs (not in the stubs: it is set in JSONDecoder.__init__).
_scan: Callable[[str, int], Tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def _parse_body(text: str) -> Any:
    """``json.loads(text)`` for a message body, without its two regular-expression passes
    for surrounding whitespace when there is none (the usual case: peers send compact JSON).
    Anything else, including invalid text, goes through ``json.loads`` itself."""
    try:
        value, end = _scan(text, 0)
    except StopIteration:
        return _loads(text)
    if end != len(text):
        return _loads(text)
    return value
_tokens = itertools.count(1)


# ---- options -------------------------------------------------------------------------------


def _shown(value: str, what: str) -> str:
    """A PEM value as its kind, never its text (a private key must not reach logs); a path
    as itself."""
    return f"<{what} PEM>" if "-----BEGIN" in value else repr(value)


@dataclass(repr=False)
class Certificates:
    """The ``certificates`` option. ``key``, ``cert`` and each ``ca`` are PEM text or a path
    to a PEM file (a value containing ``-----BEGIN`` is PEM text). Its repr shows paths but
    never PEM text."""

    key: str
    cert: str
    ca: Sequence[str] = field(default_factory=tuple)

    @classmethod
    def self_signed(cls, names: Optional[Sequence[str]] = None) -> "Certificates":
        """A fresh self-signed pair, by default for localhost, 127.0.0.1 and ::1."""
        key, cert = _native.self_signed_pem(list(names) if names is not None else None)
        return cls(key=key, cert=cert)

    def to_dict(self) -> Dict[str, Any]:
        """The legacy option object ``{"key", "cert", "ca"}``."""
        return {"key": self.key, "cert": self.cert, "ca": list(self.ca)}

    def __repr__(self) -> str:
        ca = ", ".join(_shown(c, "certificate") for c in self.ca)
        return f"Certificates(key={_shown(self.key, 'private key')}, cert={_shown(self.cert, 'certificate')}, ca=({ca}))"


def self_signed(names: Optional[Sequence[str]] = None) -> Certificates:
    """A fresh self-signed key and certificate, as :class:`Certificates` holding PEM text."""
    return Certificates.self_signed(names)


CertificatesLike = Union[Certificates, Mapping[str, Any], Tuple[str, str], str]

# Legacy option names (camelCase) and their snake_case spelling.
_ALIASES = {
    "secret": "auth",
    "pingFreq": "ping_freq",
    "pingDataObject": "ping_data",
    "rejectUnauthorized": "reject_unauthorized",
    "refuseWeakSecret": "refuse_weak_secret",
    "serverPins": "server_pins",
    "pinStore": "pin_store",
    "expectServerUuid": "expect_server_uuid",
    "clientCertUuid": "client_cert_uuid",
    "reconnectInitial": "reconnect_initial",
    "reconnectMax": "reconnect_max",
    "maxLine": "max_line",
    "authTimeout": "auth_timeout",
    "maxUnauthenticated": "max_unauthenticated",
    "maxHandshakeLine": "max_handshake_line",
    "maxUnauthenticatedBytes": "max_unauthenticated_bytes",
    "maxRoutesPerPeer": "max_routes_per_peer",
    "routerEventQueue": "router_event_queue",
    "maxConnections": "max_connections",
    "maxPending": "max_pending",
    "maxQueueBytes": "max_queue_bytes",
    "eventQueue": "event_queue",
}
_DURATIONS_MS = {"ping_freq", "timeout", "reconnect_initial", "reconnect_max", "auth_timeout"}
_KNOWN = {
    "auth",
    "uuid",
    "designation",
    "mac",
    "certificates",
    "cipher",
    "signatures",
    "security",
    "refuse_weak_secret",
    "server_pins",
    "pin_store",
    "expect_server_uuid",
    "client_cert_uuid",
    "ping",
    "ping_data",
    "reject_unauthorized",
    "address",
    "port",
    "host",
    "routes",
    "max_line",
    "max_unauthenticated",
    "max_handshake_line",
    "max_unauthenticated_bytes",
    "max_routes_per_peer",
    "router_event_queue",
    "max_connections",
    "max_pending",
    "max_queue_bytes",
    "event_queue",
} | _DURATIONS_MS


def _certificates(value: CertificatesLike) -> Dict[str, Any]:
    if isinstance(value, Certificates):
        return value.to_dict()
    if isinstance(value, tuple) and len(value) == 2:
        return {"key": value[0], "cert": value[1]}
    if isinstance(value, str):
        # Legacy: a path prefix naming PREFIX.key, PREFIX.crt and optionally PREFIX.ca.
        return {"key": value + ".key", "cert": value + ".crt"}
    if isinstance(value, Mapping):
        out: Dict[str, Any] = {"key": value.get("key"), "cert": value.get("cert", value.get("crt"))}
        ca = value.get("ca")
        if ca:
            out["ca"] = [ca] if isinstance(ca, str) else list(ca)
        if not isinstance(out["key"], str) or not isinstance(out["cert"], str):
            raise ConfigError("certificates need 'key' and 'cert' (PEM text or paths)")
        return out
    raise ConfigError("certificates must be Certificates, a dict, a (key, cert) tuple or a path prefix")


def _ms(name: str, value: Any) -> Any:
    if isinstance(value, timedelta):
        return int(value.total_seconds() * 1000)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"{name} must be milliseconds (a number) or a timedelta")
    return int(value)


def _options_json(options: Mapping[str, Any]) -> str:
    out: Dict[str, Any] = {}
    for key, value in options.items():
        name = _ALIASES.get(key, key)
        if name not in _KNOWN:
            raise ConfigError(f"unknown option {key!r}")
        if value is None:
            continue
        if name == "certificates":
            value = _certificates(value)
        elif name in _DURATIONS_MS:
            value = _ms(name, value)
        elif name == "pin_store" and isinstance(value, os.PathLike):
            value = os.fspath(value)
        out[name] = value
    try:
        return _dumps(out)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"options must be JSON values: {e}") from None


def _seconds(timeout: Union[None, float, timedelta]) -> Optional[float]:
    if timeout is None:
        return None
    if isinstance(timeout, timedelta):
        return timeout.total_seconds()
    return float(timeout)


# ---- answering requests ---------------------------------------------------------------------


def _error_value(exc: BaseException, stack: bool = False) -> Any:
    if isinstance(exc, RemoteError):
        return exc.error
    value = {"_Error": True, "name": type(exc).__name__, "message": str(exc)}
    if stack:
        value["stack"] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()
    return value


def _settle_all(items: List[Tuple["asyncio.Future[Any]", Optional[str], Optional[BaseException]]]) -> None:
    for fut, resp, exc in items:
        if fut.done():
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(resp)


# Options of this package, not of the core.
_LOCAL_OPTIONS = ("executor", "send_stack")
_DEFAULT_MAX_QUEUE = 64 * 1024 * 1024


def _local_options(opts: Dict[str, Any]) -> Dict[str, Any]:
    """Takes the package's own options out of ``opts``."""
    local = {k: opts.pop(k) for k in _LOCAL_OPTIONS if k in opts}
    if "sendStack" in opts:
        local["send_stack"] = opts.pop("sendStack")
    max_queue = opts.get("max_queue_bytes", opts.get("maxQueueBytes"))
    local["max_queue"] = max_queue if isinstance(max_queue, int) and max_queue > 0 else _DEFAULT_MAX_QUEUE
    return local


# ---- Client and Server ----------------------------------------------------------------------


class _Rpc(_Dispatcher):
    """What Client and Server share (legacy ``Interface``)."""

    def __init__(
        self,
        native: Any,
        loop: Optional[asyncio.AbstractEventLoop],
        local: Mapping[str, Any],
    ) -> None:
        self._digest: Optional[Handler] = None
        self._filters: Tuple[Handler, ...] = ()
        self._futures: Dict[int, Tuple["asyncio.Future[Any]", asyncio.AbstractEventLoop]] = {}
        self._send_stack = bool(local.get("send_stack", False))
        self._max_queue = int(local.get("max_queue", _DEFAULT_MAX_QUEUE))
        super().__init__(native, loop, local.get("executor"))

    # ---- identity and state ----

    @property
    def uuid(self) -> str:
        """This instance's uuid."""
        return cast(str, self._native.uuid)

    def peers(self) -> List[Peer]:
        """The connected peers (legacy ``streams``)."""
        self._check()
        self._gate.set()
        return cast(List[Peer], self._native.peers())

    @property
    def streams(self) -> Dict[str, Peer]:
        """The connected peers by uuid (legacy ``streams``)."""
        self._check()
        self._gate.set()
        return {p.uuid: p for p in self._native.peers()}

    def is_connected(self) -> bool:
        """True while any stream is authenticated and up (legacy ``isConnected``); False in
        a child that inherited the object through fork()."""
        if self._generation != _dispatch._generation:
            return False
        if not self._gate.is_set():
            self._gate.set()
        return cast(bool, self._native.is_connected())

    def stats(self) -> Dict[str, int]:
        """Resources: ``connections``, ``unauthenticated``, ``streams``, ``pending``
        (requests awaiting an answer), ``queued_bytes`` (waiting to be written), ``tasks``."""
        self._check()
        return cast(Dict[str, int], self._native.stats())

    def wait_connected(self, timeout: Union[float, timedelta] = 10.0) -> None:
        """Blocks until a stream is up; raises NotConnectedError after ``timeout`` seconds."""
        self._check()
        self._gate.set()
        if not self._native.wait_connected(_seconds(timeout)):
            raise NotConnectedError(f"not connected within {timeout} s")

    async def await_connected(self, timeout: Union[float, timedelta] = 10.0) -> None:
        """Waits, without blocking the loop, until a stream is up; raises NotConnectedError
        after ``timeout`` seconds."""
        self._check()
        self._gate.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + cast(float, _seconds(timeout))
        while not self._native.is_connected():
            if self._native.closed:
                raise ClosedError("closed")
            if loop.time() >= deadline:
                raise NotConnectedError(f"not connected within {timeout} s")
            await asyncio.sleep(0.005)

    # ---- handlers ----

    @overload
    def on(self, op: str) -> Callable[[F], F]: ...

    @overload
    def on(self, op: str, fn: F) -> F: ...

    def on(self, op: str, fn: Optional[F] = None) -> Union[F, Callable[[F], F]]:
        """Adds a listener for ``op``; usable as ``@rpc.on("op")``. Returns ``fn`` unchanged.

        Event messages call ``fn(msg, uuid, stream)``. A request with that op calls its one
        listener the same way and answers with the return value (an ``async def`` listener is
        awaited); an exception answers with an ``_Error`` carrying its class name and message
        (and its traceback with ``send_stack=True``), and is logged on the ``iris_rpc`` logger
        (raise ``RemoteError(value)`` to answer with ``value`` itself, unlogged). Two listeners
        for one op make requests fail with "Too many handlers", as in legacy. Special ops:
        ``"connect"`` ``(address, uuid, stream)``, ``"disconnect"`` ``(uuid, stream)``,
        ``"error"`` ``(exception, address)`` and, on a server, ``"listen"`` ``(address)``.
        """
        if fn is None:
            return cast(Callable[[F], F], functools.partial(self.on, op))
        return self._add_listener(op, fn)

    def off(self, op: str, fn: Optional[Handler] = None) -> bool:
        """Removes ``fn`` (or every listener) from ``op``; True if something was removed."""
        return self._remove_listener(op, fn)

    def listeners(self, op: str) -> List[Handler]:
        """The listeners of ``op``."""
        return list(self._listeners.get(op, ()))

    @overload
    def digest(self) -> Callable[[F], F]: ...

    @overload
    def digest(self, fn: F) -> F: ...

    def digest(self, fn: Optional[F] = None) -> Union[F, Callable[[F], F]]:
        """Sets the callback ``fn(msg, uuid, stream)`` that gets every event message (not
        requests or responses), before the op listeners; usable as a decorator. As in legacy
        there is one digest: setting another replaces it (``clear_digest()`` removes it)."""
        if fn is None:
            return cast(Callable[[F], F], self.digest)
        self._digest = fn
        return fn

    def clear_digest(self) -> None:
        """Removes the digest callback."""
        self._digest = None

    @overload
    def filter(self) -> Callable[[F], F]: ...

    @overload
    def filter(self, fn: F) -> F: ...

    def filter(self, fn: Optional[F] = None) -> Union[F, Callable[[F], F]]:
        """Adds a filter ``fn(msg, stream)`` run, in order, before event messages and requests
        are delivered; usable as a decorator. Returning None or True lets the message through.
        Anything else refuses it: a refused request is answered with the returned value as its
        error (``False`` becomes ``{"error": "Refused"}``), or with an ``_Error`` if the filter
        raised."""
        if fn is None:
            return cast(Callable[[F], F], self.filter)
        with self._lock:
            self._filters = self._filters + (fn,)
        return fn

    def remove_filter(self, fn: Handler) -> bool:
        """Removes a filter; True if it was there."""
        with self._lock:
            kept = tuple(f for f in self._filters if f is not fn)
            removed = len(kept) != len(self._filters)
            self._filters = kept
        return removed

    # ---- sending ----

    def dispatch(
        self,
        msg: Mapping[str, Any],
        *,
        uuid: Optional[str] = None,
        block: bool = False,
        timeout: Union[None, float, timedelta] = None,
    ) -> int:
        """Sends an event message to every connected stream, or to the stream of peer
        ``uuid``; returns how many streams it went to. Raises NotConnectedError when there is
        no stream (or no stream with that uuid).

        Sending only queues. A stream whose queue passes ``max_queue_bytes`` is disconnected
        as a slow reader; with ``block=True`` the call first waits (GIL released) while more
        than half of ``max_queue_bytes`` is queued, raising TimeoutError after ``timeout``
        seconds. :meth:`adispatch` is the same wait for asyncio."""
        if self._generation != _dispatch._generation:
            self._check()
        if not self._gate.is_set():
            self._gate.set()
        text = _dumps(msg)
        if block:
            deadline = self._send_deadline(timeout)
            delay = 0.001
            while not self._has_send_room(len(text)):
                self._wait_for_room(deadline)
                time.sleep(delay)
                delay = min(delay * 2, 0.02)
        if uuid is None:
            # _send, inlined: this runs once per event sent.
            return cast(int, self._native.dispatch(text))
        return self._send(text, uuid)

    async def adispatch(
        self,
        msg: Mapping[str, Any],
        *,
        uuid: Optional[str] = None,
        timeout: Union[None, float, timedelta] = None,
    ) -> int:
        """:meth:`dispatch` with backpressure for asyncio: awaits, without blocking the loop,
        while more than half of ``max_queue_bytes`` is queued for writing, then sends.
        Raises TimeoutError when there is no room within ``timeout`` seconds."""
        self._check()
        if not self._gate.is_set():
            self._gate.set()
        text = _dumps(msg)
        if not self._has_send_room(len(text)):
            deadline = self._send_deadline(timeout)
            delay = 0.001
            while not self._has_send_room(len(text)):
                self._wait_for_room(deadline)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.02)
        return self._send(text, uuid)

    def _send(self, text: str, uuid: Optional[str]) -> int:
        if uuid is None:
            return cast(int, self._native.dispatch(text))
        self._native.dispatch_to(uuid, text)
        return 1

    def _has_send_room(self, size: int) -> bool:
        # Over all streams: the core counts queued bytes per object, not per peer.
        queued = cast(int, self._native.queued_bytes())
        return queued == 0 or queued + size < self._max_queue // 2

    def _send_deadline(self, timeout: Union[None, float, timedelta]) -> Optional[float]:
        seconds = _seconds(timeout)
        return None if seconds is None else time.monotonic() + seconds

    def _wait_for_room(self, deadline: Optional[float]) -> None:
        if self._native.closed:
            raise ClosedError("closed", {"error": "Closed", "closed": True})
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(
                "the outbound queue stayed full: the peer is not reading",
                {"error": "Outbound queue full", "queued_bytes": self._native.queued_bytes()},
            )

    def request(
        self,
        msg: Mapping[str, Any],
        *,
        uuid: Optional[str] = None,
        timeout: Union[None, float, timedelta] = None,
    ) -> Any:
        """Sends a request and blocks until its answer, with the GIL released; Ctrl-C
        interrupts it. Without ``uuid`` exactly one stream must be connected. ``timeout`` in
        seconds applies on top of ``op_timeout`` (ms, in the message) and the ``timeout``
        option. Raises RemoteError, TimeoutError, DisconnectedError, NotConnectedError or
        ClosedError."""
        self._check()
        if not self._gate.is_set():
            self._gate.set()
        text = self._native.request(uuid, _dumps(msg), _seconds(timeout))
        return None if text is None else _loads(text)

    def arequest(
        self,
        msg: Mapping[str, Any],
        *,
        uuid: Optional[str] = None,
        timeout: Union[None, float, timedelta] = None,
    ) -> Coroutine[Any, Any, Any]:
        """:meth:`request` for asyncio: ``await`` the answer without blocking the loop.

        The request is sent in this call, before anything is awaited, so requests and
        dispatches leave in the order they are made, ``asyncio.gather`` included (as legacy
        writes each message when it is made); made outside a running loop, as in
        ``asyncio.run(client.arequest(...))``, it is sent when the loop runs it. Cancelling the
        awaiting task abandons the request."""
        self._check()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            # Made outside a running loop (``asyncio.run(client.arequest(...))``): nothing can
            # await it before the loop runs it, so it is sent then.
            return self._start_then_await(msg, uuid, timeout)
        token, fut = self._start_async(loop, msg, uuid, timeout)
        return self._await_answer(token, fut)

    def _start_async(
        self,
        loop: asyncio.AbstractEventLoop,
        msg: Mapping[str, Any],
        uuid: Optional[str],
        timeout: Union[None, float, timedelta],
    ) -> Tuple[int, "asyncio.Future[Any]"]:
        """Sends a request whose answer settles a future of ``loop``."""
        if not self._gate.is_set():
            self._gate.set()
        fut: "asyncio.Future[Any]" = loop.create_future()
        token = next(_tokens)
        self._futures[token] = (fut, loop)
        try:
            self._native.request_async(token, uuid, _dumps(msg), _seconds(timeout))
        except BaseException:
            self._futures.pop(token, None)
            raise
        if self._finished:
            # The reader is gone, so nothing would ever deliver the answer.
            self._native.cancel(token)
            self._futures.pop(token, None)
            raise ClosedError("closed", {"error": "Closed", "closed": True})
        return token, fut

    async def _start_then_await(
        self,
        msg: Mapping[str, Any],
        uuid: Optional[str],
        timeout: Union[None, float, timedelta],
    ) -> Any:
        token, fut = self._start_async(asyncio.get_running_loop(), msg, uuid, timeout)
        return await self._await_answer(token, fut)

    async def _await_answer(self, token: int, fut: "asyncio.Future[Any]") -> Any:
        try:
            text = await fut
        except asyncio.CancelledError:
            self._native.cancel(token)
            raise
        finally:
            self._futures.pop(token, None)
        return None if text is None else _loads(text)

    def ping(self) -> int:
        """Sends ``{"op": "ping", "data": ping_data}`` to every stream now."""
        self._check()
        self._gate.set()
        return cast(int, self._native.ping())

    def set_ping_data(self, data: Any) -> None:
        """Sets the ``data`` of ping messages (legacy ``setPingDataObject``)."""
        self._check()
        self._native.set_ping_data(None if data is None else _dumps(data))

    # ---- lifecycle ----

    def close(self) -> None:
        """Closes every stream; pending requests fail with ClosedError. Blocks (GIL released)
        for at most a few seconds. Safe to call more than once, from any thread or handler."""
        super().close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("connected" if self.is_connected() else "open")
        return f"<{type(self).__name__} uuid={self.uuid!r} {state}>"

    # ---- delivery (reader thread, listener thread, executor or the loop) ----

    def _split(self, batch: List[Tuple[Any, ...]]) -> Tuple[List[Tuple[Any, ...]], List[Tuple[Any, ...]]]:
        """The answers to :meth:`arequest` are settled by the reader thread at once (their
        futures may live on any loop); the rest are events."""
        events = []
        done = []
        for item in batch:
            if item[0] == _TAG_DONE:
                done.append(item)
            else:
                events.append(item)
        return events, done

    def _settle(self, done: List[Tuple[Any, ...]]) -> None:
        by_loop: Dict[asyncio.AbstractEventLoop, List[Any]] = {}
        for _tag, token, resp, exc in done:
            # Taken out here, so an answer nobody awaits leaves nothing behind.
            entry = self._futures.pop(token, None)
            if entry is not None:
                by_loop.setdefault(entry[1], []).append((entry[0], resp, exc))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle_all, items)
            except RuntimeError:
                pass  # that loop is closed; nobody awaits these any more

    def _reader_finished(self) -> None:
        super()._reader_finished()
        closed = {"error": "Closed", "closed": True}
        leftover = [(_TAG_DONE, t, None, ClosedError("closed", closed)) for t in list(self._futures)]
        if leftover:
            self._settle(leftover)

    def _lane(self, item: Tuple[Any, ...]) -> Hashable:
        tag = item[0]
        if tag in (_TAG_MESSAGE, _TAG_REQUEST):
            return cast(Hashable, item[3])
        if tag in (_TAG_CONNECT, _TAG_DISCONNECT):
            return cast(Hashable, item[1])
        return None

    def _is_request(self, item: Tuple[Any, ...]) -> bool:
        return bool(item[0] == _TAG_REQUEST)

    def _process(self, events: List[Tuple[Any, ...]]) -> None:
        # Events are most of what arrives: they skip the dispatch on the tag in _handle.
        on_message = self._on_message
        handle = self._handle
        for item in events:
            if item[0] == _TAG_MESSAGE:
                try:
                    on_message(item[1], item[2], item[3])
                except Exception:
                    log.exception("iris-rpc: error while processing an event")
            else:
                handle(item)

    def _handle(self, item: Tuple[Any, ...]) -> None:
        tag = item[0]
        try:
            if tag == _TAG_MESSAGE:
                self._on_message(item[1], item[2], item[3])
            elif tag == _TAG_REQUEST:
                self._on_request(item[1], item[2], item[3], item[4])
            elif tag == _TAG_CONNECT:
                peer = item[1]
                self._emit("connect", peer.address, peer.uuid, peer)
            elif tag == _TAG_DISCONNECT:
                peer = item[1]
                self._emit("disconnect", peer.uuid, peer)
            elif tag == _TAG_ERROR:
                self._emit("error", item[1], item[2])
            elif tag == _TAG_LISTEN:
                self._emit("listen", item[1])
        except Exception:
            log.exception("iris-rpc: error while processing an event")

    def _refusal(self, msg: Any, peer: Any) -> Optional[Tuple[Any, Optional[BaseException]]]:
        for f in self._filters:
            try:
                verdict = f(msg, peer)
            except BaseException as e:
                log.error("iris-rpc: filter %r raised %s", f, type(e).__name__, exc_info=True)
                if self._fatal(e):
                    raise
                return (None, e)
            if verdict is None or verdict is True:
                continue
            return ({"error": "Refused"} if verdict is False else verdict, None)
        return None

    def _on_message(self, text: str, uuid: str, peer: Any) -> None:
        msg = _parse_body(text)
        if self._filters and self._refusal(msg, peer) is not None:
            return
        digest = self._digest
        if digest is not None:
            self._call(digest, (msg, uuid, peer))
        op = msg.get("op")
        if isinstance(op, str):
            for fn in self._listeners.get(op, ()):
                # _call, inlined: this runs once per event and listener.
                try:
                    result = fn(msg, uuid, peer)
                except BaseException as e:
                    self._listener_raised(fn, e)
                    continue
                if result is not None and inspect.isawaitable(result):
                    self._spawn(result)

    def _on_request(self, text: str, uuid: str, peer: Any, responder: Any) -> None:
        msg = _parse_body(text)
        if self._filters:
            refused = self._refusal(msg, peer)
            if refused is not None:
                value, exc = refused
                if exc is not None:
                    self._answer_error(responder, exc)
                else:
                    responder.respond(_dumps(value), None)
                return
        op = msg.get("op") if isinstance(msg, dict) else None
        fns = self._listeners.get(op, ()) if isinstance(op, str) else ()
        if len(fns) != 1:
            name = op if isinstance(op, str) else "undefined"
            what = "No such handler" if not fns else "Too many handlers for"
            responder.respond(_dumps({"error": f"{what} '{name}'"}), None)
            return
        fn = fns[0]
        op = cast(str, op)
        loop = self._loop
        executor = self._executor
        if executor is not None and loop is not None and not inspect.iscoroutinefunction(fn) and _on_loop(loop):
            # A sync handler of a loop-bound object runs on the executor, off the loop.
            with self._room:
                self._backlog += 1
            self._submit(executor, self._serve_counted, fn, op, msg, uuid, peer, responder)
            return
        self._serve(fn, op, msg, uuid, peer, responder)

    def _serve_counted(self, fn: Handler, op: str, msg: Any, uuid: str, peer: Any, responder: Any) -> None:
        try:
            self._serve(fn, op, msg, uuid, peer, responder)
        finally:
            with self._room:
                self._backlog -= 1

    def _serve(self, fn: Handler, op: str, msg: Any, uuid: str, peer: Any, responder: Any) -> None:
        """Calls the request handler and answers with its outcome."""
        try:
            result = fn(msg, uuid, peer)
        except BaseException as e:
            self._handler_failed(fn, op, e)
            self._answer_error(responder, e)
            if self._fatal(e):
                raise
            return
        if inspect.isawaitable(result):
            self._spawn(result, functools.partial(self._answer_outcome, responder, fn, op))
        else:
            self._answer(responder, fn, op, result)

    def _handler_failed(self, fn: Handler, op: str, exc: BaseException) -> None:
        if not isinstance(exc, RemoteError):
            log.error(
                "iris-rpc: request handler %r for %r raised %s",
                fn,
                op,
                type(exc).__name__,
                exc_info=(type(exc), exc, exc.__traceback__),
            )

    def _answer(self, responder: Any, fn: Handler, op: str, result: Any) -> None:
        if result is None:
            responder.respond(None, None)
            return
        try:
            text = _dumps(result)
        except (TypeError, ValueError) as e:
            self._handler_failed(fn, op, e)
            self._answer_error(responder, e)
            return
        responder.respond(None, text)

    def _answer_error(self, responder: Any, exc: BaseException) -> None:
        try:
            err = _dumps(_error_value(exc, self._send_stack))
        except (TypeError, ValueError):
            err = _dumps({"_Error": True, "name": type(exc).__name__, "message": repr(exc)})
        responder.respond(err, None)

    def _answer_outcome(self, responder: Any, fn: Handler, op: str, f: Any) -> None:
        """Answers with the outcome of a finished handler future (asyncio or concurrent)."""
        if f.cancelled():
            self._answer_error(responder, asyncio.CancelledError("handler cancelled"))
            return
        exc = f.exception()
        if exc is None:
            self._answer(responder, fn, op, f.result())
        else:
            self._handler_failed(fn, op, exc)
            self._answer_error(responder, exc)


def _merge(options: Optional[Mapping[str, Any]], kwargs: Mapping[str, Any]) -> Dict[str, Any]:
    merged: Dict[str, Any] = dict(options or {})
    merged.update(kwargs)
    return merged


class Client(_Rpc):
    """An iris-rpc client: one stream per ``address`` (``"host:port"`` or a list), each
    reconnecting every second as legacy (``reconnect_max`` above ``reconnect_initial`` backs
    off exponentially up to it) until closed. It returns at once; use
    :meth:`wait_connected` or ``on("connect")``.

    Options, as keyword arguments or one dict (legacy names in snake_case; legacy camelCase
    works too): ``auth``, ``uuid``, ``designation``, ``mac``, ``certificates``, ``cipher``,
    ``signatures``, ``ping``, ``ping_freq`` (ms), ``ping_data``, ``timeout`` (ms),
    ``reject_unauthorized``, ``address``, plus ``security``, ``routes``, ``reconnect_initial``,
    ``reconnect_max`` and the limits. Durations are milliseconds as in legacy, or timedelta.

    ``security`` picks the session modes spoken: ``"prefer-v2"`` (the default) runs the v2
    session (mutual, channel-bound authentication; AEAD records with the cipher on) with
    iris-rpc peers that offer it and the legacy protocol with iris-rpc 0.2.20 peers;
    ``"legacy"`` behaves exactly as 0.2.20; ``"require-v2"`` refuses legacy peers (a server
    reports an ``"error"`` event with an AuthError; a client never connects and reports the
    same). Any other value raises ConfigError. Each stream's ``mode`` says which mode it speaks.
    A client that offered v2 and meets a downgrade (its offer stripped in transit, or a replayed
    session of a v2 server) reports an AuthError saying "downgrade detected".

    ``server_pins`` (a string or a list) makes the client refuse a server whose certificate key
    matches none of them (``sha256/<base64>`` of its SubjectPublicKeyInfo, as ``iris-rpc cert``
    prints), before it sends anything. ``refuse_weak_secret=True`` turns the warning about a
    weak ``auth`` (below 128 bits by a conservative estimate) into a ConfigError.

    ``pin_store`` (a path) trusts on first use: the first connection to an address that
    authenticates records the server's key pin in that file (replaced atomically, mode 0600),
    and a later server at that address with another key is refused (a TlsError naming
    ``pin_store``) before anything is sent. ``expect_server_uuid`` (a string or a list) refuses
    a server that authenticates as another uuid (an AuthError naming ``expect_server_uuid``).
    """

    _kind = "client"

    def __init__(
        self,
        options: Optional[Mapping[str, Any]] = None,
        *,
        loop: Optional[asyncio.AbstractEventLoop] = None,
        **kwargs: Any,
    ) -> None:
        opts = _merge(options, kwargs)
        if "port" in opts:
            raise ConfigError("a client takes 'address', not 'port'")
        local = _local_options(opts)
        super().__init__(_native.Native.client(_options_json(opts)), loop, local)


class Server(_Rpc):
    """An iris-rpc server listening on ``port`` (a number, or ``"host:port"``; 0 picks a free
    port, see :attr:`port`). Takes the options of :class:`Client`, with ``port`` instead of
    ``address``; ``certificates`` is required.

    ``reject_unauthorized=True`` with a ``ca`` in ``certificates`` requires client certificates
    signed by that CA; ``client_cert_uuid=True`` then binds each client's uuid to its
    certificate (a DNS name of its subjectAltName, or ``urn:uuid:<uuid>`` among its URIs): a
    client claiming another uuid is refused with an ``"error"`` event (an AuthError naming
    ``client_cert_uuid``)."""

    _kind = "server"

    def __init__(
        self,
        options: Optional[Mapping[str, Any]] = None,
        *,
        loop: Optional[asyncio.AbstractEventLoop] = None,
        **kwargs: Any,
    ) -> None:
        opts = _merge(options, kwargs)
        if "address" in opts:
            raise ConfigError("a server takes 'port', not 'address'")
        local = _local_options(opts)
        super().__init__(_native.Native.server(_options_json(opts)), loop, local)

    @property
    def address(self) -> str:
        """The bound address, ``host:port``."""
        return cast(str, self._native.local_addr)

    @property
    def port(self) -> int:
        """The bound TCP port."""
        return int(self.address.rsplit(":", 1)[1])
