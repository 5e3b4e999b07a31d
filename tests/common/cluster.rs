//! A Redis Cluster for a test, all on free loopback ports: three primaries, with or without
//! one replica each, made with `redis-cli --cluster create`. A test may kill the primary of a
//! key (SIGKILL) and wait for its replica to take over. Killed, and its node files removed,
//! when dropped.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use wxlogin::wechat::secret::Secret;

use super::free_port;
use super::redis_server::RedisServer;

/// Primaries of every cluster: the fewest Redis Cluster accepts.
const PRIMARIES: usize = 3;

/// How long a new cluster may take to agree on its slots and replicas: a few seconds when the
/// machine is idle, but the whole suite starts one cluster for each of its cluster tests at
/// once.
const SETTLE: Duration = Duration::from_secs(30);

/// How long a failover may take: the dead primary is noticed after the node timeout, then its
/// replica waits up to a second before it asks the other primaries for their votes.
const FAILOVER: Duration = Duration::from_secs(30);

/// The node timeout of a cluster with replicas: after it, a silent primary is failed over.
const FAILOVER_NODE_TIMEOUT_MS: u64 = 1000;

/// The node timeout of a cluster without replicas. No replica can take over, so a short
/// timeout buys nothing; it would only let a node starved of CPU for a second (a hundred
/// clusters start at once in the suite) be marked failed, and the whole cluster refuse
/// commands until it is cleared.
const NO_FAILOVER_NODE_TIMEOUT_MS: u64 = 15_000;

/// Three primaries (and their replicas), on loopback.
pub struct RedisCluster {
    /// Every node, primaries first as created; a test may kill any.
    nodes: Mutex<Vec<RedisServer>>,
    /// The node files the nodes wrote (Redis Cluster keeps its view of the cluster there).
    files: Vec<PathBuf>,
}

