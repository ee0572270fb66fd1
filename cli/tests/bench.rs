//! A smoke run of `iris-rpc bench all` with tiny counts: the driver, both Rust sides and every
//! workload work end to end. It asserts on shape only, never on time.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_iris-rpc");

/// `bench all --pairings PAIRING` with tiny counts (64 B events, cipher on): its stdout,
/// after checking that it succeeded and no run failed.
fn bench_all(pairing: &str) -> String {
    let out = Command::new(BIN)
        .args(["bench", "all", "--pairings", pairing, "--runs", "1"])
        .args(["--duration", "0.1", "--sizes", "64", "--cipher", "on"])
        .args(["--connections", "20"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(!stderr.contains("failed: "), "stderr:\n{stderr}");
    stdout
}

#[test]
fn bench_all_smoke_rust_rust() {
    let stdout = bench_all("rust-rust");
    for heading in [
        "One-way events",
        "Requests",
        "idle authenticated connections",
    ] {
        assert!(
            stdout.contains(heading),
            "missing {heading:?} in:\n{stdout}"
        );
    }
    let rows = stdout.lines().filter(|l| l.starts_with("| rust-rust |"));
    assert_eq!(rows.count(), 3, "{stdout}");
    assert!(!stdout.contains("n/a"), "a cell has no value:\n{stdout}");
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
    let stdout = bench_all("rust-cluster-rust");
    let rows = stdout
        .lines()
        .filter(|l| l.starts_with("| rust-cluster-rust |"));
    assert_eq!(rows.count(), 2, "events and requests rows:\n{stdout}");
    assert!(!stdout.contains("n/a"), "a cell has no value:\n{stdout}");
}
