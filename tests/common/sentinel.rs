//! A Redis Sentinel deployment for a test, all on free loopback ports: a primary, a replica
//! and three sentinels (`redis-server <config> --sentinel`, quorum 2) watching it as
//! [`MASTER_NAME`], quick to notice a dead primary (down after 1 s). Killed when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::free_port;
use super::redis_server::{RedisServer, wait_listening};

/// The name the sentinels know the primary by.
pub const MASTER_NAME: &str = "mymaster";

/// A sentinel process and its config file (the sentinel rewrites it).
struct SentinelProcess {
    child: Child,
    port: u16,
    config: PathBuf,
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}

/// A primary, its replica and three sentinels.
pub struct SentinelSet {
    /// The primary, then the replica; a test may kill either.
    servers: Mutex<Vec<RedisServer>>,
    sentinels: Vec<SentinelProcess>,
    /// The sentinels stopped with SIGSTOP (by index), which a test asks nothing.
    paused: Mutex<Vec<usize>>,
    /// The `requirepass` of the primary and the replica, if any.
    password: Option<String>,
}

fn start_sentinel(primary_port: u16, password: Option<&str>) -> SentinelProcess {
    for _ in 0..5 {
        let port = free_port();
        let dir = std::env::temp_dir();
        let config = dir.join(format!(
            "wxlogin-sentinel-{}-{port}.conf",
            std::process::id()
        ));
        let text = format!(
            "port {port}\nbind 127.0.0.1\ndir {dir}\n\
             sentinel monitor {MASTER_NAME} 127.0.0.1 {primary_port} 2\n\
             sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
             sentinel failover-timeout {MASTER_NAME} 3000\n\
             sentinel parallel-syncs {MASTER_NAME} 1\n{auth}",
            dir = dir.display(),
            auth = password
                .map(|p| format!("sentinel auth-pass {MASTER_NAME} {p}\n"))
                .unwrap_or_default(),
        );
        std::fs::write(&config, text).expect("sentinel config written");
        let mut child = Command::new("redis-server")
            .arg(&config)
            .arg("--sentinel")
            .args(["--loglevel", "warning"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server --sentinel runs");
        if wait_listening(&mut child, port) {
            return SentinelProcess {
                child,
                port,
                config,
            };
        }
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_file(&config);
    }
    panic!("a sentinel did not start");
}

fn cli(port: u16, password: Option<&str>, args: &[&str]) -> String {
    let mut command = Command::new("redis-cli");
    if let Some(password) = password {
        // Not on the command line, where `ps` shows it.
        command.env("REDISCLI_AUTH", password);
    }
    let out = command
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// How long a new set may take to settle: a second when the machine is idle, but the whole
/// suite starts a set for each of its Sentinel tests at once.
const SETTLE: Duration = Duration::from_secs(30);

/// Polls `check` every 20 ms; panics with `what` after `limit`.
fn wait_for(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl SentinelSet {
    /// Starts the primary, its replica (in sync) and the sentinels (naming the primary).
    pub fn start() -> Self {
        Self::start_with_password(None)
    }

    /// [`Self::start`] with `requirepass` (and `masterauth`) on the primary and the replica.
    pub fn start_with_password(password: Option<&str>) -> Self {
        // DEBUG SLEEP stands for a replica that stops answering.
        let mut args = vec!["--enable-debug-command".to_owned(), "yes".to_owned()];
        if let Some(password) = password {
            for flag in ["--requirepass", "--masterauth"] {
                args.extend([flag.to_owned(), password.to_owned()]);
            }
        }
        let primary = RedisServer::start_with(&args);
        args.extend([
            "--replicaof".into(),
            "127.0.0.1".into(),
            primary.port().to_string(),
        ]);
        let replica = RedisServer::start_with(&args);
        wait_for(SETTLE, "the replica syncs", || {
            cli(replica.port(), password, &["INFO", "replication"])
                .contains("master_link_status:up")
        });
        let sentinels: Vec<SentinelProcess> = (0..3)
            .map(|_| start_sentinel(primary.port(), password))
            .collect();
        let set = Self {
            servers: Mutex::new(vec![primary, replica]),
            sentinels,
            paused: Mutex::new(Vec::new()),
            password: password.map(str::to_owned),
        };
        wait_for(SETTLE, "the sentinels name the primary", || {
            set.sentinels.iter().all(|s| set.named_by(s.port).is_some())
        });
        set
    }

    /// `REDIS_SENTINELS`: `127.0.0.1:<port>,…`.
    pub fn sentinels(&self) -> String {
        let list: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        list.join(",")
    }

    /// The ports of the sentinels.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|s| s.port).collect()
    }

    /// The port of the primary that the sentinel on `port` names.
    fn named_by(&self, port: u16) -> Option<u16> {
        let out = cli(
            port,
            None,
            &["SENTINEL", "get-master-addr-by-name", MASTER_NAME],
        );
        out.lines().nth(1)?.trim().parse().ok()
    }

    /// The port of the primary the first sentinel not paused names now.
    pub fn primary_port(&self) -> Option<u16> {
        let paused = self
            .paused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let (_, asked) = self
            .sentinels
            .iter()
            .enumerate()
            .find(|(i, _)| !paused.contains(i))?;
        self.named_by(asked.port)
    }

    /// Stops sentinel `index` with SIGSTOP: it still accepts connections (the kernel does)
    /// and never answers, like a host that hangs.
    pub fn pause_sentinel(&self, index: usize) {
        let pid = self.sentinels[index].child.id().to_string();
        let stopped = Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .expect("kill runs");
        assert!(stopped.success());
        self.paused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(index);
    }

    /// Waits until every sentinel knows the replica and the two other sentinels: a failover
    /// can happen.
    pub fn wait_ready_for_failover(&self) {
        wait_for(
            Duration::from_secs(20),
            "the sentinels know the replica and each other",
            || {
                self.sentinels.iter().all(|s| {
                    let replicas = cli(s.port, None, &["SENTINEL", "replicas", MASTER_NAME]);
                    let others = cli(s.port, None, &["SENTINEL", "sentinels", MASTER_NAME]);
                    replicas.contains("slave")
                        && !replicas.contains("disconnected")
                        && others.matches("sentinel").count() >= 2
                })
            },
        );
    }

    /// Kills the primary the sentinels name now (SIGKILL); its port.
    pub fn kill_primary(&self) -> u16 {
        let port = self.primary_port().expect("a primary is named");
        let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        let server = servers
            .iter_mut()
            .find(|s| s.port() == port)
            .expect("the primary is one of the set's servers");
        server.kill();
        port
    }

    /// Runs `redis-cli` against the server that is not the primary now (the replica).
    pub fn replica_cli(&self, args: &[&str]) -> String {
        let primary = self.primary_port().expect("a primary is named");
        let servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        let replica = servers
            .iter()
            .find(|s| s.port() != primary)
            .expect("a replica");
        cli(replica.port(), self.password.as_deref(), args)
    }

    /// Runs `redis-cli` against the primary the sentinels name now.
    pub fn cli(&self, args: &[&str]) -> String {
        let port = self.primary_port().expect("a primary is named");
        cli(port, self.password.as_deref(), args)
    }
}
