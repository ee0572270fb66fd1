"""Router: Python and legacy Node clients through a Python Router to a legacy server and to a
Python Server, restarts, chains, and a server-mode router where clients on both sides meet.

Nothing here asserts on timing: every wait is bounded by WAIT and waits for an outcome, and
"did not arrive" is checked behind a later message on the same path (streams keep order)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any, Callable, Dict

import pytest

import iris_rpc
from iris_rpc import Client, ConfigError, Router, Server

from conftest import SECRET, WAIT, LegacyPeer, Recorder, free_port, wait_for


def eventually(send: Callable[[], Any], what: str) -> Any:
    """Retries ``send`` while the route it needs is not known yet (NotConnectedError)."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            return send()
        except iris_rpc.NotConnectedError:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}") from None
            time.sleep(0.02)


def uuids(peers: Any) -> set:
    return {p.uuid for p in peers}


def py_client(closing: Callable[[Any], Any], address: str, uuid: str, **extra: Any) -> Client:
    return closing(
        Client(auth=SECRET, address=address, uuid=uuid, reconnect_initial=100, reconnect_max=300, **extra)
    )


@pytest.mark.parametrize("cipher", [True, False], ids=["cipher", "plain"])
def test_router_to_legacy_server(
    legacy: Callable[..., LegacyPeer], closing: Callable[[Any], Any], certs: iris_rpc.Certificates, cipher: bool
) -> None:
    port = free_port()
    srv = legacy("server", port=f"127.0.0.1:{port}", cipher=cipher, uuid="legacy-srv", designation="legacy")
    router = closing(
        Router(
            auth=SECRET,
            port="127.0.0.1:0",
            certificates=certs,
            cipher=cipher,
            uuid="router-front",
            client={"address": f"127.0.0.1:{port}", "uuid": "router-back"},
        )
    )
    connects = Recorder()
    router.on("connect", lambda side, address, uuid, stream: connects(side, uuid))
    wait_for(lambda: router.peers("backend"), what="the router's link to the legacy server")
    assert uuids(router.peers("backend")) == {"legacy-srv"}
    c = srv.expect("connect")
    assert (c["uuid"], c["designation"]) == ("router-back", "router")

    client = py_client(closing, router.address, "py-cli", cipher=cipher, designation="python")
    news = Recorder()
    direct = Recorder()
    client.on("news", lambda msg, uuid, stream: news(msg, uuid))
    client.on("direct", lambda msg, uuid, stream: direct(msg))

    @client.on("mul")
    def mul(msg: Any, uuid: str, stream: Any) -> Any:
        return {"product": msg["a"] * msg["b"], "keys": sorted(msg)}

    client.wait_connected(WAIT)
    lcli = legacy("client", address=router.address, cipher=cipher, uuid="legacy-cli", designation="node")
    assert lcli.expect("connect")["uuid"] == "router-front"
    wait_for(lambda: uuids(router.peers("frontend")) == {"py-cli", "legacy-cli"}, what="both clients")
    assert set(connects.wait(3)) == {("backend", "legacy-srv"), ("frontend", "py-cli"), ("frontend", "legacy-cli")}

    # events to the server carry the original sender
    client.dispatch({"op": "note", "from": "py"})
    got = srv.expect("message", lambda e: e["msg"].get("op") == "note" and e["msg"].get("from") == "py")
    assert got["uuid"] == "py-cli"
    assert got["msg"]["_r"] == {"uuid": "py-cli", "designation": "python"}
    lcli.dispatch({"op": "note", "from": "node"})
    got = srv.expect("message", lambda e: e["msg"].get("op") == "note" and e["msg"].get("from") == "node")
    assert got["uuid"] == "legacy-cli"

    # the server's events: to every client, or with _uuid to one of them only
    srv.dispatch({"op": "news", "n": 1})
    assert news.wait(1)[0] == ({"op": "news", "n": 1}, "router-front")
    assert lcli.expect("message", lambda e: e["msg"].get("op") == "news")["msg"] == {"op": "news", "n": 1}
    srv.dispatch({"op": "direct", "to": "legacy-cli", "_uuid": "legacy-cli"}, uuid="router-back")
    assert lcli.expect("message", lambda e: e["msg"].get("op") == "direct")["msg"] == {"op": "direct", "to": "legacy-cli"}
    srv.dispatch({"op": "direct", "to": "py-cli", "_uuid": "py-cli"}, uuid="router-back")
    srv.dispatch({"op": "news", "n": 2})
    assert news.wait(2)[1] == ({"op": "news", "n": 2}, "router-front")
    lcli.expect("message", lambda e: e["msg"] == {"op": "news", "n": 2})
    # news 2 came after both directs on the same streams, so neither client can still get one
    assert direct.items == [({"op": "direct", "to": "py-cli"},)]
    assert [e["msg"]["to"] for e in lcli.seen if e["ev"] == "message" and e["msg"].get("op") == "direct"] == ["legacy-cli"]

    # requests from the clients to the server
    assert client.request({"op": "add", "a": 2, "b": 3}) == {"sum": 5}
    with pytest.raises(iris_rpc.RemoteError) as e:
        client.request({"op": "fail"})
    assert (e.value.name, e.value.remote_message) == ("TypeError", "bad input")
    r = lcli.request({"op": "add", "a": 4, "b": 5})
    assert r["err"] is None and r["resp"] == {"sum": 9}
    r = lcli.request({"op": "missing"})
    assert r["err"] == {"error": "No such handler 'missing'"}

    # requests from the server to one routed client
    r = srv.request({"op": "mul", "a": 6, "b": 7, "_uuid": "py-cli"}, uuid="router-back")
    assert r["err"] is None and r["resp"] == {"product": 42, "keys": ["a", "b", "op"]}
    r = srv.request({"op": "add", "a": 1, "b": 1, "_uuid": "legacy-cli"}, uuid="router-back")
    assert r["err"] is None and r["resp"] == {"sum": 2}


