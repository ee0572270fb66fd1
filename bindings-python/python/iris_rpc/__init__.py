"""iris-rpc for Python.

JSON messages and requests over TLS, authenticated with a shared secret, wire-compatible with
the legacy JavaScript package ``iris-rpc`` 0.2.20. The protocol runs in a Rust core
(``iris_rpc._native``); this package is its Python face.

>>> from iris_rpc import Server, Client, self_signed
>>> server = Server(auth="secret", port="127.0.0.1:0", certificates=self_signed())
>>> @server.on("add")
... def add(msg, uuid, stream):
...     return {"sum": msg["a"] + msg["b"]}
>>> client = Client(auth="secret", address=server.address)
>>> client.wait_connected(5)
>>> client.request({"op": "add", "a": 2, "b": 3})
{'sum': 5}
>>> client.close(); server.close()
"""

from ._errors import (
    AuthError,
    ClosedError,
    ConfigError,
    DisconnectedError,
    IoError,
    IrisError,
    LimitExceededError,
    NotConnectedError,
    ProtocolError,
    RemoteError,
    TimeoutError,
    TlsError,
)
from ._multiplexer import Multiplexer, create_from_config
from . import _logs  # noqa: F401  (the core's log records go to logging from now on)
from ._native import __version__
from ._native import metrics as _metrics
from ._router import Router
from ._rpc import Certificates, Client, Peer, Server, self_signed

def metrics() -> str:
    """The process's metrics in the Prometheus text format (version 0.0.4).

    Every Client, Server, Multiplexer and Router in the process adds into them; serve the text
    as-is (content type ``text/plain; version=0.0.4``) for Prometheus to scrape.
    """
    return _metrics()


__all__ = [
    "metrics",
    "Client",
    "Server",
    "Router",
    "Multiplexer",
    "create_from_config",
    "Certificates",
    "self_signed",
    "Peer",
    "IrisError",
    "ConfigError",
    "TlsError",
    "IoError",
    "AuthError",
    "ProtocolError",
    # Not "TimeoutError": a star import must not rebind the builtin (ours subclasses it, so
    # `except TimeoutError` catches both); use iris_rpc.TimeoutError by name.
    "DisconnectedError",
    "ClosedError",
    "NotConnectedError",
    "LimitExceededError",
    "RemoteError",
    "__version__",
]
