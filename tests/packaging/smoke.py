"""Smoke test of an installed iris_rpc wheel against the real legacy iris-rpc 0.2.20.

    python smoke.py        env: LEGACY_NODE (a Node that runs the legacy package),
                                LEGACY_PEER (tests/interop/legacy-peer.js)

Our client connects to a legacy server; it sends an event and gets one back, makes a request
(blocking and with asyncio) and gets an error from another. Prints "smoke ok" or fails.
"""

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading

import iris_rpc
from iris_rpc import Client, RemoteError, self_signed


def fail(what):
    print(f"smoke: {what}", file=sys.stderr)
    sys.exit(1)


def main():
    where = os.path.dirname(iris_rpc.__file__)
    if "site-packages" not in where:
        fail(f"iris_rpc imported from {where}, not an installed package")
    certs = self_signed()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = {"role": "server", "auth": "smoke secret", "port": f"127.0.0.1:{port}",
              "uuid": "legacy-server", "key": certs.key, "cert": certs.cert}
    legacy = subprocess.Popen(
        [os.environ.get("LEGACY_NODE", "node"), os.environ["LEGACY_PEER"], json.dumps(config)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    timer = threading.Timer(60, lambda: (legacy.kill(), os._exit(2)))
    timer.daemon = True
    timer.start()
    try:
        for line in legacy.stdout:
            ev = json.loads(line)
            if ev["ev"] == "listen":
                if ev["err"]:
                    fail(f"legacy server: {ev['err']}")
                break
        else:
            fail("the legacy server exited")

        got = threading.Event()
        seen = {}
        with Client(auth="smoke secret", address=f"127.0.0.1:{port}", certificates=certs) as client:
            @client.on("world")
            def world(msg, uuid, stream):
                seen.update(msg)
                got.set()

            client.wait_connected(timeout=20)
            client.dispatch({"op": "hello", "text": "from the smoke test"})
            if not got.wait(20) or seen.get("echo") != "from the smoke test":
                fail(f"event: {seen}")
            resp = client.request({"op": "add", "a": 2, "b": 3})
            if resp != {"sum": 5}:
                fail(f"request: {resp}")
            resp = asyncio.run(client.arequest({"op": "add", "a": 20, "b": 22}))
            if resp != {"sum": 42}:
                fail(f"asyncio request: {resp}")
            try:
                client.request({"op": "fail"})
                fail("no error")
            except RemoteError as e:
                if e.error.get("message") != "bad input":
                    fail(f"error: {e.error}")
        legacy.stdin.write(json.dumps({"cmd": "exit"}) + "\n")
        legacy.stdin.flush()
    finally:
        legacy.stdin.close()
        legacy.wait(10)
    print(f"smoke ok (python {sys.version.split()[0]}): event, request, asyncio request, error "
          "against legacy iris-rpc")


if __name__ == "__main__":
    main()