def _python_server(closing: Callable[[Any], Any], certs: iris_rpc.Certificates, **extra: Any) -> Server:
    server = closing(Server(auth=SECRET, port="127.0.0.1:0", certificates=certs, uuid="py-srv", **extra))

    @server.on("whoami")
    def whoami(msg: Any, uuid: str, stream: Any) -> Any:
        return {"uuid": uuid, "via": stream.uuid}

    return server


def test_router_to_python_server(
    legacy: Callable[..., LegacyPeer], closing: Callable[[Any], Any], certs: iris_rpc.Certificates
) -> None:
    server = _python_server(closing, certs)
    notes = Recorder()
    server.on("note", lambda msg, uuid, stream: notes(msg["from"], uuid, stream.uuid))
    router = closing(
        Router(
            auth=SECRET,
            port="127.0.0.1:0",
            certificates=certs,
            uuid="router-front",
            client={"address": server.address, "uuid": "router-back"},
        )
    )
    assert router.backend_address is None and router.backend_port is None
    server.wait_connected(WAIT)
    wait_for(lambda: router.peers("backend"), what="the router's link to the server")
    assert uuids(server.peers()) == {"router-back"}

    client = py_client(closing, router.address, "py-cli")
    got = Recorder()
    client.on("direct", lambda msg, uuid, stream: got("direct", msg["to"]))
    client.on("news", lambda msg, uuid, stream: got("news", msg["n"]))

    @client.on("mul")
    def mul(msg: Any, uuid: str, stream: Any) -> Any:
        return {"product": msg["a"] * msg["b"]}

    client.wait_connected(WAIT)
    lcli = legacy("client", address=router.address, uuid="legacy-cli")
    lcli.expect("connect")

    # events both ways; the server sees who sent them
    client.dispatch({"op": "note", "from": "py"})
    lcli.dispatch({"op": "note", "from": "node"})
    assert set(notes.wait(2)) == {("py", "py-cli", "router-back"), ("node", "legacy-cli", "router-back")}
    assert client.request({"op": "whoami"}) == {"uuid": "py-cli", "via": "router-back"}
    r = lcli.request({"op": "whoami"})
    assert r["err"] is None and r["resp"] == {"uuid": "legacy-cli", "via": "router-back"}

    # the server reaches one routed client with dispatch(uuid=...), or all of them
    assert server.dispatch({"op": "direct", "to": "legacy-cli"}, uuid="legacy-cli") == 1
    assert server.dispatch({"op": "direct", "to": "py-cli"}, uuid="py-cli") == 1
    assert server.dispatch({"op": "news", "n": 1}) == 1  # one stream: the router's
    assert got.wait(2) == [("direct", "py-cli"), ("news", 1)]
    m = lcli.expect("message", lambda e: e["msg"].get("op") == "direct")
    assert (m["msg"], m["uuid"]) == ({"op": "direct", "to": "legacy-cli"}, "router-front")
    lcli.expect("message", lambda e: e["msg"] == {"op": "news", "n": 1})

    # requests from the server to a routed client
    assert server.request({"op": "mul", "a": 3, "b": 4}, uuid="py-cli") == {"product": 12}
    assert server.request({"op": "add", "a": 3, "b": 4}, uuid="legacy-cli") == {"sum": 7}
    with pytest.raises(iris_rpc.RemoteError) as e:
        server.request({"op": "fail"}, uuid="legacy-cli")
    assert e.value.name == "TypeError"

    # a client leaving is seen by the router, and the server loses the route
    disconnects = Recorder()
    router.on("disconnect", lambda side, uuid, stream: disconnects(side, uuid))
    lcli.stop()
    assert disconnects.wait(1)[0] == ("frontend", "legacy-cli")
    wait_for(
        lambda: _fails(lambda: server.dispatch({"op": "gone"}, uuid="legacy-cli")),
        what="the server to drop the route",
    )
    assert server.request({"op": "mul", "a": 5, "b": 5}, uuid="py-cli") == {"product": 25}


