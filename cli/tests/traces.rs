//! `IRIS_RPC_TRACES=stderr` (feature `otel`): a client, a router and a server, each its own
//! `iris-rpc` process, write their spans as JSON lines, and a request from the client through
//! the router to the server is one trace across the three processes, each span the child of
//! the one before. An exporter the command does not know is a clear error.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_iris-rpc");
const SECRET: &str = "5e0c7a1f9b3d24e8a6c0f7d9b1e3a5c72f4d6b8e0a1c3e5f7d9b2a4c6e8f0a13";

/// A process whose stdout and stderr lines arrive on channels; killed on drop.
struct Proc {
    child: Child,
    out: Receiver<String>,
    err: Receiver<String>,
    /// The spans read from stderr so far.
    spans: std::cell::RefCell<Vec<Value>>,
}

fn lines(r: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Proc {
    fn start(args: &[&str]) -> Proc {
        let mut child = Command::new(BIN)
            .args(args)
            .env("IRIS_RPC_TRACES", "stderr")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = lines(child.stdout.take().unwrap());
        let err = lines(child.stderr.take().unwrap());
        Proc {
            child,
            out,
            err,
            spans: Default::default(),
        }
    }

    /// The first JSON line on `rx` that `f` accepts, within 15 s.
    fn first(rx: &Receiver<String>, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if f(&v) {
                        return v;
                    }
                }
            }
        }
        panic!("no {what} in time")
    }

    /// `key` of the `listen` line.
    fn listening(&self, key: &str) -> String {
        let v = Proc::first(&self.out, "listen", |v| v["event"] == "listen");
        v[key].as_str().unwrap().to_owned()
    }

    /// The span named `name` this process wrote to stderr (in any order), within 15 s.
    fn span(&self, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let matches = |s: &Value| s["name"] == name && pred(s);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = self.spans.borrow().iter().find(|s| matches(s)) {
                return s.clone();
            }
            assert!(Instant::now() < deadline, "no {name} in time");
            if let Ok(line) = self.err.recv_timeout(Duration::from_millis(100)) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if v.get("span").is_some() {
                        self.spans.borrow_mut().push(v["span"].clone());
                    }
                }
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_request_through_a_router_is_one_trace_across_processes() {
    let server = Proc::start(&[
        "server",
        "--port",
        "127.0.0.1:0",
        "--auth",
        SECRET,
        "--uuid",
        "srv",
        "--echo",
    ]);
    let server_addr = server.listening("address");
    let router = Proc::start(&[
        "router",
        "--port",
        "127.0.0.1:0",
        "--to",
        &server_addr,
        "--auth",
        SECRET,
        "--uuid",
        "rtr",
    ]);
    let router_addr = router.listening("frontend");
    Proc::first(&router.out, "the router's backend", |v| {
        v["event"] == "connect" && v["side"] == "backend"
    });
    let mut client = Proc::start(&[
        "client",
        "--address",
        &router_addr,
        "--auth",
        SECRET,
        "--uuid",
        "cli",
        "--request",
    ]);
    let stdin = client.child.stdin.as_mut().unwrap();
    stdin.write_all(b"{\"op\":\"traced\",\"n\":1}\n").unwrap();
    let answer = Proc::first(&client.out, "the answer", |v| v.get("response").is_some());
    assert_eq!(answer["response"]["echo"]["n"], json!(1), "{answer}");

    let sent = client.span("iris_rpc.request", |_| true);
    let trace = sent["trace_id"].as_str().unwrap().to_owned();
    assert_eq!(trace.len(), 32);
    assert_eq!(
        sent["parent_span_id"],
        Value::Null,
        "the client's span is the root"
    );
    assert_eq!(sent["kind"], "client");
    assert_eq!(sent["attributes"]["rpc.method"], "traced");
    let same = |s: &Value| s["trace_id"] == trace.as_str();
    let at_router = router.span("iris_rpc.handle", same);
    let relay = router.span("iris_rpc.relay", same);
    let onward = router.span("iris_rpc.request", same);
    let at_server = server.span("iris_rpc.handle", same);
    assert_eq!(at_router["parent_span_id"], sent["span_id"]);
    assert_eq!(at_router["parent_is_remote"], true);
    assert_eq!(at_router["kind"], "server");
    assert_eq!(relay["parent_span_id"], at_router["span_id"]);
    assert_eq!(onward["parent_span_id"], relay["span_id"]);
    assert_eq!(at_server["parent_span_id"], onward["span_id"]);
    assert_eq!(at_server["parent_is_remote"], true);
    assert_eq!(at_server["attributes"]["rpc.method"], "traced");
}

#[test]
fn an_unknown_exporter_is_a_clear_error() {
    let out = Command::new(BIN)
        .args(["secret"])
        .env("IRIS_RPC_TRACES", "jaeger")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("IRIS_RPC_TRACES=\"jaeger\"") && err.contains("stderr"),
        "{err}"
    );
}
