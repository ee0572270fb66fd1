"""Multiplexer and create_from_config: several Clients and Servers used as one (legacy
``Multiplexer`` and ``createFromConfig``), written over the public Client and Server."""

from __future__ import annotations

import asyncio
import functools
from datetime import timedelta
from typing import (
    Any,
    Callable,
    Coroutine,
    Dict,
    List,
    Mapping,
    Optional,
    Tuple,
    Union,
    cast,
    overload,
)

from ._dispatch import F
from ._errors import ConfigError, NotConnectedError
from ._rpc import Client, Server, _Rpc

__all__ = ["Multiplexer", "create_from_config"]

_NO_SUCH_STREAM = {"error": "iris-rpc: no such stream present"}


def _create(
    options: Mapping[str, Any],
    config: Mapping[str, Any],
    loop: Optional[asyncio.AbstractEventLoop],
) -> _Rpc:
    merged = dict(options)
    merged.update(config)
    has_port = merged.get("port") is not None
    has_address = merged.get("address") is not None
    if not has_port and not has_address:
        raise ConfigError("port or address required in rpc config")
    if has_port and has_address:
        raise ConfigError("both port and address present in rpc config")
    if has_port:
        return Server(merged, loop=loop)
    return Client(merged, loop=loop)


def create_from_config(
    options: Mapping[str, Any],
    config: Mapping[str, Any],
    title: Optional[str] = None,
    *,
    loop: Optional[asyncio.AbstractEventLoop] = None,
) -> Dict[str, _Rpc]:
    """Builds Clients and Servers from a legacy-style config, as legacy ``createFromConfig``.

    ``config`` is either one entry (it has ``address`` or ``port``), named ``title`` (or the
    ``designation`` option), or a dict of named entries. Each entry is merged over
    ``options``; an entry with ``port`` makes a Server, one with ``address`` a Client.
    """
    made: Dict[str, _Rpc] = {}
    try:
        if "address" in config or "port" in config:
            name = title or str(options.get("designation") or "rpc")
            made[name] = _create(options, config, loop)
        else:
            for name, entry in config.items():
                if not isinstance(entry, Mapping):
                    raise ConfigError(f"rpc config entry {name!r} must be a dict")
                made[name] = _create(options, entry, loop)
    except BaseException:
        for rpc in made.values():
            rpc.close()
        raise
    return made