def _fails(send: Callable[[], Any]) -> bool:
    try:
        send()
    except iris_rpc.NotConnectedError:
        return True
    return False


def test_router_restart_on_the_same_port(
    legacy: Callable[..., LegacyPeer], closing: Callable[[Any], Any], certs: iris_rpc.Certificates
) -> None:
    server = _python_server(closing, certs)
    notes = Recorder()
    server.on("note", lambda msg, uuid, stream: notes(msg["n"], uuid))
    port = free_port()

    def start() -> Router:
        return closing(Router(auth=SECRET, port=f"127.0.0.1:{port}", certificates=certs, client={"address": server.address}))

    router = start()
    assert router.port == port
    wait_for(lambda: router.peers("backend"), what="the router's link to the server")
    client = py_client(closing, f"127.0.0.1:{port}", "py-cli")
    client.wait_connected(WAIT)
    lcli = legacy("client", address=f"127.0.0.1:{port}", uuid="legacy-cli")
    lcli.expect("connect")
    client.dispatch({"op": "note", "n": 1})
    lcli.dispatch({"op": "note", "n": 2})
    assert set(notes.wait(2)) == {(1, "py-cli"), (2, "legacy-cli")}

    router.close()
    assert router.closed
    wait_for(lambda: not client.is_connected(), what="the client to lose the router")
    lcli.expect("disconnect")
    wait_for(lambda: not server.is_connected(), what="the server to lose the router")

    router = start()
    client.wait_connected(WAIT)
    lcli.expect("connect")
    wait_for(lambda: uuids(router.peers("frontend")) == {"py-cli", "legacy-cli"}, what="both clients back")
    # the server learns the routes again
    eventually(lambda: server.dispatch({"op": "probe"}, uuid="py-cli"), "the route to py-cli")
    eventually(lambda: server.dispatch({"op": "probe"}, uuid="legacy-cli"), "the route to legacy-cli")
    client.dispatch({"op": "note", "n": 3})
    lcli.dispatch({"op": "note", "n": 4})
    assert set(notes.wait(4)[2:]) == {(3, "py-cli"), (4, "legacy-cli")}
    assert client.request({"op": "whoami"}) == {"uuid": "py-cli", "via": router.backend_uuid}
    assert server.request({"op": "add", "a": 20, "b": 22}, uuid="legacy-cli") == {"sum": 42}


