"""What Client, Server and Router share: the listener registry, the threads over one native
core object and the hand-off of its events to the listeners, and the lifecycle.

Threads: a reader thread per object pulls batches from the core (GIL released while it waits)
and never runs user code, so answers to :meth:`arequest` settle at once whatever the listeners
are doing. Events go, a few batches at most (backpressure reaches the peers instead of
memory), to one of:

- the listener thread (``iris-rpc-<kind>``), which calls the listeners one at a time, in
  arrival order, when the object is not bound to a loop;
- the bound asyncio loop (created inside a running loop, or entered with ``async with``);
- with ``executor``, an executor: each stream is a lane whose events run in order, one at a
  time, while other streams and every request run in parallel.

``async def`` handlers of an object without a loop run on a private loop of that object.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import functools
import inspect
import itertools
import logging
import os
import queue
import threading
import time
import warnings
import weakref
from typing import (
    Any,
    Awaitable,
    Callable,
    Deque,
    Dict,
    Hashable,
    List,
    Optional,
    Tuple,
    TypeVar,
    Union,
    cast,
)

from ._errors import ClosedError, ConfigError

log = logging.getLogger("iris_rpc")

F = TypeVar("F", bound=Callable[..., Any])
Handler = Callable[..., Any]
Item = Tuple[Any, ...]
ExecutorLike = Union[None, int, concurrent.futures.Executor]

_BATCH = 1024
_POLL = 0.25  # seconds between checks that the Python object is still alive
_CONGESTED = 0.01  # seconds between checks for room while the listeners are behind
_QUEUED_BATCHES = 4  # batches handed to the listeners (thread or loop) and not yet processed
_EXECUTOR_BACKLOG = 4 * _BATCH  # events and requests queued on an executor, not yet finished
_JOIN = 5.0  # seconds close() waits for a listener that is still running
# Interpreter exit closes every object still open, before non-daemon threads are joined, and
# waits for their threads within this one budget, however many objects there are.
_EXIT_BUDGET = 3.0
# Legacy delivers events on a later tick, so listeners added right after the constructor see
# the first connection. Threads have no ticks: delivery starts when the object is first used
# (waited on, sent with, entered) or after this grace period, whichever comes first.
_GRACE = 0.1

_live: "weakref.WeakSet[_Dispatcher]" = weakref.WeakSet()
_live_lock = threading.Lock()
# Incremented in every child made by fork(): an object made in another generation belongs to
# an ancestor process, whose runtime threads the child does not have.
_generation = 0
_serials = itertools.count()


async def _awaited(aw: Awaitable[Any]) -> Any:
    return await aw


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _stops_program(e: BaseException) -> bool:
    return isinstance(e, (KeyboardInterrupt, SystemExit))


def _run_private_loop(loop: asyncio.AbstractEventLoop, name: str) -> None:
    """Runs an object's private loop until it is stopped. A KeyboardInterrupt or SystemExit
    from a handler would end ``run_forever``: it is logged and the loop goes on."""
    asyncio.set_event_loop(loop)
    while True:
        try:
            loop.run_forever()
        except BaseException:
            log.exception("iris-rpc: an async handler on %s raised", name)
            continue
        break
    try:
        tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    except BaseException:  # pragma: no cover - best effort when stopping
        pass
    loop.close()


# ---- the threads ------------------------------------------------------------------------------


T = TypeVar("T")


class _Pool(concurrent.futures.Executor):
    """The executor behind ``executor=N``: N daemon threads. Unlike ThreadPoolExecutor, whose
    threads Python joins at exit without a limit, a listener blocked on one of them cannot hold
    exit longer than the exit budget."""

    def __init__(self, threads: int, name: str) -> None:
        self._queue: "queue.SimpleQueue[Optional[Tuple[concurrent.futures.Future[Any], Callable[..., Any], Tuple[Any, ...]]]]" = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._stopped = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(threads)
        ]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> "concurrent.futures.Future[T]":
        if kwargs:
            fn = functools.partial(fn, **kwargs)
        with self._lock:
            if self._stopped:
                raise RuntimeError("cannot schedule new work after shutdown")
            f: "concurrent.futures.Future[T]" = concurrent.futures.Future()
            self._queue.put((f, fn, args))
        return f

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._stopped = True
        if cancel_futures:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[0].cancel()
        for _ in self._threads:
            self._queue.put(None)
        if wait:
            for t in self._threads:
                if t is not threading.current_thread():
                    t.join()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            f, fn, args = item
            del item
            if not f.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args)
            except BaseException as e:
                f.set_exception(e)
            else:
                f.set_result(result)
            del f, fn, args



def _read(ref: "weakref.ReferenceType[_Dispatcher]", native: Any) -> None:
    """The reader thread: pulls from the core and hands on; never runs user code."""
    try:
        while True:
            rpc = ref()
            room = True if rpc is None else rpc._has_room()
            bound = rpc is not None and rpc._loop is not None
            del rpc
            if not room and bound:
                # Answers awaited on the bound loop keep their place behind the events that
                # came before them, so nothing is taken until that loop catches up (the
                # answers would wait for it anyway).
                time.sleep(_CONGESTED)
                continue
            try:
                batch = native.next_batch(_BATCH, _POLL if room else _CONGESTED, room)
            except BaseException:  # pragma: no cover - the native side does not raise here
                log.exception("iris-rpc: reading events failed")
                break
            if batch is None:
                break
            rpc = ref()
            if rpc is None:
                # Forgotten without close(): the object is gone, so is everyone's interest.
                native.close()
                continue
            if batch:
                rpc._received(batch)
            del rpc
    finally:
        rpc = ref()
        if rpc is not None:
            rpc._reader_finished()


class _Batches:
    """The listener thread's queue of batches."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.items: Deque[Optional[List[Item]]] = collections.deque()

    def put(self, batch: Optional[List[Item]]) -> None:
        with self.cond:
            self.items.append(batch)
            self.cond.notify()

    def get(self) -> Optional[List[Item]]:
        with self.cond:
            while not self.items:
                self.cond.wait()
            return self.items.popleft()


