"""A Python Router joined to a cluster over NATS (``cluster`` option, docs/CLUSTER.md): two
routers in this process and one NATS server (Debian's nats-server; skipped when missing), a
legacy client on one router's frontend and a Python client on the other's backend: requests
and events cross, a uuid nobody holds fails at once, and bad options are clear errors."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from typing import Any, Callable, Iterator

import pytest

import iris_rpc
from iris_rpc import Client, ConfigError, Router

from conftest import SECRET, WAIT, LegacyPeer, free_port, wait_for

pytestmark = pytest.mark.skipif(shutil.which("nats-server") is None, reason="nats-server is not installed")


@pytest.fixture
def nats() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        ["nats-server", "-a", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )

    def up() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            return False

    wait_for(up, what="nats-server listening")
    yield f"nats://127.0.0.1:{port}"
    proc.kill()
    proc.wait()


def router(closing: Callable[[Any], Any], certs: iris_rpc.Certificates, cluster: Any) -> Router:
    return closing(
        Router(auth=SECRET, port="127.0.0.1:0", certificates=certs, server={"port": "127.0.0.1:0"}, cluster=cluster)
    )


def test_peers_on_two_routers_meet(
    nats: str, legacy: Callable[..., LegacyPeer], closing: Callable[[Any], Any], certs: iris_rpc.Certificates
) -> None:
    a = router(closing, certs, {"servers": nats, "name": "pytest"})
    b = router(closing, certs, {"servers": [nats], "name": "pytest"})
    worker = closing(
        Client(auth=SECRET, address=b.backend_address, uuid="pw", reconnect_initial=100, reconnect_max=300)
    )
    got: list = []
    worker.on("news", lambda msg, uuid, stream: got.append((msg, uuid)))

    @worker.on("mul")
    def mul(msg: Any, uuid: str, stream: Any) -> Any:
        return {"product": msg["a"] * msg["b"], "from": uuid}

    lc = legacy("client", address=a.address, uuid="lc")
    lc.expect("connect")
    wait_for(lambda: any(p.uuid == "pw" for p in b.peers("backend")), what="pw on B")
    wait_for(lambda: any(p.uuid == "lc" for p in a.peers("frontend")), what="lc on A")

    # The legacy client on A asks the Python worker on B by uuid, as through one router.
    r = lc.request({"op": "mul", "a": 6, "b": 7, "_uuid": "pw"})
    assert r["resp"] == {"product": 42, "from": "lc"}, r
    # Its broadcast reaches the worker on the other router, sender tagged.
    lc.dispatch({"op": "news"})
    wait_for(lambda: len(got) == 1, what="news on B")
    assert got[0][1] == "lc"
    # Nobody holds the uuid: a clear error at once, not the legacy client's timeout.
    started = time.monotonic()
    r = lc.request({"op": "mul", "a": 1, "b": 1, "_uuid": "nobody"})
    assert 'no peer "nobody" in the cluster' in str(r["err"]), r
    assert time.monotonic() - started < WAIT


def test_bad_cluster_options_are_clear_errors(certs: iris_rpc.Certificates) -> None:
    with pytest.raises(ConfigError, match="unknown member 'tokn'"):
        Router(
            auth=SECRET,
            port="127.0.0.1:0",
            certificates=certs,
            server={"port": "127.0.0.1:0"},
            cluster={"servers": "nats://127.0.0.1:1", "tokn": "x"},
        )
    with pytest.raises(iris_rpc.IrisError, match="NATS unreachable") as e:
        Router(
            auth=SECRET,
            port="127.0.0.1:0",
            certificates=certs,
            server={"port": "127.0.0.1:0"},
            cluster={"servers": f"nats://127.0.0.1:{free_port()}", "token": "secret-token"},
        )
    assert "secret-token" not in str(e.value)