def test_routers_chain(closing: Callable[[Any], Any], certs: iris_rpc.Certificates) -> None:
    # client -> router 1 -> router 2 -> server; the routing tables name the next hop
    server = _python_server(closing, certs)
    r2 = closing(Router(auth=SECRET, port="127.0.0.1:0", certificates=certs, uuid="r2-front", client={"address": server.address, "uuid": "r2-back"}))
    r1 = closing(Router(auth=SECRET, port="127.0.0.1:0", certificates=certs, uuid="r1-front", client={"address": r2.address, "uuid": "r1-back"}))
    wait_for(lambda: r1.peers("backend") and r2.peers("backend"), what="the chain")
    client = py_client(closing, r1.address, "py-cli")

    @client.on("ping-me")
    def ping_me(msg: Any, uuid: str, stream: Any) -> Any:
        return "pong"

    client.wait_connected(WAIT)
    wait_for(lambda: r2.routes("frontend") == {"py-cli": "r1-back"}, what="r2's route to the client")
    # r2 announces what its backend reaches to r1, which knows the server through r2
    wait_for(lambda: r1.routes("backend") == {"py-srv": "r2-front"}, what="r1's route to the server")
    assert r1.routes("frontend") == {} and r2.routes("backend") == {}
    assert client.request({"op": "whoami"}) == {"uuid": "py-cli", "via": "r2-back"}
    assert eventually(lambda: server.request({"op": "ping-me"}, uuid="py-cli"), "the route to py-cli") == "pong"
    assert r2.stats("frontend")["streams"] == 1 and r2.stats("backend")["streams"] == 1


def test_server_mode_router(
    legacy: Callable[..., LegacyPeer], closing: Callable[[Any], Any], certs: iris_rpc.Certificates
) -> None:
    router = closing(
        Router(
            auth=SECRET,
            port="127.0.0.1:0",
            certificates=certs,
            uuid="router-front",
            server={"port": "127.0.0.1:0", "uuid": "router-back"},
        )
    )
    assert router.backend_address is not None and router.backend_port == int(router.backend_address.rsplit(":", 1)[1])
    assert router.port != router.backend_port

    def handlers(client: Client, name: str) -> Recorder:
        notes = Recorder()
        client.on("note", lambda msg, uuid, stream: notes(msg["n"], uuid))

        @client.on("mul")
        def mul(msg: Any, uuid: str, stream: Any) -> Any:
            return {"product": msg["a"] * msg["b"], "by": name, "from": uuid}

        return notes

    front = py_client(closing, router.address, "front-py")
    front_notes = handlers(front, "front-py")
    front.wait_connected(WAIT)
    wait_for(lambda: router.peers("frontend"), what="the frontend client")
    back = py_client(closing, router.backend_address, "back-py")
    back_notes = handlers(back, "back-py")
    back.wait_connected(WAIT)
    lback = legacy("client", address=router.backend_address, uuid="back-legacy")
    lback.expect("connect")
    wait_for(lambda: uuids(router.peers("backend")) == {"back-py", "back-legacy"}, what="the backend clients")

    # frontend -> one backend client, or all of them; the receiver sees the original sender
    eventually(lambda: front.dispatch({"op": "note", "n": 1}, uuid="back-py"), "front's route to back-py")
    assert back_notes.wait(1)[0] == (1, "front-py")
    eventually(lambda: front.dispatch({"op": "note", "n": 2}, uuid="back-legacy"), "front's route to back-legacy")
    m = lback.expect("message", lambda e: e["msg"].get("op") == "note")
    assert (m["msg"]["n"], m["uuid"]) == (2, "front-py")
    front.dispatch({"op": "note", "n": 3})
    assert back_notes.wait(2)[1] == (3, "front-py")
    assert lback.expect("message", lambda e: e["msg"].get("op") == "note")["msg"]["n"] == 3

    # backend -> the frontend client: ours by uuid, legacy by setting _uuid itself
    eventually(lambda: back.dispatch({"op": "note", "n": 4}, uuid="front-py"), "back's route to front-py")
    lback.dispatch({"op": "note", "n": 5, "_uuid": "front-py"})
    assert sorted(n for n, _ in front_notes.wait(2)) == [4, 5]

    # requests across, both ways
    assert front.request({"op": "mul", "a": 2, "b": 3}, uuid="back-py") == {"product": 6, "by": "back-py", "from": "front-py"}
    assert front.request({"op": "add", "a": 2, "b": 3}, uuid="back-legacy") == {"sum": 5}
    answer = back.request({"op": "mul", "a": 4, "b": 5}, uuid="front-py")
    assert (answer["product"], answer["by"]) == (20, "front-py")
    r = lback.request({"op": "mul", "a": 5, "b": 6, "_uuid": "front-py"})
    assert r["err"] is None and (r["resp"]["product"], r["resp"]["by"]) == (30, "front-py")
    with pytest.raises(iris_rpc.RemoteError) as e:
        front.request({"op": "fail"}, uuid="back-legacy")
    assert e.value.name == "TypeError"

    # a frontend client claiming a uuid the backend holds is refused
    refused = Recorder()
    router.on("refused", lambda address, uuid, stream: refused(uuid))
    imposter = py_client(closing, router.address, "back-py")
    assert refused.wait(1)[0] == ("back-py",)
    imposter.close()
    assert front.request({"op": "mul", "a": 7, "b": 7}, uuid="back-py")["by"] == "back-py"
    assert uuids(router.peers("backend")) == {"back-py", "back-legacy"}