/// A node killed by [`RedisCluster::kill_primary_of`].
#[derive(Clone, Debug)]
pub struct Killed {
    /// Its port.
    pub port: u16,
    /// The slot of the key it owned.
    pub slot: u16,
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `check` every 50 ms; panics with `what` after `limit`.
fn wait_for(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A line of `CLUSTER NODES`: `<id> <ip:port@bus> <flags> <primary id|-> ... <slots...>`.
struct NodeLine {
    port: u16,
    flags: Vec<String>,
    /// Slot ranges, inclusive (importing and migrating markers skipped).
    slots: Vec<(u16, u16)>,
}

impl NodeLine {
    fn parse(line: &str) -> Option<Self> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let addr = fields.get(1)?;
        let port = addr.split('@').next()?.rsplit(':').next()?.parse().ok()?;
        let slots = fields
            .iter()
            .skip(8)
            .filter(|s| !s.starts_with('['))
            .filter_map(|range| match range.split_once('-') {
                Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                None => {
                    let slot = range.parse().ok()?;
                    Some((slot, slot))
                }
            })
            .collect();
        Some(Self {
            port,
            flags: fields.get(2)?.split(',').map(str::to_owned).collect(),
            slots,
        })
    }

    fn is(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    fn owns(&self, slot: u16) -> bool {
        self.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
    }
}

fn cluster_nodes(port: u16) -> Vec<NodeLine> {
    cli(port, &["CLUSTER", "NODES"])
        .lines()
        .filter_map(NodeLine::parse)
        .collect()
}

fn cluster_ok(port: u16) -> bool {
    cli(port, &["CLUSTER", "INFO"]).contains("cluster_state:ok")
}

impl RedisCluster {
    /// Three primaries, no replicas: what a test that does not fail over needs, and cheap.
    pub fn start() -> Self {
        Self::start_nodes(0, NO_FAILOVER_NODE_TIMEOUT_MS)
    }

    /// Three primaries and one replica of each, each replica in sync.
    pub fn start_with_replicas() -> Self {
        Self::start_nodes(1, FAILOVER_NODE_TIMEOUT_MS)
    }

    fn start_nodes(replicas: usize, node_timeout_ms: u64) -> Self {
        let files = Mutex::new(Vec::new());
        let nodes: Vec<RedisServer> = (0..PRIMARIES * (1 + replicas))
            .map(|_| {
                RedisServer::start_with_for_port(|port| {
                    let file = std::env::temp_dir().join(format!(
                        "wxlogin-cluster-{}-{port}.conf",
                        std::process::id()
                    ));
                    // A file left by an earlier run would make the node rejoin its old cluster.
                    let _ = std::fs::remove_file(&file);
                    files
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(file.clone());
                    vec![
                        "--cluster-enabled".into(),
                        "yes".into(),
                        "--cluster-config-file".into(),
                        file.to_string_lossy().into_owned(),
                        // Not the default (port + 10000), which may be above 65535 or taken.
                        "--cluster-port".into(),
                        free_port().to_string(),
                        "--cluster-node-timeout".into(),
                        node_timeout_ms.to_string(),
                        // DEBUG SLEEP stands for a node that stops answering.
                        "--enable-debug-command".into(),
                        "yes".into(),
                    ]
                })
            })
            .collect();
        let cluster = Self {
            nodes: Mutex::new(nodes),
            files: files.into_inner().unwrap_or_else(|p| p.into_inner()),
        };
        let ports = cluster.ports();
        let mut create = Command::new("redis-cli");
        create
            .arg("--cluster")
            .arg("create")
            .args(ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", &replicas.to_string()])
            .arg("--cluster-yes");
        let out = create.output().expect("redis-cli --cluster create runs");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        wait_for(SETTLE, "the cluster settles", || {
            ports.iter().all(|&port| {
                let nodes = cluster_nodes(port);
                // Every node knows every other, and which are replicas: a primary that still
                // took a replica for a primary would refuse it its vote in a failover.
                cluster_ok(port)
                    && nodes.len() == ports.len()
                    && nodes.iter().filter(|n| n.is("slave")).count() == PRIMARIES * replicas
            }) && cluster
                .replica_ports()
                .iter()
                .all(|&port| cli(port, &["INFO", "replication"]).contains("master_link_status:up"))
        });
        cluster
    }

    /// The ports of every node, killed or not.
    pub fn ports(&self) -> Vec<u16> {
        self.lock().iter().map(RedisServer::port).collect()
    }

    /// The ports of the nodes not killed.
    fn live_ports(&self) -> Vec<u16> {
        self.lock()
            .iter()
            .filter(|n| n.is_running())
            .map(RedisServer::port)
            .collect()
    }

    fn any_live_port(&self) -> u16 {
        *self.live_ports().first().expect("a live node")
    }

    /// The ports of the nodes that are replicas now.
    fn replica_ports(&self) -> Vec<u16> {
        let port = self.any_live_port();
        cluster_nodes(port)
            .into_iter()
            .filter(|n| n.is("slave"))
            .map(|n| n.port)
            .collect()
    }

    /// The ports of the primaries that serve slots now.
    pub fn primary_ports(&self) -> Vec<u16> {
        let port = self.any_live_port();
        cluster_nodes(port)
            .into_iter()
            .filter(|n| n.is("master") && !n.is("fail") && !n.slots.is_empty())
            .map(|n| n.port)
            .collect()
    }

    /// `REDIS_CLUSTER_URLS`: `redis://127.0.0.1:<port>,…`, every node.
    pub fn urls(&self) -> String {
        let urls: Vec<String> = self
            .ports()
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect();
        urls.join(",")
    }

    /// The seed nodes as the library takes them.
    pub fn seeds(&self) -> Vec<Secret> {
        self.ports()
            .iter()
            .map(|p| Secret::new(format!("redis://127.0.0.1:{p}")))
            .collect()
    }

    /// The slot of `key` (hash tags count).
    pub fn slot_of(&self, key: &str) -> u16 {
        cli(self.any_live_port(), &["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .expect("CLUSTER KEYSLOT answers a number")
    }

    /// The port of the primary that owns `slot` now.
    pub fn primary_of_slot(&self, slot: u16) -> Option<u16> {
        cluster_nodes(self.any_live_port())
            .into_iter()
            .find(|n| n.is("master") && !n.is("fail") && n.owns(slot))
            .map(|n| n.port)
    }

    /// Kills (SIGKILL) the primary that owns the slot of `key`.
    pub fn kill_primary_of(&self, key: &str) -> Killed {
        let slot = self.slot_of(key);
        let port = self.primary_of_slot(slot).expect("a primary owns the slot");
        let mut nodes = self.lock();
        nodes
            .iter_mut()
            .find(|n| n.port() == port)
            .expect("the primary is one of the cluster's nodes")
            .kill();
        Killed { port, slot }
    }

    /// Waits until a replica of `killed` took its slots and every live node says
    /// `cluster_state:ok` again; the new primary's port.
    pub fn wait_promoted(&self, killed: &Killed) -> u16 {
        let mut promoted = None;
        wait_for(FAILOVER, "a replica takes over the killed primary", || {
            promoted = self
                .primary_of_slot(killed.slot)
                .filter(|p| *p != killed.port);
            promoted.is_some() && self.live_ports().into_iter().all(cluster_ok)
        });
        let port = promoted.expect("promoted");
        assert!(
            cli(port, &["INFO", "replication"]).contains("role:master"),
            "the new owner of slot {} is a primary",
            killed.slot
        );
        port
    }

    /// Whether every live node says `cluster_state:ok`.
    pub fn is_ok(&self) -> bool {
        self.live_ports().into_iter().all(cluster_ok)
    }

    /// How many keys the primary on `port` holds.
    pub fn dbsize(&self, port: u16) -> u64 {
        cli(port, &["DBSIZE"])
            .trim()
            .parse()
            .expect("DBSIZE answers a number")
    }

    /// Every key the node on `port` holds (its own slots only).
    pub fn keys_on(&self, port: u16) -> Vec<String> {
        cli(port, &["--scan"]).lines().map(str::to_owned).collect()
    }

    /// The shard channels (`SSUBSCRIBE`) someone listens to on the node on `port`.
    pub fn shard_channels_on(&self, port: u16) -> Vec<String> {
        cli(port, &["PUBSUB", "SHARDCHANNELS"])
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<RedisServer>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in self.lock().iter_mut() {
            node.kill();
        }
        for file in &self.files {
            let _ = std::fs::remove_file(file);
        }
    }
}
