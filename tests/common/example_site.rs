//! The example site backends (`examples/site.py`, `examples/site.mjs`) as child processes
//! talking to a `wxlogin sandbox`. A missing interpreter fails the test with what to install.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{COOKIE, ORIGIN};
use serde_json::{Value, json};

use super::free_port;
use super::process::{Guard, spawn_until};
use super::sandbox::Sandbox;

/// Which example.
#[derive(Clone, Copy, Debug)]
pub enum Example {
    Python,
    Node,
}

/// Whether `program args…` runs and exits 0.
fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The interpreter and script of an example; panics with what to install when it is missing.
fn command_for(example: Example) -> (String, &'static str) {
    match example {
        Example::Python => {
            let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
            let venv = target
                .parent()
                .unwrap_or(&target)
                .join("py-venv/bin/python");
            let candidates = [venv.to_string_lossy().into_owned(), "python3".to_owned()];
            let python = candidates
                .into_iter()
                .find(|p| runs(p, &["-c", "import jwt, cryptography"]))
                .unwrap_or_else(|| {
                    panic!(
                        "examples/site.py needs Python 3 with PyJWT[crypto]: run scripts/test (it \
                         makes target/py-venv), or python3 -m venv target/py-venv && \
                         target/py-venv/bin/pip install 'PyJWT[crypto]'"
                    )
                });
            (python, "examples/site.py")
        }
        Example::Node => {
            assert!(
                runs(
                    "node",
                    &[
                        "-e",
                        "process.exit(Number(process.versions.node.split('.')[0]) >= 18 ? 0 : 1)"
                    ]
                ),
                "examples/site.mjs needs Node 18 or later as `node`: apt-get install nodejs \
                 (scripts/test does)"
            );
            ("node".to_owned(), "examples/site.mjs")
        }
    }
}

/// An example site running against `sandbox`; killed on drop.
pub struct Site {
    /// `http://127.0.0.1:<port>`, also its origin.
    pub base: String,
    pub http: reqwest::Client,
    _child: Guard,
}

impl Site {
    pub async fn start(example: Example, sandbox: &Sandbox) -> Self {
        let (program, script) = command_for(example);
        let port = free_port();
        let mut command = Command::new(program);
        command
            .arg(script)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("WXLOGIN_URL", &sandbox.base)
            .env("WXLOGIN_API_TOKEN", &sandbox.api_token)
            .env("SITE_BIND", format!("127.0.0.1:{port}"));
        let name = format!("{example:?} site");
        let (child, _) = spawn_until(
            &name,
            &mut command,
            "example site on",
            Duration::from_secs(20),
        )
        .await;
        Self {
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            _child: child,
        }
    }

    /// `POST path` with `body`, from a page of `origin` (no `Origin` header with `None`).
    pub async fn post(&self, path: &str, origin: Option<&str>, body: Value) -> reqwest::Response {
        let mut request = self.http.post(format!("{}{path}", self.base)).json(&body);
        if let Some(origin) = origin {
            request = request.header(ORIGIN, origin);
        }
        request.send().await.expect("the site answers")
    }

    pub async fn login(&self, login_token: &str) -> reqwest::Response {
        self.post(
            "/api/login",
            Some(&self.base),
            json!({ "login_token": login_token }),
        )
        .await
    }

    /// `GET /api/me` with `cookie`: the status and the openid, if any.
    pub async fn me(&self, cookie: Option<&str>) -> (StatusCode, Option<String>) {
        let mut request = self.http.get(format!("{}/api/me", self.base));
        if let Some(cookie) = cookie {
            request = request.header(COOKIE, cookie);
        }
        let response = request.send().await.expect("the site answers");
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        (status, body["openid"].as_str().map(str::to_owned))
    }
}
