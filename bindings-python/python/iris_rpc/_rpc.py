"""Client and Server: handlers, dispatch and requests over one native core object.

Threads: one dispatcher thread per object pulls batches from the core (GIL released while it
waits). Without an event loop it calls the handlers itself; bound to an asyncio loop (created
inside a running loop, or entered with ``async with``) it hands each batch to that loop, so
handlers run on the loop, with at most a few batches queued there (backpressure reaches the
peers instead of memory).
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import inspect
import itertools
import json
import logging
import os
import threading
import traceback
import weakref
from dataclasses import dataclass, field
from datetime import timedelta
from typing import (
    Any,
    Awaitable,
    Callable,
    Dict,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
    Union,
    cast,
)

from . import _native
from ._errors import (
    ClosedError,
    ConfigError,
    NotConnectedError,
    RemoteError,
    make_error,
)

__all__ = ["Certificates", "self_signed", "Client", "Server", "Peer"]

log = logging.getLogger("iris_rpc")

Peer = _native.Peer
"""The other end of one authenticated stream (legacy ``stream``): ``uuid``, ``address``,
``designation``, ``mac``, ``cipher`` (whether lines are encrypted), ``mode`` (the session mode
negotiated with the peer, ``"v2"`` or ``"legacy"``), ``end()``."""

F = TypeVar("F", bound=Callable[..., Any])

_native.set_error_factory(make_error)

_TAG_LISTEN, _TAG_CONNECT, _TAG_DISCONNECT, _TAG_MESSAGE, _TAG_REQUEST, _TAG_ERROR, _TAG_DONE = (
    _native.EVENT_TAGS
)

_BATCH = 1024
_POLL = 0.25  # seconds between checks that the Python object is still alive
_LOOP_BATCHES = 4  # batches handed to the event loop and not yet processed
# Legacy delivers events on a later tick, so listeners added right after the constructor see
# the first connection. Threads have no ticks: delivery starts when the object is first used
# (waited on, sent with, entered) or after this grace period, whichever comes first.
_GRACE = 0.1

_dumps = functools.partial(json.dumps, separators=(",", ":"), ensure_ascii=False)
_loads = json.loads
_tokens = itertools.count(1)
_live: "weakref.WeakSet[_Rpc]" = weakref.WeakSet()


# ---- options -------------------------------------------------------------------------------


@dataclass
class Certificates:
    """The ``certificates`` option. ``key``, ``cert`` and each ``ca`` are PEM text or a path
    to a PEM file (a value containing ``-----BEGIN`` is PEM text)."""

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
    "reconnectInitial": "reconnect_initial",
    "reconnectMax": "reconnect_max",
    "maxLine": "max_line",
    "authTimeout": "auth_timeout",
    "maxUnauthenticated": "max_unauthenticated",
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
    "ping",
    "ping_data",
    "reject_unauthorized",
    "address",
    "port",
    "host",
    "routes",
    "max_line",
    "max_unauthenticated",
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


def _error_value(exc: BaseException) -> Any:
    if isinstance(exc, RemoteError):
        return exc.error
    name = type(exc).__name__
    message = str(exc)
    stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()
    return {"_Error": True, "name": name, "message": message, "stack": stack}


def _answer(responder: Any, result: Any = None, exc: Optional[BaseException] = None) -> None:
    if exc is None:
        if result is None:
            responder.respond(None, None)
            return
        try:
            text = _dumps(result)
        except (TypeError, ValueError) as e:
            exc = e
        else:
            responder.respond(None, text)
            return
    try:
        err = _dumps(_error_value(exc))
    except (TypeError, ValueError):
        err = _dumps({"_Error": True, "name": type(exc).__name__, "message": repr(exc)})
    responder.respond(err, None)


async def _awaited(aw: Awaitable[Any]) -> Any:
    return await aw


_aux_lock = threading.Lock()
_aux: Optional[asyncio.AbstractEventLoop] = None


def _aux_loop() -> asyncio.AbstractEventLoop:
    """A private event loop, on its own thread, for ``async def`` handlers of objects that are
    not bound to a loop."""
    global _aux
    with _aux_lock:
        if _aux is None or _aux.is_closed():
            loop = asyncio.new_event_loop()
            t = threading.Thread(target=loop.run_forever, name="iris-rpc-async", daemon=True)
            t.start()
            _aux = loop
        return _aux


# ---- the dispatcher thread --------------------------------------------------------------------


def _pump(ref: "weakref.ReferenceType[_Rpc]", native: Any) -> None:
    try:
        while True:
            try:
                batch = native.next_batch(_BATCH, _POLL)
            except Exception:  # pragma: no cover - the native side does not raise here
                log.exception("iris-rpc: event pump failed")
                break
            if batch is None:
                break
            rpc = ref()
            if rpc is None:
                # Forgotten without close(): the object is gone, so is everyone's interest.
                native.close()
                continue
            if batch:
                rpc._deliver(batch)
            del rpc
    finally:
        rpc = ref()
        if rpc is not None:
            rpc._pump_finished()


def _settle_all(items: List[Tuple["asyncio.Future[Any]", Optional[str], Optional[BaseException]]]) -> None:
    for fut, resp, exc in items:
        if fut.done():
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(resp)


# ---- Client and Server ----------------------------------------------------------------------

Handler = Callable[..., Any]


class _Rpc:
    """What Client and Server share (legacy ``Interface``)."""

    _kind = "rpc"

    def __init__(self, native: Any, loop: Optional[asyncio.AbstractEventLoop]) -> None:
        self._native = native
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
        self._loop = loop
        self._listeners: Dict[str, Tuple[Handler, ...]] = {}
        self._digest: Optional[Handler] = None
        self._filters: Tuple[Handler, ...] = ()
        self._futures: Dict[int, Tuple["asyncio.Future[Any]", asyncio.AbstractEventLoop]] = {}
        self._tasks: "set[asyncio.Future[Any]]" = set()
        self._closing = False
        self._finished = False
        self._pid = os.getpid()
        self._loop_slots = threading.Semaphore(_LOOP_BATCHES)
        self._gate = threading.Event()
        self._gate_passed = False
        if loop is not None:
            self._gate.set()  # the loop itself defers delivery to after the current step
        self._thread = threading.Thread(
            target=_pump,
            args=(weakref.ref(self), native),
            name=f"iris-rpc-{self._kind}",
            daemon=True,
        )
        _live.add(self)
        self._thread.start()

    # ---- identity and state ----

    @property
    def uuid(self) -> str:
        """This instance's uuid."""
        return cast(str, self._native.uuid)

    @property
    def loop(self) -> Optional[asyncio.AbstractEventLoop]:
        """The event loop handlers run on, or None when they run on the dispatcher thread."""
        return self._loop

    @property
    def closed(self) -> bool:
        """True once close() was called."""
        return cast(bool, self._native.closed)

    def peers(self) -> List[Any]:
        """The connected peers (legacy ``streams``)."""
        self._gate.set()
        return cast(List[Any], self._native.peers())

    @property
    def streams(self) -> Dict[str, Any]:
        """The connected peers by uuid (legacy ``streams``)."""
        self._gate.set()
        return {p.uuid: p for p in self._native.peers()}

    def is_connected(self) -> bool:
        """True while any stream is authenticated and up (legacy ``isConnected``)."""
        if not self._gate.is_set():
            self._gate.set()
        return cast(bool, self._native.is_connected())

    def wait_connected(self, timeout: Union[float, timedelta] = 10.0) -> None:
        """Blocks until a stream is up; raises NotConnectedError after ``timeout`` seconds."""
        self._gate.set()
        if not self._native.wait_connected(_seconds(timeout)):
            raise NotConnectedError(f"not connected within {timeout} s")

    async def await_connected(self, timeout: Union[float, timedelta] = 10.0) -> None:
        """Waits, without blocking the loop, until a stream is up; raises NotConnectedError
        after ``timeout`` seconds."""
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

    def on(self, op: str, fn: Optional[F] = None) -> Any:
        """Adds a listener for ``op``; usable as ``@rpc.on("op")``.

        Event messages call ``fn(msg, uuid, stream)``. A request with that op calls its one
        listener the same way and answers with the return value (an ``async def`` listener is
        awaited); an exception answers with an ``_Error`` carrying its class name and message
        (raise ``RemoteError(value)`` to answer with ``value`` itself). Two listeners for one op
        make requests fail with "Too many handlers", as in legacy. Special ops:
        ``"connect"`` ``(address, uuid, stream)``, ``"disconnect"`` ``(uuid, stream)``,
        ``"error"`` ``(exception, address)`` and, on a server, ``"listen"`` ``(address)``.
        """
        if fn is None:
            return functools.partial(self.on, op)
        if not callable(fn):
            raise TypeError("listener must be callable")
        self._listeners[op] = self._listeners.get(op, ()) + (fn,)
        return fn

    def off(self, op: str, fn: Optional[Handler] = None) -> bool:
        """Removes ``fn`` (or every listener) from ``op``; True if something was removed."""
        current = self._listeners.get(op, ())
        if fn is None:
            kept: Tuple[Handler, ...] = ()
        else:
            kept = tuple(f for f in current if f is not fn and f != fn)
            if len(kept) == len(current):
                return False
        if kept:
            self._listeners[op] = kept
        else:
            self._listeners.pop(op, None)
        return len(kept) != len(current)

    def listeners(self, op: str) -> List[Handler]:
        """The listeners of ``op``."""
        return list(self._listeners.get(op, ()))

    def digest(self, fn: Optional[F] = None) -> Any:
        """Sets the callback ``fn(msg, uuid, stream)`` that gets every event message (not
        requests or responses), before the op listeners; usable as a decorator. As in legacy
        there is one digest: setting another replaces it (``clear_digest()`` removes it)."""
        if fn is None:
            return self.digest
        self._digest = fn
        return fn

    def clear_digest(self) -> None:
        """Removes the digest callback."""
        self._digest = None

    def filter(self, fn: Optional[F] = None) -> Any:
        """Adds a filter ``fn(msg, stream)`` run, in order, before event messages and requests
        are delivered; usable as a decorator. Returning None or True lets the message through.
        Anything else refuses it: a refused request is answered with the returned value as its
        error (``False`` becomes ``{"error": "Refused"}``), or with an ``_Error`` if the filter
        raised."""
        if fn is None:
            return self.filter
        self._filters = self._filters + (fn,)
        return fn

    def remove_filter(self, fn: Handler) -> bool:
        """Removes a filter; True if it was there."""
        kept = tuple(f for f in self._filters if f is not fn)
        removed = len(kept) != len(self._filters)
        self._filters = kept
        return removed

    # ---- sending ----

    def dispatch(self, msg: Mapping[str, Any], uuid: Optional[str] = None) -> int:
        """Sends an event message to every connected stream, or to the stream of peer
        ``uuid``; returns how many streams it went to. Raises NotConnectedError when there is
        no stream (or no stream with that uuid)."""
        if not self._gate.is_set():
            self._gate.set()
        text = _dumps(msg)
        if uuid is None:
            return cast(int, self._native.dispatch(text))
        self._native.dispatch_to(uuid, text)
        return 1

    def request(
        self,
        msg: Mapping[str, Any],
        uuid: Optional[str] = None,
        timeout: Union[None, float, timedelta] = None,
    ) -> Any:
        """Sends a request and blocks until its answer, with the GIL released; Ctrl-C
        interrupts it. Without ``uuid`` exactly one stream must be connected. ``timeout`` in
        seconds applies on top of ``op_timeout`` (ms, in the message) and the ``timeout``
        option. Raises RemoteError, TimeoutError, DisconnectedError, NotConnectedError or
        ClosedError."""
        if not self._gate.is_set():
            self._gate.set()
        text = self._native.request(uuid, _dumps(msg), _seconds(timeout))
        return None if text is None else _loads(text)

    async def arequest(
        self,
        msg: Mapping[str, Any],
        uuid: Optional[str] = None,
        timeout: Union[None, float, timedelta] = None,
    ) -> Any:
        """:meth:`request` for asyncio: awaits the answer without blocking the loop.
        Cancelling the awaiting task abandons the request."""
        if not self._gate.is_set():
            self._gate.set()
        loop = asyncio.get_running_loop()
        fut: "asyncio.Future[Any]" = loop.create_future()
        token = next(_tokens)
        self._futures[token] = (fut, loop)
        try:
            self._native.request_async(token, uuid, _dumps(msg), _seconds(timeout))
            if self._finished:
                # The dispatcher is gone, so nothing would ever deliver the answer.
                self._native.cancel(token)
                raise ClosedError("closed", {"error": "Closed", "closed": True})
            text = await fut
        except asyncio.CancelledError:
            self._native.cancel(token)
            raise
        finally:
            self._futures.pop(token, None)
        return None if text is None else _loads(text)

    def ping(self) -> int:
        """Sends ``{"op": "ping", "data": ping_data}`` to every stream now."""
        self._gate.set()
        return cast(int, self._native.ping())

    def set_ping_data(self, data: Any) -> None:
        """Sets the ``data`` of ping messages (legacy ``setPingDataObject``)."""
        self._native.set_ping_data(None if data is None else _dumps(data))

    # ---- lifecycle ----

    def close(self) -> None:
        """Closes every stream; pending requests fail with ClosedError. Blocks (GIL released)
        for at most a few seconds. Safe to call more than once, from any thread or handler."""
        self._closing = True
        self._gate.set()
        if os.getpid() != self._pid:
            # A forked child: the runtime threads behind this object live in the parent only.
            return
        self._native.close()
        if self._thread is not threading.current_thread() and self._thread.ident is not None:
            self._thread.join(timeout=10)
        _live.discard(self)

    async def aclose(self) -> None:
        """:meth:`close` without blocking the event loop."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.close)

    def __enter__(self: "R") -> "R":
        self._gate.set()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    async def __aenter__(self: "R") -> "R":
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._gate.set()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("connected" if self.is_connected() else "open")
        return f"<{type(self).__name__} uuid={self.uuid!r} {state}>"

    # ---- delivery (dispatcher thread, or the loop) ----

    def _deliver(self, batch: List[Tuple[Any, ...]]) -> None:
        if not self._gate_passed:
            self._gate.wait(_GRACE)
            self._gate_passed = True
        events = []
        done = []
        for item in batch:
            if item[0] == _TAG_DONE:
                done.append(item)
            else:
                events.append(item)
        if done:
            self._settle(done)
        if not events:
            return
        loop = self._loop
        if loop is None:
            self._process(events)
            return
        while not self._loop_slots.acquire(timeout=_POLL):
            if self._closing or loop.is_closed():
                return
        try:
            loop.call_soon_threadsafe(self._process_on_loop, events)
        except RuntimeError:
            # The loop was closed under us: from now on handlers run on this thread.
            self._loop_slots.release()
            self._loop = None
            self._process(events)

    def _settle(self, done: List[Tuple[Any, ...]]) -> None:
        by_loop: Dict[asyncio.AbstractEventLoop, List[Any]] = {}
        for _tag, token, resp, exc in done:
            entry = self._futures.get(token)
            if entry is not None:
                by_loop.setdefault(entry[1], []).append((entry[0], resp, exc))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle_all, items)
            except RuntimeError:
                pass  # that loop is closed; nobody awaits these any more

    def _pump_finished(self) -> None:
        self._finished = True
        _live.discard(self)
        closed = {"error": "Closed", "closed": True}
        leftover = [(_TAG_DONE, t, None, ClosedError("closed", closed)) for t in list(self._futures)]
        if leftover:
            self._settle(leftover)

    def _process_on_loop(self, events: List[Tuple[Any, ...]]) -> None:
        try:
            self._process(events)
        finally:
            self._loop_slots.release()

    def _process(self, events: List[Tuple[Any, ...]]) -> None:
        for item in events:
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

    def _call(self, fn: Handler, args: Tuple[Any, ...]) -> None:
        """Calls a listener whose result nobody waits for."""
        try:
            result = fn(*args)
        except Exception:
            log.exception("iris-rpc: listener %r raised", fn)
            return
        if inspect.isawaitable(result):
            self._spawn(result, None)

    def _emit(self, op: str, *args: Any) -> None:
        for fn in self._listeners.get(op, ()):
            self._call(fn, args)

    def _refusal(self, msg: Any, peer: Any) -> Optional[Tuple[Any, Optional[BaseException]]]:
        for f in self._filters:
            try:
                verdict = f(msg, peer)
            except Exception as e:
                return (None, e)
            if verdict is None or verdict is True:
                continue
            return ({"error": "Refused"} if verdict is False else verdict, None)
        return None

    def _on_message(self, text: str, uuid: str, peer: Any) -> None:
        msg = _loads(text)
        if self._filters and self._refusal(msg, peer) is not None:
            return
        digest = self._digest
        if digest is not None:
            self._call(digest, (msg, uuid, peer))
        op = msg.get("op")
        if isinstance(op, str):
            for fn in self._listeners.get(op, ()):
                self._call(fn, (msg, uuid, peer))

    def _on_request(self, text: str, uuid: str, peer: Any, responder: Any) -> None:
        msg = _loads(text)
        if self._filters:
            refused = self._refusal(msg, peer)
            if refused is not None:
                value, exc = refused
                if exc is not None:
                    _answer(responder, exc=exc)
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
        try:
            result = fns[0](msg, uuid, peer)
        except Exception as e:
            _answer(responder, exc=e)
            return
        if inspect.isawaitable(result):
            self._spawn(result, responder)
        else:
            _answer(responder, result)

    def _spawn(self, aw: Awaitable[Any], responder: Any) -> None:
        """Runs an awaitable on the bound loop (we are on it), else on the private loop;
        answers ``responder`` with its outcome when there is one."""

        def done(f: Any) -> None:
            self._tasks.discard(f)
            if f.cancelled():
                exc: Optional[BaseException] = asyncio.CancelledError("handler cancelled")
            else:
                exc = f.exception()
            if responder is not None:
                if exc is None:
                    _answer(responder, f.result())
                else:
                    _answer(responder, exc=exc)
            elif exc is not None and not f.cancelled():
                log.error("iris-rpc: async listener raised", exc_info=exc)

        loop = self._loop
        fut: Any
        if loop is not None and not loop.is_closed():
            fut = asyncio.ensure_future(aw, loop=loop)
        else:
            fut = asyncio.run_coroutine_threadsafe(_awaited(aw), _aux_loop())
        self._tasks.add(fut)
        fut.add_done_callback(done)


R = TypeVar("R", bound=_Rpc)


def _merge(options: Optional[Mapping[str, Any]], kwargs: Mapping[str, Any]) -> Dict[str, Any]:
    merged: Dict[str, Any] = dict(options or {})
    merged.update(kwargs)
    return merged


class Client(_Rpc):
    """An iris-rpc client: one stream per ``address`` (``"host:port"`` or a list), each
    reconnecting after 1 s, then with backoff, until closed. It returns at once; use
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
        super().__init__(_native.Native.client(_options_json(opts)), loop)


class Server(_Rpc):
    """An iris-rpc server listening on ``port`` (a number, or ``"host:port"``; 0 picks a free
    port, see :attr:`port`). Takes the options of :class:`Client`, with ``port`` instead of
    ``address``; ``certificates`` is required."""

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
        super().__init__(_native.Native.server(_options_json(opts)), loop)

    @property
    def address(self) -> str:
        """The bound address, ``host:port``."""
        return cast(str, self._native.local_addr)

    @property
    def port(self) -> int:
        """The bound TCP port."""
        return int(self.address.rsplit(":", 1)[1])


if hasattr(os, "register_at_fork"):
    # Objects inherited through fork() belong to the parent; the child must not close them.
    os.register_at_fork(after_in_child=_live.clear)


@atexit.register
def _close_all() -> None:
    """Closes what is still open, so the interpreter never exits with the dispatcher threads
    inside the native module."""
    for rpc in list(_live):
        try:
            rpc.close()
        except Exception:  # pragma: no cover - best effort at exit
            pass
    aux = _aux
    if aux is not None and not aux.is_closed():
        try:
            aux.call_soon_threadsafe(aux.stop)
        except RuntimeError:  # pragma: no cover
            pass

