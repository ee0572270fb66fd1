//! The `iris-rpc` command as a user runs it.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_iris-rpc");

/// A secret strong enough not to be warned about, where a test reads all of stderr.
const STRONG: &str = "5e0c7a1f9b3d24e8a6c0f7d9b1e3a5c72f4d6b8e0a1c3e5f7d9b2a4c6e8f0a13";

fn run(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running `iris-rpc server`, killed on drop.
struct ServerProc {
    child: Child,
    port: u16,
    lines: std::sync::mpsc::Receiver<String>,
}

impl ServerProc {
    fn start(extra: &[&str]) -> ServerProc {
        ServerProc::start_with_auth("s3cret", extra)
    }

    fn start_with_auth(auth: &str, extra: &[&str]) -> ServerProc {
        let mut args = vec!["server", "--port", "127.0.0.1:0", "--auth", auth];
        args.extend_from_slice(extra);
        let mut child = Command::new(BIN)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first = lines.recv_timeout(Duration::from_secs(10)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&first).unwrap();
        assert_eq!(v["event"], "listen");
        let port = v["address"]
            .as_str()
            .unwrap()
            .rsplit_once(':')
            .unwrap()
            .1
            .parse()
            .unwrap();
        ServerProc { child, port, lines }
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn wait_for(&self, event: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                if v["event"] == event {
                    return v;
                }
            }
        }
        panic!("server printed no {event} event");
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json_lines(s: &str) -> Vec<serde_json::Value> {
    s.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn demo_runs_and_exits_zero() {
    let (code, out, err) = run(&["demo"], "");
    assert_eq!(code, 0, "{out}\n{err}");
    for needle in [
        "authenticated",
        "<- event from demo-client",
        "<- response {\"sum\":5}",
        "division by zero",
        "timed out after",
        "No such handler 'nosuch'",
        "done in",
    ] {
        assert!(out.contains(needle), "demo output lacks {needle:?}:\n{out}");
    }
}

#[test]
fn client_requests_against_echo_server() {
    for cipher in [&[][..], &["--no-cipher"][..]] {
        let server = ServerProc::start(&[&["--echo"][..], cipher].concat());
        let addr = server.address();
        let mut args = vec![
            "client",
            "--address",
            &addr,
            "--auth",
            "s3cret",
            "--request",
        ];
        args.extend_from_slice(cipher);
        let (code, out, err) = run(&args, "{\"op\":\"a\",\"n\":1}\n{\"op\":\"b\",\"n\":2}\n");
        assert_eq!(code, 0, "{err}");
        let lines = json_lines(&out);
        let responses: Vec<_> = lines
            .iter()
            .filter(|v| v.get("response").is_some())
            .collect();
        assert_eq!(responses.len(), 2, "{out}");
        for r in responses {
            assert_eq!(r["response"]["echo"], r["req"]);
        }
        server.wait_for("connect");
        let req = server.wait_for("request");
        assert!(req["msg"]["op"] == "a" || req["msg"]["op"] == "b");
    }
}

#[test]
fn client_events_are_echoed_back() {
    let server = ServerProc::start(&["--echo"]);
    let addr = server.address();
    let (code, out, err) = run(
        &[
            "client",
            "--address",
            &addr,
            "--auth",
            "s3cret",
            "--linger",
            "1000",
        ],
        "{\"op\":\"hello\",\"n\":1}\n",
    );
    assert_eq!(code, 0, "{err}");
    let echoed = json_lines(&out)
        .into_iter()
        .find(|v| v["event"] == "message")
        .unwrap_or_else(|| panic!("no echoed message in {out}"));
    assert_eq!(echoed["msg"], serde_json::json!({"op": "hello", "n": 1}));
    let got = server.wait_for("message");
    assert_eq!(got["msg"]["op"], "hello");
}

#[test]
fn request_without_echo_gets_no_handler() {
    let server = ServerProc::start(&[]);
    let addr = server.address();
    let (code, out, _) = run(
        &[
            "client",
            "--address",
            &addr,
            "--auth",
            "s3cret",
            "--request",
        ],
        "{\"op\":\"x\"}\n",
    );
    assert_eq!(code, 0);
    let line = json_lines(&out)
        .into_iter()
        .find(|v| v.get("error").is_some())
        .unwrap();
    assert_eq!(line["error"]["error"], "No such handler 'x'");
}

#[test]
fn wrong_secret_exits_nonzero_with_a_clear_message() {
    let server = ServerProc::start(&[]);
    let addr = server.address();
    let (code, _, err) = run(&["client", "--address", &addr, "--auth", "nope"], "");
    assert_ne!(code, 0);
    assert!(
        err.contains("cannot connect") && err.contains("authentication"),
        "{err}"
    );
}

#[test]
fn nothing_listening_exits_nonzero() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let (code, _, err) = run(&["client", "--address", &addr, "--auth", STRONG], "");
    assert_ne!(code, 0);
    assert!(err.starts_with("iris-rpc: error: cannot connect"), "{err}");
}

#[test]
fn invalid_stdin_lines_are_reported_and_skipped() {
    let server = ServerProc::start(&["--echo"]);
    let addr = server.address();
    let (code, out, err) = run(
        &[
            "client",
            "--address",
            &addr,
            "--auth",
            "s3cret",
            "--request",
        ],
        "not json\n[1,2]\n{\"op\":\"ok\"}\n",
    );
    assert_ne!(code, 0);
    assert!(err.contains("stdin line 1: invalid JSON"), "{err}");
    assert!(err.contains("stdin line 2: not a JSON object"), "{err}");
    assert!(json_lines(&out)
        .iter()
        .any(|v| v["response"]["echo"]["op"] == "ok"));
}

#[test]
fn port_in_use_and_bad_certificates_are_one_line_errors() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, _, err) = run(&["server", "--port", &addr, "--auth", STRONG], "");
    assert_ne!(code, 0);
    assert!(
        err.starts_with("iris-rpc: error: configuration error: cannot listen"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let (code, _, err) = run(
        &[
            "server",
            "--port",
            "0",
            "--auth",
            "s",
            "--key",
            "/nonexistent/k.pem",
            "--cert",
            "/nonexistent/c.pem",
        ],
        "",
    );
    assert_ne!(code, 0);
    assert!(err.contains("cannot read cert file"), "{err}");
}

#[test]
fn cert_writes_a_usable_pair() {
    let dir = std::env::temp_dir().join(format!("iris-rpc-cert-{}", std::process::id()));
    let d = dir.to_str().unwrap();
    let (code, _, err) = run(&["cert", "--out", d], "");
    assert_eq!(code, 0, "{err}");
    let key = format!("{d}/key.pem");
    let cert = format!("{d}/cert.pem");
    let server = ServerProc::start(&["--key", &key, "--cert", &cert, "--echo"]);
    let addr = server.address();
    let (code, out, err) = run(
        &[
            "client",
            "--address",
            &addr,
            "--auth",
            "s3cret",
            "--request",
        ],
        "{\"op\":\"x\"}\n",
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"echo\""));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_client_pinned_to_the_server_key_refuses_a_relay_and_reaches_the_server() {
    let dir = std::env::temp_dir().join(format!("iris-rpc-pin-{}", std::process::id()));
    let d = dir.to_str().unwrap();
    let (code, out, err) = run(&["cert", "--out", d], "");
    assert_eq!(code, 0, "{err}");
    let pin = out
        .lines()
        .find_map(|l| l.strip_prefix("pin "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no pin in {out}"))
        .to_owned();
    assert!(pin.starts_with("sha256/"), "{pin}");
    let (key, cert) = (format!("{d}/key.pem"), format!("{d}/cert.pem"));
    let server = ServerProc::start(&["--key", &key, "--cert", &cert, "--echo"]);
    let pinned = |addr: &str| {
        run(
            &[
                "client",
                "--address",
                addr,
                "--auth",
                "s3cret",
                "--server-pin",
                &pin,
                "--request",
            ],
            "{\"op\":\"x\"}\n",
        )
    };
    let (code, out, err) = pinned(&server.address());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"echo\""), "{out}");
    // The relay has its own certificate (it cannot have the server's key).
    let relay = RelayProc::start(&server.address());
    let (code, out, err) = pinned(&format!("127.0.0.1:{}", relay.port));
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("matches none of server_pins"), "{err}");
    assert!(
        relay.edited().is_empty(),
        "the client sent the relay nothing to edit"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pin_store_and_expect_server_uuid_refuse_the_wrong_server() {
    let dir = std::env::temp_dir().join(format!("iris-rpc-tofu-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    let (code, out, err) = run(&["cert", "--out", d], "");
    assert_eq!(code, 0, "{err}");
    let pin = out
        .lines()
        .find_map(|l| l.strip_prefix("pin "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no pin in {out}"))
        .to_owned();
    let (key, cert) = (format!("{d}/key.pem"), format!("{d}/cert.pem"));
    let store = format!("{d}/known-servers");
    let server = ServerProc::start(&["--key", &key, "--cert", &cert, "--uuid", "real", "--echo"]);
    let client = |addr: &str, expect: &str| {
        run(
            &[
                "client",
                "--address",
                addr,
                "--auth",
                "s3cret",
                "--pin-store",
                &store,
                "--expect-server-uuid",
                expect,
                "--request",
            ],
            "{\"op\":\"x\"}\n",
        )
    };
    // First use: connects and records the server's key for its address.
    let (code, out, err) = client(&server.address(), "real");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"echo\""), "{out}");
    let recorded = std::fs::read_to_string(&store).unwrap();
    assert!(
        recorded.contains(&format!("{} {pin}", server.address())),
        "{recorded}"
    );
    // The right key but another uuid than expected.
    let (code, _, err) = client(&server.address(), "other");
    assert_ne!(code, 0);
    assert!(
        err.contains("authenticated as uuid \"real\"") && err.contains("expect_server_uuid"),
        "{err}"
    );
    // A relay (its own key) at an address the store holds the server's key for.
    let relay = RelayProc::start(&server.address());
    let relay_addr = format!("127.0.0.1:{}", relay.port);
    std::fs::write(&store, format!("{recorded}{relay_addr} {pin}\n")).unwrap();
    let (code, out, err) = client(&relay_addr, "real");
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("pin_store") && err.contains("recorded"),
        "{err}"
    );
    assert!(
        relay.edited().is_empty(),
        "the client sent the relay nothing to edit"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_flags_are_refused() {
    let (code, _, err) = run(&["server", "--auth", "s"], "");
    assert_eq!(code, 2);
    assert!(err.contains("--port"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let (code, _, err) = run(&["client", "--bogus"], "");
    assert_eq!(code, 2);
    assert!(
        err.starts_with("iris-rpc: error: unexpected argument '--bogus'"),
        "{err}"
    );
}

#[test]
fn router_relays_client_requests_to_the_server() {
    let server = ServerProc::start(&["--echo"]);
    let to = server.address();
    let mut router = Command::new(BIN)
        .args([
            "router",
            "--port",
            "127.0.0.1:0",
            "--auth",
            "s3cret",
            "--to",
            &to,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(router.stdout.take().unwrap()).lines();
    let listen: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(listen["event"], "listen");
    let front = listen["frontend"].as_str().unwrap().to_owned();
    // The router reports its backend connection before clients are useful.
    let backend: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(
        (backend["event"].as_str(), backend["side"].as_str()),
        (Some("connect"), Some("backend"))
    );
    let (code, out, err) = run(
        &[
            "client",
            "--address",
            &front,
            "--auth",
            "s3cret",
            "--request",
            "--uuid",
            "via-router",
        ],
        "{\"op\":\"hi\"}\n",
    );
    assert_eq!(code, 0, "{err}");
    let resp = json_lines(&out)
        .into_iter()
        .find(|v| v.get("response").is_some())
        .unwrap_or_else(|| panic!("no response in {out}"));
    assert_eq!(resp["response"]["echo"]["op"], "hi");
    let req = server.wait_for("request");
    assert_eq!(req["uuid"], "via-router");
    let connect: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(connect["uuid"], "via-router");
    let _ = router.kill();
    let _ = router.wait();
}

#[test]
fn security_policies_negotiate_and_refuse_clearly() {
    // Both default (prefer-v2): a v2 session, reported on both sides.
    let server = ServerProc::start(&["--echo"]);
    let addr = server.address();
    let args = [
        "client",
        "--address",
        &addr,
        "--auth",
        "s3cret",
        "--request",
    ];
    let (code, out, err) = run(&args, "{\"op\":\"a\"}\n");
    assert_eq!(code, 0, "{err}");
    let connect = json_lines(&out)
        .into_iter()
        .find(|v| v["event"] == "connect")
        .unwrap_or_else(|| panic!("no connect in {out}"));
    assert_eq!(connect["mode"], "v2");
    assert_eq!(server.wait_for("connect")["mode"], "v2");

    // A legacy-only client against a server that requires v2: refused, with the reason.
    let server = ServerProc::start(&["--security", "require-v2"]);
    let addr = server.address();
    let (code, _, err) = run(
        &[
            "client",
            "--address",
            &addr,
            "--auth",
            "s3cret",
            "--security",
            "legacy",
        ],
        "",
    );
    assert_ne!(code, 0);
    assert!(err.contains("require-v2"), "{err}");
}

/// `node tests/interop/stripping-relay.js` in front of `to`: a man in the middle without the
/// secret that removes the v2 offer and the client's `modes` and rewrites `"a":1`; killed on
/// drop.
struct RelayProc {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
    lines: std::sync::mpsc::Receiver<String>,
}

impl RelayProc {
    fn start(to: &str) -> RelayProc {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("iris-rpc-relay-{}-{n}", std::process::id()));
        let d = dir.to_str().unwrap();
        let (code, _, err) = run(&["cert", "--out", d], "");
        assert_eq!(code, 0, "{err}");
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/interop/stripping-relay.js"
        );
        let mut child = Command::new("node")
            .args([script, "--to", to, "--key"])
            .arg(dir.join("key.pem"))
            .arg("--cert")
            .arg(dir.join("cert.pem"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node runs the relay (tests/interop/stripping-relay.js)");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        // Read everything it prints, so its writes never fail on a closed pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let first = lines.recv_timeout(Duration::from_secs(10)).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&first).unwrap_or_else(|e| panic!("relay said {first:?}: {e}"));
        let port = v["port"].as_u64().unwrap() as u16;
        RelayProc {
            child,
            port,
            dir,
            lines,
        }
    }

    /// The lines it changed so far, as `(from, to)`.
    fn edited(&self) -> Vec<(String, String)> {
        self.lines
            .try_iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
            .map(|v| (v["from"].to_string(), v["to"].to_string()))
            .collect()
    }
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_stripping_relay_is_refused_under_defaults_with_the_cipher_off() {
    // Issue 19, attack 1, as it was run: `iris-rpc server` and `client` with their defaults
    // (prefer-v2) and --no-cipher, each in its own process, a relay between them. Before the
    // downgrade marker both connected in legacy mode and the server echoed "a":1001.
    let server = ServerProc::start(&["--echo", "--no-cipher"]);
    let relay = RelayProc::start(&server.address());
    let addr = format!("127.0.0.1:{}", relay.port);
    let (code, out, err) = run(
        &[
            "client",
            "--address",
            &addr,
            "--auth",
            "s3cret",
            "--no-cipher",
            "--request",
        ],
        "{\"op\":\"add\",\"a\":1}\n",
    );
    assert_ne!(code, 0, "the client connected through the relay: {out}");
    assert!(err.contains("downgrade detected"), "{err}");
    assert!(!out.contains("\"connect\""), "{out}");
    assert!(!out.contains("1001"), "{out}");
    let edited = relay.edited();
    assert!(
        edited
            .first()
            .is_some_and(|(from, _)| from.contains("nonce")),
        "the relay removed the offer: {edited:?}"
    );
    // Without the relay the same two connect in v2 (the refusal is the relay's doing).
    let (code, out, err) = run(
        &[
            "client",
            "--address",
            &server.address(),
            "--auth",
            "s3cret",
            "--no-cipher",
            "--request",
        ],
        "{\"op\":\"add\",\"a\":1}\n",
    );
    assert_eq!(code, 0, "{err}");
    let connect = json_lines(&out)
        .into_iter()
        .find(|v| v["event"] == "connect")
        .unwrap_or_else(|| panic!("no connect in {out}"));
    assert_eq!(connect["mode"], "v2");
    assert!(out.contains("\"a\":1}"), "{out}");
    // The server met only the second client.
    assert_eq!(server.wait_for("connect")["mode"], "v2");
}

#[test]
fn secret_prints_a_fresh_256_bit_secret_and_weak_ones_are_flagged() {
    let (code, a, err) = run(&["secret"], "");
    assert_eq!(code, 0, "{err}");
    let (_, b, _) = run(&["secret"], "");
    let a = a.trim();
    assert_eq!(a.len(), 64, "{a}");
    assert!(a
        .bytes()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    assert_ne!(a, b.trim());
    // A weak --auth: refused with the option, before anything listens.
    let (code, _, err) = run(
        &[
            "server",
            "--port",
            "127.0.0.1:0",
            "--auth",
            "s3cret",
            "--refuse-weak-secret",
        ],
        "",
    );
    assert_ne!(code, 0);
    assert!(err.contains("the shared secret is weak"), "{err}");
    // The generated one is accepted with the option, and the client warns about a weak one.
    let server = ServerProc::start_with_auth(a, &["--echo", "--refuse-weak-secret"]);
    let (code, _, err) = run(
        &[
            "client",
            "--address",
            &server.address(),
            "--auth",
            a,
            "--refuse-weak-secret",
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("weak"), "{err}");
    let (_, _, err) = run(
        &["client", "--address", &server.address(), "--auth", "s3cret"],
        "",
    );
    assert!(err.contains("the shared secret is weak"), "{err}");
}

/// Runs the command with extra environment variables, stdin closed.
fn run_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn no_colour_when_output_is_not_a_terminal_or_no_color_is_set() {
    // Logs at debug level, so there is something to colour: a client that cannot connect.
    let args = [
        "client",
        "--address",
        "127.0.0.1:1",
        "--auth",
        "s",
        "--connect-timeout",
        "300",
    ];
    let env = [("IRIS_RPC_LOG", "debug")];
    let (_, out, err) = run_env(&args, &env);
    assert!(
        err.contains("DEBUG") || err.contains("WARN"),
        "no log lines: {err}"
    );
    assert!(
        !err.contains('\u{1b}') && !out.contains('\u{1b}'),
        "ANSI escapes in {err:?}"
    );

    // On a terminal (script(1) gives it one), colour is on unless NO_COLOR is set.
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped the terminal half: no script(1) on this machine");
        return;
    }
    let on_tty = |no_color: bool| {
        let line = format!("IRIS_RPC_LOG=debug {BIN} {}", args.join(" "));
        let mut cmd = Command::new("script");
        cmd.args(["-qec", &line, "/dev/null"]).stdin(Stdio::null());
        cmd.env_remove("NO_COLOR");
        if no_color {
            cmd.env("NO_COLOR", "1");
        }
        String::from_utf8_lossy(&cmd.output().unwrap().stdout).into_owned()
    };
    let coloured = on_tty(false);
    assert!(
        coloured.contains('\u{1b}'),
        "no colour on a terminal: {coloured:?}"
    );
    let plain = on_tty(true);
    assert!(
        plain.contains("DEBUG") || plain.contains("WARN"),
        "{plain:?}"
    );
    assert!(
        !plain.contains('\u{1b}'),
        "colour despite NO_COLOR: {plain:?}"
    );
}

#[cfg(unix)]
#[test]
fn cert_writes_the_key_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("iris-rpc-cert-mode-{}", std::process::id()));
    let (code, _, err) = run(&["cert", "--out", dir.to_str().unwrap()], "");
    assert_eq!(code, 0, "{err}");
    let mode = |f: &str| std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("key.pem"), 0o600);
    // Written again over an existing, more open file: still 0600.
    std::fs::set_permissions(dir.join("key.pem"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = run(&["cert", "--out", dir.to_str().unwrap()], "");
    assert_eq!(code, 0, "{err}");
    assert_eq!(mode("key.pem"), 0o600);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn server_help_says_a_self_signed_pair_is_made_without_key_and_cert() {
    let (code, out, _) = run(&["server", "--help"], "");
    assert_eq!(code, 0);
    let flat = out.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(flat.contains("self-signed"), "{out}");
}

#[test]
fn errors_name_the_missing_file_and_say_out_of_range() {
    let dir = std::env::temp_dir().join(format!("iris-rpc-missing-{}", std::process::id()));
    let (code, _, err) = run(&["cert", "--out", dir.to_str().unwrap()], "");
    assert_eq!(code, 0, "{err}");
    let key = dir.join("key.pem");
    let cert = dir.join("cert.pem");
    let missing = dir.join("nope.pem");
    for (k, c) in [(&missing, &cert), (&key, &missing)] {
        let (code, _, err) = run(
            &[
                "server",
                "--port",
                "127.0.0.1:0",
                "--auth",
                "s",
                "--key",
                k.to_str().unwrap(),
                "--cert",
                c.to_str().unwrap(),
            ],
            "",
        );
        assert_ne!(code, 0);
        assert!(err.contains(missing.to_str().unwrap()), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    for port in ["70000", "127.0.0.1:65536"] {
        let (code, _, err) = run(&["server", "--port", port, "--auth", "s"], "");
        assert_ne!(code, 0);
        assert!(err.contains("out of range"), "{port}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_stdin_line_is_not_a_configuration_error() {
    let server = ServerProc::start(&["--echo"]);
    let addr = server.address();
    let (code, _, err) = run(
        &["client", "--address", &addr, "--auth", "s3cret"],
        "not json\n",
    );
    assert_ne!(code, 0);
    assert!(err.contains("stdin line 1: invalid JSON"), "{err}");
    assert!(!err.contains("configuration error"), "{err}");
}

/// Runs a server with `log_args` and the log variables `env` (none other), has a client (uuid `log-client`,
/// designation `logger`) make one request and leave, and returns the server's stderr.
fn server_log_of_one_client(log_args: &[&str], env: &[(&str, &str)]) -> String {
    let mut args = vec![
        "server",
        "--port",
        "127.0.0.1:0",
        "--auth",
        STRONG,
        "--echo",
    ];
    args.extend_from_slice(log_args);
    let mut cmd = Command::new(BIN);
    cmd.args(&args)
        .env_remove("IRIS_RPC_LOG")
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let listen: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let addr = listen["address"].as_str().unwrap().to_owned();
    let (code, _, err) = run(
        &[
            "client",
            "--address",
            &addr,
            "--auth",
            STRONG,
            "--request",
            "--uuid",
            "log-client",
            "--designation",
            "logger",
        ],
        "{\"op\":\"x\"}\n",
    );
    assert_eq!(code, 0, "{err}");
    // The server logs the stream's end before it prints the disconnect.
    for line in lines.by_ref() {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        if v["event"] == "disconnect" {
            break;
        }
    }
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn json_logs_carry_the_connection_span() {
    let err = server_log_of_one_client(&["--log-format", "json"], &[("IRIS_RPC_LOG", "info")]);
    let ended = err
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "stream ended")
        .unwrap_or_else(|| panic!("no JSON 'stream ended' record in:\n{err}"));
    assert_eq!(ended["level"], "INFO", "{ended}");
    let span = &ended["span"];
    assert_eq!(span["name"], "connection", "{ended}");
    assert_eq!(span["peer"], "log-client", "{ended}");
    assert_eq!(span["designation"], "logger", "{ended}");
    assert_eq!(span["mode"], "v2", "{ended}");
    assert!(
        span["address"]
            .as_str()
            .unwrap_or("")
            .starts_with("127.0.0.1:"),
        "{ended}"
    );
}

#[test]
fn text_logs_have_no_colour_off_a_terminal_and_filters_apply() {
    let err = server_log_of_one_client(&[], &[("IRIS_RPC_LOG", "info")]);
    assert!(err.contains("stream ended"), "{err}");
    assert!(err.contains("connection{peer=log-client"), "{err}");
    assert!(!err.contains('\u{1b}'), "ANSI escapes on a pipe: {err:?}");
    // RUST_LOG when IRIS_RPC_LOG is unset; IRIS_RPC_LOG wins when both are; `warn` by default.
    let err = server_log_of_one_client(&[], &[("RUST_LOG", "iris_rpc=info")]);
    assert!(err.contains("stream ended"), "{err}");
    let err = server_log_of_one_client(&[], &[("RUST_LOG", "info"), ("IRIS_RPC_LOG", "error")]);
    assert!(!err.contains("stream ended"), "{err}");
    let err = server_log_of_one_client(&[], &[]);
    assert!(!err.contains("stream ended"), "{err}");
}

/// GET `path` from `addr` over plain HTTP; returns the status line and the body.
fn http_get(addr: &str, path: &str) -> (String, String) {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap();
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

#[test]
fn router_serves_its_relays_on_metrics() {
    let server = ServerProc::start(&["--echo"]);
    let to = server.address();
    let mut router = Command::new(BIN)
        .args([
            "router",
            "--port",
            "127.0.0.1:0",
            "--auth",
            "s3cret",
            "--to",
            &to,
            "--metrics",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(router.stdout.take().unwrap()).lines();
    let (mut front, mut metrics, mut backend_up) = (None, None, false);
    while front.is_none() || metrics.is_none() || !backend_up {
        let v: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        match v["event"].as_str() {
            Some("listen") => front = v["frontend"].as_str().map(str::to_owned),
            Some("metrics") => metrics = v["address"].as_str().map(str::to_owned),
            Some("connect") if v["side"] == "backend" => backend_up = true,
            _ => {}
        }
    }
    let (front, metrics) = (front.unwrap(), metrics.unwrap());
    let (code, _, err) = run(
        &[
            "client",
            "--address",
            &front,
            "--auth",
            "s3cret",
            "--request",
        ],
        "{\"op\":\"hi\"}\n{\"op\":\"again\"}\n",
    );
    assert_eq!(code, 0, "{err}");
    let (status, body) = http_get(&metrics, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        body.contains("iris_rpc_router_relays_total{kind=\"request\"} 2\n"),
        "{body}"
    );
    // The backend client and the frontend server each did one handshake.
    assert!(
        body.contains(
            "iris_rpc_handshakes_total{side=\"client\",outcome=\"ok\",mode=\"v2\",reason=\"none\"} 1\n"
        ),
        "{body}"
    );
    let (status, _) = http_get(&metrics, "/nothing");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let _ = router.kill();
    let _ = router.wait();
}
