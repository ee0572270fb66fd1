"""The ``security`` option (v2 sessions) from Python: our client and server with each setting,
cipher on and off, require-v2 refusing legacy peers (ours set to ``"legacy"`` and the real
legacy package), bad values. Each stream (``Peer``) says its ``mode`` and ``cipher``."""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

import pytest

import iris_rpc
from iris_rpc import Client, Router, Server

from conftest import SECRET, LegacyPeer, Recorder, free_port

CIPHER = pytest.mark.parametrize("cipher", [True, False], ids=["cipher", "plain"])


def _security(value: Optional[str]) -> dict:
    """``security`` when given; None keeps the default (prefer-v2)."""
    return {} if value is None else {"security": value}


def _server(closing: Callable[[Any], Any], certs: iris_rpc.Certificates, cipher: bool = True, security: Optional[str] = None) -> Server:
    server = closing(
        Server(auth=SECRET, port="127.0.0.1:0", certificates=certs, cipher=cipher, uuid="py-srv", **_security(security))
    )
    server.on("add", lambda msg, uuid, stream: {"sum": msg["a"] + msg["b"]})
    return server


def _client(
    closing: Callable[[Any], Any], port: int, cipher: bool = True, security: Optional[str] = None, uuid: str = "py-cli"
) -> Client:
    client = closing(
        Client(
            auth=SECRET,
            address=f"127.0.0.1:{port}",
            cipher=cipher,
            uuid=uuid,
            reconnect_initial=100,
            reconnect_max=300,
            **_security(security),
        )
    )
    client.on("add", lambda msg, uuid, stream: {"sum": msg["a"] + msg["b"]})
    return client


WORKING = [
    pytest.param(None, None, "v2", id="defaults"),
    pytest.param("prefer-v2", "require-v2", "v2", id="prefer-server-require-client"),
    pytest.param("require-v2", "prefer-v2", "v2", id="require-server-prefer-client"),
    pytest.param("legacy", "legacy", "legacy", id="legacy-both"),
    pytest.param(None, "legacy", "legacy", id="prefer-server-legacy-client"),
    pytest.param("legacy", None, "legacy", id="legacy-server-prefer-client"),
]


@CIPHER
@pytest.mark.parametrize("server_security,client_security,mode", WORKING)
def test_modes_between_ours(
    closing: Callable[[Any], Any],
    certs: iris_rpc.Certificates,
    cipher: bool,
    server_security: Optional[str],
    client_security: Optional[str],
    mode: str,
) -> None:
    server = _server(closing, certs, cipher, server_security)
    server_connects = Recorder()
    server_events = Recorder()
    server.on("connect", lambda address, uuid, stream: server_connects(uuid, stream.mode, stream.cipher))
    server.on("up", lambda msg, uuid, stream: server_events(msg, uuid))
    client = _client(closing, server.port, cipher, client_security)
    client_connects = Recorder()
    client_events = Recorder()
    client.on("connect", lambda address, uuid, stream: client_connects(uuid, stream.mode, stream.cipher))
    client.on("down", lambda msg, uuid, stream: client_events(msg, uuid))
    client.wait_connected(5)

    assert client_connects.wait(1)[0] == ("py-srv", mode, cipher)
    assert server_connects.wait(1)[0] == ("py-cli", mode, cipher)
    assert client.dispatch({"op": "up", "n": 1}) == 1
    assert server_events.wait(1)[0] == ({"op": "up", "n": 1}, "py-cli")
    server.dispatch({"op": "down", "n": 2}, uuid="py-cli")
    assert client_events.wait(1)[0] == ({"op": "down", "n": 2}, "py-srv")
    assert client.request({"op": "add", "a": 2, "b": 3}, timeout=5) == {"sum": 5}
    assert server.request({"op": "add", "a": 4, "b": 5}, uuid="py-cli", timeout=5) == {"sum": 9}

    for peers in (client.peers(), server.peers()):
        assert len(peers) == 1
        assert (peers[0].mode, peers[0].cipher) == (mode, cipher)
        assert f"mode={mode!r}".replace("'", '"') in repr(peers[0])
    assert client.streams["py-srv"].mode == mode


