//! Where commands go: the one Redis of `REDIS_URL`, or the primary that the sentinels of
//! `REDIS_SENTINELS` name, followed across failovers.
//!
//! With Sentinel, a task asks the sentinels (the `redis` crate's [`SentinelClient`], which
//! also checks the `ROLE` of the server it names) every [`LOOK_EVERY`], and again at once when
//! a command fails the way a failover makes it fail (connection lost or refused, timeout,
//! `READONLY`). When the answer is a new address, new connections replace the old ones and
//! the inbox subscribes again ([`Primary::changes`]). Until a primary answers, commands fail at
//! once: browsers get 503 and WeChat retries its callback.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Client, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use tokio::sync::{Notify, watch};

use crate::config::RedisSentinel;

/// How often the sentinels are asked while all is well, and the least pause between two
/// questions when commands fail.
const LOOK_EVERY: Duration = Duration::from_secs(1);
const LOOK_AGAIN: Duration = Duration::from_millis(100);
/// How long asking the sentinels (and checking the role of the server named) may take.
const LOOK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a command waits at start-up for the sentinels to name a primary.
const FIRST_LOOK: Duration = Duration::from_secs(1);
/// How long a login's result waits for a replica to acknowledge it (`WAIT`).
const REPLICA_WAIT: Duration = Duration::from_millis(500);

/// The current primary: its address and connections.
struct Link {
    addr: String,
    client: Client,
    /// Most commands.
    conn: ConnectionManager,
    /// Results and their `WAIT`: `WAIT` holds up the commands behind it on its connection.
    durable: ConnectionManager,
}

/// The Redis primary of the store, shared by every account's store of the process.
pub(super) struct Primary {
    /// The primary of the moment, none until the sentinels first named one; watched by the
    /// inbox, which subscribes again when it changes.
    current: watch::Sender<Option<Arc<Link>>>,
    config: ConnectionManagerConfig,
    /// Set with Sentinel: wakes the task that asks the sentinels.
    wake: Option<Arc<Notify>>,
    /// The replicas the primary had at the last look (Sentinel only).
    replicas: AtomicUsize,
}

impl Primary {
    /// The one Redis of `client`.
    pub(super) fn fixed(client: Client, config: ConnectionManagerConfig) -> RedisResult<Self> {
        let link = Link::new(client, &config)?;
        Ok(Self {
            current: watch::Sender::new(Some(Arc::new(link))),
            config,
            wake: None,
            replicas: AtomicUsize::new(0),
        })
    }