class Multiplexer:
    """Several Clients and Servers as one, as legacy ``Multiplexer(options, config, title)``:
    ``on``, ``digest`` and ``filter`` apply to every link, ``dispatch(msg)`` goes to every
    link, and ``dispatch(msg, uuid)``, ``request(msg, uuid)`` go to the link holding that
    peer. Without ``uuid``, a request needs exactly one connected stream over all links."""

    def __init__(
        self,
        options: Mapping[str, Any],
        config: Mapping[str, Any],
        title: Optional[str] = None,
        *,
        loop: Optional[asyncio.AbstractEventLoop] = None,
    ) -> None:
        self.links: Dict[str, _Rpc] = create_from_config(options, config, title, loop=loop)

    @property
    def active(self) -> Dict[str, Any]:
        """Connected peers of every link, by uuid (legacy ``active``)."""
        out: Dict[str, Any] = {}
        for rpc in self.links.values():
            out.update(rpc.streams)
        return out

    def peers(self) -> List[Any]:
        """Connected peers of every link."""
        return [p for rpc in self.links.values() for p in rpc.peers()]

    def is_connected(self) -> bool:
        """True while any link has a stream up."""
        return any(rpc.is_connected() for rpc in self.links.values())

    def wait_connected(self, timeout: Union[float, timedelta] = 10.0) -> None:
        """Blocks until every Client link has a stream up."""
        for rpc in self.links.values():
            if isinstance(rpc, Client):
                rpc.wait_connected(timeout)

    def link_of(self, uuid: str) -> Optional[_Rpc]:
        """The link holding the stream of peer ``uuid``."""
        for rpc in self.links.values():
            if any(p.uuid == uuid for p in rpc.peers()):
                return rpc
        return None

    # ---- handlers ----

    @overload
    def on(self, op: str) -> Callable[[F], F]: ...

    @overload
    def on(self, op: str, fn: F) -> F: ...

    def on(self, op: str, fn: Optional[F] = None) -> Union[F, Callable[[F], F]]:
        """``on`` of every link; usable as a decorator."""
        if fn is None:
            return cast(Callable[[F], F], functools.partial(self.on, op))
        for rpc in self.links.values():
            rpc.on(op, fn)
        return fn

    def off(self, op: str, fn: Optional[Callable[..., Any]] = None) -> bool:
        """``off`` of every link."""
        removed = False
        for rpc in self.links.values():
            removed = rpc.off(op, fn) or removed
        return removed

    @overload
    def digest(self) -> Callable[[F], F]: ...

    @overload
    def digest(self, fn: F) -> F: ...

    def digest(self, fn: Optional[F] = None) -> Union[F, Callable[[F], F]]:
        """``digest`` of every link; usable as a decorator."""
        if fn is None:
            return cast(Callable[[F], F], self.digest)
        for rpc in self.links.values():
            rpc.digest(fn)
        return fn

    @overload
    def filter(self) -> Callable[[F], F]: ...

    @overload
    def filter(self, fn: F) -> F: ...

    def filter(self, fn: Optional[F] = None) -> Union[F, Callable[[F], F]]:
        """``filter`` of every link; usable as a decorator."""
        if fn is None:
            return cast(Callable[[F], F], self.filter)
        for rpc in self.links.values():
            rpc.filter(fn)
        return fn

    # ---- sending ----

    def _link_for(self, msg: Mapping[str, Any], uuid: Optional[str]) -> Tuple[_Rpc, Optional[str]]:
        if uuid is not None:
            rpc = self.link_of(uuid)
            if rpc is None:
                raise NotConnectedError("iris-rpc: no such stream present", _NO_SUCH_STREAM)
            return rpc, uuid
        connected = [(rpc, p) for rpc in self.links.values() for p in rpc.peers()]
        if not connected:
            raise NotConnectedError(
                "RPC stream is not connected",
                {"error": "RPC stream is not connected", "disconnected": True, "req": msg},
            )
        if len(connected) > 1:
            raise NotConnectedError(
                "multiple streams connected (not supported by RPC)",
                {"error": "Multiple streams connected (not supported by RPC)", "req": msg},
            )
        rpc, peer = connected[0]
        return rpc, peer.uuid

    def dispatch(self, msg: Mapping[str, Any], *, uuid: Optional[str] = None) -> int:
        """Sends to every stream of every link, or to peer ``uuid``; returns how many
        streams. Raises NotConnectedError when none took it."""
        if uuid is not None:
            rpc, _ = self._link_for(msg, uuid)
            return rpc.dispatch(msg, uuid=uuid)
        sent = 0
        for rpc in self.links.values():
            if rpc.is_connected():
                try:
                    sent += rpc.dispatch(msg)
                except NotConnectedError:
                    pass
        if not sent:
            raise NotConnectedError(
                "RPC stream is not connected",
                {"error": "RPC stream is not connected", "disconnected": True, "req": msg},
            )
        return sent

    def request(
        self,
        msg: Mapping[str, Any],
        *,
        uuid: Optional[str] = None,
        timeout: Union[None, float, timedelta] = None,
    ) -> Any:
        """A blocking request to peer ``uuid``, or to the only connected stream."""
        rpc, target = self._link_for(msg, uuid)
        return rpc.request(msg, uuid=target, timeout=timeout)

    def arequest(
        self,
        msg: Mapping[str, Any],
        *,
        uuid: Optional[str] = None,
        timeout: Union[None, float, timedelta] = None,
    ) -> Coroutine[Any, Any, Any]:
        """:meth:`request` for asyncio; sent in this call (see :meth:`Client.arequest`)."""
        rpc, target = self._link_for(msg, uuid)
        return rpc.arequest(msg, uuid=target, timeout=timeout)

    # ---- lifecycle ----

    def close(self) -> None:
        """Closes every link."""
        for rpc in self.links.values():
            rpc.close()

    async def aclose(self) -> None:
        """:meth:`close` without blocking the event loop."""
        for rpc in self.links.values():
            await rpc.aclose()

    def __enter__(self) -> "Multiplexer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    async def __aenter__(self) -> "Multiplexer":
        for rpc in self.links.values():
            await rpc.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()