def test_router_on_the_loop(closing: Callable[[Any], Any], certs: iris_rpc.Certificates) -> None:
    # listeners run on the loop; the backend has a secret of its own
    server = closing(Server(auth="backend-secret", port="127.0.0.1:0", certificates=certs, uuid="py-srv"))
    server.on("whoami", lambda msg, uuid, stream: uuid)

    async def main() -> Dict[str, Any]:
        loop_thread = threading.get_ident()
        seen: Dict[str, Any] = {}
        both = asyncio.Event()
        async with Router(
            auth=SECRET, port="127.0.0.1:0", certificates=certs, client={"address": server.address, "auth": "backend-secret"}
        ) as router:
            assert router.loop is asyncio.get_running_loop()

            @router.on("connect")
            async def on_connect(side: str, address: str, uuid: str, stream: Any) -> None:
                seen[side] = (uuid, threading.get_ident() == loop_thread)
                if len(seen) == 2:
                    both.set()

            async with Client(auth=SECRET, address=router.address, uuid="aio-cli") as client:
                await client.await_connected(WAIT)
                await asyncio.wait_for(both.wait(), WAIT)
                while not router.peers("backend"):
                    await asyncio.sleep(0.01)
                seen["whoami"] = await client.arequest({"op": "whoami"})
        return seen

    async def bounded() -> Dict[str, Any]:
        return await asyncio.wait_for(main(), 60)

    seen = asyncio.run(bounded())
    assert seen == {"frontend": ("aio-cli", True), "backend": ("py-srv", True), "whoami": "aio-cli"}


def test_router_options_and_errors(certs: iris_rpc.Certificates) -> None:
    base: Dict[str, Any] = {"auth": SECRET, "port": "127.0.0.1:0", "certificates": certs}
    with pytest.raises(ConfigError):
        Router(base)  # neither client nor server
    with pytest.raises(ConfigError):
        Router(base, client={"address": "127.0.0.1:1"}, server={"port": 0})
    with pytest.raises(ConfigError):
        Router(base, client={"port": 1})
    with pytest.raises(ConfigError):
        Router(base, server={"address": "127.0.0.1:1"})
    with pytest.raises(ConfigError):
        Router(base, client={"address": "127.0.0.1:1"}, bogus=1)
    with pytest.raises(ConfigError):
        Router(auth=SECRET, port="127.0.0.1:0", client={"address": "127.0.0.1:1"})  # no certificates
    with pytest.raises(ConfigError):
        Router(base, client="127.0.0.1:1")

    # legacy camelCase and `secret` work; the backend (nothing listens there) reports errors
    errors = Recorder()
    with Router(secret=SECRET, port="127.0.0.1:0", certificates=certs, client={"address": f"127.0.0.1:{free_port()}", "reconnectInitial": 50}) as router:
        router.on("error", lambda side, exc, address: errors(side, isinstance(exc, iris_rpc.IrisError)))
        assert router.port > 0 and router.backend_address is None
        assert router.routes("frontend") == {} and router.peers("backend") == []
        assert router.stats("frontend")["streams"] == 0
        with pytest.raises(ConfigError):
            router.peers("middle")
        with pytest.raises(ConfigError):
            router.on("message", print)
        assert errors.wait(1)[0] == ("backend", True)
        assert "Router" in repr(router)
    assert router.closed
    router.close()  # twice is fine


