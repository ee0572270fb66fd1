"""The Python side of a benchmark pairing, on the package iris_rpc (see bench/README.md for
the contract). Both sides in one program:

    python bench/python_side.py serve --port H:P --auth S --key F --cert F [--no-cipher] [--security MODE]
    python bench/python_side.py client --address H:P --auth S --key F --cert F [--no-cipher] [--security MODE]
        --workload events|requests|openloop|idle [--size B] [--duration S] [--inflight N]
        [--rate R] [--connections N] [--concurrency N]

Run it with the interpreter of the virtual environment that scripts/test-python (or bench/run)
builds: bindings-python/.venv/bin/python. The results have the fields of bench/node-client.js.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List

try:
    import iris_rpc
    from iris_rpc import _native
except ImportError as e:  # pragma: no cover - depends on the environment
    sys.exit(
        f"python_side: cannot import iris_rpc ({e}); run it with bindings-python/.venv/bin/python "
        "after scripts/test-python or bench/run has built the package"
    )


def out(obj: Dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def now_us() -> float:
    return time.perf_counter_ns() / 1e3


def padded_body(op: str, size: int) -> Dict[str, str]:
    """``{"op":op,"d":"xxx.."}``, exactly ``size`` bytes as compact JSON."""
    head = len(f'{{"op":"{op}","d":"') + 2
    return {"op": op, "d": "x" * max(0, size - head)}


def options(args: argparse.Namespace, designation: str) -> Dict[str, Any]:
    opts: Dict[str, Any] = {"auth": args.auth, "designation": designation, "cipher": not args.no_cipher}
    if args.security:
        opts["security"] = args.security
    if args.key and args.cert:
        opts["certificates"] = {"key": args.key, "cert": args.cert}  # paths: the core reads them
    return opts


def wait_stdin_end() -> None:
    while sys.stdin.buffer.read(256):
        pass


# ---- server side -------------------------------------------------------------------------


def serve(args: argparse.Namespace) -> None:
    server = iris_rpc.Server(port=args.port, **options(args, "bench-server"))
    # Handlers run one at a time on the dispatcher thread: plain variables are enough, as in
    # the Node server (a closure's counters, no acknowledgement unless asked for).
    count = 0
    ack = 0

    @server.on("bench.start")
    def start(msg: Any, uuid: str, stream: Any) -> None:
        nonlocal count, ack
        every = msg.get("ack")
        count = 0
        ack = every if isinstance(every, int) and every > 0 else 0

    @server.on("bench.ev")
    def event(msg: Any, uuid: str, stream: Any) -> None:
        nonlocal count
        count += 1
        if ack and count % ack == 0:
            server.dispatch({"op": "bench.ack", "n": count}, uuid=uuid)

    @server.on("bench.end")
    def end(msg: Any, uuid: str, stream: Any) -> None:
        server.dispatch({"op": "bench.done", "n": count}, uuid=uuid)

    server.on("bench.echo", lambda msg, uuid, stream: {"ok": True})

    out({"ready": True, "port": server.port, "pid": os.getpid()})
    wait_stdin_end()
    server.close()


# ---- client side -------------------------------------------------------------------------


def percentiles(samples: List[float]) -> Dict[str, Any]:
    """Exact percentiles over all samples, as the Node client (None when there are none)."""
    s = sorted(samples)
    n = len(s)

    def at(q: float) -> Any:
        return s[min(n - 1, max(0, math.ceil(q * n) - 1))] if n else None

    return {"p50_us": at(0.5), "p99_us": at(0.99), "p999_us": at(0.999), "max_us": s[-1] if n else None}


def events(client: iris_rpc.Client, args: argparse.Namespace) -> Dict[str, Any]:
    size = args.size
    window = min(65536, max(64, (4 << 20) // size))
    ack_every = max(1, window // 4)
    body = padded_body("bench.ev", size)
    duration = args.duration * 1e6
    cond = threading.Condition()
    flow = {"acked": 0, "done": None}

    def on_ack(msg: Any, uuid: str, stream: Any) -> None:
        with cond:
            flow["acked"] = msg.get("n", 0)
            cond.notify()

    def on_done(msg: Any, uuid: str, stream: Any) -> None:
        with cond:
            flow["done"] = msg.get("n", 0)
            cond.notify()

    client.on("bench.ack", on_ack)
    client.on("bench.done", on_done)
    client.dispatch({"op": "bench.start", "ack": ack_every})
    start = now_us()
    sent = 0
    dispatch = client.dispatch
    while True:
        if sent - flow["acked"] >= window:
            with cond:
                if not cond.wait_for(lambda: sent - flow["acked"] < window, 30):
                    raise RuntimeError("no acknowledgement from the server for 30 s")
        dispatch(body)
        sent += 1
        if sent & 255 == 0 and now_us() - start >= duration:
            break
    client.dispatch({"op": "bench.end", "sent": sent})
    with cond:
        if not cond.wait_for(lambda: flow["done"] is not None, 60):
            raise RuntimeError("no bench.done from the server within 60 s")
    secs = (now_us() - start) / 1e6
    n = flow["done"]
    return {
        "sent": sent,
        "count": n,
        "secs": secs,
        "size": size,
        "msgs_per_s": n / secs,
        "mb_per_s": n * size / secs / 1e6,
    }


async def requests(client: iris_rpc.Client, args: argparse.Namespace) -> Dict[str, Any]:
    inflight = args.inflight
    req = padded_body("bench.echo", 64)
    lat: List[float] = []
    errors = 0
    start = now_us()
    end = start + args.duration * 1e6

    async def loop() -> None:
        nonlocal errors
        while now_us() < end:
            t = now_us()
            try:
                await client.arequest(req)
            except iris_rpc.IrisError:
                errors += 1
                return  # a failed request ends its loop (as the Rust client)
            lat.append(now_us() - t)

    await asyncio.gather(*(loop() for _ in range(inflight)))
    secs = (now_us() - start) / 1e6
    return {
        "count": len(lat),
        "errors": errors,
        "secs": secs,
        "inflight": inflight,
        "req_per_s": len(lat) / secs,
        **percentiles(lat),
    }


async def open_loop(client: iris_rpc.Client, args: argparse.Namespace) -> Dict[str, Any]:
    rate = args.rate
    total = max(1, round(rate * args.duration))
    interval = 1e6 / rate  # microseconds
    req = padded_body("bench.echo", 64)
    lat: List[float] = []
    errors = 0

    async def one(due: float) -> None:
        nonlocal errors
        try:
            await client.arequest(req)
        except iris_rpc.IrisError:
            errors += 1
            return
        lat.append(now_us() - due)

    tasks = []
    start = now_us()
    i = 0
    while i < total:
        t = now_us()
        while i < total and start + i * interval <= t:
            tasks.append(asyncio.ensure_future(one(start + i * interval)))
            i += 1
        if i < total:
            # The loop's timers have millisecond resolution: sleep when far ahead, else only
            # yield to I/O (as the Node client).
            wait = start + i * interval - now_us()
            await asyncio.sleep((wait - 1000) / 1e6 if wait > 2000 else 0)
    await asyncio.wait_for(asyncio.gather(*tasks), args.duration + 60)
    secs = (now_us() - start) / 1e6
    return {"count": len(lat), "errors": errors, "secs": secs, "rate": rate, **percentiles(lat)}


def idle(args: argparse.Namespace) -> None:
    # The native objects directly (iris_rpc._native, typed in _native.pyi): each Client of the
    # package has its own dispatcher thread, which thousands of idle connections do not need.
    # Nobody pulls their events; the core's bounded queue holds the few an idle stream gets.
    text = json.dumps({**options(args, "bench-client"), "address": args.address})
    held: List[Any] = []
    lock = threading.Lock()
    failed = 0

    def connect(_: int) -> None:
        nonlocal failed
        try:
            c = _native.Native.client(text)
            ok = c.wait_connected(60.0)
        except Exception:
            ok, c = False, None
        with lock:
            if ok:
                held.append(c)
            else:
                failed += 1

    start = now_us()
    with ThreadPoolExecutor(max_workers=max(1, min(args.concurrency, args.connections))) as pool:
        list(pool.map(connect, range(args.connections)))
    secs = (now_us() - start) / 1e6
    connected = len(held)
    out({"result": {"connected": connected, "failed": failed, "secs": secs, "handshakes_per_s": connected / secs}})
    wait_stdin_end()
    # Exit without closing the clients one by one: that would only add time.
    os._exit(0)


def client_side(args: argparse.Namespace) -> None:
    if args.workload == "idle":
        idle(args)
        return

    async def run() -> Dict[str, Any]:
        # Created inside the running loop: handlers and request answers come to this loop.
        client = iris_rpc.Client(address=args.address, **options(args, "bench-client"))
        try:
            await client.await_connected(15)
            if args.workload == "requests":
                return await requests(client, args)
            return await open_loop(client, args)
        finally:
            await client.aclose()

    if args.workload == "events":
        # The sender blocks on its credits: run it on a plain thread with handlers on the
        # client's own dispatcher thread (no event loop involved).
        client = iris_rpc.Client(address=args.address, **options(args, "bench-client"))
        try:
            client.wait_connected(15)
            result = events(client, args)
        finally:
            client.close()
    else:
        result = asyncio.run(run())
    out({"result": result})


def main() -> int:
    ap = argparse.ArgumentParser(description="Python side of a benchmark pairing (bench/README.md)")
    ap.add_argument("side", choices=["serve", "client"])
    ap.add_argument("--port", default="127.0.0.1:0")
    ap.add_argument("--address")
    ap.add_argument("--auth", default="bench-secret")
    ap.add_argument("--key")
    ap.add_argument("--cert")
    ap.add_argument("--no-cipher", action="store_true")
    ap.add_argument("--security", choices=["legacy", "prefer-v2", "require-v2"])
    ap.add_argument("--workload", choices=["events", "requests", "openloop", "idle"])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--duration", type=float, default=1.5)
    ap.add_argument("--inflight", type=int, default=1)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--connections", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=256)
    args = ap.parse_args()
    if args.side == "client" and (not args.address or not args.workload):
        ap.error("client needs --address and --workload")
    if args.size < 16 or args.duration <= 0 or args.inflight < 1 or args.rate <= 0 or args.connections < 1:
        ap.error("--size >= 16, --duration > 0, --inflight >= 1, --rate > 0, --connections >= 1")
    try:
        if args.side == "serve":
            serve(args)
        else:
            client_side(args)
    except (iris_rpc.IrisError, RuntimeError, OSError, asyncio.TimeoutError) as e:
        print(f"python_side: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
