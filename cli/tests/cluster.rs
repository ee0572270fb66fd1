//! A cluster of routers on NATS, each part in its own process: a 3-node NATS cluster
//! (`nats-server`, routes on loopback ports), three `iris-rpc router --cluster` processes,
//! legacy peers (npm iris-rpc 0.2.20) and ours on different routers. Addressed events,
//! broadcasts and requests cross routers; a router killed mid-traffic loses its peers, ours
//! fail over to another and every request settles once; a NATS node killed is survived; NATS
//! unreachable at start is a clear error. Rust peers in processes of their own (`iris-rpc
//! client`) meet a legacy peer on another router.
//!
//! `nats-server` comes from Debian (`tests/cluster/nats-server.sh`, which `.ci/run` calls).

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iris_rpc::{Client, Message, Options, Peer};
use iris_rpc_tests::{free_port, LegacyPeer, WAIT};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_iris-rpc");

fn nats_installed() -> bool {
    std::process::Command::new("nats-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether nats-server is missing, which the test then says before it skips.
fn no_nats() -> bool {
    let missing = !nats_installed();
    if missing {
        eprintln!("SKIPPED: nats-server is not installed (tests/cluster/nats-server.sh)");
    }
    missing
}

async fn port_open(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}

async fn until_async<F, Fut>(what: &str, f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    until_or_show(what, f, String::new).await;
}

/// [`until_async`], and on timeout the panic also says `seen()`: what the test saw instead.
async fn until_or_show<F, Fut>(what: &str, f: F, seen: impl Fn() -> String)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let done = tokio::time::timeout(WAIT, async {
        while !f().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    if done.is_err() {
        panic!("timed out waiting for {what}{}", seen());
    }
}

async fn until(what: &str, f: impl Fn() -> bool) {
    until_async(what, || std::future::ready(f())).await;
}

/// The JSON lines a child prints, collected as they come.
fn json_lines(stdout: tokio::process::ChildStdout) -> Arc<Mutex<Vec<Value>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l = lines.clone();
    tokio::spawn(async move {
        let mut r = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = r.next_line().await {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                l.lock().unwrap().push(v);
            }
        }
    });
    lines
}

/// One NATS node of a cluster on loopback.
struct NatsNode {
    child: Child,
    port: u16,
}

/// How many other nodes a NATS node has routes to, by its monitoring endpoint (`/routez`), if
/// it answers. Distinct remote ids, not routes: nats-server 2.10 pools several per remote.
async fn nats_routes(monitor: u16) -> Option<usize> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", monitor))
        .await
        .ok()?;
    s.write_all(b"GET /routez HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).await.ok()?;
    let body = &text[text.find("\r\n\r\n")? + 4..];
    let v = serde_json::from_str::<Value>(body).ok()?;
    let remotes: std::collections::HashSet<&str> = v["routes"]
        .as_array()?
        .iter()
        .filter_map(|r| r["remote_id"].as_str())
        .collect();
    Some(remotes.len())
}

/// Three NATS nodes with routes to each other.
async fn nats_cluster() -> Vec<NatsNode> {
    let ports: Vec<(u16, u16, u16)> = (0..3)
        .map(|_| (free_port(), free_port(), free_port()))
        .collect();
    let routes = ports
        .iter()
        .map(|(_, r, _)| format!("nats://127.0.0.1:{r}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = Vec::new();
    for (port, route, monitor) in &ports {
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(["-m", &monitor.to_string()])
            .args(["--cluster", &format!("nats://127.0.0.1:{route}")])
            .args(["--cluster_name", "iris-test", "--routes", &routes])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server");
        nodes.push(NatsNode { child, port: *port });
    }
    for n in &nodes {
        let p = n.port;
        until_async("a NATS node to listen", || port_open(p)).await;
    }
    // Listening is not yet a cluster: until a node has its routes, what is published on it
    // does not reach subscribers on the others (a cold machine took over a second), and the
    // routers' presence and roster messages would be lost to the test, not to the routers.
    for (_, _, monitor) in &ports {
        let m = *monitor;
        until_async("a NATS node's routes to the other two", || async move {
            nats_routes(m).await.is_some_and(|n| n >= 2)
        })
        .await;
    }
    nodes
}

fn urls(nodes: &[NatsNode]) -> String {
    nodes
        .iter()
        .map(|n| format!("nats://127.0.0.1:{}", n.port))
        .collect::<Vec<_>>()
        .join(",")
}

/// A router process: frontend and backend ports (clients meet in the middle), in a cluster.
struct RouterProc {
    child: Child,
    front: u16,
    back: u16,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl RouterProc {
    async fn start(cluster: &str) -> RouterProc {
        let back = free_port();
        Self::start_with(
            cluster,
            &["--backend-port", &format!("127.0.0.1:{back}")],
            back,
        )
        .await
    }

    /// A router whose backend is `backend` (`--backend-port P` or `--to HOST:PORT`).
    async fn start_with(cluster: &str, backend: &[&str], back: u16) -> RouterProc {
        let front = free_port();
        let mut child = Command::new(BIN)
            .args(["router", "--auth", "secret"])
            .args(["--port", &format!("127.0.0.1:{front}")])
            .args(backend)
            .args(["--cluster", cluster])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("iris-rpc router");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let errors = Arc::new(Mutex::new(String::new()));
        let e = errors.clone();
        tokio::spawn(async move {
            let mut r = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = r.next_line().await {
                let mut e = e.lock().unwrap();
                e.push_str(&line);
                e.push('\n');
            }
        });
        let lines = json_lines(stdout);
        let r = RouterProc {
            child,
            front,
            back,
            lines,
        };
        let l = r.lines.clone();
        let listening = tokio::time::timeout(WAIT, async {
            while !l.lock().unwrap().iter().any(|v| v["event"] == "listen") {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(
            listening.is_ok(),
            "router did not start: {}",
            errors.lock().unwrap()
        );
        r
    }

    fn front(&self) -> String {
        format!("127.0.0.1:{}", self.front)
    }

    fn back(&self) -> String {
        format!("127.0.0.1:{}", self.back)
    }

    /// Whether the router reported that another router took `uuid` over.
    fn yielded(&self, uuid: &str) -> bool {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .any(|v| v["event"] == "yielded" && v["uuid"] == uuid)
    }

    /// Whether the router reported `uuid` connected (and not since disconnected).
    fn holds(&self, uuid: &str) -> bool {
        let lines = self.lines.lock().unwrap();
        let mut up = false;
        for v in lines.iter().filter(|v| v["uuid"] == uuid) {
            match v["event"].as_str() {
                Some("connect") => up = true,
                Some("disconnect") => up = false,
                _ => {}
            }
        }
        up
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routers_in_front_of_one_legacy_server_relay_each_message_once() {
    if no_nats() {
        return;
    }
    let nats = nats_cluster().await;
    let cluster = urls(&nats);
    let sport = free_port();
    let mut server = LegacyPeer::server(sport, "secret", true, json!({"uuid": "legacy-srv"})).await;
    let to = format!("127.0.0.1:{sport}");
    let a = RouterProc::start_with(&cluster, &["--to", &to, "--uuid", "router-a"], 0).await;
    server.expect("connect", |v| v["uuid"] == "router-a").await;
    let b = RouterProc::start_with(&cluster, &["--to", &to, "--uuid", "router-b"], 0).await;
    server.expect("connect", |v| v["uuid"] == "router-b").await;
    // The server's uuid is held by both routers' backends: the newest, B, wins.
    until("A yields the server to B", || a.yielded("legacy-srv")).await;
    assert!(!b.yielded("legacy-srv"));

    let mut lc = LegacyPeer::client(&a.front(), "secret", true, json!({"uuid": "lc"})).await;
    let (rc, rc_in) = rust_peer("rc", opts().address(b.front()));
    lc.expect("connect", |_| true).await;
    rc.wait_connected(WAIT).await.unwrap();
    until("both clients held", || a.holds("lc") && b.holds("rc")).await;

    // The server broadcasts: it writes to both routers, and each client gets it once.
    server
        .send(json!({"cmd": "dispatch", "msg": {"op": "news"}}))
        .await;
    lc.expect("message", |v| v["msg"]["op"] == "news").await;
    until("rc gets the news", || count(&rc_in, "news") >= 1).await;
    // A client on A broadcasts: the server gets it once, not once per router.
    lc.send(json!({"cmd": "dispatch", "msg": {"op": "from-lc"}}))
        .await;
    let m = server
        .expect("message", |v| v["msg"]["op"] == "from-lc")
        .await;
    assert_eq!(m["msg"]["_r"]["uuid"], "lc");
    // Requests from either router's clients reach the server.
    let r = lc
        .request(1, None, json!({"op": "add", "a": 1, "b": 2}))
        .await;
    assert_eq!(r["resp"], json!({"sum": 3}));
    let r = rc
        .request(json!({"op": "add", "a": 3, "b": 4}))
        .await
        .unwrap();
    assert_eq!(r, json!({"sum": 7}));
    // And the server reaches a client on the router that lost its claim, by `_uuid`.
    server
        .send(json!({"cmd": "dispatch", "msg": {"op": "for-rc", "_uuid": "rc"}}))
        .await;
    until("rc gets its message", || count(&rc_in, "for-rc") == 1).await;

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count(&rc_in, "news"), 1, "once, not once per router");
    assert!(lc
        .collect_for("message", Duration::from_millis(100))
        .await
        .iter()
        .all(|v| v["msg"]["op"] != "news"));
    assert!(server
        .collect_for("message", Duration::from_millis(100))
        .await
        .iter()
        .all(|v| v["msg"]["op"] != "from-lc"));
    assert!(
        server.seen.iter().all(|v| v["ev"] != "disconnect"),
        "{:?}",
        server.seen
    );
    drop((a, b, nats));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uuid_on_two_routers_is_served_by_the_newest() {
    if no_nats() {
        return;
    }
    let nats = nats_cluster().await;
    let cluster = urls(&nats);
    let a = RouterProc::start(&cluster).await;
    let b = RouterProc::start(&cluster).await;
    let c = RouterProc::start(&cluster).await;
    let mut lf = LegacyPeer::client(&c.front(), "secret", true, json!({"uuid": "lf"})).await;
    lf.expect("connect", |_| true).await;
    // Two processes of ours claim "dup" on the backend: first on A, then on B.
    let older = Client::connect(opts().address(a.back()).uuid("dup")).unwrap();
    older.handle("who", |_| async { Ok(json!("older")) });
    older.wait_connected(WAIT).await.unwrap();
    until("A holds dup", || a.holds("dup")).await;
    let newer = Client::connect(opts().address(b.back()).uuid("dup")).unwrap();
    newer.handle("who", |_| async { Ok(json!("newer")) });
    newer.wait_connected(WAIT).await.unwrap();
    until("A yields dup", || a.yielded("dup")).await;
    for id in 0..5 {
        let r = lf
            .request(id, None, json!({"op": "who", "_uuid": "dup"}))
            .await;
        assert_eq!(r["resp"], "newer", "{r}");
    }
    // A frontend peer claiming a uuid that a backend peer holds on another router is refused,
    // as one router refuses it: no peer takes over another's address.
    let mut spoof = LegacyPeer::client(&c.front(), "secret", true, json!({"uuid": "dup"})).await;
    until("C refuses the spoofing client", || {
        c.lines
            .lock()
            .unwrap()
            .iter()
            .any(|v| v["event"] == "refused" && v["uuid"] == "dup")
    })
    .await;
    spoof.send(json!({"cmd": "exit"})).await;
    // The newest leaves: the older holder takes the uuid back.
    newer.close().await;
    let mut answered = false;
    for id in 10..200 {
        let r = lf
            .request(id, None, json!({"op": "who", "_uuid": "dup"}))
            .await;
        if r["resp"] == "older" {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(answered, "the older holder took dup back");
    drop((a, b, c, nats));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_nats_each_router_still_delivers_between_its_own_peers() {
    if no_nats() {
        return;
    }
    let mut nats = nats_cluster().await;
    let cluster = urls(&nats);
    let a = RouterProc::start(&cluster).await;
    let b = RouterProc::start(&cluster).await;
    let mut lf = LegacyPeer::client(&a.front(), "secret", true, json!({"uuid": "lf"})).await;
    lf.expect("connect", |_| true).await;
    let (_near, near_in) = rust_peer("near", opts().address(a.back()));
    let (_far, _) = rust_peer("far", opts().address(b.back()));
    until("peers held", || {
        a.holds("lf") && a.holds("near") && b.holds("far")
    })
    .await;
    let r = lf
        .request(
            1,
            None,
            json!({"op": "add", "a": 1, "b": 1, "_uuid": "far"}),
        )
        .await;
    assert_eq!(r["resp"]["by"], "far");

    for n in &mut nats {
        n.child.kill().await.unwrap();
    }
    // A's own peers still meet, events and requests alike.
    let r = lf
        .request(
            2,
            None,
            json!({"op": "add", "a": 2, "b": 2, "_uuid": "near"}),
        )
        .await;
    assert_eq!(r["resp"], json!({"sum": 4, "by": "near"}));
    lf.send(json!({"cmd": "dispatch", "msg": {"op": "local-note"}}))
        .await;
    until("near gets the broadcast", || {
        count(&near_in, "local-note") == 1
    })
    .await;
    // A peer on the other router cannot be reached: a clear error, not a wait for a timeout.
    let mut failed = false;
    for id in 3..100 {
        let r = lf
            .request(
                id,
                None,
                json!({"op": "add", "a": 1, "b": 1, "_uuid": "far"}),
            )
            .await;
        if let Some(e) = r["err"]["error"].as_str() {
            assert!(e.contains("NATS not connected"), "{r}");
            failed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(failed, "requests across routers fail while NATS is away");
    assert!(lf.seen.iter().all(|v| v["ev"] != "disconnect"));
    drop((a, b));
}

/// Events a Rust peer received: `(op, sender uuid, whole message)`.
type Inbox = Arc<Mutex<Vec<(String, String, Value)>>>;

/// One of our peers: a client of one router side (or of several, failing over).
fn rust_peer(uuid: &str, opts: Options) -> (Client, Inbox) {
    let c = Client::connect(opts.uuid(uuid).designation(uuid)).expect("client");
    let inbox: Inbox = Arc::default();
    let i = inbox.clone();
    c.digest(move |m: &Message, from: &str, _: &Peer| {
        let v = m.value();
        let op = v["op"].as_str().unwrap_or("").to_owned();
        i.lock().unwrap().push((op, from.to_owned(), v));
    });
    let me = uuid.to_owned();
    c.handle("add", move |r| {
        let me = me.clone();
        async move {
            let v = r.msg.value();
            Ok(json!({"sum": v["a"].as_i64().unwrap_or(0) + v["b"].as_i64().unwrap_or(0), "by": me}))
        }
    });
    (c, inbox)
}

fn opts() -> Options {
    let mut o = Options::new("secret");
    o.reconnect_initial = Duration::from_millis(200);
    o.reconnect_max = Duration::from_millis(200);
    o
}

fn count(inbox: &Inbox, op: &str) -> usize {
    inbox
        .lock()
        .unwrap()
        .iter()
        .filter(|(o, ..)| o == op)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_on_different_routers_meet_as_through_one() {
    if no_nats() {
        return;
    }
    let mut nats = nats_cluster().await;
    let cluster = urls(&nats);
    let a = RouterProc::start(&cluster).await;
    let mut b = RouterProc::start(&cluster).await;
    let c = RouterProc::start(&cluster).await;

    // Frontend: legacy lf1 on A, ours f1 on B (failing over to C). Backend: ours k1 on B
    // (failing over to C), legacy lb1 on A, ours k2 on C.
    let mut lf1 = LegacyPeer::client(
        &a.front(),
        "secret",
        true,
        json!({"uuid": "lf1", "timeout": 3000}),
    )
    .await;
    let (f1, f1_in) = rust_peer("f1", opts().failover(b.front()).failover(c.front()));
    let (k1, k1_in) = rust_peer("k1", opts().failover(b.back()).failover(c.back()));
    let mut lb1 = LegacyPeer::client(&a.back(), "secret", true, json!({"uuid": "lb1"})).await;
    let (k2, k2_in) = rust_peer("k2", opts().address(c.back()));
    lf1.expect("connect", |_| true).await;
    lb1.expect("connect", |_| true).await;
    for cl in [&f1, &k1, &k2] {
        cl.wait_connected(WAIT).await.expect("connected");
    }
    until("every peer held", || {
        a.holds("lf1") && b.holds("f1") && b.holds("k1") && a.holds("lb1") && c.holds("k2")
    })
    .await;
    // Presence crosses routers: our frontend peer f1 (on B) learns of k2 (on C) and lb1 (on A).
    until_or_show(
        "f1 told of k2 and lb1",
        || {
            let r = f1.routes();
            std::future::ready(
                r.iter().any(|(u, _)| u == "k2") && r.iter().any(|(u, _)| u == "lb1"),
            )
        },
        // What each router saw, so that a failure says which announcement went missing.
        || {
            format!(
                ": f1's routes {:?}; A saw {:?}; B saw {:?}; C saw {:?}",
                f1.routes(),
                a.lines.lock().unwrap(),
                b.lines.lock().unwrap(),
                c.lines.lock().unwrap()
            )
        },
    )
    .await;

    // Addressed events across routers, the sender tagged (`_r`) as through one router.
    lf1.send(json!({"cmd": "dispatch", "msg": {"op": "note", "_uuid": "k2"}}))
        .await;
    f1.dispatch_to("lb1", json!({"op": "hi-lb1"})).unwrap();
    until("k2 gets lf1's note", || count(&k2_in, "note") == 1).await;
    let (_, from, v) = k2_in.lock().unwrap()[0].clone();
    assert_eq!(from, "lf1");
    assert_eq!(v["_r"]["uuid"], "lf1");
    let m = lb1.expect("message", |v| v["msg"]["op"] == "hi-lb1").await;
    assert_eq!(m["msg"]["_r"]["uuid"], "f1");

    // A broadcast from the frontend reaches every backend peer on every router, once.
    lf1.send(json!({"cmd": "dispatch", "msg": {"op": "everyone"}}))
        .await;
    lb1.expect("message", |v| v["msg"]["op"] == "everyone")
        .await;
    until("k1 and k2 get the broadcast", || {
        count(&k1_in, "everyone") == 1 && count(&k2_in, "everyone") == 1
    })
    .await;
    // And from the backend to every frontend peer.
    k2.dispatch(json!({"op": "to-front"})).unwrap();
    lf1.expect("message", |v| v["msg"]["op"] == "to-front")
        .await;
    until("f1 gets k2's broadcast", || count(&f1_in, "to-front") == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(&k1_in, "everyone"), 1, "delivered once");
    assert_eq!(count(&f1_in, "to-front"), 1, "delivered once");
    assert!(lb1
        .collect_for("message", Duration::from_millis(100))
        .await
        .iter()
        .all(|v| v["msg"]["op"] != "everyone"));

    // Requests across routers: legacy to ours, ours to legacy, a remote error, nobody.
    let r = lf1
        .request(
            1,
            None,
            json!({"op": "add", "a": 2, "b": 40, "_uuid": "k2"}),
        )
        .await;
    assert_eq!(r["resp"], json!({"sum": 42, "by": "k2"}));
    let r = f1
        .request_to("lb1", json!({"op": "add", "a": 1, "b": 2}))
        .await
        .expect("lb1 answers f1");
    assert_eq!(r, json!({"sum": 3}));
    let r = lf1
        .request(2, None, json!({"op": "fail", "_uuid": "lb1"}))
        .await;
    assert_eq!(r["err"]["name"], "TypeError", "{r}");
    let started = std::time::Instant::now();
    let r = lf1
        .request(
            3,
            None,
            json!({"op": "add", "a": 1, "b": 1, "_uuid": "nobody"}),
        )
        .await;
    assert!(
        r["err"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("no peer \"nobody\"")),
        "{r}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no-responders settles at once, not at the 3 s timeout"
    );

    // A peer of ours leaves A's frontend: our backend peers are told (rpc::offline), the
    // legacy one never is (its handler would throw and end its stream).
    let (f2, _) = rust_peer("f2", opts().address(a.front()));
    f2.wait_connected(WAIT).await.unwrap();
    until("k2 told of f2", || {
        k2.routes().iter().any(|(u, _)| u == "f2")
    })
    .await;
    f2.close().await;
    until("k2 told f2 left", || {
        !k2.routes().iter().any(|(u, _)| u == "f2")
    })
    .await;

    // Kill router B mid-traffic: lf1 (on A) asks k1 (on B, fails over to C) every 20 ms.
    let mut sent = 0u64;
    for _ in 0..10 {
        sent += 1;
        lf1.send(json!({"cmd": "request", "id": 100 + sent, "msg": {"op": "add", "a": 1, "b": 1, "_uuid": "k1"}}))
            .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.child.kill().await.unwrap();
    let killed_at = std::time::Instant::now();
    // k1 and f1 come back on C.
    until("k1 and f1 back on C", || c.holds("k1") && c.holds("f1")).await;
    eprintln!(
        "peers back on another router {:?} after the kill",
        killed_at.elapsed()
    );
    for _ in 0..40 {
        sent += 1;
        lf1.send(json!({"cmd": "request", "id": 100 + sent, "msg": {"op": "add", "a": 1, "b": 1, "_uuid": "k1"}}))
            .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every request settles exactly once; the last ones, after the failover, are answers.
    let mut settled: HashMap<u64, Vec<Value>> = HashMap::new();
    tokio::time::timeout(WAIT, async {
        while settled.len() < sent as usize {
            let r = lf1
                .expect("response", |v| v["id"].as_u64().is_some_and(|i| i > 100))
                .await;
            settled
                .entry(r["id"].as_u64().unwrap())
                .or_default()
                .push(r);
        }
    })
    .await
    .expect("every request settled");
    for r in lf1
        .collect_for("response", Duration::from_millis(3500))
        .await
    {
        settled
            .entry(r["id"].as_u64().unwrap())
            .or_default()
            .push(r);
    }
    assert!(
        settled.values().all(|v| v.len() == 1),
        "settled twice: {settled:?}"
    );
    for id in (100 + sent - 5)..=(100 + sent) {
        assert_eq!(settled[&id][0]["resp"]["by"], "k1", "{:?}", settled[&id]);
    }
    // The legacy peers never dropped (no control message they cannot take reached them).
    assert!(
        lf1.seen.iter().all(|v| v["ev"] != "disconnect"),
        "{:?}",
        lf1.seen
    );
    assert!(
        lb1.seen.iter().all(|v| v["ev"] != "disconnect"),
        "{:?}",
        lb1.seen
    );

    // Kill a NATS node: the routers reconnect to the others and traffic crosses again.
    nats[0].child.kill().await.unwrap();
    until_async("an event crosses routers after a NATS node died", || {
        let (f1, k2_in) = (&f1, &k2_in);
        async move {
            let _ = f1.dispatch_to("k2", json!({"op": "after-nats-kill"}));
            tokio::time::sleep(Duration::from_millis(200)).await;
            count(k2_in, "after-nats-kill") > 0
        }
    })
    .await;
    let r = lf1
        .request(
            500,
            None,
            json!({"op": "add", "a": 5, "b": 5, "_uuid": "k2"}),
        )
        .await;
    assert_eq!(r["resp"]["sum"], 10);
    drop((a, c));
}

/// A Rust peer in a process of its own: `iris-rpc client` (`--request` to send requests),
/// which sends each stdin line and prints what arrives as JSON lines.
struct CliPeer {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl CliPeer {
    async fn start(address: &str, uuid: &str, requests: bool) -> CliPeer {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "client",
            "--auth",
            "secret",
            "--address",
            address,
            "--uuid",
            uuid,
        ]);
        if requests {
            cmd.args(["--request", "--timeout", "3000"]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("iris-rpc client");
        let stdout = child.stdout.take().expect("stdout");
        let lines = json_lines(stdout);
        let p = CliPeer { child, lines };
        until("iris-rpc client connected", || {
            p.find(|v| v["event"] == "connect").is_some()
        })
        .await;
        p
    }

    async fn send(&mut self, line: Value) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write to iris-rpc client");
        stdin.flush().await.expect("flush");
    }

    fn find(&self, f: impl Fn(&Value) -> bool) -> Option<Value> {
        self.lines.lock().unwrap().iter().find(|v| f(v)).cloned()
    }

    async fn expect(&self, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        until(what, || self.find(&f).is_some()).await;
        self.find(f).expect("seen")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_peers_in_their_own_processes_meet_a_legacy_peer_on_another_router() {
    if no_nats() {
        return;
    }
    let nats = nats_cluster().await;
    let cluster = urls(&nats);
    let a = RouterProc::start(&cluster).await;
    let b = RouterProc::start(&cluster).await;
    // The legacy worker on B's backend; two Rust processes on A's frontend: rc sends events,
    // rq requests.
    let mut lw = LegacyPeer::client(
        &b.back(),
        "secret",
        true,
        json!({"uuid": "lw", "timeout": 3000}),
    )
    .await;
    lw.expect("connect", |_| true).await;
    let mut rc = CliPeer::start(&a.front(), "rc", false).await;
    let mut rq = CliPeer::start(&a.front(), "rq", true).await;
    until("every peer held", || {
        b.holds("lw") && a.holds("rc") && a.holds("rq")
    })
    .await;

    // A request from rq reaches lw on the other router and its answer comes back (asked
    // again while NATS still answers "no peer": B's subscription of lw may be on its way).
    let mut n = 0;
    let answer = loop {
        n += 1;
        rq.send(json!({"op": "add", "a": 2, "b": n, "_uuid": "lw"}))
            .await;
        let r = rq
            .expect("rq's answer", |v| {
                v["req"]["b"] == n && v["req"]["op"] == "add"
            })
            .await;
        if r.get("response").is_some() || n == 50 {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(answer["response"], json!({"sum": 2 + n}), "{answer}");
    // Nobody holds "nobody": an error at once, not the 3 s timeout.
    let started = std::time::Instant::now();
    rq.send(json!({"op": "add", "_uuid": "nobody"})).await;
    let r = rq
        .expect("no-responders", |v| v["req"]["_uuid"] == "nobody")
        .await;
    assert!(
        r["error"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("no peer \"nobody\"")),
        "{r}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));

    // lw can reach rc once A serves rc's subject: a request that NATS routes (the CLI client
    // answers none, so any answer but "no peer" will do).
    for id in 1..=50 {
        let r = lw
            .request(id, None, json!({"op": "probe", "_uuid": "rc"}))
            .await;
        if !r.to_string().contains("no peer") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Addressed events both ways, each with its sender's uuid.
    lw.send(json!({"cmd": "dispatch", "msg": {"op": "note", "text": "to-rc", "_uuid": "rc"}}))
        .await;
    let m = rc
        .expect("rc gets lw's note", |v| v["msg"]["text"] == "to-rc")
        .await;
    assert_eq!(m["uuid"], "lw", "{m}");
    rc.send(json!({"op": "note", "text": "to-lw", "_uuid": "lw"}))
        .await;
    let m = lw.expect("message", |v| v["msg"]["text"] == "to-lw").await;
    assert_eq!(m["uuid"], "rc", "{m}");
    // Broadcasts both ways: lw's reaches both Rust processes, rc's reaches lw.
    rc.send(json!({"op": "note", "text": "all-from-rc"})).await;
    let m = lw
        .expect("message", |v| v["msg"]["text"] == "all-from-rc")
        .await;
    assert_eq!(m["uuid"], "rc", "{m}");
    lw.send(json!({"cmd": "dispatch", "msg": {"op": "note", "text": "all-from-lw"}}))
        .await;
    for p in [&rc, &rq] {
        let m = p
            .expect("lw's broadcast", |v| v["msg"]["text"] == "all-from-lw")
            .await;
        assert_eq!(m["uuid"], "lw", "{m}");
    }
    drop((a, b, nats));
}

/// NATS bounds what crosses routers (`max_payload`): an answer larger than that still settles
/// its request, at once, with an error naming the limit (it waited for the asker's timeout);
/// a request larger than that fails at once and leaves the router's NATS connection up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_larger_than_nats_max_payload_settle_at_once_with_an_error() {
    if no_nats() {
        return;
    }
    let conf = std::env::temp_dir().join(format!("iris-nats-{}.conf", std::process::id()));
    std::fs::write(&conf, "max_payload: 4096\n").unwrap();
    let port = free_port();
    let _nats = Command::new("nats-server")
        .args([
            "-c",
            conf.to_str().unwrap(),
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("nats-server");
    until_async("NATS to listen", || port_open(port)).await;
    let url = format!("nats://127.0.0.1:{port}");
    let a = RouterProc::start(&url).await;
    let b = RouterProc::start(&url).await;
    let worker = Client::connect(opts().address(b.back()).uuid("big")).unwrap();
    worker.handle("big", |_| async { Ok(json!({"d": "x".repeat(8192)})) });
    worker.handle("small", |_| async { Ok(json!({"ok": true})) });
    worker.wait_connected(WAIT).await.unwrap();
    let mut lf = LegacyPeer::client(
        &a.front(),
        "secret",
        true,
        json!({"uuid": "lf", "timeout": 30000}),
    )
    .await;
    lf.expect("connect", |_| true).await;
    // Asked until B serves the worker's subject (before that NATS says "no peer").
    let mut id = 0;
    loop {
        id += 1;
        let r = lf
            .request(id, None, json!({"op": "small", "_uuid": "big"}))
            .await;
        if r["resp"]["ok"] == true || id == 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = std::time::Instant::now();
    let r = lf
        .request(id + 1, None, json!({"op": "big", "_uuid": "big"}))
        .await;
    assert!(
        r["err"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("max_payload")),
        "{r}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "not at the 30 s timeout"
    );
    // A request that large fails at once too, and the routers stay in the cluster (NATS
    // drops a connection that sends more than max_payload).
    let r = lf
        .request(
            id + 2,
            None,
            json!({"op": "small", "pad": "x".repeat(8192), "_uuid": "big"}),
        )
        .await;
    assert!(
        r["err"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("max_payload")),
        "{r}"
    );
    let r = lf
        .request(id + 3, None, json!({"op": "small", "_uuid": "big"}))
        .await;
    assert_eq!(r["resp"]["ok"], true, "{r}");
    let _ = std::fs::remove_file(&conf);
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_unreachable_at_start_is_a_clear_error() {
    let port = free_port();
    let out = Command::new(BIN)
        .args(["router", "--auth", "secret", "--port", "127.0.0.1:0"])
        .args(["--backend-port", "127.0.0.1:0"])
        .args(["--cluster", &format!("nats://127.0.0.1:{port}")])
        .args(["--cluster-token", "s3cret-token-value"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("NATS unreachable at nats://127.0.0.1:"),
        "{err}"
    );
    assert!(
        !err.contains("s3cret-token-value"),
        "no secret in logs: {err}"
    );
}
