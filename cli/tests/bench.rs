//! A smoke run of `iris-rpc bench all` with tiny counts: the driver, both Rust sides and every
//! workload work end to end. It asserts on shape only, never on time.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_iris-rpc");

/// Runs `iris-rpc bench all` with tiny counts and `extra` arguments; checks that it succeeded
/// with no failed run and no empty cell, and returns its report.
fn bench_all(extra: &[&str]) -> String {
    let out = Command::new(BIN)
        .args([
            "bench",
            "all",
            "--runs",
            "1",
            "--duration",
            "0.1",
            "--sizes",
            "64",
        ])
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(!stderr.contains("failed: "), "stderr:\n{stderr}");
    assert!(!stdout.contains("n/a"), "a cell has no value:\n{stdout}");
    stdout
}

#[test]
fn bench_all_smoke_rust_rust() {
    let dir = std::env::temp_dir().join(format!("iris-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let svg = dir.join("curve.svg");
    let stdout = bench_all(&[
        "--svg",
        svg.to_str().unwrap(),
        "--pairings",
        "rust-rust",
        "--cipher",
        "on",
        "--connections",
        "20",
    ]);
    for heading in [
        "One-way events",
        "Requests",
        "Latency against load",
        "Every pairing at 5,000 requests/s",
        "idle authenticated connections",
    ] {
        assert!(
            stdout.contains(heading),
            "missing {heading:?} in:\n{stdout}"
        );
    }
    // Events, requests, five curve points, the fixed rate, idle.
    let rows = stdout.lines().filter(|l| l.starts_with("| rust-rust |"));
    assert_eq!(rows.count(), 9, "{stdout}");
    // The picture: one line per percentile for the one pairing, and the legend.
    let picture = std::fs::read_to_string(&svg).unwrap();
    assert!(picture.starts_with("<svg") && picture.trim_end().ends_with("</svg>"));
    assert_eq!(picture.matches("<polyline").count(), 3, "{picture}");
    assert!(picture.contains(">rust-rust</text>") && picture.contains(">p99.9</text>"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The NATS reference pairing through a real nats-server (TLS on), every workload it runs.
#[test]
fn bench_all_smoke_nats() {
    let installed = ["/usr/sbin/nats-server", "/usr/local/sbin/nats-server"]
        .iter()
        .any(|p| std::path::Path::new(p).is_file())
        || Command::new("nats-server")
            .arg("--version")
            .output()
            .is_ok();
    if !installed {
        eprintln!("SKIPPED: nats-server is not installed (tests/cluster/nats-server.sh)");
        return;
    }
    let stdout = bench_all(&["--pairings", "nats-nats"]);
    // Run once (no cipher setting of its own): events, requests, the fixed rate; no idle.
    let rows = stdout
        .lines()
        .filter(|l| l.starts_with("| nats-nats | TLS only |"));
    assert_eq!(rows.count(), 3, "{stdout}");
}

/// The cluster pairing (two routers of one cluster between client and server, on a
/// nats-server the server side starts): every workload but idle yields a figure, so events,
/// their acks, requests and answers cross NATS. Skipped without nats-server.
#[test]
fn bench_all_smoke_rust_cluster_rust() {
    let nats = Command::new("nats-server").arg("--version").output();
    if !nats.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: nats-server is not installed (tests/cluster/nats-server.sh)");
        return;
    }
    let stdout = bench_all(&[
        "--pairings",
        "rust-cluster-rust",
        "--workloads",
        "events,requests",
        "--cipher",
        "on",
    ]);
    let rows = stdout
        .lines()
        .filter(|l| l.starts_with("| rust-cluster-rust |"));
    assert_eq!(rows.count(), 2, "events and requests rows:\n{stdout}");
    assert!(!stdout.contains("n/a"), "a cell has no value:\n{stdout}");
}
