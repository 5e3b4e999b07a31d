//! The binary's start-up: configuration errors are one clear line, secrets never printed.

use std::process::Command;

fn wxlogin(dir: &std::path::Path, envs: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wxlogin"))
        .arg("serve")
        .current_dir(dir)
        .env_clear()
        .envs(envs.iter().copied())
        .output()
        .expect("binary runs")
}

#[test]
fn a_missing_setting_stops_start_up_with_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = wxlogin(
        dir.path(),
        &[
            ("APPID", "wx1"),
            ("SECRET_KEY", "topsecret-value"),
            ("MP_TOKEN", "mp"),
        ],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim(), "configuration: API_TOKEN is missing");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("topsecret-value"));
}

#[test]
fn an_invalid_setting_is_named_and_dotenv_is_read() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env"),
        "API_TOKEN=from-dotenv-token\nAPPID=wx1\nSECRET_KEY=topsecret-value\nMP_TOKEN=mp\nQR_TTL_SECS=3000000\n",
    )
    .unwrap();
    let out = wxlogin(dir.path(), &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.trim().starts_with("configuration: QR_TTL_SECS"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1);
    // A real environment variable wins over .env.
    let out = wxlogin(
        dir.path(),
        &[("QR_TTL_SECS", "1800"), ("BIND", "not-an-address")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("configuration: BIND"), "{stderr}");
    for secret in ["topsecret-value", "from-dotenv-token"] {
        assert!(!stderr.contains(secret));
    }
}

#[tokio::test]
async fn the_password_in_redis_url_never_reaches_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    // Nobody listens on the Redis port: the instance starts, logs, and is not ready.
    let (port, redis_port) = (free(), free());
    let url = format!("redis://:hunter2-redis-pw@127.0.0.1:{redis_port}/0");
    let bind = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_wxlogin"))
        .arg("serve")
        .current_dir(dir.path())
        .env_clear()
        .envs([
            ("API_TOKEN", "startup-api-token"),
            ("APPID", "wx1"),
            ("SECRET_KEY", "topsecret-value"),
            ("MP_TOKEN", "mp"),
            ("LOGIN_TOKEN_SECRET", "0123456789abcdef0123456789abcdef"),
            ("WECHAT_API_BASE", "http://127.0.0.1:9"),
            ("RUST_LOG", "debug"),
            ("BIND", bind.as_str()),
            ("REDIS_URL", url.as_str()),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let ready = loop {
        if let Ok(r) = client.get(format!("http://{bind}/readyz")).send().await {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "no answer");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(ready.status(), 503);
    let body = ready.text().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let logs = format!(
        "{}{}{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(logs.contains("[redacted]@127.0.0.1"), "{logs}");
    assert!(!logs.contains("hunter2-redis-pw"), "{logs}");
}
