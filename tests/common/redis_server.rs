//! A real `redis-server` for a test: on a free loopback port, without persistence, killed
//! when dropped. Tests may kill it (SIGKILL) and start it again on the same port.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// A running (or killed) redis-server.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    /// Arguments after the defaults (`--replicaof`, ...), again at a restart.
    extra: Vec<String>,
}

fn spawn(port: u16, extra: &[String]) -> std::io::Result<Child> {
    Command::new("redis-server")
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .args(["--dir", &std::env::temp_dir().to_string_lossy()])
        .args(["--loglevel", "warning"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}

/// Waits until `child` answers on `port`; `false` if it died or 5 s passed. Another test's
/// server may have taken the port between its pick and our start: the server that answers
/// must be ours (its `process_id`).
pub fn wait_listening(child: &mut Child, port: u16) -> bool {
    wait_listening_with(child, port, None)
}

/// [`wait_listening`] for a server with `requirepass`.
fn wait_listening_with(child: &mut Child, port: u16, password: Option<&str>) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    let ours = format!("process_id:{}", child.id());
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return info_server(port, password)
                .lines()
                .any(|l| l.trim_end() == ours);
        }
        if matches!(child.try_wait(), Ok(Some(_))) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// The `--requirepass` among a server's arguments.
fn password(extra: &[String]) -> Option<&str> {
    let at = extra.iter().position(|a| a == "--requirepass")?;
    extra.get(at + 1).map(String::as_str)
}

/// `INFO server` of the server on `port` (empty if none answers).
fn info_server(port: u16, password: Option<&str>) -> String {
    let mut cli = Command::new("redis-cli");
    cli.args(["-p", &port.to_string()]);
    if let Some(password) = password {
        cli.args(["-a", password, "--no-auth-warning"]);
    }
    cli.args(["INFO", "server"])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default()
}

impl RedisServer {
    /// Starts a redis-server on a free port (another port if that one was taken meanwhile).
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// [`Self::start`] with more arguments (`--replicaof 127.0.0.1 <port>`).
    pub fn start_with(extra: &[String]) -> Self {
        Self::start_with_for_port(|_| extra.to_vec())
    }

    /// [`Self::start`] with more arguments made for the port it is tried on (a cluster node's
    /// config file and bus port differ per node).
    pub fn start_with_for_port(extra: impl Fn(u16) -> Vec<String>) -> Self {
        for _ in 0..5 {
            let port = free_port();
            let extra = extra(port);
            let mut child =
                spawn(port, &extra).expect("redis-server runs (apt-get install redis-server)");
            if wait_listening_with(&mut child, port, password(&extra)) {
                return Self {
                    child: Some(child),
                    port,
                    extra,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis-server did not start");
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether it runs (it was not killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it with SIGKILL (its data is gone: no persistence).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut child = spawn(self.port, &self.extra).expect("redis-server runs");
            if wait_listening_with(&mut child, self.port, password(&self.extra)) {
                self.child = Some(child);
                return;
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(Instant::now() < deadline, "redis-server did not restart");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `redis-cli` against it with `args`; its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
