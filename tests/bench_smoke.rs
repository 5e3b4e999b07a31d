//! A short run of every `wxlogin-bench` scenario against a wxlogin (and fake WeChat) this
//! test starts on free loopback ports, so the load tool keeps working; and of `scan-to-push`
//! over two instances sharing a private `redis-server`. The full benchmark is
//! `scripts/bench.sh`; see BENCHMARKS.md.
//!
//! The tool is a package of its own (`tools/bench`): this test builds it with the cargo that
//! runs the test, or runs `$WXLOGIN_BENCH` when that is set.

// Test code: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::free_port;
use common::redis_server::RedisServer;

#[path = "common/mod.rs"]
mod common;

const API_TOKEN: &str = "smoke-api-token-0123";
const MP_TOKEN: &str = "smoke-mp-token";
const ACCOUNT: [(&str, &str); 3] = [
    ("APPID", "wxsmoke000000001"),
    ("SECRET_KEY", "smoke-secret-0123"),
    ("MP_TOKEN", MP_TOKEN),
];

/// The `wxlogin-bench` binary: `$WXLOGIN_BENCH`, or built (once per test binary) by the cargo
/// that runs the tests, which names the executable it made.
fn bench_bin() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("WXLOGIN_BENCH") {
            return PathBuf::from(path);
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let output = Command::new(cargo)
            .args(["build", "--quiet", "--manifest-path", manifest])
            .args(["-p", "wxlogin-bench", "--bin", "wxlogin-bench"])
            .args(["--message-format", "json-render-diagnostics"])
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "cargo build -p wxlogin-bench failed"
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|m| m["target"]["name"] == "wxlogin-bench")
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .expect("cargo named the wxlogin-bench executable")
    })
}

/// A child process, killed when dropped (also when the test panics).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET path` over a fresh connection: the body, if the server answered.
fn get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
}

fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready() {
        assert!(Instant::now() < deadline, "{what} did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs one scenario against the servers on `ports` and returns its JSON line.
fn bench(ports: &[u16], server_pids: &[u32], args: &[&str]) -> Value {
    let targets: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let pids: Vec<String> = server_pids.iter().map(u32::to_string).collect();
    let output = Command::new(bench_bin())
        .args([
            "--target",
            &targets.join(","),
            "--server-pid",
            &pids.join(","),
        ])
        .args(["--max-secs", "20"])
        .args(args)
        .env("API_TOKEN", API_TOKEN)
        .env("MP_TOKEN", MP_TOKEN)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "wxlogin-bench {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line per scenario: {stdout}");
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn count(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a count in {v}"))
}

/// Starts the fake WeChat on `fake_port`, its phone calling back the wxlogin on `port`.
fn start_fake(fake_port: u16, port: u16) -> Running {
    let fake = Running(
        Command::new(env!("CARGO_BIN_EXE_wxlogin"))
            .args(["fake-wechat", "--port", &fake_port.to_string()])
            .args([
                "--callback",
                &format!("http://127.0.0.1:{port}/wechat_event"),
            ])
            .envs(ACCOUNT)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("the fake WeChat", || {
        TcpStream::connect(("127.0.0.1", fake_port)).is_ok()
    });
    fake
}

/// Starts `wxlogin serve` on `port` using the fake WeChat on `fake_port`, with `more`
/// settings, and waits until it is ready.
fn start_server(port: u16, fake_port: u16, more: &[(&str, &str)]) -> Running {
    let server = Running(
        Command::new(env!("CARGO_BIN_EXE_wxlogin"))
            .arg("serve")
            .envs(ACCOUNT)
            .env("API_TOKEN", API_TOKEN)
            .env("BIND", format!("127.0.0.1:{port}"))
            .env("WECHAT_API_BASE", format!("http://127.0.0.1:{fake_port}"))
            .env("POOL_SIZE", "50")
            .env("SSE_TIMEOUT_SECS", "60")
            .env("QR_TTL_SECS", "600")
            .env("SSE_KEEPALIVE_SECS", "1")
            // All the load comes from a few loopback addresses.
            .env("SSE_PER_IP_PER_MIN", "0")
            .env("SSE_PER_IP_OPEN", "0")
            .env("RUST_LOG", "warn")
            .envs(more.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("wxlogin", || {
        get(port, "/readyz").is_some_and(|body| body.contains("\"ready\":true"))
    });
    server
}

#[test]
fn every_scenario_of_the_load_tool_runs_and_loses_nothing() {
    // Arrange: the fake WeChat and a wxlogin using it, on free ports.
    let (fake_port, port) = (free_port(), free_port());
    let _fake = start_fake(fake_port, port);
    let server = start_server(port, fake_port, &[]);
    let (ports, pids) = ([port], [server.0.id()]);

    // Act and assert, one scenario after the other on the same server.
    let waiters = bench(&ports, &pids, &["waiters", "--n", "20", "--rate", "0"]);
    assert_eq!(waiters["scenario"], "waiters");
    assert_eq!(count(&waiters, "opened"), 20, "{waiters}");
    assert_eq!(count(&waiters, "errors"), 0, "{waiters}");
    assert_eq!(count(&waiters, "status_503"), 0, "{waiters}");
    assert_eq!(count(&waiters, "server_open_streams"), 20, "{waiters}");
    assert_eq!(count(&waiters, "open_streams_after_close"), 0, "{waiters}");
    assert!(count(&waiters, "rss_before_kib") > 0, "{waiters}");

    let scan = bench(
        &ports,
        &pids,
        &[
            "scan-to-push",
            "--n",
            "20",
            "--rate",
            "20",
            "--settle-secs",
            "3",
        ],
    );
    assert_eq!(scan["scenario"], "scan-to-push");
    assert_eq!(count(&scan, "scans"), 20, "{scan}");
    assert_eq!(count(&scan, "delivered"), 20, "{scan}");
    assert_eq!(count(&scan, "lost"), 0, "{scan}");
    assert_eq!(count(&scan, "misdelivered"), 0, "{scan}");
    assert_eq!(count(&scan, "callback_errors"), 0, "{scan}");
    assert_eq!(scan["push_ms"]["count"], 20, "{scan}");

    let callbacks = bench(
        &ports,
        &pids,
        &["callbacks", "--concurrency", "4", "--duration-secs", "1"],
    );
    assert_eq!(callbacks["scenario"], "callbacks");
    for phase in ["callbacks", "healthz"] {
        assert!(count(&callbacks[phase], "requests") > 0, "{callbacks}");
        assert_eq!(count(&callbacks[phase], "errors"), 0, "{callbacks}");
    }
    assert!(callbacks["ratio"].as_f64().unwrap() > 0.0, "{callbacks}");

    // The churn on a server of its own, which keeps a delivered result 1 s: every session
    // must be gone once the load stops.
    drop(server);
    let server = start_server(port, fake_port, &[("RESULT_KEEP_SECS", "1")]);
    let pids = [server.0.id()];
    let churn = bench(
        &ports,
        &pids,
        &[
            "churn",
            "--rate",
            "10",
            "--duration-secs",
            "2",
            "--think-ms",
            "100",
            "--settle-secs",
            "20",
        ],
    );
    assert_eq!(churn["scenario"], "churn");
    assert_eq!(count(&churn, "logins_ok"), 20, "{churn}");
    assert_eq!(count(&churn, "errors"), 0, "{churn}");
    assert_eq!(count(&churn, "lost"), 0, "{churn}");
    assert_eq!(count(&churn, "misdelivered"), 0, "{churn}");
    assert_eq!(count(&churn, "open_streams_after"), 0, "{churn}");
    assert_eq!(count(&churn, "live_scenes_settled"), 0, "{churn}");
    assert!(churn["live_scenes_zero_after_s"].is_number(), "{churn}");
}

#[test]
fn scans_sent_to_another_instance_reach_the_stream_over_redis() {
    // Arrange: two wxlogin instances sharing one redis-server and one login-token secret.
    let redis = RedisServer::start();
    let redis_url = redis.url();
    let (fake_port, ports) = (free_port(), [free_port(), free_port()]);
    let _fake = start_fake(fake_port, ports[0]);
    let shared = [
        ("REDIS_URL", redis_url.as_str()),
        (
            "LOGIN_TOKEN_SECRET",
            "smoke-login-token-secret-0123456789abcdef",
        ),
    ];
    let servers: Vec<Running> = ports
        .iter()
        .map(|&port| start_server(port, fake_port, &shared))
        .collect();
    let pids: Vec<u32> = servers.iter().map(|s| s.0.id()).collect();

    // Act: 40 streams over two worker processes (20 each), every scan sent to the instance
    // that does not hold the stream.
    let scan = bench(
        &ports,
        &pids,
        &[
            "--per-process",
            "20",
            "scan-to-push",
            "--n",
            "40",
            "--rate",
            "40",
            "--settle-secs",
            "3",
        ],
    );

    // Assert
    assert_eq!(count(&scan, "targets"), 2, "{scan}");
    assert_eq!(count(&scan, "processes"), 2, "{scan}");
    assert_eq!(
        scan["server_open_streams_by_target"],
        serde_json::json!([20, 20]),
        "{scan}"
    );
    assert_eq!(count(&scan, "scans"), 40, "{scan}");
    assert_eq!(count(&scan, "scans_crossed"), 40, "{scan}");
    assert_eq!(count(&scan, "delivered"), 40, "{scan}");
    assert_eq!(count(&scan, "lost"), 0, "{scan}");
    assert_eq!(count(&scan, "misdelivered"), 0, "{scan}");
    assert_eq!(count(&scan, "callback_errors"), 0, "{scan}");
    assert_eq!(scan["push_ms"]["count"], 40, "{scan}");
    assert!(count(&scan, "rss_held_kib") > 0, "{scan}");
}

#[test]
fn the_load_tool_refuses_targets_off_this_machine() {
    let output = Command::new(bench_bin())
        .args(["--target", "http://192.0.2.1:8000", "waiters", "--n", "1"])
        .env("API_TOKEN", API_TOKEN)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("127.0.0.0/8"));
}
