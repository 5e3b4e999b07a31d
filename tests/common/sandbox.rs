//! The `wxlogin sandbox` binary on a free loopback port, as a newcomer runs it: a fake WeChat
//! and its phone in the same process. Killed when dropped.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use super::free_port;
use super::process::{Guard, spawn_until};

/// A running `wxlogin sandbox`.
pub struct Sandbox {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    pub addr: SocketAddr,
    /// The API token the sandbox made up at start (read from its banner).
    pub api_token: String,
    /// What it printed at start, up to the banner's line naming the stream URL.
    pub banner: String,
    _dir: tempfile::TempDir,
    _child: Guard,
}

impl Sandbox {
    /// Starts the binary with `settings` (e.g. `("SSE_TIMEOUT_SECS", "5")`) in an empty
    /// directory and environment, and waits for its banner (printed once it is bound).
    pub async fn start(settings: &[(&str, &str)]) -> Self {
        Self::start_with(&[], settings).await
    }

    /// As [`Sandbox::start`], with command-line `flags` (e.g. `--safe-mode`).
    pub async fn start_with(flags: &[&str], settings: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_wxlogin"));
        command
            .arg("sandbox")
            .args(flags)
            .current_dir(dir.path())
            .env_clear()
            .env("BIND", format!("127.0.0.1:{port}"))
            .env(
                "RUST_LOG",
                std::env::var("TEST_LOG").map_or("warn".into(), |_| "info".to_owned()),
            );
        for (k, v) in settings {
            command.env(k, v);
        }
        // BIND is the test's: the sandbox must be where `base` says.
        command.env("BIND", format!("127.0.0.1:{port}"));
        let (child, banner) = spawn_until(
            "sandbox",
            &mut command,
            "/sse?token=",
            Duration::from_secs(30),
        )
        .await;
        let api_token = banner
            .rsplit("/sse?token=")
            .next()
            .and_then(|t| t.split_whitespace().next())
            .map(str::to_owned)
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| panic!("no API token in the banner line {banner:?}"));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        Self {
            base: format!("http://{addr}"),
            addr,
            api_token,
            banner,
            _dir: dir,
            _child: child,
        }
    }

    /// The fake phone scans `scene`: `POST /sandbox/scan`; the HTTP status.
    pub async fn scan(&self, scene: &str, openid: &str, new_follower: bool) -> u16 {
        reqwest::Client::new()
            .post(format!("{}/sandbox/scan", self.base))
            .json(&json!({ "scene": scene, "openid": openid, "new_follower": new_follower }))
            .send()
            .await
            .expect("POST /sandbox/scan")
            .status()
            .as_u16()
    }
}
