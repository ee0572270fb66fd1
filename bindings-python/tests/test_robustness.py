"""The dispatcher under stress: BaseExceptions from listeners, fork, listeners that block,
backpressure on dispatch, interpreter exit, what leaks to peers and reprs, and the API's
edges. Where a process boundary matters (fork, exit, a peer whose listener blocks) each side
runs in its own `python` process."""

from __future__ import annotations

import asyncio
import builtins
import logging
import re
import subprocess
import sys
import sysconfig
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable, List, Tuple

import pytest

import iris_rpc
from iris_rpc import Client, Server

from conftest import SECRET, WAIT, Recorder, wait_for

Pair = Tuple[Server, Client]


@pytest.fixture
def pair(certs: iris_rpc.Certificates, closing: Callable[[Any], Any]) -> Pair:
    server = closing(Server(auth=SECRET, port="127.0.0.1:0", certificates=certs, uuid="py-server"))
    client = closing(Client(auth=SECRET, address=server.address, uuid="py-client"))
    client.wait_connected(10)
    wait_for(server.is_connected, what="server side of the stream")
    return server, client


def run_python(code: str, timeout: float = 60) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout
    )


# ---- 2. a BaseException from a listener or handler ---------------------------------------------


def test_base_exceptions_are_logged_and_survived(pair: Pair, caplog: pytest.LogCaptureFixture) -> None:
    server, client = pair
    seen = Recorder()

    @server.on("ev")
    def quits(msg: Any, uuid: str, stream: Any) -> None:
        seen(msg["n"])
        if msg["n"] == 0:
            sys.exit(2)
        if msg["n"] == 1:
            raise KeyboardInterrupt

    @server.on("cancelled")
    def cancelled(msg: Any, uuid: str, stream: Any) -> Any:
        raise asyncio.CancelledError("sync handler cancelled")

    @server.on("exits")
    def exits(msg: Any, uuid: str, stream: Any) -> Any:
        sys.exit(1)

    with caplog.at_level(logging.ERROR, logger="iris_rpc"):
        for n in range(3):
            client.dispatch({"op": "ev", "n": n})
        assert [x[0] for x in seen.wait(3)] == [0, 1, 2]
        with pytest.raises(iris_rpc.RemoteError) as e:
            client.request({"op": "cancelled"}, timeout=WAIT)
        assert e.value.name == "CancelledError"
        with pytest.raises(iris_rpc.RemoteError) as e:
            client.request({"op": "exits"}, timeout=WAIT)
        assert e.value.name == "SystemExit"
        wait_for(lambda: len([r for r in caplog.records if r.name == "iris_rpc"]) >= 4, what="four log records")
    logged = [r for r in caplog.records if r.name == "iris_rpc"]
    kinds = {r.exc_info[0].__name__ for r in logged if r.exc_info and r.exc_info[0]}
    assert {"SystemExit", "KeyboardInterrupt", "CancelledError"} <= kinds


def test_keyboard_interrupt_on_the_loop_stops_the_program() -> None:
    # The documented choice: on a bound loop (the main thread), KeyboardInterrupt and
    # SystemExit from a listener propagate and stop the loop, as asyncio does for callbacks.
    done = run_python(
        """
        import asyncio
        from iris_rpc import Client, Server, self_signed
        async def main():
            async with Server(auth="s", port="127.0.0.1:0", certificates=self_signed()) as server:
                def stop(msg, uuid, stream):
                    raise KeyboardInterrupt
                server.on("stop", stop)
                async with Client(auth="s", address=server.address) as client:
                    await client.await_connected(10)
                    client.dispatch({"op": "stop"})
                    await asyncio.sleep(30)
        try:
            asyncio.run(main())
        except KeyboardInterrupt:
            print("stopped")
        """
    )
    assert done.stdout.strip() == "stopped", done.stderr


# ---- 3. fork ------------------------------------------------------------------------------------


