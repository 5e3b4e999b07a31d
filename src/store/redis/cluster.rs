//! Redis Cluster (`REDIS_CLUSTER_URLS`): commands go through the `redis` crate's cluster
//! client, which finds the nodes from the seeds, routes each command to the primary of its
//! key's slot, and follows `MOVED`/`ASK` and failovers by itself.
//!
//! Two connections, as with one Redis: most commands, and the results with their `WAIT`,
//! which holds up the commands behind it on its connection to that node. Both are made at the
//! first command, not at start-up, so that an instance starts while the cluster is down.

use std::sync::Arc;
use std::time::Duration;

use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{
    MultipleNodeRoutingInfo, ResponsePolicy, Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr,
};
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use tokio::sync::OnceCell;

use crate::wechat::secret::Secret;

/// Limits on talking to the cluster: a connection attempt to a node, a command (retries and
/// redirections included).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a login's result waits for a replica of its shard to acknowledge it (`WAIT`).
const REPLICA_WAIT: Duration = Duration::from_millis(500);

/// The cluster of `REDIS_CLUSTER_URLS`, shared by every account's store of the process.
pub(super) struct Cluster {
    client: ClusterClient,
    /// Most commands.
    conn: OnceCell<ClusterConnection>,
    /// Results and their `WAIT`.
    durable: OnceCell<ClusterConnection>,
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
            conn: OnceCell::new(),
            durable: OnceCell::new(),
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
    async fn connection(&self) -> RedisResult<ClusterConnection> {
        let cell = match self.durable {
            true => &self.cluster.durable,
            false => &self.cluster.conn,
        };
        let conn = cell
            .get_or_try_init(|| async {
                // The client tries each seed in turn; bound the whole.
                tokio::time::timeout(
                    RESPONSE_TIMEOUT * 2,
                    self.cluster.client.get_async_connection(),
                )
                .await
                .map_err(|_| timed_out())?
            })
            .await?;
        Ok(conn.clone())
    }

    /// `cmd` on the primary of `key`'s slot.
    async fn on_primary_of(&self, key: &str, cmd: Cmd) -> RedisResult<Value> {
        let route = SingleNodeRoutingInfo::SpecificNode(Route::with_key(key, SlotAddr::Master));
        self.connection()
            .await?
            .route_command(cmd, RoutingInfo::SingleNode(route))
            .await
    }

    /// `PING` on every primary: the cluster serves every slot.
    pub(super) async fn ping_primaries(&self) -> RedisResult<()> {
        let routing = RoutingInfo::MultiNode((
            MultipleNodeRoutingInfo::AllMasters,
            Some(ResponsePolicy::AllSucceeded),
        ));
        self.connection()
            .await?
            .route_command(redis::cmd("PING"), routing)
            .await
            .map(drop)
    }

    /// Waits until the writes made on this connection to the primary of `key` reached one of
    /// its replicas, when it has one: a result that Redis acknowledged then survives the
    /// shard's failover. An error when no replica acknowledged in time, so that WeChat retries.
    pub(super) async fn replicated(&self, key: &str) -> RedisResult<()> {
        let role = self.on_primary_of(key, redis::cmd("ROLE")).await?;
        match redis::from_redis_value::<redis::Role>(role)? {
            redis::Role::Primary { replicas, .. } if !replicas.is_empty() => {}
            // A primary without replicas, or (a slot map that lags) a replica: nothing to wait
            // for; a write to a replica would have failed already.
            _ => return Ok(()),
        }
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
        Box::pin(async move { self.connection().await?.req_packed_command(cmd).await })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            self.connection()
                .await?
                .req_packed_commands(cmd, offset, count)
                .await
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}
