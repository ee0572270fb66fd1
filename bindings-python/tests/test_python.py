"""Python client and Python server, handlers on the dispatcher threads."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, Callable, Tuple

import pytest

import iris_rpc
from iris_rpc import Client, Server

from conftest import SECRET, in_request, Recorder, free_port, wait_for

Pair = Tuple[Server, Client]
WAIT_JOIN = 15


@pytest.fixture(params=[True, False], ids=["cipher", "plain"])
def pair(request: Any, certs: iris_rpc.Certificates, closing: Callable[[Any], Any]) -> Pair:
    cipher = request.param
    server = closing(
        Server(
            auth=SECRET,
            port="127.0.0.1:0",
            certificates=certs,
            cipher=cipher,
            uuid="py-server",
            designation="srv",
            mac="aabbccddeeff",
        )
    )
    client = closing(
        Client(
            auth=SECRET,
            address=server.address,
            cipher=cipher,
            uuid="py-client",
            designation="cli",
            reconnect_initial=100,
            reconnect_max=200,
        )
    )
    return server, client


def connected(pair: Pair) -> Pair:
    server, client = pair
    client.wait_connected(10)
    wait_for(server.is_connected, what="server side of the stream")
    return server, client


def test_request_answered(pair: Pair) -> None:
    server, client = pair
    calls = Recorder()

    @server.on("add")
    def add(msg: Any, uuid: str, stream: Any) -> Any:
        calls(msg, uuid, stream.uuid, stream.designation, threading.current_thread().name)
        return {"sum": msg["a"] + msg["b"]}

    connected(pair)
    assert client.request({"op": "add", "a": 2, "b": 40}) == {"sum": 42}
    assert client.request({"op": "add", "a": 1, "b": 2}, uuid="py-server") == {"sum": 3}
    msg, uuid, stream_uuid, designation, thread = calls.items[0]
    assert msg == {"op": "add", "a": 2, "b": 40}
    assert (uuid, stream_uuid, designation) == ("py-client", "py-client", "cli")
    assert thread == "iris-rpc-server"


def _series(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line[len(name) + 1 :])
    return 0.0


def test_metrics_count_what_the_process_did(pair: Pair) -> None:
    server, client = pair
    answered = 'iris_rpc_requests_total{outcome="answered"}'
    before = _series(iris_rpc.metrics(), answered)

    @server.on("hello")
    def hello(msg: Any, uuid: str, stream: Any) -> Any:
        return "hi"

    connected(pair)
    assert client.request({"op": "hello"}) == "hi"
    text = iris_rpc.metrics()
    assert "# TYPE iris_rpc_connections gauge" in text
    assert _series(text, answered) == before + 1
    assert _series(text, "iris_rpc_streams") >= 2


def test_values_round_trip(pair: Pair) -> None:
    server, client = pair
    server.on("echo", lambda msg, uuid, stream: msg["v"])
    server.on("nothing", lambda msg, uuid, stream: None)
    connected(pair)
    for v in [0, -1.5, "text ✓ ünïcode", [1, [2, {"a": None}]], {"nested": {"x": True}}, False]:
        assert client.request({"op": "echo", "v": v}) == v
    assert client.request({"op": "nothing"}) is None


def test_handler_raising(pair: Pair) -> None:
    server, client = pair

    @server.on("fail")
    def fail(msg: Any, uuid: str, stream: Any) -> Any:
        raise ValueError("bad input")

    @server.on("custom")
    def custom(msg: Any, uuid: str, stream: Any) -> Any:
        raise iris_rpc.RemoteError({"error": "custom refusal", "code": 7})

    connected(pair)
    with pytest.raises(iris_rpc.RemoteError) as e:
        client.request({"op": "fail"})
    assert e.value.name == "ValueError"
    assert e.value.remote_message == "bad input"
    assert e.value.error["_Error"] is True
    assert "ValueError: bad input" in str(e.value)
    with pytest.raises(iris_rpc.RemoteError) as e2:
        client.request({"op": "custom"})
    assert e2.value.error == {"error": "custom refusal", "code": 7}


def test_unserializable_result_is_an_error(pair: Pair) -> None:
    server, client = pair
    server.on("bad", lambda msg, uuid, stream: {"x": object()})
    connected(pair)
    with pytest.raises(iris_rpc.RemoteError) as e:
        client.request({"op": "bad"})
    assert e.value.name == "TypeError"


def test_async_handler_without_loop(pair: Pair) -> None:
    server, client = pair

    @server.on("later")
    async def later(msg: Any, uuid: str, stream: Any) -> Any:
        await asyncio.sleep(0.01)
        return {"twice": msg["n"] * 2}

    @server.on("later_fail")
    async def later_fail(msg: Any, uuid: str, stream: Any) -> Any:
        await asyncio.sleep(0)
        raise KeyError("missing")

    connected(pair)
    assert client.request({"op": "later", "n": 21}) == {"twice": 42}
    with pytest.raises(iris_rpc.RemoteError) as e:
        client.request({"op": "later_fail"})
    assert e.value.name == "KeyError"


def test_no_handler_and_too_many(pair: Pair) -> None:
    server, client = pair
    server.on("dup", lambda m, u, s: 1)
    server.on("dup", lambda m, u, s: 2)
    connected(pair)
    with pytest.raises(iris_rpc.RemoteError) as e:
        client.request({"op": "missing"})
    assert e.value.error == {"error": "No such handler 'missing'"}
    with pytest.raises(iris_rpc.RemoteError) as e:
        client.request({"op": "dup"})
    assert e.value.error == {"error": "Too many handlers for 'dup'"}
    # off() of one of them makes the op answerable again
    first = server.listeners("dup")[0]
    assert server.off("dup", first)
    assert client.request({"op": "dup"}) == 2


def test_timeouts(pair: Pair) -> None:
    server, client = pair

    @server.on("never")
    async def never(msg: Any, uuid: str, stream: Any) -> Any:
        await asyncio.sleep(30)

    connected(pair)
    with pytest.raises(iris_rpc.TimeoutError) as e:
        client.request({"op": "never"}, timeout=0.2)
    assert isinstance(e.value, TimeoutError)  # the builtin too
    with pytest.raises(iris_rpc.TimeoutError) as e:
        client.request({"op": "never", "op_timeout": 200})
    assert e.value.value["error"] == "Connection Timed Out"
    assert e.value.value["timeout"] == 200
    assert e.value.value["req"] == {"op": "never", "op_timeout": 200}


def test_timeout_option(certs: iris_rpc.Certificates, closing: Callable[[Any], Any]) -> None:
    server = closing(Server(auth=SECRET, port="127.0.0.1:0", certificates=certs))

    @server.on("never")
    async def never(msg: Any, uuid: str, stream: Any) -> Any:
        await asyncio.sleep(30)

    client = closing(Client(auth=SECRET, address=server.address, timeout=150))
    client.wait_connected(10)
    with pytest.raises(iris_rpc.TimeoutError) as e:
        client.request({"op": "never"})
    assert e.value.value["timeout"] == 150


def test_events_both_ways(pair: Pair) -> None:
    server, client = pair
    on_server = Recorder()
    digested = Recorder()
    on_client = Recorder()
    server.on("hello", lambda msg, uuid, stream: on_server(msg, uuid, stream.designation))
    server.digest(lambda msg, uuid, stream: digested(msg["op"]))
    client.on("world", lambda msg, uuid, stream: on_client(msg, uuid))
    connected(pair)
    assert client.dispatch({"op": "hello", "text": "hi"}) == 1
    assert client.dispatch({"op": "other"}) == 1
    assert on_server.wait(1)[0] == ({"op": "hello", "text": "hi"}, "py-client", "cli")
    assert [d[0] for d in digested.wait(2)] == ["hello", "other"]
    server.dispatch({"op": "world", "n": 1}, uuid="py-client")
    server.dispatch({"op": "world", "n": 2})
    got = on_client.wait(2)
    assert got == [({"op": "world", "n": 1}, "py-server"), ({"op": "world", "n": 2}, "py-server")]


def test_event_order_and_batches(pair: Pair) -> None:
    server, client = pair
    seen = Recorder()
    server.on("n", lambda msg, uuid, stream: seen(msg["i"]))
    connected(pair)
    for i in range(5000):
        client.dispatch({"op": "n", "i": i})
    assert [x[0] for x in seen.wait(5000)] == list(range(5000))


def test_connect_disconnect_events(certs: iris_rpc.Certificates, closing: Callable[[Any], Any]) -> None:
    server = closing(Server(auth=SECRET, port="127.0.0.1:0", certificates=certs, uuid="s1", designation="srv"))
    connects = Recorder()
    disconnects = Recorder()
    server.on("connect", lambda address, uuid, stream: connects(address, uuid, stream.designation, stream.mac))
    server.on("disconnect", lambda uuid, stream: disconnects(uuid, stream.uuid))
    client = Client(auth=SECRET, address=server.address, uuid="c1", designation="cli", mac="001122334455")
    client_connects = Recorder()
    client.on("connect", lambda address, uuid, stream: client_connects(address, uuid, stream.designation))
    client.wait_connected(10)
    address, uuid, designation, mac = connects.wait(1)[0]
    assert (uuid, designation, mac) == ("c1", "cli", "001122334455")
    assert address.startswith("127.0.0.1:")
    assert client_connects.wait(1)[0] == (server.address, "s1", "srv")
    assert [p.uuid for p in server.peers()] == ["c1"]
    assert set(server.streams) == {"c1"}
    client.close()
    assert disconnects.wait(1)[0] == ("c1", "c1")
    wait_for(lambda: not server.is_connected(), what="server to drop the stream")


def test_not_connected(certs: iris_rpc.Certificates, closing: Callable[[Any], Any]) -> None:
    client = closing(Client(auth=SECRET, address=f"127.0.0.1:{free_port()}"))
    assert not client.is_connected()
    with pytest.raises(iris_rpc.NotConnectedError) as e:
        client.request({"op": "x"})
    assert e.value.value["disconnected"] is True
    with pytest.raises(iris_rpc.NotConnectedError):
        client.dispatch({"op": "x"})
    with pytest.raises(iris_rpc.NotConnectedError):
        client.wait_connected(0.2)
    server = closing(Server(auth=SECRET, port="127.0.0.1:0", certificates=certs))
    with pytest.raises(iris_rpc.NotConnectedError):
        server.dispatch({"op": "x"}, uuid="nobody")


def test_disconnect_fails_pending(pair: Pair) -> None:
    server, client = pair
    started = Recorder()

    @server.on("hang")
    async def hang(msg: Any, uuid: str, stream: Any) -> Any:
        started()
        await asyncio.sleep(30)

    connected(pair)
    result: list = []

    def call() -> None:
        try:
            client.request({"op": "hang"})
        except Exception as e:  # the assertion is below, on the main thread
            result.append(e)

    t = threading.Thread(target=call)
    t.start()
    started.wait(1)
    for p in server.peers():
        p.end()
    t.join(WAIT_JOIN)
    assert not t.is_alive()
    assert isinstance(result[0], iris_rpc.DisconnectedError)
    assert result[0].value["error"] == "Connection Terminated"
    assert result[0].value["req"] == {"op": "hang"}



def test_reconnect_after_stream_end(pair: Pair) -> None:
    server, client = pair
    server.on("add", lambda m, u, s: m["a"] + m["b"])
    connects = Recorder()
    client.on("connect", lambda address, uuid, stream: connects(uuid))
    connected(pair)
    for p in server.peers():
        p.end()
    connects.wait(2)  # the first connect (if seen) and the reconnect
    wait_for(client.is_connected, what="reconnect")
    assert wait_for(lambda: _try_request(client, {"op": "add", "a": 1, "b": 1}), what="request after reconnect") == 2


def _try_request(client: Client, msg: Any) -> Any:
    try:
        return client.request(msg, timeout=2)
    except (iris_rpc.NotConnectedError, iris_rpc.DisconnectedError):
        return None


def test_reconnect_to_restarted_server(certs: iris_rpc.Certificates, closing: Callable[[Any], Any]) -> None:
    port = free_port()
    server = Server(auth=SECRET, port=f"127.0.0.1:{port}", certificates=certs)
    server.on("who", lambda m, u, s: "first")
    client = closing(Client(auth=SECRET, address=f"127.0.0.1:{port}", reconnect_initial=100, reconnect_max=200))
    client.wait_connected(10)
    assert client.request({"op": "who"}) == "first"
    server.close()
    wait_for(lambda: not client.is_connected(), what="client to see the server go")
    server2 = closing(Server(auth=SECRET, port=f"127.0.0.1:{port}", certificates=certs))
    server2.on("who", lambda m, u, s: "second")
    client.wait_connected(10)
    assert wait_for(lambda: _try_request(client, {"op": "who"}), what="request to the new server") == "second"


def test_wrong_secret(certs: iris_rpc.Certificates, closing: Callable[[Any], Any]) -> None:
    server = closing(Server(auth=SECRET, port="127.0.0.1:0", certificates=certs))
    errors = Recorder()
    server.on("error", lambda exc, address: errors(exc))
    client = closing(Client(auth="not-the-secret", address=server.address))
    with pytest.raises(iris_rpc.NotConnectedError):
        client.wait_connected(1.0)
    exc = errors.wait(1)[0][0]
    assert isinstance(exc, iris_rpc.IrisError)
    assert not server.is_connected()


def test_core_logs_reach_python_logging(
    certs: iris_rpc.Certificates, closing: Callable[[Any], Any], caplog: Any
) -> None:
    caplog.set_level(logging.WARNING, logger="iris_rpc")
    server = closing(Server(auth=SECRET, port="127.0.0.1:0", certificates=certs))
    client = closing(Client(auth="not-the-secret", address=server.address))
    with pytest.raises(iris_rpc.NotConnectedError):
        client.wait_connected(1.0)

    def refused() -> list[Any]:
        return [
            r
            for r in caplog.records
            if r.name == "iris_rpc.core" and "connection refused" in r.getMessage()
        ]

    wait_for(lambda: bool(refused()), what="the core's 'connection refused' on logging")
    record = refused()[0]
    assert record.levelno == logging.WARNING
    assert record.rust_target == "iris_rpc::server"
    # The span of the handshake names the address; the fields follow the message.
    assert "accepted{address=127.0.0.1:" in record.getMessage()
    assert "error=" in record.getMessage()


def test_filters(pair: Pair) -> None:
    server, client = pair
    server.on("a", lambda m, u, s: "ok")
    seen = Recorder()
    server.on("ev", lambda m, u, s: seen(m["n"]))

    @server.filter
    def only_even(msg: Any, stream: Any) -> Any:
        if msg.get("n", 0) % 2:
            return {"error": "odd refused"}
        return None

    connected(pair)
    assert client.request({"op": "a", "n": 2}) == "ok"
    with pytest.raises(iris_rpc.RemoteError) as e:
        client.request({"op": "a", "n": 3})
    assert e.value.error == {"error": "odd refused"}
    for n in range(4):
        client.dispatch({"op": "ev", "n": n})
    client.request({"op": "a"})  # ordered after the events on the same stream
    assert [x[0] for x in seen.wait(2)] == [0, 2]
    assert server.remove_filter(only_even)
    assert client.request({"op": "a", "n": 3}) == "ok"


def test_close_settles_everything(pair: Pair) -> None:
    server, client = pair

    @server.on("hang")
    async def hang(msg: Any, uuid: str, stream: Any) -> Any:
        await asyncio.sleep(30)

    connected(pair)
    result: list = []

    def call() -> None:
        try:
            client.request({"op": "hang"})
        except Exception as e:
            result.append(e)

    t = threading.Thread(target=call)
    t.start()
    wait_for(lambda: in_request(t), what="the thread to block in request()")
    time.sleep(0.1)  # and for the request to be written
    client.close()
    t.join(WAIT_JOIN)
    assert not t.is_alive()
    assert isinstance(result[0], (iris_rpc.ClosedError, iris_rpc.DisconnectedError))
    with pytest.raises(iris_rpc.ClosedError):
        client.request({"op": "hang"})
    client.close()  # twice is fine
    assert client.closed


def test_ping(certs: iris_rpc.Certificates, closing: Callable[[Any], Any]) -> None:
    server = closing(Server(auth=SECRET, port="127.0.0.1:0", certificates=certs))
    pings = Recorder()
    server.on("ping", lambda m, u, s: pings(m))
    client = closing(Client(auth=SECRET, address=server.address, ping_freq=50, ping_data={"load": 1}))
    client.wait_connected(10)
    assert pings.wait(2)[0][0] == {"op": "ping", "data": {"load": 1}}
    client.set_ping_data({"load": 2})
    wait_for(lambda: any(p[0].get("data") == {"load": 2} for p in pings.items), what="new ping data")


def test_options(certs: iris_rpc.Certificates, tmp_path: Any, closing: Callable[[Any], Any]) -> None:
    with pytest.raises(iris_rpc.ConfigError):
        Client(auth=SECRET, address="127.0.0.1:1", no_such_option=1)
    with pytest.raises(iris_rpc.ConfigError):
        Client(address="127.0.0.1:1")  # no secret
    with pytest.raises(iris_rpc.ConfigError):
        Server(auth=SECRET, port="127.0.0.1:0")  # no certificates
    with pytest.raises(iris_rpc.ConfigError):
        Server(auth=SECRET, port="127.0.0.1:0", certificates={"key": "-----BEGIN nonsense", "cert": "x"})
    with pytest.raises(iris_rpc.ConfigError):
        Client(auth=SECRET, address="127.0.0.1:1", timeout="soon")
    # certificates as files, a legacy path prefix, legacy camelCase names and a dict of options
    (tmp_path / "srv.key").write_text(certs.key)
    (tmp_path / "srv.crt").write_text(certs.cert)
    server = closing(Server({"secret": SECRET, "port": "127.0.0.1:0"}, certificates=str(tmp_path / "srv")))
    server.on("x", lambda m, u, s: "y")
    client = closing(
        Client(
            {"auth": SECRET, "address": [server.address], "rejectUnauthorized": False},
            certificates=(str(tmp_path / "srv.key"), str(tmp_path / "srv.crt")),
        )
    )
    client.wait_connected(10)
    assert client.request({"op": "x"}) == "y"
    with pytest.raises(iris_rpc.ConfigError):
        client.request(["not", "an", "object"])  # type: ignore[arg-type]
    assert server.port == int(server.address.rsplit(":", 1)[1])
    assert "Client" in repr(client)


def test_multiplexer(certs: iris_rpc.Certificates, closing: Callable[[Any], Any]) -> None:
    upstream = closing(Server(auth=SECRET, port="127.0.0.1:0", certificates=certs, uuid="upstream"))
    upstream.on("where", lambda m, u, s: "upstream")
    mux = closing(
        iris_rpc.Multiplexer(
            {"auth": SECRET, "certificates": certs, "uuid": "mux"},
            {"front": {"port": "127.0.0.1:0"}, "back": {"address": upstream.address}},
        )
    )
    assert set(mux.links) == {"front", "back"}
    front = mux.links["front"]
    assert isinstance(front, Server)
    got = Recorder()
    mux.on("note", lambda m, u, s: got(m["from"], u))
    mux.on("where", lambda m, u, s: "mux")
    mux.wait_connected(10)
    downstream = closing(Client(auth=SECRET, address=front.address, uuid="downstream"))
    downstream.wait_connected(10)
    wait_for(lambda: set(mux.active) == {"upstream", "downstream"}, what="both links up")
    # fan-out listeners: events on either link reach them
    downstream.dispatch({"op": "note", "from": "down"})
    upstream.dispatch({"op": "note", "from": "up"})
    assert sorted(got.wait(2)) == [("down", "downstream"), ("up", "upstream")]
    # requests by uuid go to the link holding that peer; without uuid there are two streams
    assert mux.request({"op": "where"}, uuid="upstream") == "upstream"
    with pytest.raises(iris_rpc.NotConnectedError):
        mux.request({"op": "where"})
    with pytest.raises(iris_rpc.NotConnectedError):
        mux.dispatch({"op": "note"}, uuid="nobody")
    assert downstream.request({"op": "where"}) == "mux"
    assert mux.dispatch({"op": "note", "from": "mux"}) == 2
    with pytest.raises(iris_rpc.ConfigError):
        iris_rpc.Multiplexer({"auth": SECRET}, {"x": {"port": 1, "address": "a:1"}})


def test_listen_event(certs: iris_rpc.Certificates, closing: Callable[[Any], Any]) -> None:
    server = closing(Server(auth=SECRET, port="127.0.0.1:0", certificates=certs))
    listens = Recorder()
    server.on("listen", lambda address: listens(address))
    server.is_connected()  # first use: delivery starts
    assert listens.wait(1) == [(server.address,)]


def test_listener_errors_do_not_stop_delivery(pair: Pair) -> None:
    server, client = pair
    seen = Recorder()

    @server.on("ev")
    def flaky(msg: Any, uuid: str, stream: Any) -> None:
        seen(msg["n"])
        if msg["n"] == 0:
            raise RuntimeError("listener bug")

    connected(pair)
    client.dispatch({"op": "ev", "n": 0})
    client.dispatch({"op": "ev", "n": 1})
    assert [x[0] for x in seen.wait(2)] == [0, 1]


def test_forgotten_objects_are_closed(certs: iris_rpc.Certificates, closing: Callable[[Any], Any]) -> None:
    import gc

    server = closing(Server(auth=SECRET, port="127.0.0.1:0", certificates=certs))
    gone = Recorder()
    server.on("disconnect", lambda uuid, stream: gone(uuid))
    client = Client(auth=SECRET, address=server.address, uuid="forgotten")
    client.wait_connected(10)
    del client
    gc.collect()
    assert gone.wait(1)[0] == ("forgotten",)
    wait_for(lambda: not server.is_connected(), what="the forgotten client to be closed")


def test_handler_calls_back_into_the_peer(pair: Pair) -> None:
    server, client = pair
    client.on("whoami", lambda m, u, s: {"me": "py-client"})

    @server.on("ask_back")
    def ask_back(msg: Any, uuid: str, stream: Any) -> Any:
        # a blocking request from inside a handler, to the peer that is waiting on us
        return server.request({"op": "whoami"}, uuid=uuid, timeout=10)

    connected(pair)
    assert client.request({"op": "ask_back"}) == {"me": "py-client"}