def test_inherited_objects_fail_fast_in_a_forked_child() -> None:
    done = run_python(
        """
        import os, signal
        import iris_rpc
        from iris_rpc import Client, Server, self_signed
        server = Server(auth="s", port="127.0.0.1:0", certificates=self_signed())
        server.on("echo", lambda m, u, s: m["x"])
        client = Client(auth="s", address=server.address)
        client.wait_connected(10)
        assert client.request({"op": "echo", "x": 1}) == 1
        pid = os.fork()
        if pid == 0:
            signal.alarm(20)  # a hang fails the test instead of blocking it
            for what, call in [
                ("request", lambda: client.request({"op": "echo", "x": 2})),
                ("dispatch", lambda: client.dispatch({"op": "echo", "x": 2})),
                ("server dispatch", lambda: server.dispatch({"op": "echo"})),
                ("wait_connected", lambda: client.wait_connected(1)),
                ("peers", lambda: client.peers()),
            ]:
                try:
                    call()
                    print(what, "succeeded", flush=True)
                except iris_rpc.ClosedError as e:
                    print(what, "ClosedError", "fork" in str(e) and "new" in str(e), flush=True)
            print("closed", client.closed, flush=True)
            client.close()  # harmless in the child
            own = Client(auth="s", address=server.address)
            own.wait_connected(10)
            print("own", own.request({"op": "echo", "x": 3}), flush=True)
            own.close()
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert client.request({"op": "echo", "x": 4}) == 4  # the parent's are untouched
        print("parent", os.waitstatus_to_exitcode(status), flush=True)
        """
    )
    assert done.stdout.splitlines() == [
        "request ClosedError True",
        "dispatch ClosedError True",
        "server dispatch ClosedError True",
        "wait_connected ClosedError True",
        "peers ClosedError True",
        "closed True",
        "own 3",
        "parent 0",
    ], done.stdout + done.stderr


# ---- 4. listeners that block ----------------------------------------------------------------


def test_answers_settle_while_a_listener_blocks(pair: Pair) -> None:
    # arequest answers must not wait behind the client's own listeners.
    server, client = pair
    server.on("add", lambda m, u, s: m["a"] + m["b"])
    release = threading.Event()
    entered = Recorder()

    @client.on("block")
    def block(msg: Any, uuid: str, stream: Any) -> None:
        entered()
        release.wait(WAIT * 2)

    server.dispatch({"op": "block"})
    entered.wait(1)
    try:

        async def ask() -> Any:
            # Bounded here, not by the request's timeout: that answer would wait as well.
            return await asyncio.wait_for(client.arequest({"op": "add", "a": 1, "b": 2}), WAIT)

        assert asyncio.run(ask()) == 3
    finally:
        release.set()


def test_executor_runs_streams_and_requests_concurrently(
    certs: iris_rpc.Certificates, closing: Callable[[Any], Any]
) -> None:
    server = closing(Server(auth=SECRET, port="127.0.0.1:0", certificates=certs, executor=4))
    release = threading.Event()
    entered = Recorder()
    order = Recorder()

    @server.on("block")
    def block(msg: Any, uuid: str, stream: Any) -> None:
        entered()
        release.wait(WAIT * 2)
        order("a", msg["n"])

    server.on("note", lambda m, u, s: order(u, m["n"]))
    server.on("add", lambda m, u, s: m["a"] + m["b"])
    a = closing(Client(auth=SECRET, address=server.address, uuid="a"))
    b = closing(Client(auth=SECRET, address=server.address, uuid="b"))
    a.wait_connected(10)
    b.wait_connected(10)
    try:
        a.dispatch({"op": "block", "n": 0})
        entered.wait(1)
        a.dispatch({"op": "note", "n": 1})  # behind the blocked listener: same stream
        b.dispatch({"op": "note", "n": 0})  # another stream: not behind it
        assert order.wait(1)[0] == ("b", 0)
        assert b.request({"op": "add", "a": 1, "b": 2}, timeout=WAIT) == 3
        assert a.request({"op": "add", "a": 2, "b": 2}, timeout=WAIT) == 4  # requests run concurrently
    finally:
        release.set()
    assert order.wait(3) == [("b", 0), ("a", 0), ("a", 1)]  # one stream's events stay in order


def test_executor_backlog_holds_back_instead_of_dropping(
    certs: iris_rpc.Certificates, closing: Callable[[Any], Any]
) -> None:
    # More events than the executor's backlog (4096) and the core's queue arrive while their
    # lane is blocked: reading pauses, and once released every event arrives, in order.
    server = closing(Server(auth=SECRET, port="127.0.0.1:0", certificates=certs, executor=2, event_queue=64))
    release = threading.Event()
    seen = Recorder()

    @server.on("n")
    def on_n(msg: Any, uuid: str, stream: Any) -> None:
        if msg["i"] == 0:
            release.wait(WAIT * 2)
        seen(msg["i"])

    client = closing(Client(auth=SECRET, address=server.address))
    client.wait_connected(10)
    n = 10000
    for i in range(n):
        client.dispatch({"op": "n", "i": i})
    wait_for(lambda: server._backlog >= 4096, what="the executor backlog to fill")
    assert not seen.items
    release.set()
    assert [x[0] for x in seen.wait(n, timeout=WAIT * 4)] == list(range(n))