def test_exit_with_an_open_router() -> None:
    code = textwrap.dedent(
        """
        import time
        from iris_rpc import Client, Router, Server, self_signed
        certs = self_signed()
        server = Server(auth="s", port="127.0.0.1:0", certificates=certs)
        server.on("echo", lambda m, u, s: [m["x"]])
        router = Router(auth="s", port="127.0.0.1:0", certificates=certs, client={"address": server.address})
        router.on("connect", lambda *a: None)
        client = Client(auth="s", address=router.address, uuid="c")
        client.wait_connected(10)
        while not router.peers("backend"):
            time.sleep(0.01)
        print(client.request({"op": "echo", "x": 1}))
        print("done")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[1]", "done"]


def test_leaving_clients_never_break_a_legacy_backend(
    legacy: Callable[..., LegacyPeer], closing: Callable[[Any], Any], certs: iris_rpc.Certificates
) -> None:
    """Issue 14, item 7: our router told a legacy server `rpc::offline` when a frontend client
    left; legacy's handler for it throws and ends the stream, so the router's link dropped and
    requests in flight failed. Here 50 clients come and go (and a peer sends events whose op
    legacy would look up as a control handler or an Object.prototype member) while a steady
    client makes a request every 20 ms: none fails, and the legacy server sees one connection
    from the router, never dropped."""
    port = free_port()
    srv = legacy("server", port=f"127.0.0.1:{port}", uuid="legacy-srv")
    router = closing(
        Router(auth=SECRET, port="127.0.0.1:0", certificates=certs, client={"address": f"127.0.0.1:{port}", "uuid": "router-back"})
    )
    backend_drops = Recorder()
    router.on("disconnect", lambda side, uuid, stream: backend_drops(uuid) if side == "backend" else None)
    wait_for(lambda: router.peers("backend"), what="the router's link to the legacy server")

    steady = closing(Client(auth=SECRET, address=router.address, uuid="steady"))
    steady.wait_connected(WAIT)
    stop = threading.Event()
    answered = []
    failed = []

    def ask() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                r = steady.request({"op": "add", "a": n, "b": 1})
                (answered if r == {"sum": n + 1} else failed).append(r)
            except iris_rpc.IrisError as e:
                failed.append(repr(e))
            time.sleep(0.02)

    worker = threading.Thread(target=ask, daemon=True)
    worker.start()
    try:
        # 50 clients come and go, five at a time.
        for k in range(10):
            batch = [Client(auth=SECRET, address=router.address, uuid=f"churn-{k}-{i}") for i in range(5)]
            try:
                for c in batch:
                    c.wait_connected(WAIT)
            finally:
                for c in batch:
                    c.close()
        hostile = closing(Client(auth=SECRET, address=router.address, uuid="hostile"))
        hostile.wait_connected(WAIT)
        for op in (["rpc::offline"], [["rpc::init"]], "__proto__", "toString"):
            hostile.dispatch({"op": op, "uuid": "x", "data": {"uuid": "hijack"}})
        hostile.dispatch({"op": "after-hostile"})
        assert srv.expect("message", lambda e: e["msg"].get("op") == "after-hostile")["uuid"] == "hostile"
        # More requests after the last client left and the last offence.
        seen = len(answered)
        wait_for(lambda: len(answered) >= seen + 10, what="requests after the churn")
    finally:
        stop.set()
        worker.join(WAIT)
    assert not failed, f"{len(failed)} of {len(failed) + len(answered)} requests failed: {failed[:3]}"
    # Everything the legacy server reported up to now (its answer comes after it).
    srv.send({"cmd": "connected"})
    assert srv.expect("connected")["value"] is True
    assert [e["uuid"] for e in srv.seen if e["ev"] == "connect"] == ["router-back"]
    assert [e for e in srv.seen if e["ev"] == "disconnect"] == []
    assert backend_drops.items == []
