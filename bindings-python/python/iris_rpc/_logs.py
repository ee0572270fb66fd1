"""The core's log records on Python's ``logging``: logger ``iris_rpc.core`` (a child of the
package's ``iris_rpc``; records keep the Rust module as ``rust_target``), never printed by the
native code.

Records are forwarded at the ``iris_rpc.core`` logger's effective level, checked again at
least once a second, so ``logging.getLogger("iris_rpc").setLevel(logging.DEBUG)`` takes effect
without a restart; below that level the core does not even format them. One daemon thread,
``iris-rpc-log``, pulls them in batches with the GIL released while it waits; it is started
on import, stopped at exit, and started again in a forked child.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from typing import Optional

from . import _native

log = logging.getLogger("iris_rpc.core")

#: The core's levels (1 error ... 5 trace) as ``logging`` levels (trace below DEBUG).
_LEVELS = {1: logging.ERROR, 2: logging.WARNING, 3: logging.INFO, 4: logging.DEBUG, 5: 5}

_POLL_MS = 1000

_thread: Optional[threading.Thread] = None
_stopping = False


def _native_level() -> int:
    """The most verbose core level the ``iris_rpc.core`` logger would emit (0: none)."""
    for number in (5, 4, 3, 2, 1):
        if log.isEnabledFor(_LEVELS[number]):
            return number
    return 0


def _emit(level: int, target: str, text: str) -> None:
    py_level = _LEVELS.get(level, logging.INFO)
    if log.isEnabledFor(py_level):
        log.log(py_level, "%s", text, extra={"rust_target": target})


def _run() -> None:
    while not _stopping:
        try:
            _native.log_set_level(_native_level())
            for level, target, text in _native.log_take(_POLL_MS):
                _emit(level, target, text)
        except Exception:  # a broken handler must not end forwarding for good
            if _stopping:
                return
            try:
                log.exception("iris-rpc: a log handler raised")
            except Exception:
                pass


def _start() -> None:
    global _thread, _stopping
    _stopping = False
    _native.log_closed(False)
    _native.log_set_level(_native_level())
    _thread = threading.Thread(target=_run, name="iris-rpc-log", daemon=True)
    _thread.start()


def _stop() -> None:
    global _stopping
    _stopping = True
    _native.log_closed(True)
    t = _thread
    if t is not None and t is not threading.current_thread():
        t.join(2.0)


def _flush(timeout: float = 0.0) -> None:
    """Hands over the records queued now (for tests); waits up to ``timeout`` for the first."""
    for level, target, text in _native.log_take(int(timeout * 1000)):
        _emit(level, target, text)


_start()
atexit.register(_stop)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_start)
