#!/usr/bin/env python3
"""A real Prometheus scrapes `iris-rpc server --metrics` and `iris-rpc client --metrics` on
loopback while the client makes requests (answered, answered with an error, never answered),
one client uses a wrong secret and one connection sends an over-long line before
authenticating. Prometheus's HTTP API must then report exactly the counts this caused.

Usage: scrape.py PATH/TO/iris-rpc   (prometheus on PATH; exits 77 when it is not)
"""

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

SECRET = "metrics-test-secret-0123456789abcdef0123456789abcdef"
ANSWERED, REMOTE_ERRORS, TIMEOUTS = 5, 3, 2
DEADLINE = 90  # seconds: generous, never a timing assertion


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_event(proc, event):
    """The next stdout JSON line of `proc` whose event is `event`."""
    while True:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"process ended before a {event!r} line")
        v = json.loads(line)
        if v.get("event") == event:
            return v


def query(prom, expr):
    url = f"http://127.0.0.1:{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    res = body["data"]["result"]
    return float(res[0]["value"][1]) if res else None


def main():
    cli = os.path.abspath(sys.argv[1])
    prometheus = shutil.which("prometheus")
    if not prometheus:
        print("SKIP: prometheus is not installed (Debian: apt-get install prometheus)")
        return 77
    tmp = tempfile.mkdtemp(prefix="iris-prom-")
    procs = []
    try:
        server = subprocess.Popen(
            [cli, "server", "--port", "127.0.0.1:0", "--auth", SECRET, "--echo",
             "--metrics", "127.0.0.1:0"],
            stdout=subprocess.PIPE, text=True)
        procs.append(server)
        address = read_event(server, "listen")["address"]
        server_metrics = read_event(server, "metrics")["address"]
        host, port = address.rsplit(":", 1)

        # One wrong secret: refused, the command fails.
        bad = subprocess.run(
            [cli, "client", "--address", address, "--auth", SECRET + "-wrong", "--request"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        assert bad.returncode != 0, f"the wrong secret was accepted: {bad.stdout}"

        # One connection that sends a line longer than max_handshake_line before the handshake.
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with socket.create_connection((host, int(port)), timeout=30) as raw:
            with ctx.wrap_socket(raw) as tls:
                try:
                    tls.sendall(b"x" * (64 * 1024))
                    tls.recv(1)  # until the server closes it
                except OSError:
                    pass

        client = subprocess.Popen(
            [cli, "client", "--address", address, "--auth", SECRET, "--request",
             "--timeout", "1000", "--metrics", "127.0.0.1:0"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(client)
        client_metrics = read_event(client, "metrics")["address"]
        read_event(client, "connect")
        lines = ([{"op": "add", "n": i} for i in range(ANSWERED)]
                 + [{"op": "echo::error", "n": i} for i in range(REMOTE_ERRORS)]
                 + [{"op": "echo::ignore", "n": i} for i in range(TIMEOUTS)])
        for m in lines:
            client.stdin.write(json.dumps(m) + "\n")
        client.stdin.flush()

        prom_port = free_port()
        config = os.path.join(tmp, "prometheus.yml")
        with open(config, "w") as f:
            f.write(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                "scrape_configs:\n"
                f"  - job_name: server\n    static_configs:\n      - targets: ['{server_metrics}']\n"
                f"  - job_name: client\n    static_configs:\n      - targets: ['{client_metrics}']\n")
        prom = subprocess.Popen(
            [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp}/data",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "prometheus.log"), "w"))
        procs.append(prom)

        expected = {
            'iris_rpc_requests_total{job="client",outcome="answered"}': ANSWERED,
            'iris_rpc_requests_total{job="client",outcome="remote_error"}': REMOTE_ERRORS,
            'iris_rpc_requests_total{job="client",outcome="timeout"}': TIMEOUTS,
            'iris_rpc_requests_total{job="client",outcome="disconnected"}': 0,
            'iris_rpc_requests_total{job="client",outcome="closed"}': 0,
            'iris_rpc_request_duration_seconds_count{job="client"}': len(lines),
            'iris_rpc_handshakes_total{job="client",side="client",outcome="ok",mode="v2"}': 1,
            'iris_rpc_pending_requests{job="client"}': 0,
            'iris_rpc_streams{job="client"}': 1,
            'iris_rpc_connections_accepted_total{job="server"}': 3,
            'iris_rpc_handshakes_total{job="server",side="server",outcome="ok",mode="v2"}': 1,
            'iris_rpc_handshakes_total{job="server",side="server",outcome="failed",reason="auth"}': 1,
            'iris_rpc_handshakes_total{job="server",side="server",outcome="failed",'
            'reason="limit_exceeded"}': 1,
            'iris_rpc_limit_hits_total{job="server",limit="max_handshake_line"}': 1,
            'iris_rpc_connections{job="server"}': 1,
            'iris_rpc_streams{job="server"}': 1,
            'iris_rpc_unauthenticated_connections{job="server"}': 0,
            'iris_rpc_route_table_entries{job="server"}': 0,
            'iris_rpc_router_relays_total{job="server",kind="request"}': 0,
        }
        # At least: pings may add to these, so they are bounded below by what the test sent.
        at_least = {
            'iris_rpc_messages_sent_total{job="client"}': len(lines),
            'iris_rpc_messages_received_total{job="server"}': len(lines),
            'iris_rpc_messages_sent_total{job="server"}': ANSWERED + REMOTE_ERRORS,
            'iris_rpc_messages_received_total{job="client"}': ANSWERED + REMOTE_ERRORS,
            'iris_rpc_received_bytes_total{job="server"}': 100,
            'iris_rpc_sent_bytes_total{job="client"}': 100,
        }
        start = time.monotonic()
        got = {}
        while True:
            try:
                got = {e: query(prom_port, e) for e in list(expected) + list(at_least)}
            except OSError:
                got = {}
            ok = got and all(got[e] == v for e, v in expected.items()) and all(
                got[e] is not None and got[e] >= v for e, v in at_least.items())
            if ok:
                break
            if prom.poll() is not None or time.monotonic() - start > DEADLINE:
                print(open(os.path.join(tmp, "prometheus.log")).read()[-3000:])
                for e in list(expected) + list(at_least):
                    want = expected.get(e, at_least.get(e))
                    print(f"  {e}: got {got.get(e)}, want {'>= ' if e in at_least else ''}{want}")
                raise SystemExit("Prometheus did not report the expected values")
            time.sleep(0.5)
        passed = len(expected) + len(at_least)
        for e in expected:
            print(f"ok {e} = {got[e]:g}")
        for e in at_least:
            print(f"ok {e} = {got[e]:g} (>= {at_least[e]})")
        client.stdin.close()
        client.wait(timeout=60)
        print(f"prometheus: {passed} passed, 0 failed")
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
