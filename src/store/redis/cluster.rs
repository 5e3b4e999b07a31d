//! Redis Cluster (`REDIS_CLUSTER_URLS`): commands go through the `redis` crate's cluster
//! client, which finds the nodes from the seeds, routes each command to the primary of its
//! key's slot, and follows `MOVED`/`ASK` and failovers by itself.
//!
//! Two connections, as with one Redis: most commands, and the results with their `WAIT`,
//! which holds up the commands behind it on its connection to that node. Both are made at the
//! first command, not at start-up, so that an instance starts while the cluster is down.
//!
//! The client learns the slot map again only when a live node redirects it (`MOVED`): a
//! primary that died leaves it retrying the dead address (connection refused, timeouts) for
//! that primary's slots, and it does not react to `READONLY` from a demoted one. So a command
//! that fails the way a failover makes it fail marks the connection suspect, and the next
//! command (at most every [`REMAKE_EVERY`]) makes a new one from the seeds, which reads the
//! slot map afresh, as the Sentinel mode asks the sentinels again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{
    MultipleNodeRoutingInfo, ResponsePolicy, Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr,
};
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use tokio::sync::Mutex;

use crate::wechat::secret::Secret;

/// Limits on talking to the cluster: a connection attempt to a node, a command (retries and
/// redirections included).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a login's result waits for a replica of its shard to acknowledge it (`WAIT`).
const REPLICA_WAIT: Duration = Duration::from_millis(500);
/// The least time between two connections made anew after failures.
const REMAKE_EVERY: Duration = Duration::from_millis(500);

/// A connection to the cluster, made at the first command and again after failures.
struct Link {
    made: Mutex<Option<(ClusterConnection, Instant)>>,
    /// A command failed the way a failover makes it fail.
    suspect: AtomicBool,
}

impl Link {
    fn new() -> Self {
        Self {
            made: Mutex::new(None),
            suspect: AtomicBool::new(false),
        }
    }

    /// The connection: made now if there is none, or if it is suspect and old enough.
    async fn get(&self, client: &ClusterClient) -> RedisResult<ClusterConnection> {
        let mut made = self.made.lock().await;
        if let Some((conn, at)) = made.as_ref() {
            let remake = self.suspect.load(Ordering::Relaxed) && at.elapsed() >= REMAKE_EVERY;
            if !remake {
                return Ok(conn.clone());
            }
        }
        self.suspect.store(false, Ordering::Relaxed);
        // The client tries each seed in turn; bound the whole.
        let fresh = tokio::time::timeout(RESPONSE_TIMEOUT * 2, client.get_async_connection())
            .await
            .map_err(|_| timed_out());
        match (fresh, made.as_mut()) {
            (Ok(Ok(conn)), _) => {
                *made = Some((conn.clone(), Instant::now()));
                Ok(conn)
            }
            // No new one: the old one goes on, and is made again at the next failure.
            (Ok(Err(e)) | Err(e), Some((conn, at))) => {
                tracing::debug!(error = %e, "cannot reconnect to the Redis Cluster");
                *at = Instant::now();
                Ok(conn.clone())
            }
            (Ok(Err(e)) | Err(e), None) => Err(e),
        }
    }

    /// A command on this connection failed: if it looks like a failover, make it again.
    fn failed(&self, e: &RedisError) {
        // Cluster errors: MOVED, ASK, TRYAGAIN, CLUSTERDOWN.
        let failover = super::failover_like(e)
            || e.is_cluster_error()
            || matches!(
                e.kind(),
                ErrorKind::Server(redis::ServerErrorKind::MasterDown)
                    | ErrorKind::ClusterConnectionNotFound
            );
        if failover {
            self.suspect.store(true, Ordering::Relaxed);
        }
    }
}

/// The cluster of `REDIS_CLUSTER_URLS`, shared by every account's store of the process.
pub(super) struct Cluster {
    client: ClusterClient,
    /// Most commands.
    conn: Link,
    /// Results and their `WAIT`.
    durable: Link,
}

/// The client's settings: errors soon rather than requests that hang through an outage, and
/// enough retries to ride over a redirection or a slot map that is being refreshed.
fn builder(seeds: &[Secret]) -> ClusterClientBuilder {
    ClusterClientBuilder::new(seeds.iter().map(Secret::expose))
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(RESPONSE_TIMEOUT)
        .retries(3)
        .min_retry_wait(50)
        .max_retry_wait(500)
}