    /// The primary that `settings` name through Sentinel, followed by a task that ends when
    /// the last store on it is dropped. Must be called inside a tokio runtime.
    pub(super) fn sentinel(
        settings: &RedisSentinel,
        config: ConnectionManagerConfig,
    ) -> RedisResult<Arc<Self>> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| RedisError::from((ErrorKind::Client, "Sentinel needs a tokio runtime")))?;
        let sentinels: Vec<String> = settings
            .sentinels
            .iter()
            .map(|(host, port)| {
                if host.contains(':') {
                    format!("redis://[{host}]:{port}")
                } else {
                    format!("redis://{host}:{port}")
                }
            })
            .collect();
        let mut redis = redis::RedisConnectionInfo::default().set_db(settings.db);
        if let Some(password) = &settings.password {
            redis = redis.set_password(password.expose());
        }
        // The client asks the sentinels in order; one that hangs costs its connection's
        // response timeout (the crate's default, 500 ms) and the next is asked.
        let client = SentinelClient::build(
            sentinels,
            settings.master_name.clone(),
            Some(SentinelNodeConnectionInfo::default().set_redis_connection_info(redis)),
            SentinelServerType::Master,
        )?;
        let wake = Arc::new(Notify::new());
        let primary = Arc::new(Self {
            current: watch::Sender::new(None),
            config,
            wake: Some(Arc::clone(&wake)),
            replicas: AtomicUsize::new(0),
        });
        runtime.spawn(follow(Arc::downgrade(&primary), client, wake));
        Ok(primary)
    }

    fn link(&self) -> Option<Arc<Link>> {
        self.current.borrow().clone()
    }

    /// A connection for commands.
    pub(super) fn conn(self: &Arc<Self>) -> Conn {
        Conn {
            manager: self.link().map(|l| l.conn.clone()),
            durable: false,
            primary: Arc::clone(self),
        }
    }

    /// The connection for results, which [`Self::replicated`] waits on.
    pub(super) fn durable(self: &Arc<Self>) -> Conn {
        Conn {
            manager: self.link().map(|l| l.durable.clone()),
            durable: true,
            primary: Arc::clone(self),
        }
    }

    /// The primary of the moment and its changes, for a subscription.
    pub(super) fn changes(&self) -> Changes {
        Changes(self.current.subscribe())
    }

    /// Waits until the writes made on `conn` reached a replica, when the primary has one
    /// (Sentinel only): a result that Redis acknowledged then survives a failover. An error
    /// when no replica acknowledged in time, so that WeChat retries the callback.
    pub(super) async fn replicated(&self, conn: &mut Conn) -> RedisResult<()> {
        if self.replicas.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let acked: i64 = redis::cmd("WAIT")
            .arg(1)
            .arg(REPLICA_WAIT.as_millis() as u64)
            .query_async(conn)
            .await?;
        if acked < 1 {
            return Err(RedisError::from((
                ErrorKind::Io,
                "no replica acknowledged the write in time",
            )));
        }
        Ok(())
    }

    /// A command failed: if it looks like a failover, ask the sentinels now.
    fn suspect(&self, e: &RedisError) {
        if let (true, Some(wake)) = (super::failover_like(e), &self.wake) {
            wake.notify_one();
        }
    }

    /// Asks the sentinels once; whether a primary answered as one.
    async fn look(&self, sentinel: &mut SentinelClient) -> bool {
        let found = tokio::time::timeout(LOOK_TIMEOUT, sentinel.async_get_client()).await;
        let client = match found {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "the sentinels name no primary that answers");
                return false;
            }
            Err(_) => return false,
        };
        let addr = client.get_connection_info().addr().to_string();
        let link = match self.link() {
            Some(link) if link.addr == addr => link,
            _ => match Link::new(client, &self.config) {
                Ok(link) => {
                    let link = Arc::new(link);
                    self.current.send_replace(Some(Arc::clone(&link)));
                    tracing::info!(primary = %addr, "the sentinels name a new Redis primary");
                    link
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot set up the Redis primary");
                    return false;
                }
            },
        };
        let role = tokio::time::timeout(
            LOOK_TIMEOUT,
            redis::cmd("ROLE").query_async::<redis::Role>(&mut link.conn.clone()),
        )
        .await;
        match role {
            Ok(Ok(redis::Role::Primary { replicas, .. })) => {
                self.replicas.store(replicas.len(), Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }
}

/// Asks the sentinels every [`LOOK_EVERY`], or after [`LOOK_AGAIN`] when woken or when no
/// primary answered, until the primary is dropped.
async fn follow(primary: Weak<Primary>, mut sentinel: SentinelClient, wake: Arc<Notify>) {
    let mut lost = false;
    loop {
        let Some(p) = primary.upgrade() else {
            return;
        };
        let found = p.look(&mut sentinel).await;
        drop(p);
        match (found, lost) {
            (false, false) => tracing::warn!("no Redis primary answers; asking the sentinels"),
            (true, true) => tracing::info!("a Redis primary answers again"),
            _ => {}
        }
        lost = !found;
        tokio::time::sleep(LOOK_AGAIN).await;
        if found {
            tokio::select! {
                () = tokio::time::sleep(LOOK_EVERY - LOOK_AGAIN) => {}
                () = wake.notified() => {}
            }
        }
    }
}

impl Link {
    fn new(client: Client, config: &ConnectionManagerConfig) -> RedisResult<Self> {
        Ok(Self {
            addr: client.get_connection_info().addr().to_string(),
            conn: ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?,
            durable: ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?,
            client,
        })
    }
}

/// The primary as a subscription sees it.
pub(super) struct Changes(watch::Receiver<Option<Arc<Link>>>);

impl Changes {
    /// A client of the primary of the moment (at start-up, once the sentinels first named
    /// one): [`Self::changed`] wakes when it is not that primary any more.
    pub(super) async fn client(&mut self) -> RedisResult<Client> {
        let _ = tokio::time::timeout(FIRST_LOOK, self.0.wait_for(Option::is_some)).await;
        self.0
            .borrow_and_update()
            .as_ref()
            .map(|l| l.client.clone())
            .ok_or_else(no_primary)
    }

    /// Waits until the primary changes (forever with a fixed one).
    pub(super) async fn changed(&mut self) {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

fn no_primary() -> RedisError {
    RedisError::from((ErrorKind::Io, "no Redis primary is known yet"))
}

/// A connection to the primary of the moment; its failures make the primary look again.
#[derive(Clone)]
pub(super) struct Conn {
    manager: Option<ConnectionManager>,
    /// Whether this is the connection for results.
    durable: bool,
    primary: Arc<Primary>,
}

impl Conn {
    /// The connection; at start-up, once the sentinels first named a primary (a short wait,
    /// so that the first requests are served, not refused).
    async fn manager(&mut self) -> RedisResult<&mut ConnectionManager> {
        if self.manager.is_none() {
            let mut changes = self.primary.current.subscribe();
            let _ = tokio::time::timeout(FIRST_LOOK, changes.wait_for(Option::is_some)).await;
            self.manager = self.primary.link().map(|l| match self.durable {
                true => l.durable.clone(),
                false => l.conn.clone(),
            });
        }
        self.manager.as_mut().ok_or_else(no_primary)
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let manager = self.manager().await?;
            let reply = manager.req_packed_command(cmd).await;
            if let Err(e) = &reply {
                self.primary.suspect(e);
            }
            reply
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let manager = self.manager().await?;
            let reply = manager.req_packed_commands(cmd, offset, count).await;
            if let Err(e) = &reply {
                self.primary.suspect(e);
            }
            reply
        })
    }

    fn get_db(&self) -> i64 {
        self.manager.as_ref().map_or(0, ConnectionLike::get_db)
    }
}
