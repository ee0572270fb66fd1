"""What Client, Server and Router share: the listener registry, the dispatcher thread over one
native core object and the hand-off of its events to the listeners, and the lifecycle.

Threads: one dispatcher thread per object pulls batches from the core (GIL released while it
waits). Without an event loop it calls the listeners itself; bound to an asyncio loop (created
inside a running loop, or entered with ``async with``) it hands each batch to that loop, so
listeners run on the loop, with at most a few batches queued there (backpressure reaches the
peers instead of memory).
"""

from __future__ import annotations

import asyncio
import atexit
import inspect
import logging
import os
import threading
import weakref
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple, TypeVar, cast

log = logging.getLogger("iris_rpc")

F = TypeVar("F", bound=Callable[..., Any])
Handler = Callable[..., Any]

_BATCH = 1024
_POLL = 0.25  # seconds between checks that the Python object is still alive
_LOOP_BATCHES = 4  # batches handed to the event loop and not yet processed
# Legacy delivers events on a later tick, so listeners added right after the constructor see
# the first connection. Threads have no ticks: delivery starts when the object is first used
# (waited on, sent with, entered) or after this grace period, whichever comes first.
_GRACE = 0.1

_live: "weakref.WeakSet[_Dispatcher]" = weakref.WeakSet()


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


def _pump(ref: "weakref.ReferenceType[_Dispatcher]", native: Any) -> None:
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


D = TypeVar("D", bound="_Dispatcher")


class _Dispatcher:
    """One native core object (with ``next_batch``, ``closed`` and ``close``), its dispatcher
    thread and its listeners. Subclasses set ``_kind`` (which names the thread) and implement
    ``_process``, which runs a batch of events on the dispatcher thread or on the bound loop."""

    _kind = "rpc"
    # What the log calls a listener that raised.
    _listener_label = "listener"

    def __init__(self, native: Any, loop: Optional[asyncio.AbstractEventLoop]) -> None:
        """Starts the dispatcher thread, so subclasses set up their own state first."""
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
            name=f"iris-rpc-{self._kind}",
            daemon=True,
        )
        _live.add(self)
        self._thread.start()

    # ---- state ----

    @property
    def loop(self) -> Optional[asyncio.AbstractEventLoop]:
        """The event loop listeners run on, or None when they run on the dispatcher thread."""
        return self._loop

    @property
    def closed(self) -> bool:
        """True once close() was called."""
        return cast(bool, self._native.closed)

    # ---- listeners (behind each class's on and off) ----

    def _add_listener(self, key: str, fn: F) -> F:
        if not callable(fn):
            raise TypeError("listener must be callable")
        self._listeners[key] = self._listeners.get(key, ()) + (fn,)
        return fn

    def _remove_listener(self, key: str, fn: Optional[Handler]) -> bool:
        current = self._listeners.get(key, ())
        if fn is None:
            kept: Tuple[Handler, ...] = ()
        else:
            kept = tuple(f for f in current if f is not fn and f != fn)
        if kept:
            self._listeners[key] = kept
        else:
            self._listeners.pop(key, None)
        return len(kept) != len(current)

    # ---- lifecycle ----

    def close(self) -> None:
        """Closes the core object and waits for the dispatcher thread. Blocks (GIL released)
        for at most a few seconds. Safe to call more than once, from any thread or listener."""
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

    def __enter__(self: D) -> D:
        self._gate.set()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    async def __aenter__(self: D) -> D:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._gate.set()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    # ---- delivery (dispatcher thread, or the loop) ----

    def _deliver(self, batch: List[Tuple[Any, ...]]) -> None:
        if not self._gate_passed:
            self._gate.wait(_GRACE)
            self._gate_passed = True
        events = self._take_early(batch)
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
            # The loop was closed under us: from now on listeners run on this thread.
            self._loop_slots.release()
            self._loop = None
            self._process(events)

    def _take_early(self, batch: List[Tuple[Any, ...]]) -> List[Tuple[Any, ...]]:
        """Handles, on the dispatcher thread, the items of ``batch`` that must not wait for
        the listeners; returns the others, the events for ``_process``."""
        return batch

    def _pump_finished(self) -> None:
        self._finished = True
        _live.discard(self)

    def _process_on_loop(self, events: List[Tuple[Any, ...]]) -> None:
        try:
            self._process(events)
        finally:
            self._loop_slots.release()

    def _process(self, events: List[Tuple[Any, ...]]) -> None:
        raise NotImplementedError

    def _call(self, fn: Handler, args: Tuple[Any, ...]) -> None:
        """Calls a listener whose result nobody waits for."""
        try:
            result = fn(*args)
        except Exception:
            log.exception("iris-rpc: %s %r raised", self._listener_label, fn)
            return
        # Most listeners return None: skip the (slower) awaitable check for them.
        if result is not None and inspect.isawaitable(result):
            self._spawn(result)

    def _emit(self, event: str, *args: Any) -> None:
        for fn in self._listeners.get(event, ()):
            self._call(fn, args)

    def _spawn(self, aw: Awaitable[Any], settle: Optional[Callable[[Any], None]] = None) -> None:
        """Runs an awaitable on the bound loop (we are on it), else on the private loop; hands
        its finished future to ``settle`` when given, else logs the exception it raised."""

        def done(f: Any) -> None:
            self._tasks.discard(f)
            if settle is not None:
                settle(f)
            elif not f.cancelled() and f.exception() is not None:
                log.error("iris-rpc: async %s raised", self._listener_label, exc_info=f.exception())

        loop = self._loop
        fut: Any
        if loop is not None and not loop.is_closed():
            fut = asyncio.ensure_future(aw, loop=loop)
        else:
            fut = asyncio.run_coroutine_threadsafe(_awaited(aw), _aux_loop())
        self._tasks.add(fut)
        fut.add_done_callback(done)


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
