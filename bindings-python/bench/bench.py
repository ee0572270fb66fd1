"""Throughput of the Python package, against a Python peer and a legacy Node peer, each in its
own process. Prints a table; asserts nothing about speed.

    python bindings-python/bench/bench.py [--events N] [--requests N] [--in-flight N]
                                          [--peers python,legacy] [--cipher on,off]

Run from the repository root after scripts/test-python (which builds the package into
bindings-python/.venv and installs the legacy package under tests/interop).

Measured, with this process as the client:
- events/s: this process dispatches N `hello` events; the peer answers each with a `world`
  event; the clock stops when the last `world` is back (both directions, pipelined).
- requests/s sequential: one blocking `request()` at a time (round-trip bound).
- requests/s concurrent: asyncio `arequest()` with a window of --in-flight outstanding.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import iris_rpc

REPO = Path(__file__).resolve().parents[2]
SECRET = "bench-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- the Python peer (child process) ------------------------------------------------------


def serve(port: int, cipher: bool, key: str, cert: str) -> None:
    server = iris_rpc.Server(
        auth=SECRET, port=f"127.0.0.1:{port}", certificates=(key, cert), cipher=cipher, uuid="py-bench"
    )
    server.on("add", lambda m, u, s: {"sum": m["a"] + m["b"]})

    @server.on("hello")
    def hello(msg: Any, uuid: str, stream: Any) -> None:
        server.dispatch({"op": "world", "echo": msg.get("text")}, uuid=uuid)

    print("ready", flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    server.close()


def start_python_peer(port: int, cipher: bool, certs: iris_rpc.Certificates) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port), "--cipher-flag", "1" if cipher else "0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "BENCH_KEY": certs.key, "BENCH_CERT": certs.cert},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != "ready":
        raise RuntimeError(f"python peer did not start: {line!r}")
    return proc


def start_legacy_peer(port: int, cipher: bool, certs: iris_rpc.Certificates) -> subprocess.Popen:
    node = shutil.which("node")
    if not node:
        raise RuntimeError("node not found")
    cfg = {
        "role": "server",
        "auth": SECRET,
        "port": f"127.0.0.1:{port}",
        "cipher": cipher,
        "uuid": "legacy-bench",
        "key": certs.key,
        "cert": certs.cert,
    }
    proc = subprocess.Popen(
        [node, str(REPO / "tests" / "interop" / "legacy-peer.js"), json.dumps(cfg)],
        cwd=str(REPO),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if json.loads(line).get("ev") == "ready":
            break
    else:
        raise RuntimeError("legacy peer did not start")
    # The legacy peer reports every message on stdout: keep draining it so it never blocks.
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    return proc


def stop(proc: subprocess.Popen) -> None:
    try:
        if proc.stdin:
            proc.stdin.close()
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---- measurements --------------------------------------------------------------------------


def bench_events(client: iris_rpc.Client, n: int) -> float:
    done = threading.Event()
    count = 0

    def world(msg: Any, uuid: str, stream: Any) -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set()

    client.on("world", world)
    t0 = time.perf_counter()
    for i in range(n):
        client.dispatch({"op": "hello", "text": "t"})
    if not done.wait(120):
        raise RuntimeError(f"only {count} of {n} events came back")
    dt = time.perf_counter() - t0
    client.off("world", world)
    return n / dt


def bench_sequential(client: iris_rpc.Client, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        r = client.request({"op": "add", "a": i, "b": 1})
        if r["sum"] != i + 1:
            raise RuntimeError(f"wrong answer {r}")
    return n / (time.perf_counter() - t0)


def bench_concurrent(client: iris_rpc.Client, n: int, window: int) -> float:
    async def main() -> float:
        sem = asyncio.Semaphore(window)

        async def one(i: int) -> None:
            async with sem:
                r = await client.arequest({"op": "add", "a": i, "b": 1})
            if r["sum"] != i + 1:
                raise RuntimeError(f"wrong answer {r}")

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return n / (time.perf_counter() - t0)

    return asyncio.run(main())


def measure(peer: str, cipher: bool, args: argparse.Namespace, certs: iris_rpc.Certificates) -> Dict[str, float]:
    port = free_port()
    proc = (start_python_peer if peer == "python" else start_legacy_peer)(port, cipher, certs)
    try:
        client = iris_rpc.Client(auth=SECRET, address=f"127.0.0.1:{port}", cipher=cipher)
        client.wait_connected(15)
        # warm up: connections, JIT of the Node peer, allocator
        bench_sequential(client, 200)
        out = {
            "events/s": bench_events(client, args.events),
            "requests/s (sequential)": bench_sequential(client, args.requests // 4),
            f"requests/s ({args.in_flight} in flight)": bench_concurrent(client, args.requests, args.in_flight),
        }
        client.close()
        return out
    finally:
        stop(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--in-flight", type=int, default=256)
    ap.add_argument("--peers", default="python,legacy")
    ap.add_argument("--cipher", default="on,off")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--cipher-flag", default="1", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.cipher_flag == "1", os.environ["BENCH_KEY"], os.environ["BENCH_CERT"])
        return

    certs = iris_rpc.self_signed()
    rows: List[List[str]] = []
    columns: Optional[List[str]] = None
    for peer in args.peers.split(","):
        for c in args.cipher.split(","):
            cipher = c == "on"
            result = measure(peer, cipher, args, certs)
            columns = columns or list(result)
            name = "Python <-> Python" if peer == "python" else "Python <-> legacy Node"
            rows.append([name, "on" if cipher else "off"] + [f"{v:,.0f}" for v in result.values()])
    header = ["peers (separate processes)", "cipher"] + (columns or [])
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    print(
        f"iris_rpc {iris_rpc.__version__}, Python {sys.version.split()[0]}, {os.cpu_count()} cores; "
        f"{args.events} events, {args.requests // 4} sequential and {args.requests} concurrent requests"
    )
    for r in [header, ["-" * w for w in widths]] + rows:
        print("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths))))


if __name__ == "__main__":
    main()