def _listen(ref: "weakref.ReferenceType[_Dispatcher]", batches: _Batches) -> None:
    """The listener thread: runs the listeners of one batch after another."""
    while True:
        batch = batches.get()
        if batch is None:
            return
        rpc = ref()
        if rpc is None:
            return
        try:
            rpc._process_batch(batch)
        except BaseException:  # pragma: no cover - _process_batch logs what listeners raise
            log.exception("iris-rpc: delivering events failed")
        del rpc


D = TypeVar("D", bound="_Dispatcher")


class _Dispatcher:
    """One native core object (with ``next_batch``, ``closed`` and ``close``), its threads and
    its listeners. Subclasses set ``_kind`` (which names the threads) and implement
    ``_handle`` for one item, and ``_lane`` (which stream an item belongs to) and
    ``_is_request`` for the executor."""

    _kind = "rpc"
    # What the log calls a listener that raised.
    _listener_label = "listener"

    def __init__(
        self,
        native: Any,
        loop: Optional[asyncio.AbstractEventLoop],
        executor: ExecutorLike = None,
    ) -> None:
        """Starts the reader thread, so subclasses set up their own state first."""
        self._native = native
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
        self._loop = loop
        self._listeners: Dict[str, Tuple[Handler, ...]] = {}
        # Writers of the listener tables and of _tasks take it; readers see a tuple or dict
        # that is replaced, never changed in place.
        self._lock = threading.RLock()
        self._tasks: "set[Any]" = set()
        self._closing = False
        self._finished = False
        self._generation = _generation
        self._closed_event = threading.Event()
        # Batches handed to the listener thread or the loop, not yet processed; and items on
        # the executor, not yet finished.
        self._room = threading.Lock()
        self._queued = 0
        self._backlog = 0
        self._on_loop_batches: Deque[List[Item]] = collections.deque()
        self._warned_loop = False
        self._batches: Optional[_Batches] = None
        self._listener_thread: Optional[threading.Thread] = None
        self._private: Optional[asyncio.AbstractEventLoop] = None
        self._private_thread: Optional[threading.Thread] = None
        self._executor: Optional[concurrent.futures.Executor]
        self._own_executor = False
        if executor is None:
            self._executor = None
        elif isinstance(executor, bool) or not isinstance(executor, (int, concurrent.futures.Executor)):
            raise ConfigError("executor must be a concurrent.futures.Executor or a number of threads")
        elif isinstance(executor, int):
            if executor < 1:
                raise ConfigError("executor must be at least 1 thread")
            self._executor = _Pool(executor, f"iris-rpc-{self._kind}")
            self._own_executor = True
        else:
            self._executor = executor
        self._lanes: Dict[Hashable, Deque[Item]] = {}
        self._gate = threading.Event()
        self._gate_passed = False
        if loop is not None:
            self._gate.set()  # the loop itself defers delivery to after the current step
        self._reader = threading.Thread(
            target=_read,
            args=(weakref.ref(self), native),
            name=f"iris-rpc-{self._kind}-reader",
            daemon=True,
        )
        self._serial = next(_serials)
        with _live_lock:
            _live.add(self)
        self._reader.start()

    # ---- state ----

    @property
    def loop(self) -> Optional[asyncio.AbstractEventLoop]:
        """The event loop listeners run on, or None when they run on the object's threads."""
        return self._loop

    @property
    def closed(self) -> bool:
        """True once close() was called (and always in a child that inherited the object
        through fork())."""
        return self._inherited() or cast(bool, self._native.closed)

    def _inherited(self) -> bool:
        return self._generation != _generation

    def _check(self) -> None:
        """Raises ClosedError for an object inherited through fork()."""
        if self._generation != _generation:
            name = type(self).__name__
            raise ClosedError(
                f"this {name} was created in the parent process and inherited through fork(); "
                f"it cannot be used here: create a new {name} in the child",
                {"error": "Closed", "closed": True, "forked": True},
            )

    # ---- listeners (behind each class's on and off) ----

    def _add_listener(self, key: str, fn: F) -> F:
        if not callable(fn):
            raise TypeError("listener must be callable")
        with self._lock:
            self._listeners = {**self._listeners, key: self._listeners.get(key, ()) + (fn,)}
        return fn

    def _remove_listener(self, key: str, fn: Optional[Handler]) -> bool:
        with self._lock:
            current = self._listeners.get(key, ())
            if fn is None:
                kept: Tuple[Handler, ...] = ()
            else:
                kept = tuple(f for f in current if f is not fn and f != fn)
            listeners = dict(self._listeners)
            if kept:
                listeners[key] = kept
            else:
                listeners.pop(key, None)
            self._listeners = listeners
        return len(kept) != len(current)

    # ---- lifecycle ----

    def close(self) -> None:
        """Closes the core object and waits for its threads (a listener still running, at
        most a few seconds). Safe to call more than once, from any thread or listener."""
        deadline = time.monotonic() + _JOIN
        self._shutdown()
        self._join(deadline)

    def _shutdown(self) -> None:
        """Closes the native object (bounded by the core), without waiting for threads."""
        self._closing = True
        self._gate.set()
        if self._inherited():
            # A forked child: the runtime threads behind this object live in the parent only.
            self._closed_event.set()
            return
        self._native.close()
        self._closed_event.set()

    def _join(self, deadline: float) -> None:
        if self._inherited():
            return
        me = threading.current_thread()
        if self._reader is not me and self._reader.ident is not None:
            self._reader.join(max(0.0, deadline - time.monotonic()))
        batches, thread = self._batches, self._listener_thread
        if batches is not None:
            batches.put(None)
            if thread is not None and thread is not me:
                thread.join(max(0.0, deadline - time.monotonic()))
        if self._executor is not None and self._own_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)
        private = self._private
        if private is not None and not private.is_closed():
            try:
                private.call_soon_threadsafe(private.stop)
            except RuntimeError:  # pragma: no cover - closed meanwhile
                pass
        with _live_lock:
            _live.discard(self)

    async def aclose(self) -> None:
        """:meth:`close` without blocking the event loop."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.close)

    def serve_forever(self) -> None:
        """Blocks until the object is closed (by a handler, another thread or a signal
        handler). Ctrl-C closes it and raises KeyboardInterrupt."""
        self._check()
        self._gate.set()
        try:
            while not self._closed_event.wait(0.5):
                pass
        except BaseException:
            self.close()
            raise

    async def wait_closed(self) -> None:
        """Waits, without blocking the loop, until the object is closed."""
        while not self._closed_event.is_set():
            await asyncio.sleep(0.02)

    def __enter__(self: D) -> D:
        self._check()
        self._gate.set()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    async def __aenter__(self: D) -> D:
        self._check()
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._gate.set()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    # ---- the reader's side ----

    def _has_room(self) -> bool:
        """Whether the listeners can take another batch; False holds events in the core."""
        if self._closing:
            return True  # what is still queued is delivered if it fits, else dropped
        loop = self._loop
        if loop is not None and self._queued >= _QUEUED_BATCHES:
            if loop.is_closed():
                self._unbind(loop)
            elif not loop.is_running() and not self._warned_loop:
                self._warned_loop = True
                self._warn(f"the event loop {loop!r} this object is bound to is not running: its events wait for it")
        return self._queued < _QUEUED_BATCHES and self._backlog < _EXECUTOR_BACKLOG

    def _received(self, batch: List[Item]) -> None:
        if not self._gate_passed:
            self._gate.wait(_GRACE)
            self._gate_passed = True
        events, answers = self._split(batch)
        try:
            if events:
                self._hand_off(events)
        finally:
            # After the events that came before them: on a loop that is also the loop of
            # the awaiting future, listeners run before the answer is seen.
            if answers:
                self._settle(answers)

    def _hand_off(self, events: List[Item]) -> None:
        if self._closing and not (self._queued < _QUEUED_BATCHES and self._backlog < _EXECUTOR_BACKLOG):
            return
        loop = self._loop
        if loop is None:
            if self._executor is not None:
                self._distribute(events)
            else:
                self._to_thread(events)
            return
        with self._room:
            self._queued += 1
            self._on_loop_batches.append(events)
        try:
            loop.call_soon_threadsafe(self._process_on_loop, events)
        except RuntimeError:
            # The loop was closed under us: from now on listeners run on our own threads.
            self._unbind(loop)

    def _split(self, batch: List[Item]) -> Tuple[List[Item], List[Item]]:
        """Splits ``batch`` into events for the listeners and answers that the reader thread
        settles itself, after handing the events on."""
        return batch, []

    def _settle(self, answers: List[Item]) -> None:
        """Settles answers (see ``_split``)."""

    def _reader_finished(self) -> None:
        self._finished = True
        self._closed_event.set()
        with _live_lock:
            _live.discard(self)

    def _warn(self, message: str) -> None:
        log.warning("iris-rpc: %s", message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)

    def _unbind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The bound loop is closed: its batches not yet processed, and everything after
        them, go to the listener thread instead of being lost."""
        with self._room:
            if self._loop is not loop:
                return
            self._loop = None
            left = list(self._on_loop_batches)
            self._on_loop_batches.clear()
            self._queued -= len(left)
        self._warn(
            f"the event loop {loop!r} this {type(self).__name__} was bound to is closed; its "
            "listeners now run on the object's own thread (close objects before their loop ends)"
        )
        for events in left:
            if self._executor is not None:
                self._distribute(events)
            else:
                self._to_thread(events)

    def _to_thread(self, events: List[Item]) -> None:
        if self._batches is None:
            self._batches = _Batches()
            self._listener_thread = threading.Thread(
                target=_listen,
                args=(weakref.ref(self), self._batches),
                name=f"iris-rpc-{self._kind}",
                daemon=True,
            )
            self._listener_thread.start()
        with self._room:
            self._queued += 1
        self._batches.put(events)

    # ---- running listeners ----

    def _process_batch(self, events: List[Item]) -> None:
        try:
            self._process(events)
        finally:
            with self._room:
                self._queued -= 1

    def _process_on_loop(self, events: List[Item]) -> None:
        with self._room:
            try:
                self._on_loop_batches.remove(events)
            except ValueError:
                return  # already handed to the listener thread by _unbind
        self._process_batch(events)

    def _process(self, events: List[Item]) -> None:
        for item in events:
            self._handle(item)

    def _handle(self, item: Item) -> None:
        raise NotImplementedError

    def _lane(self, item: Item) -> Hashable:
        """The stream an item belongs to (its lane on the executor); None for the object."""
        return None

    def _is_request(self, item: Item) -> bool:
        return False

    def _distribute(self, events: List[Item]) -> None:
        """Executor mode: requests each run on their own, events queue in their stream's lane."""
        executor = self._executor
        assert executor is not None
        for item in events:
            with self._room:
                self._backlog += 1
            if self._is_request(item):
                self._submit(executor, self._run_item, item)
                continue
            key = self._lane(item)
            with self._room:
                lane = self._lanes.get(key)
                start = lane is None
                if lane is None:
                    lane = self._lanes[key] = collections.deque()
                lane.append(item)
            if start:
                self._submit(executor, self._drain, key)

    def _submit(self, executor: concurrent.futures.Executor, fn: Callable[..., None], *args: Any) -> None:
        """Runs ``fn(*args)`` on the executor; ``fn`` takes back its backlog count when done."""
        try:
            executor.submit(fn, *args)
        except RuntimeError:
            # Shut down (closing): nothing more runs.
            with self._room:
                if fn == self._drain:
                    self._backlog -= len(self._lanes.pop(args[0], ()))
                else:
                    self._backlog -= 1

    def _run_item(self, item: Item) -> None:
        try:
            self._handle(item)
        except BaseException:  # _handle logs what listeners raise; this is a bug of ours
            log.exception("iris-rpc: delivering an event failed")
        finally:
            with self._room:
                self._backlog -= 1

    def _drain(self, key: Hashable) -> None:
        while True:
            with self._room:
                lane = self._lanes.get(key)
                if not lane:
                    self._lanes.pop(key, None)
                    return
                item = lane.popleft()
            self._run_item(item)

    def _fatal(self, e: BaseException) -> bool:
        """Whether ``e`` must propagate after being logged: KeyboardInterrupt and SystemExit
        raised on a bound loop stop that loop, as asyncio does for its own callbacks. On the
        object's threads nothing could stop the program with them, so they are logged only."""
        loop = self._loop
        return _stops_program(e) and loop is not None and _on_loop(loop)

    def _call(self, fn: Handler, args: Tuple[Any, ...]) -> None:
        """Calls a listener whose result nobody waits for."""
        try:
            result = fn(*args)
        except BaseException as e:
            self._listener_raised(fn, e)
            return
        # Most listeners return None: skip the (slower) awaitable check for them.
        if result is not None and inspect.isawaitable(result):
            self._spawn(result)

    def _listener_raised(self, fn: Handler, e: BaseException) -> None:
        """Logs what listener ``fn`` raised; re-raises it when it must stop the program. Called
        while ``e`` is being handled."""
        log.error("iris-rpc: %s %r raised %s", self._listener_label, fn, type(e).__name__, exc_info=True)
        if self._fatal(e):
            raise

    def _emit(self, event: str, *args: Any) -> None:
        for fn in self._listeners.get(event, ()):
            self._call(fn, args)

    def _private_loop(self) -> asyncio.AbstractEventLoop:
        """This object's own event loop, on its own thread, for ``async def`` handlers when
        the object is not bound to a loop (one per object, so a handler that blocks its loop
        holds back this object only)."""
        with self._lock:
            loop = self._private
            if loop is None or loop.is_closed():
                loop = asyncio.new_event_loop()
                name = f"iris-rpc-{self._kind}-async"
                t = threading.Thread(target=_run_private_loop, args=(loop, name), name=name, daemon=True)
                t.start()
                self._private, self._private_thread = loop, t
            return loop

    def _spawn(self, aw: Awaitable[Any], settle: Optional[Callable[[Any], None]] = None) -> None:
        """Runs an awaitable on the bound loop, else on the private loop; hands its finished
        future to ``settle`` when given, else logs the exception it raised."""

        def done(f: Any) -> None:
            with self._lock:
                self._tasks.discard(f)
            if settle is not None:
                settle(f)
            elif not f.cancelled() and f.exception() is not None:
                log.error("iris-rpc: async %s raised", self._listener_label, exc_info=f.exception())

        loop = self._loop
        fut: Any
        if loop is not None and not loop.is_closed() and _on_loop(loop):
            fut = asyncio.ensure_future(aw, loop=loop)
        else:
            target = loop if loop is not None and not loop.is_closed() else self._private_loop()
            try:
                fut = asyncio.run_coroutine_threadsafe(_awaited(aw), target)
            except RuntimeError:
                fut = asyncio.run_coroutine_threadsafe(_awaited(aw), self._private_loop())
        with self._lock:
            self._tasks.add(fut)
        fut.add_done_callback(done)


