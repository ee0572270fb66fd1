"""Python against the real legacy iris-rpc 0.2.20 package (tests/interop/legacy-peer.js), in
both directions, cipher on and off."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Callable

import pytest

import iris_rpc
from iris_rpc import Client, Server

from conftest import SECRET, in_request, LegacyPeer, Recorder, free_port, wait_for

CIPHER = pytest.mark.parametrize("cipher", [True, False], ids=["cipher", "plain"])


def _client_to_legacy(legacy: Callable[..., LegacyPeer], closing: Callable[[Any], Any], cipher: bool, **extra: Any):
    port = free_port()
    peer = legacy("server", port=f"127.0.0.1:{port}", cipher=cipher, uuid="legacy-srv", designation="legacy")
    client = closing(
        Client(
            auth=SECRET,
            address=f"127.0.0.1:{port}",
            cipher=cipher,
            uuid="py-cli",
            designation="python",
            reconnect_initial=100,
            reconnect_max=300,
            **extra,
        )
    )
    return peer, client, port


@CIPHER
def test_python_client_legacy_server(legacy: Callable[..., LegacyPeer], closing: Callable[[Any], Any], cipher: bool) -> None:
    peer, client, _ = _client_to_legacy(legacy, closing, cipher)
    connects = Recorder()
    worlds = Recorder()
    client.on("connect", lambda address, uuid, stream: connects(uuid, stream.designation, stream.cipher))
    client.on("world", lambda msg, uuid, stream: worlds(msg, uuid))
    client.wait_connected(15)
    assert connects.wait(1)[0] == ("legacy-srv", "legacy", cipher)
    legacy_connect = peer.expect("connect")
    assert (legacy_connect["uuid"], legacy_connect["designation"]) == ("py-cli", "python")

    # requests answered, raising, echo of every JSON shape, and no handler
    assert client.request({"op": "add", "a": 2, "b": 3}) == {"sum": 5}
    with pytest.raises(iris_rpc.RemoteError) as e:
        client.request({"op": "fail"})
    assert (e.value.name, e.value.remote_message) == ("TypeError", "bad input")
    assert "TypeError: bad input" in e.value.error["stack"]
    msg = {"op": "echo", "text": "ünïcode ✓", "list": [1, 2.5, None, True], "nested": {"a": {"b": []}}}
    assert client.request(msg) == {"echo": msg}
    with pytest.raises(iris_rpc.RemoteError) as e:
        client.request({"op": "missing"})
    assert e.value.error == {"error": "No such handler 'missing'"}

    # timeouts: legacy never answers 'slow'
    with pytest.raises(iris_rpc.TimeoutError):
        client.request({"op": "slow"}, timeout=0.3)
    with pytest.raises(iris_rpc.TimeoutError) as te:
        client.request({"op": "slow", "op_timeout": 300})
    assert te.value.value == {"error": "Connection Timed Out", "timeout": 300, "req": {"op": "slow", "op_timeout": 300}}

    # events both ways: hello -> legacy digest and its 'world' answer
    assert client.dispatch({"op": "hello", "text": "hi"}) == 1
    got = peer.expect("message", lambda e: e["msg"].get("op") == "hello")
    assert got["msg"] == {"op": "hello", "text": "hi"} and got["uuid"] == "py-cli"
    assert worlds.wait(1)[0] == ({"op": "world", "echo": "hi"}, "legacy-srv")
    peer.dispatch({"op": "world", "echo": "direct"}, uuid="py-cli")
    assert worlds.wait(2)[1] == ({"op": "world", "echo": "direct"}, "legacy-srv")


@CIPHER
def test_legacy_client_python_server(legacy: Callable[..., LegacyPeer], closing: Callable[[Any], Any], certs: iris_rpc.Certificates, cipher: bool) -> None:
    server = closing(
        Server(auth=SECRET, port="127.0.0.1:0", certificates=certs, cipher=cipher, uuid="py-srv", designation="python", mac="a1b2c3d4e5f6")
    )
    connects = Recorder()
    disconnects = Recorder()
    hellos = Recorder()
    server.on("connect", lambda address, uuid, stream: connects(uuid, stream.designation))
    server.on("disconnect", lambda uuid, stream: disconnects(uuid))
    server.digest(lambda msg, uuid, stream: hellos(msg, uuid))

    @server.on("mul")
    def mul(msg: Any, uuid: str, stream: Any) -> Any:
        return {"product": msg["a"] * msg["b"], "from": uuid}

    @server.on("raise")
    def fail(msg: Any, uuid: str, stream: Any) -> Any:
        raise ValueError("python says no")

    @server.on("later")
    async def later(msg: Any, uuid: str, stream: Any) -> Any:
        await asyncio.sleep(0.01)
        return [msg["x"], "later"]

    @server.on("refuse")
    def refuse(msg: Any, uuid: str, stream: Any) -> Any:
        raise iris_rpc.RemoteError({"error": "refused", "code": 42})

    peer = legacy("client", address=server.address, cipher=cipher, uuid="legacy-cli", designation="legacy")
    c = peer.expect("connect")
    assert (c["uuid"], c["designation"], c["mac"]) == ("py-srv", "python", "a1b2c3d4e5f6")
    assert connects.wait(1)[0] == ("legacy-cli", "legacy")

    r = peer.request({"op": "mul", "a": 6, "b": 7})
    assert r["err"] is None and r["resp"] == {"product": 42, "from": "legacy-cli"}
    r = peer.request({"op": "raise"})
    assert r["err"] == {"_Error": True, "name": "Error", "message": "python says no"}  # rebuilt by legacy
    r = peer.request({"op": "later", "x": 5})
    assert r["err"] is None and r["resp"] == [5, "later"]
    r = peer.request({"op": "refuse"})
    assert r["err"] == {"error": "refused", "code": 42}
    r = peer.request({"op": "absent"})
    assert r["err"] == {"error": "No such handler 'absent'"}

    peer.dispatch({"op": "hello", "text": "from legacy"})
    assert hellos.wait(1)[0] == ({"op": "hello", "text": "from legacy"}, "legacy-cli")
    server.dispatch({"op": "news", "n": 1})
    server.dispatch({"op": "news", "n": 2}, uuid="legacy-cli")
    assert peer.expect("message", lambda e: e["msg"] == {"op": "news", "n": 1})["uuid"] == "py-srv"
    peer.expect("message", lambda e: e["msg"] == {"op": "news", "n": 2})

    # requests from Python to the legacy client
    assert server.request({"op": "add", "a": 1, "b": 1}, uuid="legacy-cli") == {"sum": 2}
    with pytest.raises(iris_rpc.RemoteError) as e:
        server.request({"op": "fail"}, uuid="legacy-cli")
    assert e.value.name == "TypeError"

    peer.stop()
    assert disconnects.wait(1)[0] == ("legacy-cli",)
    wait_for(lambda: not server.is_connected(), what="disconnect")


@CIPHER
def test_disconnect_and_reconnect(legacy: Callable[..., LegacyPeer], closing: Callable[[Any], Any], cipher: bool) -> None:
    peer, client, port = _client_to_legacy(legacy, closing, cipher)
    disconnects = Recorder()
    client.on("disconnect", lambda uuid, stream: disconnects(uuid))
    client.wait_connected(15)
    result: list = []

    def call() -> None:
        try:
            client.request({"op": "slow"})
        except Exception as e:  # asserted on the main thread
            result.append(e)

    t = threading.Thread(target=call)
    t.start()
    peer.expect("connect")
    wait_for(lambda: in_request(t), what="the thread to block in request()")
    time.sleep(0.1)  # and for the request to be written
    peer.kill()
    t.join(15)
    assert not t.is_alive()
    assert isinstance(result[0], iris_rpc.DisconnectedError)
    assert result[0].value == {"error": "Connection Terminated", "disconnected": True, "req": {"op": "slow"}}
    assert disconnects.wait(1)[0] == ("legacy-srv",)
    assert not client.is_connected()

    # a new legacy server on the same port: the client comes back by itself
    legacy("server", port=f"127.0.0.1:{port}", cipher=cipher, uuid="legacy-srv-2")
    client.wait_connected(15)
    assert client.request({"op": "add", "a": 20, "b": 22}) == {"sum": 42}
    assert [p.uuid for p in client.peers()] == ["legacy-srv-2"]


def test_wrong_secret_with_legacy(legacy: Callable[..., LegacyPeer], closing: Callable[[Any], Any]) -> None:
    port = free_port()
    legacy("server", port=f"127.0.0.1:{port}", uuid="legacy-srv")
    client = closing(Client(auth="wrong", address=f"127.0.0.1:{port}", reconnect_initial=100))
    errors = Recorder()
    client.on("error", lambda exc, address: errors(type(exc)))
    with pytest.raises(iris_rpc.NotConnectedError):
        client.wait_connected(1.5)
    assert issubclass(errors.wait(1)[0][0], iris_rpc.IrisError)


def test_thousand_in_flight_to_legacy(legacy: Callable[..., LegacyPeer], closing: Callable[[Any], Any]) -> None:
    port = free_port()
    legacy("server", port=f"127.0.0.1:{port}", uuid="legacy-srv")

    async def main() -> Any:
        async with Client(auth=SECRET, address=f"127.0.0.1:{port}") as client:
            await client.await_connected(15)
            return await asyncio.gather(*(client.arequest({"op": "add", "a": i, "b": 1}) for i in range(1000)))

    answers = asyncio.run(asyncio.wait_for(main(), 60))
    assert answers == [{"sum": i + 1} for i in range(1000)]


def test_multiplexer_with_legacy(legacy: Callable[..., LegacyPeer], certs: iris_rpc.Certificates, closing: Callable[[Any], Any]) -> None:
    p1, p2 = free_port(), free_port()
    legacy("server", port=f"127.0.0.1:{p1}", uuid="legacy-a")
    legacy("server", port=f"127.0.0.1:{p2}", uuid="legacy-b")
    mux = closing(
        iris_rpc.Multiplexer(
            {"auth": SECRET, "certificates": certs},
            {"a": {"address": f"127.0.0.1:{p1}"}, "b": {"address": f"127.0.0.1:{p2}"}},
        )
    )
    worlds = Recorder()
    mux.on("world", lambda msg, uuid, stream: worlds(uuid))
    mux.wait_connected(15)
    assert mux.request({"op": "add", "a": 1, "b": 2}, uuid="legacy-a") == {"sum": 3}
    assert mux.request({"op": "add", "a": 2, "b": 2}, uuid="legacy-b") == {"sum": 4}
    assert mux.dispatch({"op": "hello", "text": "x"}) == 2
    assert sorted(w[0] for w in worlds.wait(2)) == ["legacy-a", "legacy-b"]


@CIPHER
def test_answers_after_earlier_events_from_legacy(
    legacy: Callable[..., LegacyPeer], closing: Callable[[Any], Any], cipher: bool
) -> None:
    # For each i the legacy server gets "hello i" before "add i" (a dispatch is queued when
    # called, before the request that follows it), so it sends "world i" before the answer
    # to "add i": on a loop-bound client the "world i" listener must have run when that
    # answer is delivered.
    peer, _unused, port = _client_to_legacy(legacy, closing, cipher)
    _unused.close()

    async def main() -> Any:
        async with Client(auth=SECRET, address=f"127.0.0.1:{port}", cipher=cipher, uuid="py-order") as client:
            seen: "set[int]" = set()
            client.on("world", lambda msg, uuid, stream: seen.add(msg["echo"]))
            await client.await_connected(15)

            async def one(i: int) -> bool:
                client.dispatch({"op": "hello", "text": i})
                await client.arequest({"op": "add", "a": i, "b": 0})
                return i in seen

            return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(2000))), 60)

    in_order = asyncio.run(main())
    assert in_order.count(False) == 0, f"{in_order.count(False)} of 2000 answers overtook an earlier event"


@CIPHER
def test_call_order_under_gather_reaches_legacy(
    legacy: Callable[..., LegacyPeer], closing: Callable[[Any], Any], cipher: bool
) -> None:
    # asyncio.gather of arequest and adispatch calls, and plain dispatch and request calls
    # from threads' point of view: the legacy server must see every message in call order.
    # Requests used to be sent from a spawned task, so dispatches overtook them and requests
    # inverted among themselves.
    peer, client, _port = _client_to_legacy(legacy, closing, cipher)
    n = 1500

    async def main() -> Any:
        await client.await_connected(15)
        calls: "list[Any]" = []
        for i in range(n):
            if i % 3 == 0:
                calls.append(client.arequest({"op": "seq", "n": i}))
            else:
                client.dispatch({"op": "e", "n": i})
        return await asyncio.wait_for(asyncio.gather(*calls), 60)

    assert all(asyncio.run(main()))
    got = [peer.expect("message", timeout=30)["msg"]["n"] for _ in range(n)]
    first = next((i for i, v in enumerate(got) if v != i), None)
    assert first is None, f"out of call order at index {first}: {got[first : first + 5] if first is not None else ''}"


def test_arequest_made_outside_a_loop_runs_under_asyncio_run(
    legacy: Callable[..., LegacyPeer], closing: Callable[[Any], Any]
) -> None:
    # `asyncio.run(client.arequest(...))` creates the awaitable before any loop runs: it is
    # sent when the loop runs it (sending at the call needs a running loop).
    _peer, client, _port = _client_to_legacy(legacy, closing, True)
    client.wait_connected(timeout=15)
    assert asyncio.run(client.arequest({"op": "add", "a": 20, "b": 22})) == {"sum": 42}


# Issue 14, item 6. An outage of 8 s: with exponential backoff to 30 s a client would next try
# about 7 s after the server is back; legacy (and our default) retries every second.
OUTAGE = 8.0
# Generous: about 1 s (the retry period plus at most a fifth of jitter) is expected.
BACK_WITHIN = 3.0


def test_default_client_is_back_soon_after_a_long_outage(
    legacy: Callable[..., LegacyPeer], closing: Callable[[Any], Any]
) -> None:
    port = free_port()
    server = legacy("server", port=f"127.0.0.1:{port}", uuid="legacy-srv")
    # Default options: nothing about reconnecting is set.
    client = closing(Client(auth=SECRET, address=f"127.0.0.1:{port}", uuid="py-cli"))
    client.wait_connected(15)
    assert client.request({"op": "add", "a": 1, "b": 2}) == {"sum": 3}

    server.kill()
    wait_for(lambda: not client.is_connected(), what="the client to notice the server is gone")
    time.sleep(OUTAGE)
    # The legacy server process again, on the same port; it returns once it listens.
    server = legacy("server", port=f"127.0.0.1:{port}", uuid="legacy-srv")
    back = time.monotonic()
    client.wait_connected(20)
    assert client.request({"op": "add", "a": 2, "b": 3}) == {"sum": 5}
    took = time.monotonic() - back
    assert took < BACK_WITHIN, f"the client was back {took:.1f} s after the server"
    server.expect("connect", lambda e: e["uuid"] == "py-cli")