def test_require_v2_server_refuses_a_legacy_client(closing: Callable[[Any], Any], certs: iris_rpc.Certificates) -> None:
    server = _server(closing, certs, security="require-v2")
    server_errors = Recorder()
    server_connects = Recorder()
    server.on("error", lambda exc, address: server_errors(exc))
    server.on("connect", lambda address, uuid, stream: server_connects(uuid))
    client = _client(closing, server.port, security="legacy")
    client_errors = Recorder()
    client_connects = Recorder()
    client.on("error", lambda exc, address: client_errors(exc))
    client.on("connect", lambda address, uuid, stream: client_connects(uuid))

    (server_exc,) = server_errors.wait(1)[0]
    assert isinstance(server_exc, iris_rpc.AuthError)
    assert "require-v2" in str(server_exc)
    (client_exc,) = client_errors.wait(1)[0]
    assert isinstance(client_exc, iris_rpc.AuthError)
    assert "server refused" in str(client_exc) and "require-v2" in str(client_exc)
    with pytest.raises(iris_rpc.NotConnectedError):
        client.wait_connected(0.3)
    assert not server.is_connected() and server.peers() == []
    assert server_connects.items == [] and client_connects.items == []


def test_require_v2_client_never_connects_to_a_legacy_server(closing: Callable[[Any], Any], certs: iris_rpc.Certificates) -> None:
    server = _server(closing, certs, security="legacy")
    server_connects = Recorder()
    server.on("connect", lambda address, uuid, stream: server_connects(uuid))
    client = _client(closing, server.port, security="require-v2")
    client_errors = Recorder()
    client.on("error", lambda exc, address: client_errors(exc))

    (exc,) = client_errors.wait(1)[0]
    assert isinstance(exc, iris_rpc.AuthError)
    assert "require-v2" in str(exc) and "legacy protocol" in str(exc)
    with pytest.raises(iris_rpc.NotConnectedError):
        client.wait_connected(0.3)
    with pytest.raises(iris_rpc.NotConnectedError):
        client.request({"op": "add", "a": 1, "b": 1})
    assert not server.is_connected() and server_connects.items == []


@pytest.mark.parametrize("value", ["v3", "Require-V2", "", True, 2])
def test_a_bad_security_value_is_a_config_error(certs: iris_rpc.Certificates, value: Any) -> None:
    with pytest.raises(iris_rpc.ConfigError) as e:
        Client(auth=SECRET, address="127.0.0.1:1", security=value)
    if isinstance(value, str):
        assert "security" in str(e.value) and "require-v2" in str(e.value)
    with pytest.raises(iris_rpc.ConfigError):
        Server(auth=SECRET, port="127.0.0.1:0", certificates=certs, security=value)
    with pytest.raises(iris_rpc.ConfigError):
        Router(auth=SECRET, port="127.0.0.1:0", certificates=certs, server={"port": "127.0.0.1:0", "security": value})


def _pin(cert_pem: str) -> str:
    """The RFC 7469 pin of a PEM certificate, computed here with the standard library only
    (`ssl` gives the DER; the SPKI is located by walking the DER)."""
    import base64
    import hashlib
    import ssl

    der = ssl.PEM_cert_to_DER_cert(cert_pem)

    def tlv(buf: bytes, i: int) -> "tuple[int, int, int]":
        """(tag, start of content, end of content) of the DER element at i."""
        tag, n = buf[i], buf[i + 1]
        i += 2
        if n & 0x80:
            k = n & 0x7F
            n = int.from_bytes(buf[i : i + k], "big")
            i += k
        return tag, i, i + n

    _, cert_start, _ = tlv(der, 0)  # Certificate
    _, tbs_start, tbs_end = tlv(der, cert_start)  # TBSCertificate
    i = tbs_start
    fields = []
    while i < tbs_end:
        tag, start, end = tlv(der, i)
        fields.append((tag, i, end))
        i = end
    # [0] version, serial, signature, issuer, validity, subject, subjectPublicKeyInfo
    offset = 1 if fields[0][0] == 0xA0 else 0
    _, spki_start, spki_end = fields[offset + 5]
    return "sha256/" + base64.b64encode(hashlib.sha256(der[spki_start:spki_end]).digest()).decode()


def test_server_pins_refuse_another_key_and_a_weak_secret_can_be_refused(
    closing: Callable[[Any], Any], certs: iris_rpc.Certificates
) -> None:
    server = _server(closing, certs)
    right = closing(Client(auth=SECRET, address=f"127.0.0.1:{server.port}", server_pins=_pin(certs.cert)))
    right.wait_connected(10)
    errors = Recorder()
    wrong = closing(
        Client(
            auth=SECRET,
            address=f"127.0.0.1:{server.port}",
            serverPins=[_pin(iris_rpc.self_signed().cert)],
            reconnect_initial=100,
        )
    )
    wrong.on("error", lambda err, *rest: errors(str(err)))
    (message,) = errors.wait(1)[0]
    assert "matches none of server_pins" in message
    assert not wrong.is_connected()
    with pytest.raises(iris_rpc.ConfigError, match="invalid server pin"):
        Client(auth=SECRET, address="127.0.0.1:1", server_pins=["nope"])
    with pytest.raises(iris_rpc.ConfigError, match="the shared secret is weak"):
        Client(auth="sunshine", address="127.0.0.1:1", refuse_weak_secret=True)
    with pytest.raises(iris_rpc.ConfigError, match="the shared secret is weak"):
        Server(auth="sunshine", port="127.0.0.1:0", certificates=certs, refuseWeakSecret=True)


