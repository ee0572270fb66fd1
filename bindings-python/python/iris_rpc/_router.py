"""Router: a frontend Server relaying to a backend Client (a router in front of a server) or a
backend Server (clients on both sides meet in the middle), over the core's Router.

The relaying itself runs in the core; Python only sees the router's events (peers coming and
going, refused peers, connection errors), pulled by one dispatcher thread and handed to the
listeners on that thread or on the bound asyncio loop, as for Client and Server.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import threading
import uuid as _uuidlib
import weakref
from typing import Any, Awaitable, Callable, Dict, List, Mapping, Optional, Tuple, TypeVar, cast

from . import _native
from ._errors import ConfigError
from ._rpc import (
    _ALIASES,
    _GRACE,
    _LOOP_BATCHES,
    _POLL,
    _aux_loop,
    _awaited,
    _live,
    _merge,
    _options_json,
    _pump,
    log,
)

__all__ = ["Router"]

F = TypeVar("F", bound=Callable[..., Any])
Handler = Callable[..., Any]

_TAG_CONNECT, _TAG_DISCONNECT, _TAG_REFUSED, _TAG_ERROR = _native.ROUTER_TAGS

_EVENTS = ("connect", "disconnect", "refused", "error")
_SIDES = ("frontend", "backend")
# Options the backend takes from the top level when its own dict leaves them out. Legacy
# passes auth and certificates on; cipher and signatures were module-wide settings there, so
# both sides of a legacy router had the same. The security policy is inherited as well.
_INHERITED = ("auth", "certificates", "cipher", "signatures", "security")


def _normalize(options: Mapping[str, Any], what: str) -> Dict[str, Any]:
    if not isinstance(options, Mapping):
        raise ConfigError(f"{what} must be a dict of options")
    return {_ALIASES.get(k, k): v for k, v in options.items()}


def _side(side: str) -> str:
    if side not in _SIDES:
        raise ConfigError(f"side must be 'frontend' or 'backend', not {side!r}")
    return side


def _port_of(address: Optional[str]) -> Optional[int]:
    return None if address is None else int(address.rsplit(":", 1)[1])


class Router:
    """An iris-rpc router (legacy ``Router``): a frontend server on ``port`` whose clients are
    relayed to a backend, either a client of the server at ``client={"address": ...}`` or a
    second server on ``server={"port": ...}`` whose clients meet the frontend's.

    Options, as keyword arguments or one dict: the frontend server's (``port``, ``auth``,
    ``certificates``, and any other option of :class:`Server`) plus exactly one of ``client``
    or ``server``, a dict of the backend's options. The backend takes ``auth``,
    ``certificates``, ``cipher``, ``signatures`` and ``security`` from the top level unless its
    dict sets them. Each side gets a random uuid unless ``uuid`` is given (at the top level for the
    frontend, in the backend's dict for the backend).

    Events from frontend peers reach the backend with ``_r: {uuid, designation}``, so the
    server sees the original sender's uuid; a message from the backend with ``_uuid`` (what
    ``Server.dispatch(msg, uuid=...)`` adds for a routed peer) reaches that peer only, others
    reach every frontend peer; requests relay both ways.

    Listeners (``on``): ``"connect"`` ``(side, address, uuid, stream)``, ``"disconnect"``
    ``(side, uuid, stream)``, ``"refused"`` ``(address, uuid, stream)`` (a frontend peer
    claiming a uuid the backend holds) and ``"error"`` ``(side, exception, address)``, where
    ``side`` is ``"frontend"`` or ``"backend"``.
    """

    def __init__(
        self,
        options: Optional[Mapping[str, Any]] = None,
        *,
        loop: Optional[asyncio.AbstractEventLoop] = None,
        **kwargs: Any,
    ) -> None:
        opts = _normalize(_merge(options, kwargs), "options")
        client = opts.pop("client", None)
        server = opts.pop("server", None)
        if (client is None) == (server is None):
            raise ConfigError(
                "a Router needs either 'client' (the server to relay to) or 'server' (where "
                "to listen for the other side's clients)"
            )
        backend_server = server is not None
        backend = _normalize(server if backend_server else client, "server" if backend_server else "client")
        if "address" in opts:
            raise ConfigError("a Router takes 'port', not 'address'; put the backend in 'client' or 'server'")
        if backend_server and "address" in backend:
            raise ConfigError("the Router's 'server' takes 'port', not 'address'")
        if not backend_server and "port" in backend:
            raise ConfigError("the Router's 'client' takes 'address', not 'port'")
        for key in _INHERITED:
            if backend.get(key) is None and opts.get(key) is not None:
                backend[key] = opts[key]
        for side in (opts, backend):
            if side.get("uuid") is None:
                side["uuid"] = str(_uuidlib.uuid4())
        self._uuid = str(opts["uuid"])
        self._backend_uuid = str(backend["uuid"])
        self._backend_server = backend_server
        native = _native.NativeRouter.start(_options_json(opts), _options_json(backend), backend_server)
        self._native = native

        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
        self._loop = loop
        self._listeners: Dict[str, Tuple[Handler, ...]] = {}
        self._tasks: "set[Any]" = set()
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
            name="iris-rpc-router",
            daemon=True,
        )
        _live.add(cast(Any, self))
        self._thread.start()

    # ---- identity and state ----

    @property
    def uuid(self) -> str:
        """The frontend server's uuid (what the frontend's clients see)."""
        return self._uuid

    @property
    def backend_uuid(self) -> str:
        """The backend's uuid (what the server behind it, or the backend's clients, see)."""
        return self._backend_uuid

    @property
    def address(self) -> str:
        """The frontend's bound address, ``host:port``."""
        return cast(str, self._native.local_addr)

    @property
    def port(self) -> int:
        """The frontend's bound TCP port."""
        return cast(int, _port_of(self.address))

    @property
    def backend_address(self) -> Optional[str]:
        """The backend server's bound address, ``host:port``; None when the backend is a
        client."""
        return cast(Optional[str], self._native.backend_addr)

    @property
    def backend_port(self) -> Optional[int]:
        """The backend server's bound TCP port; None when the backend is a client."""
        return _port_of(self.backend_address)

    @property
    def loop(self) -> Optional[asyncio.AbstractEventLoop]:
        """The event loop listeners run on, or None when they run on the dispatcher thread."""
        return self._loop

    @property
    def closed(self) -> bool:
        """True once close() was called."""
        return cast(bool, self._native.closed)

    def peers(self, side: str) -> List[Any]:
        """The peers connected on ``side`` (``"frontend"`` or ``"backend"``)."""
        self._gate.set()
        return cast(List[Any], self._native.peers(_side(side)))

    def routes(self, side: str) -> Dict[str, str]:
        """The routes known on ``side``: each uuid reachable through a peer of that side,
        mapped to that peer's uuid."""
        return dict(self._native.routes(_side(side)))

    def stats(self, side: str) -> Dict[str, int]:
        """Resources on ``side``: ``connections``, ``unauthenticated``, ``streams``,
        ``pending``, ``queued_bytes``, ``tasks``."""
        return cast(Dict[str, int], self._native.stats(_side(side)))

    # ---- listeners ----

    def on(self, event: str, fn: Optional[F] = None) -> Any:
        """Adds a listener for ``event`` (``"connect"``, ``"disconnect"``, ``"refused"`` or
        ``"error"``); usable as ``@router.on("connect")``. An ``async def`` listener is
        awaited on the bound loop (or a private one)."""
        if event not in _EVENTS:
            raise ConfigError(f"a Router emits {', '.join(map(repr, _EVENTS))}, not {event!r}")
        if fn is None:
            return functools.partial(self.on, event)
        if not callable(fn):
            raise TypeError("listener must be callable")
        self._listeners[event] = self._listeners.get(event, ()) + (fn,)
        return fn

    def off(self, event: str, fn: Optional[Handler] = None) -> bool:
        """Removes ``fn`` (or every listener) from ``event``; True if something was removed."""
        current = self._listeners.get(event, ())
        if fn is None:
            kept: Tuple[Handler, ...] = ()
        else:
            kept = tuple(f for f in current if f is not fn and f != fn)
        if kept:
            self._listeners[event] = kept
        else:
            self._listeners.pop(event, None)
        return len(kept) != len(current)

    def listeners(self, event: str) -> List[Handler]:
        """The listeners of ``event``."""
        return list(self._listeners.get(event, ()))

    # ---- lifecycle ----

    def close(self) -> None:
        """Stops both sides: every stream ends and the listeners are released. Blocks (GIL
        released) for at most a few seconds. Safe to call more than once, from any thread or
        listener."""
        self._closing = True
        self._gate.set()
        if os.getpid() != self._pid:
            # A forked child: the runtime threads behind this object live in the parent only.
            return
        self._native.close()
        if self._thread is not threading.current_thread() and self._thread.ident is not None:
            self._thread.join(timeout=10)
        _live.discard(cast(Any, self))

    async def aclose(self) -> None:
        """:meth:`close` without blocking the event loop."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.close)

    def __enter__(self) -> "Router":
        self._gate.set()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    async def __aenter__(self) -> "Router":
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._gate.set()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        backend = f"server {self.backend_address}" if self._backend_server else "client"
        state = " closed" if self.closed else ""
        return f"<Router {self.address} -> {backend}{state}>"

    # ---- delivery (dispatcher thread, or the loop) ----

    def _deliver(self, batch: List[Tuple[Any, ...]]) -> None:
        if not self._gate_passed:
            self._gate.wait(_GRACE)
            self._gate_passed = True
        loop = self._loop
        if loop is None:
            self._process(batch)
            return
        while not self._loop_slots.acquire(timeout=_POLL):
            if self._closing or loop.is_closed():
                return
        try:
            loop.call_soon_threadsafe(self._process_on_loop, batch)
        except RuntimeError:
            # The loop was closed under us: from now on listeners run on this thread.
            self._loop_slots.release()
            self._loop = None
            self._process(batch)

    def _pump_finished(self) -> None:
        self._finished = True
        _live.discard(cast(Any, self))

    def _process_on_loop(self, batch: List[Tuple[Any, ...]]) -> None:
        try:
            self._process(batch)
        finally:
            self._loop_slots.release()

    def _process(self, batch: List[Tuple[Any, ...]]) -> None:
        for item in batch:
            tag = item[0]
            try:
                if tag == _TAG_CONNECT:
                    side, peer = item[1], item[2]
                    self._emit("connect", side, peer.address, peer.uuid, peer)
                elif tag == _TAG_DISCONNECT:
                    side, peer = item[1], item[2]
                    self._emit("disconnect", side, peer.uuid, peer)
                elif tag == _TAG_REFUSED:
                    peer = item[1]
                    self._emit("refused", peer.address, peer.uuid, peer)
                elif tag == _TAG_ERROR:
                    self._emit("error", item[1], item[2], item[3])
            except Exception:
                log.exception("iris-rpc: error while processing a router event")

    def _emit(self, event: str, *args: Any) -> None:
        for fn in self._listeners.get(event, ()):
            try:
                result = fn(*args)
            except Exception:
                log.exception("iris-rpc: router listener %r raised", fn)
                continue
            if inspect.isawaitable(result):
                self._spawn(result)

    def _spawn(self, aw: Awaitable[Any]) -> None:
        def done(f: Any) -> None:
            self._tasks.discard(f)
            if not f.cancelled() and f.exception() is not None:
                log.error("iris-rpc: async router listener raised", exc_info=f.exception())

        loop = self._loop
        fut: Any
        if loop is not None and not loop.is_closed():
            fut = asyncio.ensure_future(aw, loop=loop)
        else:
            fut = asyncio.run_coroutine_threadsafe(_awaited(aw), _aux_loop())
        self._tasks.add(fut)
        fut.add_done_callback(done)
