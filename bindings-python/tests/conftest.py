"""Shared fixtures: certificates, free ports, and a real legacy iris-rpc peer over stdio."""

from __future__ import annotations

import json
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

import iris_rpc

REPO = Path(__file__).resolve().parents[2]
LEGACY_PEER = REPO / "tests" / "interop" / "legacy-peer.js"
SECRET = "interop-secret"
WAIT = 15.0  # seconds: generous upper bound for anything that should happen promptly


@pytest.fixture(scope="session")
def certs() -> iris_rpc.Certificates:
    return iris_rpc.self_signed()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(cond: Callable[[], Any], timeout: float = WAIT, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def in_request(thread: threading.Thread) -> bool:
    """True once `thread` is inside iris_rpc's blocking request() (its innermost Python frame),
    that is, inside the native call."""
    frame = sys._current_frames().get(thread.ident or -1)
    return frame is not None and frame.f_code.co_name == "request" and "iris_rpc" in frame.f_code.co_filename


class Recorder:
    """Collects calls from handler threads; lets the test wait for them."""

    def __init__(self) -> None:
        self.items: List[Any] = []
        self._cond = threading.Condition()

    def __call__(self, *args: Any) -> None:
        with self._cond:
            self.items.append(args)
            self._cond.notify_all()

    def wait(self, n: int = 1, timeout: float = WAIT) -> List[Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.items) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"expected {n} calls, got {len(self.items)}: {self.items}")
                self._cond.wait(left)
            return list(self.items)


class LegacyPeer:
    """`node tests/interop/legacy-peer.js CONFIG`: a live legacy iris-rpc 0.2.20 peer."""

    def __init__(self, config: Dict[str, Any]) -> None:
        node = shutil.which("node")
        assert node, "node is required for the legacy interop tests"
        assert (REPO / "tests" / "interop" / "node_modules" / "iris-rpc").is_dir(), (
            "run `npm ci --prefix tests/interop` first (scripts/test-python does)"
        )
        self.config = config
        self.proc = subprocess.Popen(
            [node, str(LEGACY_PEER), json.dumps(config)],
            cwd=str(REPO),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.events: "queue.Queue[Dict[str, Any]]" = queue.Queue()
        self.seen: List[Dict[str, Any]] = []
        self._ids = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        ready = self.expect("ready")
        assert ready is not None
        if config.get("role") == "server":
            listen = [e for e in self.seen if e["ev"] == "listen"]
            assert listen and listen[0]["err"] is None, f"legacy server did not listen: {listen}"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if line:
                self.events.put(json.loads(line))

    def send(self, cmd: Dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def expect(
        self, ev: str, pred: Callable[[Dict[str, Any]], bool] = lambda e: True, timeout: float = WAIT
    ) -> Dict[str, Any]:
        for e in self.seen:
            if e["ev"] == ev and pred(e) and not e.get("_taken"):
                e["_taken"] = True
                return e
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"legacy peer: no {ev!r} event; seen {self.seen}")
            try:
                e = self.events.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(e)
            if e["ev"] == ev and pred(e):
                e["_taken"] = True
                return e

    def request(self, msg: Dict[str, Any], uuid: Optional[str] = None, timeout: float = WAIT) -> Dict[str, Any]:
        self._ids += 1
        rid = self._ids
        cmd: Dict[str, Any] = {"cmd": "request", "id": rid, "msg": msg}
        if uuid:
            cmd["uuid"] = uuid
        self.send(cmd)
        return self.expect("response", lambda e: e["id"] == rid, timeout)

    def dispatch(self, msg: Dict[str, Any], uuid: Optional[str] = None) -> None:
        cmd: Dict[str, Any] = {"cmd": "dispatch", "msg": msg}
        if uuid:
            cmd["uuid"] = uuid
        self.send(cmd)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send({"cmd": "exit"})
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=5)
        self.stop()


@pytest.fixture
def legacy(certs: iris_rpc.Certificates) -> Iterator[Callable[..., LegacyPeer]]:
    started: List[LegacyPeer] = []

    def start(role: str, **config: Any) -> LegacyPeer:
        # Legacy needs a uuid (it throws without one).
        cfg: Dict[str, Any] = {"role": role, "auth": SECRET, "key": certs.key, "cert": certs.cert, "uuid": f"legacy-{role}"}
        cfg.update(config)
        peer = LegacyPeer(cfg)
        started.append(peer)
        return peer

    yield start
    for p in started:
        p.stop()


@pytest.fixture
def closing() -> Iterator[Callable[[Any], Any]]:
    """Registers objects to close at the end of the test, even when it fails."""
    objs: List[Any] = []

    def add(obj: Any) -> Any:
        objs.append(obj)
        return obj

    yield add
    for o in reversed(objs):
        o.close()