def test_executor_with_requests_in_loop_mode(certs: iris_rpc.Certificates) -> None:
    async def main() -> None:
        release = threading.Event()
        async with Server(auth=SECRET, port="127.0.0.1:0", certificates=certs, executor=2) as server:

            @server.on("block")
            def block(msg: Any, uuid: str, stream: Any) -> Any:
                release.wait(WAIT * 2)  # off the loop: the loop keeps serving
                return "released"

            server.on("add", lambda m, u, s: m["a"] + m["b"])
            async with Client(auth=SECRET, address=server.address) as client:
                await client.await_connected(10)
                blocked = asyncio.ensure_future(client.arequest({"op": "block"}, timeout=WAIT))
                await asyncio.sleep(0.05)
                assert await client.arequest({"op": "add", "a": 1, "b": 1}, timeout=WAIT) == 2
                release.set()
                assert await blocked == "released"

    asyncio.run(main())


def test_each_object_has_its_own_private_loop(certs: iris_rpc.Certificates, closing: Callable[[Any], Any]) -> None:
    slow = closing(Server(auth=SECRET, port="127.0.0.1:0", certificates=certs))
    fast = closing(Server(auth=SECRET, port="127.0.0.1:0", certificates=certs))
    release = threading.Event()
    entered = Recorder()

    @slow.on("hog")
    async def hog(msg: Any, uuid: str, stream: Any) -> Any:
        entered()
        release.wait(WAIT * 2)  # blocks the loop it runs on
        return "done"

    @fast.on("quick")
    async def quick(msg: Any, uuid: str, stream: Any) -> Any:
        await asyncio.sleep(0)
        return "quick"

    c1 = closing(Client(auth=SECRET, address=slow.address))
    c2 = closing(Client(auth=SECRET, address=fast.address))
    c1.wait_connected(10)
    c2.wait_connected(10)
    got: List[Any] = []
    t = threading.Thread(target=lambda: got.append(c1.request({"op": "hog"}, timeout=WAIT * 2)))
    t.start()
    try:
        entered.wait(1)
        assert c2.request({"op": "quick"}, timeout=WAIT) == "quick"
    finally:
        release.set()
        t.join(WAIT)
    assert got == ["done"]


RECEIVER = """
import sys, threading
from iris_rpc import Server, self_signed
server = Server(auth="s", port="127.0.0.1:0", certificates=self_signed(), event_queue=8)
release = threading.Event()
count = 0
done = threading.Event()
def on_blob(msg, uuid, stream):
    global count
    if count == 0:
        print("blocked", flush=True)
        release.wait(60)
    count += 1
    if count == msg["of"]:
        done.set()
server.on("blob", on_blob)
server.on("disconnect", lambda uuid, stream: print("disconnect", flush=True))
print(server.address, flush=True)
sys.stdin.readline()
release.set()
done.wait(60)
print(f"got {count}", flush=True)
server.close()
"""


