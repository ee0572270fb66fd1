"""Whole-interpreter behaviour, each in a fresh `python` process: the README quick start,
Ctrl-C while blocked in request(), and exit with objects left open."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def quickstart() -> str:
    text = README.read_text(encoding="utf-8")
    m = re.search(r"<!-- quickstart:begin -->\s*```python\n(.*?)```\s*<!-- quickstart:end -->", text, re.S)
    assert m, "README.md has no quick start block between the markers"
    return m.group(1)


def run_python(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)


def test_readme_quickstart_runs() -> None:
    code = quickstart()
    assert "from iris_rpc import" in code
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["{'sum': 5}", "{'error': \"No such handler 'nope'\"}"]


def test_exit_with_open_objects() -> None:
    # Nothing is closed: the interpreter must still exit promptly and cleanly.
    code = textwrap.dedent(
        """
        import asyncio
        from iris_rpc import Client, Server, self_signed
        server = Server(auth="s", port="127.0.0.1:0", certificates=self_signed())
        server.on("echo", lambda m, u, s: m)
        client = Client(auth="s", address=server.address)
        client.wait_connected(10)
        assert client.request({"op": "echo", "x": 1}) == {"op": "echo", "x": 1}
        async def main():
            c2 = Client(auth="s", address=server.address)
            await c2.await_connected(10)
            return await c2.arequest({"op": "echo"})
        print(asyncio.run(main()))
        print("done")
        """
    )
    done = run_python(code, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["{'op': 'echo'}", "done"]


def test_ctrl_c_while_blocked_in_request() -> None:
    code = textwrap.dedent(
        """
        import asyncio, sys
        from iris_rpc import Client, Server, self_signed
        server = Server(auth="s", port="127.0.0.1:0", certificates=self_signed())
        @server.on("hang")
        async def hang(msg, uuid, stream):
            print("handling", flush=True)  # so the main thread is inside request()
            await asyncio.sleep(60)
        client = Client(auth="s", address=server.address)
        client.wait_connected(10)
        try:
            client.request({"op": "hang"})
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(3)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "handling"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 3, err
    assert out.strip() == "interrupted"


def test_forked_child_exits() -> None:
    # A child made by fork() inherits the objects but not the runtime threads behind them; it
    # must still exit, and can make objects of its own.
    code = textwrap.dedent(
        """
        import os
        from iris_rpc import Client, Server, self_signed
        server = Server(auth="s", port="127.0.0.1:0", certificates=self_signed())
        server.on("echo", lambda m, u, s: m["x"])
        pid = os.fork()
        if pid == 0:
            client = Client(auth="s", address=server.address)
            client.wait_connected(10)
            print("child", client.request({"op": "echo", "x": 1}), flush=True)
        else:
            _, status = os.waitpid(pid, 0)
            print("parent", os.waitstatus_to_exitcode(status), flush=True)
        """
    )
    done = run_python(code, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = sorted(done.stdout.splitlines())
    assert lines == ["child 1", "parent 0"], done.stdout + done.stderr
