//! Helpers for the cross-language suites: a real legacy iris-rpc peer (npm `iris-rpc` 0.2.20
//! on Node) driven over stdio by `interop/legacy-peer.js`.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

/// How long any single expectation waits.
pub const WAIT: Duration = Duration::from_secs(15);

/// The next event that satisfies `f`, skipping others; panics after [`WAIT`].
pub async fn next_matching(
    events: &mut iris_rpc::Events,
    f: impl Fn(&iris_rpc::Event) -> bool,
) -> iris_rpc::Event {
    tokio::time::timeout(WAIT, async {
        loop {
            let ev = events.next().await.expect("events closed");
            if f(&ev) {
                return ev;
            }
        }
    })
    .await
    .expect("event did not arrive in time")
}

/// Path of the legacy peer driver.
pub fn legacy_peer_script() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/interop/legacy-peer.js").to_owned()
}

/// A free loopback port (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A self-signed key and certificate as PEM text.
pub fn pem_pair() -> (String, String) {
    iris_rpc::tls::self_signed_pem(&["localhost", "127.0.0.1"]).expect("certificate")
}

/// A running legacy peer.
pub struct LegacyPeer {
    child: Child,
    stdin: Option<ChildStdin>,
    events: mpsc::UnboundedReceiver<Value>,
    /// Every event seen so far, in order.
    pub seen: Vec<Value>,
    /// Events received but not yet matched by an expectation.
    backlog: Vec<Value>,
}

impl LegacyPeer {
    /// Starts `node legacy-peer.js CONFIG` and waits for its `ready` event.
    pub async fn spawn(config: Value) -> LegacyPeer {
        let mut child = Command::new("node")
            .arg(legacy_peer_script())
            .arg(config.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("node must be installed to run the legacy peer");
        let stdout = child.stdout.take().expect("stdout");
        let stdin = child.stdin.take();
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        let mut peer = LegacyPeer {
            child,
            stdin,
            events,
            seen: Vec::new(),
            backlog: Vec::new(),
        };
        peer.expect("ready", |_| true).await;
        peer
    }

    /// A legacy server on `port`.
    pub async fn server(port: u16, secret: &str, cipher: bool, extra: Value) -> LegacyPeer {
        let (key, cert) = pem_pair();
        let mut cfg = json!({
            "role": "server", "port": port, "auth": secret, "cipher": cipher,
            "uuid": "legacy-srv", "designation": "legacy-server", "mac": "aabbccddeeff",
            "key": key, "cert": cert,
        });
        merge(&mut cfg, extra);
        let p = LegacyPeer::spawn(cfg).await;
        // The listen callback runs before `ready` is printed.
        let listen = p.seen.iter().find(|v| v["ev"] == "listen").cloned();
        assert_eq!(
            listen.map(|l| l["err"].clone()),
            Some(Value::Null),
            "legacy server failed to listen"
        );
        p
    }

    /// A legacy client connecting to `address`.
    pub async fn client(address: &str, secret: &str, cipher: bool, extra: Value) -> LegacyPeer {
        let (key, cert) = pem_pair();
        let mut cfg = json!({
            "role": "client", "address": address, "auth": secret, "cipher": cipher,
            "uuid": "legacy-cli", "designation": "legacy-client",
            "key": key, "cert": cert,
        });
        merge(&mut cfg, extra);
        LegacyPeer::spawn(cfg).await
    }

    /// Sends one command.
    pub async fn send(&mut self, cmd: Value) {
        let stdin = self.stdin.as_mut().expect("legacy peer stdin open");
        let mut line = cmd.to_string();
        line.push('\n');
        stdin
            .write_all(line.as_bytes())
            .await
            .expect("write to legacy peer");
        stdin.flush().await.expect("flush legacy peer stdin");
    }

    /// Waits for the first event named `ev` that satisfies `pred`, including events that
    /// arrived earlier and were not matched yet.
    pub async fn expect(&mut self, ev: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let matches = |v: &Value| v["ev"] == ev && pred(v);
        if let Some(i) = self.backlog.iter().position(matches) {
            return self.backlog.remove(i);
        }
        let found = tokio::time::timeout(WAIT, async {
            while let Some(v) = self.events.recv().await {
                self.seen.push(v.clone());
                if matches(&v) {
                    return Some(v);
                }
                self.backlog.push(v);
            }
            None
        })
        .await;
        match found {
            Ok(Some(v)) => v,
            Ok(None) => panic!(
                "legacy peer exited while waiting for {ev}; saw {:?}",
                self.seen
            ),
            Err(_) => panic!(
                "no {ev} event from the legacy peer in time; saw {:?}",
                self.seen
            ),
        }
    }

    /// Sends a request and waits for its response event.
    pub async fn request(&mut self, id: u64, uuid: Option<&str>, msg: Value) -> Value {
        let mut cmd = json!({"cmd": "request", "id": id, "msg": msg});
        if let Some(u) = uuid {
            cmd["uuid"] = json!(u);
        }
        self.send(cmd).await;
        self.expect("response", |v| v["id"] == id).await
    }

    /// Collects events for `d` and returns those named `ev`.
    pub async fn collect_for(&mut self, ev: &str, d: Duration) -> Vec<Value> {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(d, async {
            while let Some(v) = self.events.recv().await {
                self.seen.push(v.clone());
                self.backlog.push(v);
            }
        })
        .await;
        self.backlog.retain(|v| {
            if v["ev"] == ev {
                out.push(v.clone());
                false
            } else {
                true
            }
        });
        out
    }

    /// Kills the process and waits for it.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

fn merge(base: &mut Value, extra: Value) {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        for (k, v) in e {
            b.insert(k, v);
        }
    }
}