def test_dispatch_backpressure_instead_of_disconnect() -> None:
    # The receiver, in its own process, blocks in its first listener; the sender fills its
    # outbound queue far past max_queue_bytes. adispatch waits for room instead of the
    # stream being dropped as a slow reader.
    proc = subprocess.Popen(
        [sys.executable, "-c", RECEIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        address = proc.stdout.readline().strip()
        n, blob = 400, "x" * 32 * 1024  # 12.8 MB through a 256 KiB queue
        disconnects = Recorder()
        client = Client(auth="s", address=address, max_queue_bytes=256 * 1024, reconnect_initial=60000)
        client.on("disconnect", lambda uuid, stream: disconnects(uuid))
        try:
            client.wait_connected(10)

            sent = [0]

            async def send_all() -> None:
                for i in range(n):
                    sent[0] = i
                    if i == 1:
                        assert proc.stdout is not None
                        assert proc.stdout.readline().strip() == "blocked"
                    await client.adispatch({"op": "blob", "i": i, "of": n, "data": blob}, timeout=WAIT * 4)

            async def main() -> None:
                sender = asyncio.ensure_future(send_all())
                # The sender is held back (its queue is full), not disconnected.
                await asyncio.sleep(0)
                # Wait until the sender is held: its queue full (socket buffers too) and no
                # progress over a while.
                deadline = time.monotonic() + WAIT
                still, last = 0, -1
                while still < 15 or client.stats()["queued_bytes"] < 64 * 1024:
                    assert time.monotonic() < deadline, "the sender was never held back"
                    still = still + 1 if sent[0] == last else 0
                    last = sent[0]
                    await asyncio.sleep(0.02)
                assert not sender.done() and sent[0] < n - 1
                # The wait has a limit: no room within `timeout` is a TimeoutError.
                with pytest.raises(iris_rpc.TimeoutError) as full:
                    # (over half the limit: it needs an empty queue)
                    await client.adispatch({"op": "blob", "i": -1, "of": n, "data": blob * 5}, timeout=0.2)
                assert full.value.value["error"] == "Outbound queue full"
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
                await sender

            asyncio.run(main())
            assert client.is_connected() and not disconnects.items
            # the blocking form, for threads
            assert client.dispatch({"op": "noop"}, block=True, timeout=WAIT) == 1
            # Everything arrived, with no disconnect on the way (the stream stays up until
            # our close() below; a dropped stream would not reconnect within the test).
            assert proc.stdout.readline().strip() == f"got {n}"
        finally:
            client.close()
        proc.communicate(timeout=WAIT * 4)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---- 5. exit --------------------------------------------------------------------------------


def test_blocked_listeners_do_not_hold_exit() -> None:
    # Before: close() at exit joined each object's dispatcher for 10 s, one after the other
    # (and an executor's threads would be joined for ever).
    code = """
        import threading
        from iris_rpc import Client, Server, self_signed
        certs = self_signed()
        forever = threading.Event()
        objects = []
        for i in range(3):
            # the last one runs its listeners on an executor of its own
            server = Server(auth="s", port="127.0.0.1:0", certificates=certs, executor=2 if i == 2 else None)
            entered = threading.Event()
            def block(msg, uuid, stream, entered=entered):
                entered.set()
                forever.wait()
            server.on("block", block)
            client = Client(auth="s", address=server.address)
            client.wait_connected(10)
            client.dispatch({"op": "block"})
            assert entered.wait(10)
            objects += [server, client]
        print("blocked", flush=True)
        """
    start = time.monotonic()
    done = run_python(code, timeout=60)
    elapsed = time.monotonic() - start
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "blocked"
    assert elapsed < 12, f"exit took {elapsed:.1f} s"  # before: over 30 s


def test_non_daemon_thread_in_request_does_not_hold_exit() -> None:
    code = """
        import asyncio, threading
        import iris_rpc
        from iris_rpc import Client, Server, self_signed
        server = Server(auth="s", port="127.0.0.1:0", certificates=self_signed())
        entered = threading.Event()
        @server.on("never")
        async def never(msg, uuid, stream):
            entered.set()
            await asyncio.sleep(120)
        client = Client(auth="s", address=server.address, timeout=120000)
        client.wait_connected(10)
        def worker():
            try:
                client.request({"op": "never"})
            except iris_rpc.ClosedError:
                print("worker: closed", flush=True)
        threading.Thread(target=worker).start()
        assert entered.wait(10)
        print("main ends", flush=True)
        """
    start = time.monotonic()
    done = run_python(code, timeout=150)
    elapsed = time.monotonic() - start
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["main ends", "worker: closed"]
    assert elapsed < 30, f"exit took {elapsed:.1f} s"  # before: the request's 120 s


# ---- 6. what leaks ----------------------------------------------------------------------------


def test_handler_exceptions_are_logged_and_stacks_stay_home(
    certs: iris_rpc.Certificates, closing: Callable[[Any], Any], caplog: pytest.LogCaptureFixture
) -> None:
    quiet = closing(Server(auth=SECRET, port="127.0.0.1:0", certificates=certs))
    chatty = closing(Server(auth=SECRET, port="127.0.0.1:0", certificates=certs, send_stack=True))
    for server in (quiet, chatty):

        @server.on("fail")
        def fail(msg: Any, uuid: str, stream: Any) -> Any:
            secret_path = "/srv/app/secrets.py"  # noqa: F841 - would show up in a traceback
            raise ValueError("bad input")

        @server.on("refuse")
        def refuse(msg: Any, uuid: str, stream: Any) -> Any:
            raise iris_rpc.RemoteError({"error": "refused on purpose"})

    c1 = closing(Client(auth=SECRET, address=quiet.address))
    c2 = closing(Client(auth=SECRET, address=chatty.address))
    c1.wait_connected(10)
    c2.wait_connected(10)
    with caplog.at_level(logging.ERROR, logger="iris_rpc"):
        with pytest.raises(iris_rpc.RemoteError) as e:
            c1.request({"op": "fail"})
        assert e.value.error == {"_Error": True, "name": "ValueError", "message": "bad input"}
        with pytest.raises(iris_rpc.RemoteError) as e:
            c2.request({"op": "fail"})
        assert "Traceback" in e.value.error["stack"] and "bad input" in e.value.error["stack"]
        with pytest.raises(iris_rpc.RemoteError):
            c1.request({"op": "refuse"})
        wait_for(lambda: len([r for r in caplog.records if r.name == "iris_rpc"]) >= 2, what="log records")
    logged = [r for r in caplog.records if r.name == "iris_rpc"]
    assert len(logged) == 2  # both ValueErrors; the deliberate RemoteError is an answer, not a bug
    assert all(r.exc_info and r.exc_info[0] is ValueError and "'fail'" in r.getMessage() for r in logged)


def test_reprs_keep_keys_out(certs: iris_rpc.Certificates, tmp_path: Path) -> None:
    assert "PRIVATE KEY" in certs.key
    for text in (repr(certs), str(certs)):
        assert "PRIVATE KEY" not in text and certs.key not in text
    on_disk = iris_rpc.Certificates(key=str(tmp_path / "k.pem"), cert=str(tmp_path / "c.pem"))
    assert str(tmp_path / "k.pem") in repr(on_disk)  # a path is not a secret


# ---- 7. free-threading ----------------------------------------------------------------------


@pytest.mark.skipif(not sysconfig.get_config_var("Py_GIL_DISABLED"), reason="needs a free-threaded CPython (3.13t)")
def test_free_threaded_build_keeps_the_gil() -> None:
    # Declared gil_used: on a free-threaded build importing the module enables the GIL.
    done = run_python("import sys, iris_rpc; print(sys._is_gil_enabled())")
    assert done.stdout.strip() == "True", done.stderr


# ---- 8. API ---------------------------------------------------------------------------------


def test_uuid_and_timeout_are_keyword_only(pair: Pair) -> None:
    server, client = pair
    server.on("x", lambda m, u, s: "y")
    with pytest.raises(TypeError):
        client.request({"op": "x"}, "py-server")  # type: ignore[misc]
    with pytest.raises(TypeError):
        client.dispatch({"op": "x"}, "py-server")  # type: ignore[misc]
    assert client.request({"op": "x"}, uuid="py-server", timeout=WAIT) == "y"


def test_star_import_keeps_the_builtin_timeout_error() -> None:
    ns: dict = {}
    exec("from iris_rpc import *", ns)
    assert "Client" in ns
    assert ns.get("TimeoutError", builtins.TimeoutError) is builtins.TimeoutError
    assert issubclass(iris_rpc.TimeoutError, builtins.TimeoutError)


def test_peers_compare_and_hash(pair: Pair) -> None:
    server, client = pair
    connects = Recorder()
    server.on("connect", lambda address, uuid, stream: connects(stream))
    other = Client(auth=SECRET, address=server.address, uuid="other")
    try:
        other.wait_connected(10)
        wait_for(lambda: any(p[0].uuid == "other" for p in connects.items), what="connect of the other client")
        peer = next(p[0] for p in connects.items if p[0].uuid == "other")
        by_uuid = {p.uuid: p for p in server.peers()}
        assert by_uuid["other"] == peer and hash(by_uuid["other"]) == hash(peer)
        assert by_uuid["py-client"] != peer
        assert len({*server.peers(), *server.peers()}) == 2
        assert peer != "other"
    finally:
        other.close()


def test_stats_serve_forever_and_wait_closed(pair: Pair) -> None:
    server, client = pair
    stats = client.stats()
    assert stats["streams"] == 1 and stats["pending"] == 0
    assert set(stats) >= {"connections", "streams", "pending", "queued_bytes"}

    @server.on("stop")
    def stop(msg: Any, uuid: str, stream: Any) -> None:
        server.close()

    served = threading.Thread(target=server.serve_forever)
    served.start()
    client.dispatch({"op": "stop"})
    served.join(WAIT)
    assert not served.is_alive() and server.closed

    async def waits() -> None:
        waiter = asyncio.ensure_future(client.wait_closed())
        await asyncio.sleep(0.01)
        assert not waiter.done()
        await client.aclose()
        await asyncio.wait_for(waiter, WAIT)

    asyncio.run(waits())


def test_on_keeps_the_decorated_type(tmp_path: Path) -> None:
    import mypy.api as mypy_api  # pinned by scripts/test-python
    snippet = tmp_path / "typed.py"
    snippet.write_text(
        textwrap.dedent(
            """
            from typing import Any
            from iris_rpc import Server
            server = Server(auth="s", port=0)
            @server.on("add")
            def add(msg: Any, uuid: str, stream: Any) -> int:
                return 1
            reveal_type(add)
            def plain(msg: Any, uuid: str, stream: Any) -> str:
                return ""
            reveal_type(server.on("x", plain))
            """
        )
    )
    out, err, status = mypy_api.run(["--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"), str(snippet)])
    revealed = [line for line in out.splitlines() if "Revealed type" in line]
    assert len(revealed) == 2, out + err
    # (mypy before 2.0 spells builtins out)
    assert re.search(r'-> (builtins\.)?int"$', revealed[0]) and re.search(r'-> (builtins\.)?str"$', revealed[1]), out


def test_client_made_in_a_loop_that_ended_warns_and_keeps_delivering(
    certs: iris_rpc.Certificates, closing: Callable[[Any], Any], caplog: pytest.LogCaptureFixture
) -> None:
    server = closing(Server(auth=SECRET, port="127.0.0.1:0", certificates=certs))
    got = Recorder()

    async def make() -> Client:
        client = Client(auth=SECRET, address=server.address, uuid="orphan")
        client.on("note", lambda m, u, s: got(m["n"]))
        await client.await_connected(10)
        return client

    loop = asyncio.new_event_loop()
    client = closing(loop.run_until_complete(make()))  # bound to a loop that no longer runs
    wait_for(server.is_connected, what="server side")
    with caplog.at_level(logging.WARNING, logger="iris_rpc"), pytest.warns(RuntimeWarning, match="closed"):
        server.dispatch({"op": "note", "n": 1})
        # The event is handed to the stopped loop (asyncio's queue of ready callbacks) ...
        wait_for(lambda: len(loop._ready) > 0, what="the event to reach the loop")  # type: ignore[attr-defined]
        loop.close()  # ... which closes without running it.
        for n in range(2, 12):
            server.dispatch({"op": "note", "n": n})
        assert [x[0] for x in got.wait(11)] == list(range(1, 12))
    assert any("loop" in r.getMessage() and "closed" in r.getMessage() for r in caplog.records if r.name == "iris_rpc")


def test_bodies_parse_exactly_as_json_loads() -> None:
    # Message bodies skip json.loads' whitespace passes when there is no whitespace around
    # them; every other text must still give json.loads' value or json.loads' error.
    import json

    from iris_rpc._rpc import _parse_body

    texts = [
        '{"op":"a","n":1}',
        ' {"op":"a"}',
        '{"op":"a"} ',
        '\n{"op":"a"}\t',
        '{"op":"a","f":1.5e3,"x":[null,true,false],"s":"\\u00e9\\n"}',
        '{"n":NaN,"i":Infinity}',
        "[1,2]",
        '"text"',
        "",
        " ",
        '{"op":"a"}x',
        '{"op":"a"} {"op":"b"}',
        '{"op":}',
        "\ufeff{}",
    ]
    for text in texts:
        try:
            want: Any = ("ok", json.loads(text))
        except json.JSONDecodeError as e:
            want = ("error", e.msg, e.pos)
        try:
            got: Any = ("ok", _parse_body(text))
        except json.JSONDecodeError as e:
            got = ("error", e.msg, e.pos)
        assert repr(got) == repr(want), text