impl Cluster {
    /// A cluster found from `seeds` (URLs, credentials in them); no connection yet.
    pub(super) fn new(seeds: &[Secret]) -> RedisResult<Self> {
        Ok(Self {
            client: builder(seeds).build()?,
            conn: Link::new(),
            durable: Link::new(),
        })
    }

    /// A client whose connections hand pushed messages (sharded pub/sub) to `sender`: RESP3.
    pub(super) fn subscriber(
        seeds: &[Secret],
        sender: tokio::sync::mpsc::UnboundedSender<redis::PushInfo>,
    ) -> RedisResult<ClusterClient> {
        builder(seeds)
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(sender)
            .build()
    }

    /// A connection for commands.
    pub(super) fn conn(self: &Arc<Self>) -> Conn {
        Conn {
            cluster: Arc::clone(self),
            durable: false,
        }
    }

    /// The connection for results, which [`Conn::replicated`] waits on.
    pub(super) fn durable(self: &Arc<Self>) -> Conn {
        Conn {
            cluster: Arc::clone(self),
            durable: true,
        }
    }
}

/// A connection to the cluster, made at its first command.
#[derive(Clone)]
pub(super) struct Conn {
    cluster: Arc<Cluster>,
    durable: bool,
}

fn timed_out() -> RedisError {
    RedisError::from((ErrorKind::Io, "timed out connecting to the Redis Cluster"))
}

impl Conn {
    fn link(&self) -> &Link {
        match self.durable {
            true => &self.cluster.durable,
            false => &self.cluster.conn,
        }
    }

    async fn connection(&self) -> RedisResult<ClusterConnection> {
        self.link().get(&self.cluster.client).await
    }

    /// `reply`, noting a failure that looks like a failover.
    fn seen<T>(&self, reply: RedisResult<T>) -> RedisResult<T> {
        if let Err(e) = &reply {
            self.link().failed(e);
        }
        reply
    }

    /// `cmd` to `routing`.
    async fn route(&self, cmd: Cmd, routing: RoutingInfo) -> RedisResult<Value> {
        let mut conn = self.connection().await?;
        self.seen(conn.route_command(cmd, routing).await)
    }

    /// `cmd` on the primary of `key`'s slot.
    async fn on_primary_of(&self, key: &str, cmd: Cmd) -> RedisResult<Value> {
        let route = SingleNodeRoutingInfo::SpecificNode(Route::with_key(key, SlotAddr::Master));
        self.route(cmd, RoutingInfo::SingleNode(route)).await
    }

    /// `PING` on every primary: the cluster serves every slot.
    pub(super) async fn ping_primaries(&self) -> RedisResult<()> {
        let routing = RoutingInfo::MultiNode((
            MultipleNodeRoutingInfo::AllMasters,
            Some(ResponsePolicy::AllSucceeded),
        ));
        self.route(redis::cmd("PING"), routing).await.map(drop)
    }

    /// Whether the primary of `key`'s slot has a replica to wait for (`ROLE`). A replica
    /// answering (a slot map that lags) has none: a write to it would have failed already.
    pub(super) async fn has_replica(&self, key: &str) -> RedisResult<bool> {
        let role = self.on_primary_of(key, redis::cmd("ROLE")).await?;
        Ok(matches!(
            redis::from_redis_value::<redis::Role>(role)?,
            redis::Role::Primary { replicas, .. } if !replicas.is_empty()
        ))
    }

    /// Waits until the writes made on this connection to the primary of `key` reached one of
    /// its replicas: a result that Redis acknowledged then survives the shard's failover. An
    /// error when no replica acknowledged in time, so that WeChat retries.
    pub(super) async fn replicated(&self, key: &str) -> RedisResult<()> {
        let mut wait = redis::cmd("WAIT");
        wait.arg(1).arg(REPLICA_WAIT.as_millis() as u64);
        let acked: i64 = redis::from_redis_value(self.on_primary_of(key, wait).await?)?;
        if acked < 1 {
            return Err(RedisError::from((
                ErrorKind::Io,
                "no replica acknowledged the write in time",
            )));
        }
        Ok(())
    }
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let mut conn = self.connection().await?;
            self.seen(conn.req_packed_command(cmd).await)
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let mut conn = self.connection().await?;
            self.seen(conn.req_packed_commands(cmd, offset, count).await)
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}
