//! The cluster across a network, not loopback: two network namespaces joined by a veth pair
//! (10.77.x.1 and 10.77.x.2), NATS and router A in one, router B in the other. A legacy
//! worker on B's backend answers a request from our client on A's frontend, so the request
//! crosses the link twice (A to NATS in its namespace, NATS to B across the veth). Needs root
//! and `ip netns`; skipped with a message otherwise.

use std::process::{Command as StdCommand, Stdio};
use std::time::Duration;

use iris_rpc_tests::{legacy_peer_script, pem_pair, WAIT};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_iris-rpc");

fn ip(args: &[&str]) -> bool {
    StdCommand::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Two namespaces and the veth between them, removed on drop.
struct Net {
    a: String,
    b: String,
    subnet: u8,
}

impl Net {
    fn new() -> Option<Net> {
        let id = std::process::id();
        let subnet = u8::try_from(id % 200).unwrap_or(0) + 20;
        let net = Net {
            a: format!("iris-a-{id}"),
            b: format!("iris-b-{id}"),
            subnet,
        };
        let (va, vb) = (format!("ia{id}"), format!("ib{id}"));
        let (ipa, ipb) = (net.addr(1) + "/24", net.addr(2) + "/24");
        let ok = ip(&["netns", "add", &net.a])
            && ip(&["netns", "add", &net.b])
            && ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb])
            && ip(&["link", "set", &va, "netns", &net.a])
            && ip(&["link", "set", &vb, "netns", &net.b])
            && ip(&["-n", &net.a, "addr", "add", &ipa, "dev", &va])
            && ip(&["-n", &net.b, "addr", "add", &ipb, "dev", &vb])
            && ip(&["-n", &net.a, "link", "set", &va, "up"])
            && ip(&["-n", &net.b, "link", "set", &vb, "up"])
            && ip(&["-n", &net.a, "link", "set", "lo", "up"])
            && ip(&["-n", &net.b, "link", "set", "lo", "up"]);
        ok.then_some(net)
    }

    fn addr(&self, host: u8) -> String {
        format!("10.77.{}.{host}", self.subnet)
    }

    fn spawn(&self, ns: &str, program: &str, args: &[&str]) -> Proc {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("ip netns exec");
        Proc::new(child)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace removes its end of the veth, and with it the pair.
        ip(&["netns", "del", &self.a]);
        ip(&["netns", "del", &self.b]);
    }
}

/// A child in a namespace, its stdout read as JSON lines by one reader (a reader dropped with
/// lines in its buffer would lose them).
struct Proc {
    child: Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Proc {
    fn new(mut child: Child) -> Proc {
        let out = child.stdout.take().expect("stdout");
        Proc {
            child,
            lines: BufReader::new(out).lines(),
        }
    }

    /// The next line that satisfies `f` (bounded by WAIT).
    async fn line_where(&mut self, f: impl Fn(&Value) -> bool) -> Value {
        tokio::time::timeout(WAIT, self.next_where(f))
            .await
            .expect("the expected line in time")
            .expect("child output ended before the expected line")
    }

    /// The next line that satisfies `f`; None when the output ends first.
    async fn next_where(&mut self, f: impl Fn(&Value) -> bool) -> Option<Value> {
        while let Some(line) = self.lines.next_line().await.ok().flatten() {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if f(&v) {
                    return Some(v);
                }
            }
        }
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_crosses_a_network_between_two_routers() {
    let root = StdCommand::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    let nats_ok = StdCommand::new("nats-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !root || !nats_ok {
        eprintln!("SKIPPED: needs root (ip netns) and nats-server");
        return;
    }
    let Some(net) = Net::new() else {
        eprintln!("SKIPPED: ip netns and veth are not available here");
        return;
    };
    let nats_addr = net.addr(1);
    let _nats = net.spawn(&net.a, "nats-server", &["-a", &nats_addr, "-p", "4222"]);
    let cluster = format!("nats://{nats_addr}:4222");
    // NATS is up once a router can join: retry router A until it prints its listen line.
    let mut router_a = None;
    for _ in 0..50 {
        let mut r = net.spawn(
            &net.a,
            BIN,
            &[
                "router",
                "--auth",
                "secret",
                "--port",
                "127.0.0.1:4489",
                "--backend-port",
                "127.0.0.1:4490",
                "--cluster",
                &cluster,
            ],
        );
        let started = tokio::time::timeout(
            Duration::from_secs(2),
            r.next_where(|v| v["event"] == "listen"),
        )
        .await;
        if matches!(started, Ok(Some(_))) {
            router_a = Some(r);
            break;
        }
        let _ = r.child.kill().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _router_a = router_a.expect("router A joined NATS");
    let mut router_b = net.spawn(
        &net.b,
        BIN,
        &[
            "router",
            "--auth",
            "secret",
            "--port",
            "127.0.0.1:4489",
            "--backend-port",
            "127.0.0.1:4490",
            "--cluster",
            &cluster,
        ],
    );
    router_b.line_where(|v| v["event"] == "listen").await;

    // The legacy worker, on B's backend, in B's namespace.
    let (key, cert) = pem_pair();
    let cfg = json!({
        "role": "client", "address": "127.0.0.1:4490", "auth": "secret", "uuid": "worker",
        "designation": "worker", "key": key, "cert": cert,
    });
    let script = legacy_peer_script();
    let mut worker = net.spawn(&net.b, "node", &[&script, &cfg.to_string()]);
    worker.line_where(|v| v["ev"] == "connect").await;
    router_b
        .line_where(|v| v["event"] == "connect" && v["uuid"] == "worker")
        .await;

    // Our client on A's frontend asks the worker by uuid; the answer comes back across.
    let mut client = net.spawn(
        &net.a,
        BIN,
        &[
            "client",
            "--address",
            "127.0.0.1:4489",
            "--auth",
            "secret",
            "--request",
        ],
    );
    let mut stdin = client.child.stdin.take().expect("stdin");
    stdin
        .write_all(b"{\"op\":\"add\",\"a\":40,\"b\":2,\"_uuid\":\"worker\"}\n")
        .await
        .unwrap();
    drop(stdin);
    let answer = client
        .line_where(|v| v.get("response").is_some() || v.get("error").is_some())
        .await;
    assert_eq!(answer["response"], json!({"sum": 42}), "{answer}");
}