def _after_fork_in_child() -> None:
    global _generation, _live_lock
    _generation += 1
    _live_lock = threading.Lock()  # another thread may have held it at fork
    # Objects inherited through fork() belong to the parent; the child must not close them.
    _live.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _close_all() -> None:
    """Closes what is still open, within one budget for all objects, so exit is never held by
    a listener that blocks or a thread waiting in request(), and the interpreter never
    finalizes with our threads inside the native module."""
    deadline = time.monotonic() + _EXIT_BUDGET
    with _live_lock:
        # Newest first: a client made for a server of this process closes before the server,
        # so its pending requests end as ClosedError rather than a disconnect.
        objects = sorted(_live, key=lambda rpc: rpc._serial, reverse=True)
    for rpc in objects:
        try:
            rpc._shutdown()
        except Exception:  # pragma: no cover - best effort at exit
            pass
    for rpc in objects:
        try:
            rpc._join(deadline)
        except Exception:  # pragma: no cover - best effort at exit
            pass


# threading runs these before it joins non-daemon threads (atexit runs after), so a thread
# blocked in request() gets ClosedError instead of holding exit until its timeout.
_register = getattr(threading, "_register_atexit", None)
if _register is not None:
    try:
        _register(_close_all)
    except RuntimeError:  # pragma: no cover - imported while the interpreter shuts down
        atexit.register(_close_all)
else:  # pragma: no cover - CPython < 3.9 or another interpreter
    atexit.register(_close_all)
