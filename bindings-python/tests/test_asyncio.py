"""Python client and server under asyncio: handlers on the running loop, arequest."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Awaitable, Callable, TypeVar

import pytest

import iris_rpc
from iris_rpc import Client, Server

from conftest import SECRET

T = TypeVar("T")


def run(coro: Awaitable[T], timeout: float = 60) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


@pytest.mark.parametrize("cipher", [True, False], ids=["cipher", "plain"])
def test_handlers_run_on_the_loop(certs: iris_rpc.Certificates, cipher: bool) -> None:
    async def main() -> None:
        loop_thread = threading.get_ident()
        threads = []
        async with Server(auth=SECRET, port="127.0.0.1:0", certificates=certs, cipher=cipher) as server:

            @server.on("add")
            def add(msg: Any, uuid: str, stream: Any) -> Any:
                threads.append(threading.get_ident())
                return msg["a"] + msg["b"]

            @server.on("slow_add")
            async def slow_add(msg: Any, uuid: str, stream: Any) -> Any:
                threads.append(threading.get_ident())
                await asyncio.sleep(0.01)
                return msg["a"] + msg["b"]

            @server.on("boom")
            async def boom(msg: Any, uuid: str, stream: Any) -> Any:
                raise RuntimeError("async failure")

            got = asyncio.Event()
            events = []

            @server.on("note")
            def note(msg: Any, uuid: str, stream: Any) -> None:
                threads.append(threading.get_ident())
                events.append(msg["n"])
                got.set()

            async with Client(auth=SECRET, address=server.address, cipher=cipher) as client:
                assert client.loop is asyncio.get_running_loop()
                await client.await_connected(10)
                assert await client.arequest({"op": "add", "a": 1, "b": 2}) == 3
                assert await client.arequest({"op": "slow_add", "a": 3, "b": 4}) == 7
                with pytest.raises(iris_rpc.RemoteError) as e:
                    await client.arequest({"op": "boom"})
                assert e.value.name == "RuntimeError" and e.value.remote_message == "async failure"
                with pytest.raises(iris_rpc.RemoteError) as e:
                    await client.arequest({"op": "nothing"})
                assert e.value.error == {"error": "No such handler 'nothing'"}
                client.dispatch({"op": "note", "n": 1})
                await asyncio.wait_for(got.wait(), 10)
                assert events == [1]
        assert threads and all(t == loop_thread for t in threads)

    run(main())


def test_thousand_requests_in_flight(certs: iris_rpc.Certificates) -> None:
    async def main() -> None:
        async with Server(auth=SECRET, port="127.0.0.1:0", certificates=certs) as server:
            in_flight = 0
            peak = 0
            release = asyncio.Event()

            @server.on("hold")
            async def hold(msg: Any, uuid: str, stream: Any) -> Any:
                nonlocal in_flight, peak
                in_flight += 1
                peak = max(peak, in_flight)
                if in_flight == 1000:
                    release.set()
                await release.wait()
                in_flight -= 1
                return {"i": msg["i"], "sq": msg["i"] * msg["i"]}

            async with Client(auth=SECRET, address=server.address) as client:
                await client.await_connected(10)
                answers = await asyncio.gather(*(client.arequest({"op": "hold", "i": i}) for i in range(1000)))
        assert answers == [{"i": i, "sq": i * i} for i in range(1000)]
        assert peak == 1000  # every request was pending at the same time

    run(main())


def test_arequest_timeout_and_cancel(certs: iris_rpc.Certificates) -> None:
    async def main() -> None:
        async with Server(auth=SECRET, port="127.0.0.1:0", certificates=certs) as server:

            @server.on("never")
            async def never(msg: Any, uuid: str, stream: Any) -> Any:
                await asyncio.sleep(30)

            server.on("ok", lambda m, u, s: "ok")
            async with Client(auth=SECRET, address=server.address) as client:
                await client.await_connected(10)
                with pytest.raises(iris_rpc.TimeoutError):
                    await client.arequest({"op": "never"}, timeout=0.2)
                with pytest.raises(iris_rpc.TimeoutError) as e:
                    await client.arequest({"op": "never", "op_timeout": 100})
                assert e.value.value["timeout"] == 100
                task = asyncio.ensure_future(client.arequest({"op": "never"}))
                await asyncio.sleep(0.05)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert not client._futures  # nothing left behind
                assert await client.arequest({"op": "ok"}) == "ok"

    run(main())


def test_close_settles_async_requests(certs: iris_rpc.Certificates) -> None:
    async def main() -> None:
        server = Server(auth=SECRET, port="127.0.0.1:0", certificates=certs)

        @server.on("never")
        async def never(msg: Any, uuid: str, stream: Any) -> Any:
            await asyncio.sleep(30)

        client = Client(auth=SECRET, address=server.address)
        try:
            await client.await_connected(10)
            task = asyncio.ensure_future(client.arequest({"op": "never"}))
            await asyncio.sleep(0.05)
            await client.aclose()
            with pytest.raises((iris_rpc.ClosedError, iris_rpc.DisconnectedError)):
                await task
            with pytest.raises(iris_rpc.ClosedError):
                await client.arequest({"op": "never"})
        finally:
            await client.aclose()
            await server.aclose()

    run(main())


def test_arequest_from_thread_mode_object(certs: iris_rpc.Certificates, closing: Callable[[Any], Any]) -> None:
    # Objects made outside any loop still serve arequest() from whatever loop awaits it.
    server = closing(Server(auth=SECRET, port="127.0.0.1:0", certificates=certs))
    server.on("add", lambda m, u, s: m["a"] + m["b"])
    client = closing(Client(auth=SECRET, address=server.address))
    client.wait_connected(10)
    assert client.loop is None

    async def main() -> Any:
        return await asyncio.gather(*(client.arequest({"op": "add", "a": i, "b": i}) for i in range(50)))

    assert run(main()) == [2 * i for i in range(50)]


def test_event_flood_on_the_loop(certs: iris_rpc.Certificates) -> None:
    async def main() -> None:
        n = 20000
        async with Server(auth=SECRET, port="127.0.0.1:0", certificates=certs) as server:
            seen = []
            all_in = asyncio.Event()

            @server.on("n")
            def on_n(msg: Any, uuid: str, stream: Any) -> None:
                seen.append(msg["i"])
                if len(seen) == n:
                    all_in.set()

            async with Client(auth=SECRET, address=server.address) as client:
                await client.await_connected(10)
                for i in range(n):
                    client.dispatch({"op": "n", "i": i})
                await asyncio.wait_for(all_in.wait(), 60)
        assert seen == list(range(n))

    run(main())
