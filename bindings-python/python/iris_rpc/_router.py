"""Router: a frontend Server relaying to a backend Client (a router in front of a server) or a
backend Server (clients on both sides meet in the middle), over the core's Router.

The relaying itself runs in the core; Python only sees the router's events (peers coming and
going, refused peers, connection errors), pulled by a reader thread and handed to the
listeners on the listener thread or on the bound asyncio loop, as for Client and Server.
"""

from __future__ import annotations

import asyncio
import functools
import json as _json
import uuid as _uuidlib
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union, cast, overload

from . import _native
from ._dispatch import F, Handler, _Dispatcher, log
from ._errors import ConfigError
from ._rpc import _ALIASES, _merge, _options_json

__all__ = ["Router"]

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


class Router(_Dispatcher):
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

    _kind = "router"
    _listener_label = "router listener"

    def __init__(
        self,
        options: Optional[Mapping[str, Any]] = None,
        *,
        loop: Optional[asyncio.AbstractEventLoop] = None,
        **kwargs: Any,
    ) -> None:
        opts = _normalize(_merge(options, kwargs), "options")
        # Ours: join a cluster of routers over NATS (docs/CLUSTER.md): a string of servers, or
        # a mapping {servers, name, token, user, password, nkeySeed, credentialsFile, ...}.
        cluster = opts.pop("cluster", None)
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
        cluster_json = None if cluster is None else _json.dumps(cluster)
        native = _native.NativeRouter.start(
            _options_json(opts), _options_json(backend), backend_server, cluster_json
        )
        super().__init__(native, loop)

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

    def peers(self, side: str) -> List[Any]:
        """The peers connected on ``side`` (``"frontend"`` or ``"backend"``)."""
        self._check()
        self._gate.set()
        return cast(List[Any], self._native.peers(_side(side)))

    def routes(self, side: str) -> Dict[str, str]:
        """The routes known on ``side``: each uuid reachable through a peer of that side,
        mapped to that peer's uuid."""
        self._check()
        return dict(self._native.routes(_side(side)))

    def stats(self, side: str) -> Dict[str, int]:
        """Resources on ``side``: ``connections``, ``unauthenticated``, ``streams``,
        ``pending``, ``queued_bytes``, ``tasks``."""
        self._check()
        return cast(Dict[str, int], self._native.stats(_side(side)))

    # ---- listeners ----

    @overload
    def on(self, event: str) -> Callable[[F], F]: ...

    @overload
    def on(self, event: str, fn: F) -> F: ...

    def on(self, event: str, fn: Optional[F] = None) -> Union[F, Callable[[F], F]]:
        """Adds a listener for ``event`` (``"connect"``, ``"disconnect"``, ``"refused"`` or
        ``"error"``); usable as ``@router.on("connect")``. An ``async def`` listener is
        awaited on the bound loop (or the router's private one)."""
        if event not in _EVENTS:
            raise ConfigError(f"a Router emits {', '.join(map(repr, _EVENTS))}, not {event!r}")
        if fn is None:
            return cast(Callable[[F], F], functools.partial(self.on, event))
        return self._add_listener(event, fn)

    def off(self, event: str, fn: Optional[Handler] = None) -> bool:
        """Removes ``fn`` (or every listener) from ``event``; True if something was removed."""
        return self._remove_listener(event, fn)

    def listeners(self, event: str) -> List[Handler]:
        """The listeners of ``event``."""
        return list(self._listeners.get(event, ()))

    # ---- lifecycle ----

    def close(self) -> None:
        """Stops both sides: every stream ends and the listeners are released. Blocks (GIL
        released) for at most a few seconds. Safe to call more than once, from any thread or
        listener."""
        super().close()

    def __repr__(self) -> str:
        backend = f"server {self.backend_address}" if self._backend_server else "client"
        state = " closed" if self.closed else ""
        return f"<Router {self.address} -> {backend}{state}>"

    # ---- delivery (listener thread, or the loop) ----

    def _handle(self, item: Tuple[Any, ...]) -> None:
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