def test_router_sides_and_peer_modes(closing: Callable[[Any], Any], certs: iris_rpc.Certificates) -> None:
    # The frontend requires v2; the backend server (its own setting) speaks legacy only.
    router = closing(
        Router(auth=SECRET, port="127.0.0.1:0", certificates=certs, security="require-v2", server={"port": "127.0.0.1:0", "security": "legacy"})
    )
    front = _client(closing, router.port, uuid="front")
    front.wait_connected(5)
    assert router.backend_port
    back = _client(closing, router.backend_port, uuid="back")
    back.wait_connected(5)
    # A client sees the handshake done one line before the router does.
    deadline = time.monotonic() + 5
    while len(router.peers("backend")) < 1 or len(router.peers("frontend")) < 1:
        assert time.monotonic() < deadline, "the router did not register both peers"
        time.sleep(0.005)
    assert [(p.uuid, p.mode) for p in router.peers("frontend")] == [("front", "v2")]
    assert [(p.uuid, p.mode) for p in router.peers("backend")] == [("back", "legacy")]

    old = _client(closing, router.port, security="legacy", uuid="old")
    errors = Recorder()
    old.on("error", lambda exc, address: errors(exc))
    assert "require-v2" in str(errors.wait(1)[0][0])
    assert len(router.peers("frontend")) == 1


# ---- against the legacy package -------------------------------------------------------------


@CIPHER
def test_default_client_falls_back_with_the_legacy_server(legacy: Callable[..., LegacyPeer], closing: Callable[[Any], Any], cipher: bool) -> None:
    port = free_port()
    legacy("server", port=f"127.0.0.1:{port}", cipher=cipher, uuid="legacy-srv")
    client = _client(closing, port, cipher)
    client.wait_connected(5)
    assert client.request({"op": "add", "a": 2, "b": 3}, timeout=5) == {"sum": 5}
    (peer,) = client.peers()
    assert (peer.uuid, peer.mode, peer.cipher) == ("legacy-srv", "legacy", cipher)


@CIPHER
def test_legacy_client_with_a_default_server(legacy: Callable[..., LegacyPeer], closing: Callable[[Any], Any], certs: iris_rpc.Certificates, cipher: bool) -> None:
    server = _server(closing, certs, cipher)
    peer = legacy("client", address=server.address, cipher=cipher, uuid="legacy-cli")
    peer.expect("connect")
    r = peer.request({"op": "add", "a": 6, "b": 7})
    assert r["err"] is None and r["resp"] == {"sum": 13}
    (p,) = server.peers()
    assert (p.uuid, p.mode, p.cipher) == ("legacy-cli", "legacy", cipher)


def test_require_v2_server_refuses_the_legacy_client(legacy: Callable[..., LegacyPeer], closing: Callable[[Any], Any], certs: iris_rpc.Certificates) -> None:
    server = _server(closing, certs, security="require-v2")
    errors = Recorder()
    server.on("error", lambda exc, address: errors(exc))
    peer = legacy("client", address=server.address, uuid="legacy-cli")
    (exc,) = errors.wait(1)[0]
    assert isinstance(exc, iris_rpc.AuthError) and "require-v2" in str(exc)
    peer.send({"cmd": "connected"})
    assert peer.expect("connected")["value"] is False
    assert not server.is_connected()


def test_require_v2_client_never_connects_to_the_legacy_server(legacy: Callable[..., LegacyPeer], closing: Callable[[Any], Any]) -> None:
    port = free_port()
    peer = legacy("server", port=f"127.0.0.1:{port}", uuid="legacy-srv")
    client = _client(closing, port, security="require-v2")
    errors = Recorder()
    client.on("error", lambda exc, address: errors(exc))
    (exc,) = errors.wait(1)[0]
    assert isinstance(exc, iris_rpc.AuthError) and "require-v2" in str(exc)
    assert not client.is_connected()
    peer.send({"cmd": "connected"})
    assert peer.expect("connected")["value"] is False
