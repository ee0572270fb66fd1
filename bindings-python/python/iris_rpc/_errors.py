"""The exceptions of iris_rpc: one IrisError subclass per stable core error kind."""

from __future__ import annotations

import builtins
import json
from typing import Any, Dict, Optional, Type

__all__ = [
    "IrisError",
    "ConfigError",
    "TlsError",
    "IoError",
    "AuthError",
    "ProtocolError",
    "TimeoutError",
    "DisconnectedError",
    "ClosedError",
    "NotConnectedError",
    "LimitExceededError",
    "RemoteError",
]


class IrisError(Exception):
    """Base class of every iris_rpc error.

    ``kind`` is the core's stable kind name (``"timeout"``, ``"remote"``, ...) and ``value`` the
    error as the legacy package reports it to a request callback, e.g.
    ``{"error": "Connection Timed Out", "timeout": 1000, "req": {...}}``.
    """

    kind: str = "iris"

    def __init__(self, message: str = "", value: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.value = value

    def __str__(self) -> str:
        return self.message


class ConfigError(IrisError, ValueError):
    """Bad options, certificates or message."""

    kind = "config"


class TlsError(IrisError):
    """TLS setup or handshake failure."""

    kind = "tls"


class IoError(IrisError, OSError):
    """A socket error."""

    kind = "io"


class AuthError(IrisError):
    """The peer failed to prove the shared secret, or refused ours."""

    kind = "auth"


class ProtocolError(IrisError):
    """The peer broke the protocol."""

    kind = "protocol"


class TimeoutError(IrisError, builtins.TimeoutError):  # noqa: A001 - the issue's name
    """A request got no answer in time (legacy ``Connection Timed Out``)."""

    kind = "timeout"


class DisconnectedError(IrisError, ConnectionError):
    """The stream went away before the request settled (legacy ``Connection Terminated``)."""

    kind = "disconnected"


class ClosedError(IrisError):
    """The local object was closed."""

    kind = "closed"


class NotConnectedError(IrisError, ConnectionError):
    """No stream to send to: none connected, several for a request, or an unknown uuid."""

    kind = "not_connected"


class LimitExceededError(IrisError):
    """A configured limit was crossed."""

    kind = "limit_exceeded"


class RemoteError(IrisError):
    """The peer answered a request with an error.

    ``error`` is the peer's error value exactly as sent. For an ``Error`` thrown by a legacy
    handler (or an exception raised by a Python one) it is
    ``{"_Error": True, "name": ..., "message": ..., "stack": ...}``, and ``name`` and
    ``remote_message`` hold its parts. A request handler may raise ``RemoteError(value)`` to
    answer with ``value`` as the error, unchanged.
    """

    kind = "remote"

    def __init__(self, error: Any, message: Optional[str] = None) -> None:
        if message is None:
            message = _describe(error)
        super().__init__(message, error)
        self.error = error
        is_error_object = isinstance(error, dict) and error.get("_Error")
        self.name: Optional[str] = error.get("name") if is_error_object else None
        self.remote_message: Optional[str] = error.get("message") if is_error_object else None


def _describe(error: Any) -> str:
    if isinstance(error, dict):
        if error.get("_Error"):
            return f"{error.get('name', 'Error')}: {error.get('message', '')}"
        text = error.get("error")
        if isinstance(text, str):
            return text
    if isinstance(error, str):
        return error
    return json.dumps(error)


_BY_KIND: Dict[str, Type[IrisError]] = {
    cls.kind: cls
    for cls in (
        ConfigError,
        TlsError,
        IoError,
        AuthError,
        ProtocolError,
        TimeoutError,
        DisconnectedError,
        ClosedError,
        NotConnectedError,
        LimitExceededError,
    )
}


def make_error(kind: str, message: str, value_json: str) -> IrisError:
    """Builds the exception for a core error (called by the native module)."""
    try:
        value = json.loads(value_json)
    except ValueError:
        value = None
    if kind == "remote":
        return RemoteError(value)
    cls = _BY_KIND.get(kind, IrisError)
    exc = cls(message, value)
    if cls is IrisError:
        exc.kind = kind
    return exc
