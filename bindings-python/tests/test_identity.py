"""Issue 19, attack 4 (identity) and server identity from Python, against the real legacy
package where legacy is involved: a legacy-mode stream never takes over a uuid a v2 stream
holds; ``expect_server_uuid`` refuses a server under another uuid; ``client_cert_uuid`` binds a
client's uuid to its certificate (the legacy client presents one as it always did);
``pin_store`` records a server's key on first use and refuses another key at that address."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Any, Callable

import iris_rpc
from iris_rpc import Client, Server

from conftest import SECRET, LegacyPeer, Recorder


def test_the_legacy_client_cannot_take_over_a_uuid_a_v2_stream_holds(
    legacy: Callable[..., LegacyPeer], closing: Callable[[Any], Any], certs: iris_rpc.Certificates
) -> None:
    server = closing(Server(auth=SECRET, port="127.0.0.1:0", certificates=certs, uuid="py-srv"))
    errors = Recorder()
    server.on("error", lambda exc, address: errors(exc))
    holder = closing(Client(auth=SECRET, address=server.address, uuid="twin"))
    holder.on("echo", lambda msg, uuid, stream: {"who": "v2 holder"})
    holder.wait_connected(10)
    assert [p.mode for p in server.peers()] == ["v2"]
    legacy("client", address=server.address, uuid="twin")
    (exc,) = errors.wait(1)[0]
    assert isinstance(exc, iris_rpc.AuthError)
    assert '"twin"' in str(exc) and "held by a v2 stream" in str(exc)
    for _ in range(3):
        assert server.request({"op": "echo"}, uuid="twin", timeout=10) == {"who": "v2 holder"}
        time.sleep(0.3)
    assert [(p.uuid, p.mode) for p in server.peers()] == [("twin", "v2")]


def test_expect_server_uuid(closing: Callable[[Any], Any], certs: iris_rpc.Certificates) -> None:
    server = closing(Server(auth=SECRET, port="127.0.0.1:0", certificates=certs, uuid="impostor"))
    errors = Recorder()
    wrong = closing(Client(auth=SECRET, address=server.address, expect_server_uuid="real", reconnect_initial=100))
    wrong.on("error", lambda exc, address: errors(exc))
    (exc,) = errors.wait(1)[0]
    assert isinstance(exc, iris_rpc.AuthError)
    assert 'uuid "impostor"' in str(exc) and "expect_server_uuid" in str(exc)
    assert not wrong.is_connected()
    right = closing(Client(auth=SECRET, address=server.address, expectServerUuid=["real", "impostor"]))
    right.wait_connected(10)


def test_client_cert_uuid_with_the_legacy_client(
    legacy: Callable[..., LegacyPeer], closing: Callable[[Any], Any], certs: iris_rpc.Certificates
) -> None:
    mine = iris_rpc.self_signed(["legacy-cli"])
    server = closing(
        Server(
            auth=SECRET,
            port="127.0.0.1:0",
            certificates=iris_rpc.Certificates(key=certs.key, cert=certs.cert, ca=[mine.cert]),
            reject_unauthorized=True,
            client_cert_uuid=True,
        )
    )
    errors = Recorder()
    server.on("error", lambda exc, address: errors(exc))
    honest = legacy("client", address=server.address, uuid="legacy-cli", key=mine.key, cert=mine.cert)
    honest.expect("connect")
    legacy("client", address=server.address, uuid="someone-else", key=mine.key, cert=mine.cert)
    (exc,) = errors.wait(1)[0]
    assert isinstance(exc, iris_rpc.AuthError)
    assert 'claimed uuid "someone-else"' in str(exc) and "client_cert_uuid" in str(exc)
    assert [p.uuid for p in server.peers()] == ["legacy-cli"]


def test_pin_store_trusts_on_first_use(tmp_path: Path, closing: Callable[[Any], Any], certs: iris_rpc.Certificates) -> None:
    store = tmp_path / "known-servers"
    server = Server(auth=SECRET, port="127.0.0.1:0", certificates=certs)
    port = server.port
    first = Client(auth=SECRET, address=f"127.0.0.1:{port}", pin_store=store)
    first.wait_connected(10)
    first.close()
    server.close()
    recorded = store.read_text()
    assert f"127.0.0.1:{port} sha256/" in recorded
    assert stat.S_IMODE(os.stat(store).st_mode) == 0o600

    closing(Server(auth=SECRET, port=f"127.0.0.1:{port}", certificates=iris_rpc.self_signed()))
    errors = Recorder()
    second = closing(Client(auth=SECRET, address=f"127.0.0.1:{port}", pinStore=str(store), reconnect_initial=100))
    second.on("error", lambda exc, address: errors(exc))
    (exc,) = errors.wait(1)[0]
    assert isinstance(exc, iris_rpc.TlsError)
    assert "pin_store" in str(exc) and "recorded" in str(exc)
    assert not second.is_connected()
    assert store.read_text() == recorded
