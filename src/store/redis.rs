//! The Redis store: several instances of wxlogin share one Redis (`REDIS_URL`).
//!
//! Every key starts with `wxlogin:<appid>:` and has a TTL, but for the page-token key
//! (`…:pagekey`), which lives as long as the deployment. A session is one hash whose key
//! carries the scene as a hash tag (`…:s:{<scene>}`), so everything about a scene lives in
//! one slot of a Redis Cluster. Each change of a session is one Lua script (`lua/`), atomic in
//! Redis: above all `resolve`, which claims the event's key, resolves the session and
//! publishes the result to the instance holding the stream, in one step.
//!
//! Delivery is Redis pub/sub: each instance subscribes to its own inbox channel. Pub/sub does
//! not keep messages for a subscriber that is away, and it need not: the session keeps the
//! result until the QR code expires, the message is only the wake-up. An instance whose
//! subscription was down checks its streams' sessions when it is back ([`Inbox::reconnected`]).
//!
//! Commands go through a [`ConnectionManager`](redis::aio::ConnectionManager) (one multiplexed connection, reconnecting by
//! itself) with short timeouts, so that a Redis outage turns into errors at once (503 for
//! browsers, 5xx for WeChat) and not into hanging requests. With Redis Sentinel
//! (`REDIS_SENTINELS`), [`primary`] finds the primary and follows it across failovers; a
//! login's result then waits for a replica (`WAIT`) before WeChat is answered. On a Redis
//! Cluster (`REDIS_CLUSTER_URLS`, [`cluster`]) the same keys spread over the shards by their
//! hash tags; the steps of `resolve` whose keys are in other slots than the scene's (the
//! callback's binding and event, the delivery) run as commands of their own around its script,
//! and delivery is sharded pub/sub ([`inbox`]).

mod cluster;
mod codes;
mod inbox;
mod once;
mod primary;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cluster::Cluster;
use futures_util::future::BoxFuture;
use primary::Primary;
use redis::aio::ConnectionLike;
use redis::{AsyncCommands as _, Client, Cmd, Pipeline, RedisFuture, Script, Value};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::{
    ATTACHED_GRACE, Attached, Bound, Closed, Found, Holder, Inbox, Notice, Outcome, SessionRecord,
    SessionState, Snapshot, StockedQr, Store, StoreError, millis, unix_now_ms,
};
use crate::config::RedisSentinel;
use crate::wechat::callback::Binding;
use crate::wechat::ids::Scene;
use crate::wechat::secret::Secret;
use crate::wechat::token::{ShareError, TokenShare};

/// Limits on talking to Redis: a command, a connection attempt.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a result is told again to its stream's instance after errors (on a Cluster), and
/// the pause between tries: within WeChat's 5 s wait for the callback's answer, with the
/// script and the replica's acknowledgement.
const TELL_RETRIES_FOR: Duration = Duration::from_secs(1);
const TELL_RETRY_PAUSE: Duration = Duration::from_millis(250);
/// How often the subscription is checked with a PING, and the backoff between attempts to
/// subscribe again.
const INBOX_PING: Duration = Duration::from_secs(5);
const RESUBSCRIBE_FIRST: Duration = Duration::from_millis(100);
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(2);
/// How long a day's count of QR codes is kept: past the day, for instances whose clocks lag.
const QR_DAY_KEEP: Duration = Duration::from_secs(2 * 86_400);

/// Query parameters that carry credentials (the client reads `user` and `pass` for Unix
/// sockets; the others are hidden in case a version or a fork reads them).
const SECRET_PARAMS: [&str; 4] = ["pass", "password", "user", "username"];

/// `REDIS_URL` with its credentials replaced, fit for logs and errors: the user name and
/// password of `redis://user:pass@host` and the `pass`/`user` parameters of
/// `unix:///path?pass=…`. Parsed as the Redis client parses it; what does not parse as a
/// Redis URL is not shown at all (it could be anything, a bare password included). The fragment is dropped.
pub fn redact_url(raw: &str) -> String {
    // The client's schemes only: the rest of anything else could be a bare password.
    const SCHEMES: [&str; 7] = [
        "redis",
        "rediss",
        "valkey",
        "valkeys",
        "unix",
        "redis+unix",
        "valkey+unix",
    ];
    let Some(url) = url::Url::parse(raw)
        .ok()
        .filter(|u| SCHEMES.contains(&u.scheme()) && !u.cannot_be_a_base())
    else {
        return "[REDIS_URL that does not parse]".into();
    };
    let mut shown = format!("{}://", url.scheme());
    if let Some(host) = url.host_str() {
        if !url.username().is_empty() || url.password().is_some() {
            shown.push_str("[redacted]@");
        }
        shown.push_str(host);
        if let Some(port) = url.port() {
            shown.push_str(&format!(":{port}"));
        }
    }
    shown.push_str(url.path());
    if let Some(query) = url.query() {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| {
                let name = pair.split_once('=').map_or(pair, |(name, _)| name);
                let decoded: String = url::form_urlencoded::parse(name.as_bytes())
                    .map(|(k, _)| k.into_owned())
                    .collect();
                if SECRET_PARAMS.contains(&decoded.to_ascii_lowercase().as_str()) {
                    format!("{name}=[redacted]")
                } else {
                    pair.to_owned()
                }
            })
            .collect();
        shown.push('?');
        shown.push_str(&pairs.join("&"));
    }
    shown
}

/// Commands time out and reconnect quickly, so that an outage turns into errors at once.
fn manager_config() -> redis::aio::ConnectionManagerConfig {
    redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500))
}

/// `REDIS_CLUSTER_URLS` with the credentials of each URL replaced.
fn seed_list(seeds: &[Secret]) -> String {
    let shown: Vec<String> = seeds.iter().map(|s| redact_url(s.expose())).collect();
    shown.join(",")
}

/// `REDIS_SENTINELS` as given (it holds no secret).
fn sentinel_list(settings: &RedisSentinel) -> String {
    let hosts: Vec<String> = settings
        .sentinels
        .iter()
        .map(|(host, port)| format!("{host}:{port}"))
        .collect();
    hosts.join(",")
}

/// Why the Redis store could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("{url} is not usable: {source}")]
pub struct RedisSetupError {
    /// The setting at fault and its value: `REDIS_URL` redacted, or `REDIS_SENTINELS`.
    pub url: String,
    /// Why.
    #[source]
    pub source: redis::RedisError,
}

struct Scripts {
    open: Script,
    attach: Script,
    detach: Script,
    close: Script,
    keep: Script,
    bind: Script,
    recover: Script,
    resolve: Script,
    stock_reserve: Script,
    stock_put: Script,
    stock_take: Script,
    token_put: Script,
    unlock: Script,
    qr_budget: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            open: Script::new(include_str!("lua/open.lua")),
            attach: Script::new(include_str!("lua/attach.lua")),
            detach: Script::new(include_str!("lua/detach.lua")),
            close: Script::new(include_str!("lua/close.lua")),
            keep: Script::new(include_str!("lua/keep.lua")),
            bind: Script::new(include_str!("lua/bind.lua")),
            recover: Script::new(include_str!("lua/recover.lua")),
            resolve: Script::new(include_str!("lua/resolve.lua")),
            stock_reserve: Script::new(include_str!("lua/stock_reserve.lua")),
            stock_put: Script::new(include_str!("lua/stock_put.lua")),
            stock_take: Script::new(include_str!("lua/stock_take.lua")),
            token_put: Script::new(include_str!("lua/token_put.lua")),
            unlock: Script::new(include_str!("lua/unlock.lua")),
            qr_budget: Script::new(include_str!("lua/qr_budget.lua")),
        }
    }
}

/// The shared state in Redis. Cheap to clone.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

/// Where commands go.
#[derive(Clone)]
enum Backend {
    /// One Redis: `REDIS_URL`, or the primary that the sentinels of `REDIS_SENTINELS` name.
    Primary(Arc<Primary>),
    /// `REDIS_CLUSTER_URLS`, with its seeds, from which the inbox makes its own client.
    Cluster(Arc<Cluster>, Arc<[Secret]>),
}

/// A connection of either backend.
#[derive(Clone)]
enum Conn {
    Primary(primary::Conn),
    Cluster(cluster::Conn),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Primary(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Primary(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Primary(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

struct Inner {
    backend: Backend,
    /// `wxlogin:<appid>:`.
    prefix: String,
    instance: Arc<str>,
    /// Whether this instance's inbox subscription is up.
    listening: AtomicBool,
    scripts: Scripts,
}

/// Whether `e` is how a command fails while its primary fails over: the connection lost or
/// refused, no answer in time, or `READONLY` from a primary demoted to a replica. Sentinel and
/// Cluster mode both look for the primary again on such an error.
fn failover_like(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
}

fn err(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e)
}

fn bad_reply(what: &'static str) -> StoreError {
    StoreError::UnexpectedReply { what }
}

/// A notice as the scripts publish it.
#[derive(Deserialize)]
struct Published {
    /// `r` (result) or `x` (replaced).
    k: String,
    s: String,
    g: String,
    #[serde(default)]
    r: Option<String>,
}

fn parse_notice(payload: &str) -> Option<Notice> {
    let p: Published = serde_json::from_str(payload).ok()?;
    let scene = Scene::parse(&p.s).ok()?;
    let generation = p.g.parse().ok()?;
    match (p.k.as_str(), p.r) {
        ("r", Some(result)) => Some(Notice::Result {
            scene,
            generation,
            result,
        }),
        ("x", _) => Some(Notice::Replaced { scene, generation }),
        _ => None,
    }
}

/// The fields of a session that [`snapshot`] reads, in its order.
const SESSION_FIELDS: [&str; 9] = ["st", "qr", "aud", "dl", "ex", "h", "r", "k", "kd"];

/// What `bind.lua` found of a binding: `first`, `conflict`, or the first one's outcome.
fn bound(reply: &[Option<String>]) -> Bound {
    match reply.first().and_then(Option::as_deref) {
        Some("first") => Bound::First,
        Some("conflict") => Bound::Conflict,
        outcome => Bound::Retry {
            login: outcome == Some("L"),
        },
    }
}

/// A session from `HMGET` of [`SESSION_FIELDS`].
fn snapshot(fields: &[Option<String>]) -> Option<Snapshot> {
    let [st, qr, aud, dl, ex, h, r, k, kd] = fields else {
        return None;
    };
    let record = SessionRecord {
        qr: qr.clone()?,
        audience: aud.clone().filter(|a| !a.is_empty()),
        deadline_ms: dl.as_deref()?.parse().ok()?,
        expires_ms: ex.as_deref()?.parse().ok()?,
        key_digest: kd.clone().unwrap_or_default(),
    };
    let state = match st.as_deref()? {
        "w" => SessionState::Waiting {
            holder: h.as_deref().and_then(Holder::decode),
        },
        "d" => SessionState::Done {
            result: r.clone()?,
            // Results stored before the resume window existed are kept until the QR expires.
            kept_until_ms: k
                .as_deref()
                .and_then(|k| k.parse().ok())
                .unwrap_or(record.expires_ms),
        },
        _ => return None,
    };
    Some(Snapshot { record, state })
}

impl RedisStore {
    /// A store on `url` for the account `appid`, as instance `instance`. Connects lazily:
    /// an instance starts while Redis is down and reports itself not ready until it is up.
    pub fn new(url: &Secret, appid: &str, instance: Arc<str>) -> Result<Self, RedisSetupError> {
        let setup_error = |source| RedisSetupError {
            url: format!("REDIS_URL {}", redact_url(url.expose())),
            source,
        };
        let client = Client::open(url.expose()).map_err(setup_error)?;
        let primary = Primary::fixed(client, manager_config()).map_err(setup_error)?;
        Ok(Self::on(
            Backend::Primary(Arc::new(primary)),
            appid,
            instance,
        ))
    }

    /// A store on the primary that the sentinels of `settings` name, followed across
    /// failovers. Connects lazily, like [`Self::new`]. Must be called inside a tokio runtime.
    pub fn with_sentinel(
        settings: &RedisSentinel,
        appid: &str,
        instance: Arc<str>,
    ) -> Result<Self, RedisSetupError> {
        let primary =
            Primary::sentinel(settings, manager_config()).map_err(|source| RedisSetupError {
                url: format!("REDIS_SENTINELS {}", sentinel_list(settings)),
                source,
            })?;
        Ok(Self::on(Backend::Primary(primary), appid, instance))
    }

    /// A store on the Redis Cluster that `seeds` (`REDIS_CLUSTER_URLS`) lead to. Connects
    /// lazily, like [`Self::new`]. Must be called inside a tokio runtime.
    pub fn with_cluster(
        seeds: &[Secret],
        appid: &str,
        instance: Arc<str>,
    ) -> Result<Self, RedisSetupError> {
        let cluster = Cluster::new(seeds).map_err(|source| RedisSetupError {
            url: format!("REDIS_CLUSTER_URLS {}", seed_list(seeds)),
            source,
        })?;
        let backend = Backend::Cluster(Arc::new(cluster), seeds.into());
        Ok(Self::on(backend, appid, instance))
    }

    fn on(backend: Backend, appid: &str, instance: Arc<str>) -> Self {
        Self {
            inner: Arc::new(Inner {
                backend,
                prefix: format!("wxlogin:{appid}:"),
                instance,
                listening: AtomicBool::new(false),
                scripts: Scripts::new(),
            }),
        }
    }

    /// The store of the account `appid` on the same Redis, connection and instance: its keys
    /// start with `wxlogin:<appid>:`, so each account's sessions, stock, token and inbox are
    /// its own (appids are unique among a deployment's accounts).
    #[must_use]
    pub fn for_appid(&self, appid: &str) -> Self {
        Self::on(
            self.inner.backend.clone(),
            appid,
            Arc::clone(&self.inner.instance),
        )
    }

    fn conn(&self) -> Conn {
        match &self.inner.backend {
            Backend::Primary(p) => Conn::Primary(p.conn()),
            Backend::Cluster(c, _) => Conn::Cluster(c.conn()),
        }
    }

    /// The connection for results, which [`Self::replicated`] waits on.
    fn durable(&self) -> Conn {
        match &self.inner.backend {
            Backend::Primary(p) => Conn::Primary(p.durable()),
            Backend::Cluster(c, _) => Conn::Cluster(c.durable()),
        }
    }

    /// On a Cluster, whether the primary of `key`'s shard has a replica that a result must
    /// wait for (asked alongside the script that writes it, so that it costs no round trip of
    /// its own); with one Redis, [`Primary::replicated`] knows. When the question fails, it
    /// is taken to have one: the wait then fails too if the shard is down.
    async fn has_replica(&self, key: &str) -> bool {
        match &self.inner.backend {
            Backend::Primary(_) => true,
            Backend::Cluster(c, _) => c.durable().has_replica(key).await.unwrap_or(true),
        }
    }

    /// Waits until the writes made on `conn` (to `key`'s node) reached a replica, when there
    /// is one: see [`Primary::replicated`].
    async fn replicated(
        &self,
        conn: &mut Conn,
        key: &str,
        has_replica: bool,
    ) -> redis::RedisResult<()> {
        match (&self.inner.backend, conn) {
            (Backend::Primary(p), Conn::Primary(conn)) => p.replicated(conn).await,
            (_, Conn::Cluster(conn)) if has_replica => conn.replicated(key).await,
            _ => Ok(()),
        }
    }

    fn on_cluster(&self) -> bool {
        matches!(self.inner.backend, Backend::Cluster(..))
    }

    /// Publishes `notice` on the inbox of `instance`: how many subscribers heard it. On a
    /// Cluster the inbox is a sharded channel (`SPUBLISH`).
    async fn publish(
        &self,
        conn: &mut Conn,
        instance: &str,
        notice: &serde_json::Value,
    ) -> redis::RedisResult<i64> {
        let command = if self.on_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        redis::cmd(command)
            .arg(self.inbox_of(instance))
            .arg(notice.to_string())
            .query_async(conn)
            .await
    }

    /// Records `value` at `key` for `ttl` unless the key holds a value already (`bind.lua`):
    /// first, the same value again (with the outcome recorded for it), or another value.
    async fn record(&self, key: &str, value: &str, ttl: Duration) -> Result<Bound, StoreError> {
        let reply: Vec<Option<String>> = self
            .inner
            .scripts
            .bind
            .key(key)
            .arg(value)
            .arg(millis(ttl).max(1))
            .invoke_async(&mut self.conn())
            .await
            .map_err(err)?;
        Ok(bound(&reply))
    }

    /// `SET key value NX PX ttl`: sets `key` for `ttl` unless it exists; whether it was set.
    async fn set_if_absent(
        &self,
        key: &str,
        value: impl redis::ToSingleRedisArg + Send + Sync,
        ttl: Duration,
    ) -> redis::RedisResult<bool> {
        let set: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(millis(ttl).max(1))
            .query_async(&mut self.conn())
            .await?;
        Ok(set.is_some())
    }

    fn session_key(&self, scene: &Scene) -> String {
        format!("{}s:{{{scene}}}", self.inner.prefix)
    }

    fn once_key(&self, key: &str) -> String {
        format!("{}once:{key}", self.inner.prefix)
    }

    fn page_key_key(&self) -> String {
        format!("{}pagekey", self.inner.prefix)
    }

    fn stock_keys(&self) -> (String, String) {
        let p = &self.inner.prefix;
        (
            format!("{p}{{stock}}:codes"),
            format!("{p}{{stock}}:making"),
        )
    }

    /// The count of QR codes made on `day`, e.g. `wxlogin:<appid>:qr:day:20250101`.
    fn qr_day_key(&self, day: &str) -> String {
        format!("{}qr:day:{day}", self.inner.prefix)
    }

    fn token_keys(&self) -> (String, String) {
        let p = &self.inner.prefix;
        (format!("{p}{{token}}:value"), format!("{p}{{token}}:lock"))
    }

    /// The prefix of inbox channels; an instance's is this + `{<instance>}`.
    fn inbox_prefix(&self) -> String {
        format!("{}inbox:", self.inner.prefix)
    }

    fn inbox(&self) -> String {
        self.inbox_of(&self.inner.instance)
    }

    fn inbox_of(&self, instance: &str) -> String {
        format!("{}{{{instance}}}", self.inbox_prefix())
    }

    /// On a Cluster, the scene's copy of the key of a scan event (its openid and `CreateTime`),
    /// in the scene's slot so that the script resolving the scene may touch it.
    fn scene_event_key(&self, scene: &Scene, event_key: &str) -> String {
        format!("{}once:{{{scene}}}:{event_key}", self.inner.prefix)
    }

    /// A result delivered to a stream of this instance, then refused to WeChat because no
    /// replica acknowledged it: the stream gets it all the same (WeChat's retry finds the scene
    /// resolved), through this instance's inbox as a result for another instance's stream would.
    async fn tell_own_stream(
        &self,
        conn: &mut Conn,
        scene: &Scene,
        reply: &[String],
        result: Option<&str>,
    ) {
        let ([kind, holder], Some(result)) = (reply, result) else {
            return;
        };
        let Some(holder) = Holder::decode(holder).filter(|h| h.instance == self.inner.instance)
        else {
            return;
        };
        if kind != "delivered" {
            return;
        }
        let notice = serde_json::json!({
            "k": "r",
            "s": scene.as_str(),
            "g": holder.generation.to_string(),
            "r": result,
        });
        if let Err(e) = self.publish(conn, &self.inner.instance, &notice).await {
            // The stream's session holds the result: the inbox's check when it is back, or
            // WeChat's retry, hands it over.
            tracing::warn!(error = %e, "cannot hand a result to its stream here");
        }
    }

    /// On a Cluster, after the script resolved `scene` for a stream of another instance
    /// (`holder`): tells that instance (`SPUBLISH`), as the script does on one Redis. The
    /// script's reply as it would have been: delivered when the instance heard it, else parked
    /// (kept until the QR code expires). Should this instance die before telling, the stream
    /// still gets the result when its wait ends, or from its session when its browser returns.
    async fn tell_result(
        &self,
        conn: &mut Conn,
        scene: &Scene,
        holder: &str,
        result: &str,
    ) -> Result<Vec<String>, StoreError> {
        let Some(h) = Holder::decode(holder) else {
            return Err(bad_reply("resolve"));
        };
        let notice = serde_json::json!({
            "k": "r",
            "s": scene.as_str(),
            "g": h.generation.to_string(),
            "r": result,
        });
        // An error (the channel's primary just died, and the client still routes to it) is
        // retried for a while, on a connection made anew: that instance cannot learn of the
        // result otherwise until its stream's wait ends, because it checked its sessions when
        // its inbox came back, which may have been before this script ran. Silence (nobody
        // heard) needs no retry: an instance whose inbox was away checks its sessions after.
        let deadline = tokio::time::Instant::now() + TELL_RETRIES_FOR;
        let heard = loop {
            match self.publish(conn, &h.instance, &notice).await {
                Ok(heard) => break heard,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    tracing::warn!(error = %e, scene = %scene.short(), "cannot tell a stream's instance of its result");
                    break 0;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "telling a stream's instance again soon");
                    tokio::time::sleep(TELL_RETRY_PAUSE).await;
                }
            }
        };
        if heard > 0 {
            return Ok(vec!["delivered".into(), holder.into()]);
        }
        self.keep_for_return(scene).await?;
        Ok(vec!["parked".into()])
    }

    /// On a Cluster: tells the instance of a stream that another stream took its session over.
    async fn tell_replaced(&self, scene: &Scene, old: &Holder) {
        if old.instance == self.inner.instance {
            return;
        }
        let notice = serde_json::json!({
            "k": "x",
            "s": scene.as_str(),
            "g": old.generation.to_string(),
        });
        if let Err(e) = self.publish(&mut self.conn(), &old.instance, &notice).await {
            // That stream then waits on until its timeout, its session answering no more.
            tracing::warn!(error = %e, "cannot tell an instance that its stream was replaced");
        }
    }
}

impl Store for RedisStore {
    fn instance(&self) -> &Arc<str> {
        &self.inner.instance
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            match self.conn() {
                Conn::Cluster(conn) => conn.ping_primaries().await.map_err(err)?,
                mut conn => {
                    let _: String = redis::cmd("PING")
                        .query_async(&mut conn)
                        .await
                        .map_err(err)?;
                }
            }
            if !self.inner.listening.load(Ordering::Relaxed) {
                return Err(StoreError::InboxDown);
            }
            Ok(())
        })
    }

    fn claim_once<'a>(
        &'a self,
        key: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            self.set_if_absent(&self.once_key(key), 1, ttl)
                .await
                .map_err(err)
        })
    }

    fn page_key<'a>(
        &'a self,
        candidate: &'a [u8; 32],
    ) -> BoxFuture<'a, Result<[u8; 32], StoreError>> {
        Box::pin(async move {
            let key = self.page_key_key();
            let mut conn = self.conn();
            let _: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(hex::encode(candidate))
                .arg("NX")
                .query_async(&mut conn)
                .await
                .map_err(err)?;
            let stored: Option<String> = conn.get(&key).await.map_err(err)?;
            let mut bytes = [0u8; 32];
            hex::decode_to_slice(stored.ok_or_else(|| bad_reply("page_key"))?, &mut bytes)
                .map_err(|_| bad_reply("page_key"))?;
            Ok(bytes)
        })
    }

    fn stock_reserve<'a>(
        &'a self,
        scenes: &'a [String],
        target: usize,
        hold: Duration,
    ) -> BoxFuture<'a, Result<usize, StoreError>> {
        Box::pin(async move {
            let (codes, making) = self.stock_keys();
            let now = unix_now_ms();
            let mut call = self.inner.scripts.stock_reserve.key(codes);
            call.key(making)
                .arg(now)
                .arg(now.saturating_add(millis(hold)))
                .arg(target);
            for scene in scenes {
                call.arg(scene);
            }
            let granted: usize = call.invoke_async(&mut self.conn()).await.map_err(err)?;
            Ok(granted)
        })
    }

    fn stock_put<'a>(&'a self, qr: &'a StockedQr) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let (codes, making) = self.stock_keys();
            let item = format!("{}|{}|{}", qr.expires_ms, qr.scene, qr.payload);
            let _: i64 = self
                .inner
                .scripts
                .stock_put
                .key(codes)
                .key(making)
                .arg(item)
                .arg(&qr.scene)
                .arg(qr.expires_ms)
                .invoke_async(&mut self.conn())
                .await
                .map_err(err)?;
            Ok(())
        })
    }

    fn stock_release<'a>(&'a self, scene: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let (_, making) = self.stock_keys();
            let _: i64 = self.conn().zrem(making, scene).await.map_err(err)?;
            Ok(())
        })
    }

    fn stock_take(
        &self,
        fresh_until_ms: u64,
    ) -> BoxFuture<'_, Result<Option<StockedQr>, StoreError>> {
        Box::pin(async move {
            let (codes, _) = self.stock_keys();
            let item: Option<String> = self
                .inner
                .scripts
                .stock_take
                .key(codes)
                .arg(fresh_until_ms)
                .invoke_async(&mut self.conn())
                .await
                .map_err(err)?;
            let Some(item) = item else {
                return Ok(None);
            };
            let mut parts = item.splitn(3, '|');
            let (Some(expires), Some(scene), Some(payload)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(bad_reply("stock_take"));
            };
            Ok(Some(StockedQr {
                scene: scene.to_owned(),
                expires_ms: expires.parse().map_err(|_| bad_reply("stock_take"))?,
                payload: payload.to_owned(),
            }))
        })
    }

    fn stock_len(&self) -> BoxFuture<'_, Result<usize, StoreError>> {
        Box::pin(async move {
            let (codes, _) = self.stock_keys();
            self.conn().llen(codes).await.map_err(err)
        })
    }

    fn qr_budget_take<'a>(
        &'a self,
        day: &'a str,
        budget: u64,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        Box::pin(async move {
            let made: i64 = self
                .inner
                .scripts
                .qr_budget
                .key(self.qr_day_key(day))
                .arg(budget)
                .arg(QR_DAY_KEEP.as_secs())
                .invoke_async(&mut self.conn())
                .await
                .map_err(err)?;
            Ok(u64::try_from(made).ok())
        })
    }

    fn qr_made_on<'a>(&'a self, day: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let made: Option<u64> = self.conn().get(self.qr_day_key(day)).await.map_err(err)?;
            Ok(made.unwrap_or(0))
        })
    }

    fn once_put<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(self.put_once(key, value, ttl))
    }

    fn once_take<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        Box::pin(self.take_once(key))
    }

    fn code_reserve<'a>(
        &'a self,
        code: &'a str,
        scene: &'a Scene,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(self.reserve_code(code, scene, ttl))
    }

    fn code_lookup<'a>(
        &'a self,
        code: &'a str,
    ) -> BoxFuture<'a, Result<Option<Scene>, StoreError>> {
        Box::pin(self.lookup_code(code))
    }

    fn code_release<'a>(
        &'a self,
        code: &'a str,
        scene: &'a Scene,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(self.release_code(code, scene))
    }

    fn code_attempt<'a>(
        &'a self,
        sender: &'a str,
        message: &'a str,
        window: Duration,
    ) -> BoxFuture<'a, Result<u32, StoreError>> {
        Box::pin(self.count_attempt(sender, message, window))
    }

    fn open<'a>(
        &'a self,
        scene: &'a Scene,
        record: &'a SessionRecord,
        holder: &'a Holder,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let expire_at = record.deadline_ms.saturating_add(millis(ATTACHED_GRACE));
            let _: i64 = self
                .inner
                .scripts
                .open
                .key(self.session_key(scene))
                .arg(&record.qr)
                .arg(record.audience.as_deref().unwrap_or_default())
                .arg(record.deadline_ms)
                .arg(record.expires_ms)
                .arg(holder.encode())
                .arg(expire_at)
                .arg(&record.key_digest)
                .invoke_async(&mut self.conn())
                .await
                .map_err(err)?;
            Ok(())
        })
    }

    fn attach<'a>(
        &'a self,
        scene: &'a Scene,
        key_digest: &'a str,
        holder: &'a Holder,
        has_result: bool,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Option<Attached>, StoreError>> {
        Box::pin(async move {
            let reply: Option<Vec<String>> = self
                .inner
                .scripts
                .attach
                .key(self.session_key(scene))
                .arg(holder.encode())
                .arg(if has_result { "1" } else { "0" })
                .arg(now_ms)
                .arg(millis(ATTACHED_GRACE))
                .arg(self.inbox_prefix())
                .arg(self.inner.instance.as_ref())
                .arg(scene.as_str())
                .arg(key_digest)
                .arg(if self.on_cluster() { "1" } else { "0" })
                .invoke_async(&mut self.conn())
                .await
                .map_err(err)?;
            let Some(reply) = reply else {
                return Ok(None);
            };
            let [kind, qr, aud, dl, ex, kd, last] = reply.as_slice() else {
                return Err(bad_reply("attach"));
            };
            let record = SessionRecord {
                qr: qr.clone(),
                audience: Some(aud.clone()).filter(|a| !a.is_empty()),
                deadline_ms: dl.parse().map_err(|_| bad_reply("attach"))?,
                expires_ms: ex.parse().map_err(|_| bad_reply("attach"))?,
                key_digest: kd.clone(),
            };
            Ok(Some(match kind.as_str() {
                "w" => {
                    let replaced = Holder::decode(last).filter(|h| h != holder);
                    if let Some(old) = replaced.as_ref().filter(|_| self.on_cluster()) {
                        self.tell_replaced(scene, old).await;
                    }
                    Attached::Waiting { record, replaced }
                }
                _ => Attached::Result {
                    record,
                    result: last.clone(),
                },
            }))
        })
    }

    fn detach(&self, scene: Scene, holder: Holder) -> BoxFuture<'static, Result<(), StoreError>> {
        let store = self.clone();
        Box::pin(async move {
            let _: i64 = store
                .inner
                .scripts
                .detach
                .key(store.session_key(&scene))
                .arg(holder.encode())
                .invoke_async(&mut store.conn())
                .await
                .map_err(err)?;
            Ok(())
        })
    }

    fn close<'a>(
        &'a self,
        scene: &'a Scene,
        holder: &'a Holder,
    ) -> BoxFuture<'a, Result<Closed, StoreError>> {
        Box::pin(async move {
            let reply: Vec<String> = self
                .inner
                .scripts
                .close
                .key(self.session_key(scene))
                .arg(holder.encode())
                .invoke_async(&mut self.conn())
                .await
                .map_err(err)?;
            match reply.as_slice() {
                [k] if k == "closed" => Ok(Closed::Closed),
                [k] if k == "notheld" => Ok(Closed::NotHeld),
                [k, r] if k == "resolved" => Ok(Closed::Resolved(r.clone())),
                _ => Err(bad_reply("close")),
            }
        })
    }

    fn keep_for_return<'a>(&'a self, scene: &'a Scene) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let _: i64 = self
                .inner
                .scripts
                .keep
                .key(self.session_key(scene))
                .arg(millis(ATTACHED_GRACE))
                .invoke_async(&mut self.conn())
                .await
                .map_err(err)?;
            Ok(())
        })
    }

    fn session<'a>(
        &'a self,
        scene: &'a Scene,
    ) -> BoxFuture<'a, Result<Option<Snapshot>, StoreError>> {
        Box::pin(async move {
            let fields: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(self.session_key(scene))
                .arg(&SESSION_FIELDS)
                .query_async(&mut self.conn())
                .await
                .map_err(err)?;
            Ok(snapshot(&fields))
        })
    }

    fn recover<'a>(
        &'a self,
        scene: &'a Scene,
        record: &'a SessionRecord,
        holder: &'a Holder,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Option<Snapshot>, StoreError>> {
        Box::pin(async move {
            let fields: Option<Vec<Option<String>>> = self
                .inner
                .scripts
                .recover
                .key(self.session_key(scene))
                .arg(holder.encode())
                .arg(now_ms)
                .arg(millis(ATTACHED_GRACE))
                .arg(&record.qr)
                .arg(record.audience.as_deref().unwrap_or_default())
                .arg(record.deadline_ms)
                .arg(record.expires_ms)
                .arg(&record.key_digest)
                .invoke_async(&mut self.conn())
                .await
                .map_err(err)?;
            Ok(fields.and_then(|f| snapshot(&f)))
        })
    }

    fn bind<'a>(&'a self, binding: &'a Binding) -> BoxFuture<'a, Result<Bound, StoreError>> {
        Box::pin(async move {
            self.record(
                &self.once_key(&binding.key()),
                &binding.digest_hex(),
                binding.ttl(),
            )
            .await
        })
    }

    fn session_or_bind<'a>(
        &'a self,
        scene: &'a Scene,
        binding: &'a Binding,
    ) -> BoxFuture<'a, Result<Found, StoreError>> {
        Box::pin(async move {
            if self.on_cluster() {
                // The session and the binding live in different slots: two commands.
                return Ok(match self.session(scene).await? {
                    Some(session) => Found::Session(session),
                    None => Found::Bound(self.bind(binding).await?),
                });
            }
            let reply: Vec<Option<String>> = self
                .inner
                .scripts
                .bind
                .key(self.once_key(&binding.key()))
                .key(self.session_key(scene))
                .arg(binding.digest_hex())
                .arg(millis(binding.ttl()).max(1))
                .arg(&SESSION_FIELDS)
                .invoke_async(&mut self.conn())
                .await
                .map_err(err)?;
            match reply.split_first() {
                Some((Some(tag), fields)) if tag == "session" => match snapshot(fields) {
                    Some(session) => Ok(Found::Session(session)),
                    // A session hash that does not read as one resolves nothing, as a
                    // missing one: its callback is bound all the same.
                    None => self.bind(binding).await.map(Found::Bound),
                },
                _ => Ok(Found::Bound(bound(&reply))),
            }
        })
    }

    fn resolve<'a>(
        &'a self,
        scene: &'a Scene,
        binding: &'a Binding,
        event_key: &'a str,
        event_ttl: Duration,
        result: Option<&'a str>,
        code: Option<&'a str>,
        keep: Duration,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Outcome<Holder>, StoreError>> {
        Box::pin(async move {
            let cluster = self.on_cluster();
            if cluster {
                // The binding and the event live in other slots than the scene: recorded
                // first. A retry (the same query and body, the same event and scene) goes on,
                // and the scene's copy of the event's key answers it as the first was answered.
                if self.bind(binding).await? == Bound::Conflict {
                    return Ok(Outcome::Replayed);
                }
                let event = self
                    .record(&self.once_key(event_key), scene.as_str(), event_ttl)
                    .await?;
                if event == Bound::Conflict {
                    // A signed callback repeating another scene's event: a replay.
                    return Ok(Outcome::Duplicate { login: false });
                }
            }
            let session_key = self.session_key(scene);
            let mut conn = self.durable();
            let mut call = self.inner.scripts.resolve.key(&session_key);
            if cluster {
                call.key(self.scene_event_key(scene, event_key));
            } else {
                call.key(self.once_key(event_key))
                    .key(self.once_key(&binding.key()));
                if let Some(code) = code {
                    call.key(self.code_key(code));
                }
            }
            call.arg(millis(event_ttl).max(1))
                .arg(now_ms)
                .arg(result.unwrap_or_default())
                .arg(self.inner.instance.as_ref())
                .arg(self.inbox_prefix())
                .arg(scene.as_str())
                .arg(millis(keep))
                .arg(binding.digest_hex())
                .arg(millis(binding.ttl()).max(1))
                .arg(millis(ATTACHED_GRACE))
                .arg(if cluster { "1" } else { "0" });
            let (reply, has_replica) = tokio::join!(
                call.invoke_async::<Vec<String>>(&mut conn),
                self.has_replica(&session_key)
            );
            let reply = reply.map_err(err)?;
            let reply = match (reply.as_slice(), result) {
                ([kind, h], Some(result)) if kind == "tell" => {
                    self.tell_result(&mut conn, scene, h, result).await?
                }
                _ => reply,
            };
            if let Err(e) = self.replicated(&mut conn, &session_key, has_replica).await {
                self.tell_own_stream(&mut conn, scene, &reply, result).await;
                return Err(err(e));
            }
            if let (true, Some(code), Some(kind)) = (cluster, code, reply.first())
                && matches!(kind.as_str(), "delivered" | "parked")
            {
                // Not awaited: the login is done, and the code's shard may be the one
                // failing over; the callback's answer need not wait for it.
                let (store, code, scene) = (self.clone(), code.to_owned(), scene.clone());
                tokio::spawn(async move { store.lapse_code(&code, &scene, keep).await });
            }
            match reply.as_slice() {
                [k] if k == "conflict" => Ok(Outcome::Replayed),
                [k, first] if k == "dup" => Ok(Outcome::Duplicate {
                    login: first == "L",
                }),
                [k] if k == "nobody" => Ok(Outcome::Nobody),
                [k] if k == "parked" => Ok(Outcome::Parked),
                [k, h] if k == "delivered" => Holder::decode(h)
                    .map(Outcome::Delivered)
                    .ok_or_else(|| bad_reply("resolve")),
                _ => Err(bad_reply("resolve")),
            }
        })
    }

    fn live_sessions(&self) -> Option<usize> {
        None
    }

    fn purge_expired(&self) {}

    fn listen(&self, inbox: Arc<dyn Inbox>, cancel: CancellationToken) -> BoxFuture<'static, ()> {
        let store = self.clone();
        Box::pin(async move {
            let mut backoff = RESUBSCRIBE_FIRST;
            let mut reported = false;
            loop {
                match store.listen_once(&inbox, &cancel).await {
                    Ok(true) => return,
                    Ok(false) => {
                        tracing::warn!("the inbox subscription was lost; subscribing again");
                        backoff = RESUBSCRIBE_FIRST;
                        reported = false;
                    }
                    Err(e) => {
                        if !reported {
                            tracing::warn!(error = %e, "cannot subscribe to the inbox; retrying");
                            reported = true;
                        }
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = cancel.cancelled() => return,
                }
                backoff = (backoff * 2).min(RESUBSCRIBE_MAX);
            }
        })
    }

    fn token_share(&self) -> Option<Arc<dyn TokenShare>> {
        Some(Arc::new(self.clone()))
    }
}

fn share_err(e: redis::RedisError) -> ShareError {
    ShareError::unavailable(e)
}

impl TokenShare for RedisStore {
    fn load(&self) -> BoxFuture<'_, Result<Option<(Secret, u64)>, ShareError>> {
        Box::pin(async move {
            let (value, _) = self.token_keys();
            let stored: Option<String> = self.conn().get(value).await.map_err(share_err)?;
            Ok(stored.and_then(|s| {
                let (expires, token) = s.split_once('|')?;
                Some((Secret::new(token), expires.parse().ok()?))
            }))
        })
    }

    fn try_lock(&self, ttl: Duration) -> BoxFuture<'_, Result<bool, ShareError>> {
        Box::pin(async move {
            let (_, lock) = self.token_keys();
            self.set_if_absent(&lock, self.inner.instance.as_ref(), ttl)
                .await
                .map_err(share_err)
        })
    }

    fn put<'a>(
        &'a self,
        token: &'a Secret,
        expires_ms: u64,
    ) -> BoxFuture<'a, Result<(), ShareError>> {
        Box::pin(async move {
            let (value, lock) = self.token_keys();
            let _: i64 = self
                .inner
                .scripts
                .token_put
                .key(value)
                .key(lock)
                .arg(format!("{expires_ms}|{}", token.expose()))
                .arg(expires_ms)
                .arg(self.inner.instance.as_ref())
                .invoke_async(&mut self.conn())
                .await
                .map_err(share_err)?;
            Ok(())
        })
    }

    fn unlock(&self) -> BoxFuture<'_, Result<(), ShareError>> {
        Box::pin(async move {
            let (_, lock) = self.token_keys();
            let _: i64 = self
                .inner
                .scripts
                .unlock
                .key(lock)
                .arg(self.inner.instance.as_ref())
                .invoke_async(&mut self.conn())
                .await
                .map_err(share_err)?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_of_redis_url_is_redacted() {
        assert_eq!(
            redact_url("redis://:hunter2@cache.internal:6379/0"),
            "redis://[redacted]@cache.internal:6379/0"
        );
        assert_eq!(
            redact_url("rediss://user:p%40ss@h:6380"),
            "rediss://[redacted]@h:6380"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            redact_url("redis://user:hunter2@h/2?protocol=resp3#hunter2"),
            "redis://[redacted]@h/2?protocol=resp3"
        );
        assert_eq!(
            redact_url("unix:///run/redis.sock?pass=hunter2"),
            "unix:///run/redis.sock?pass=[redacted]"
        );
        assert_eq!(
            redact_url("redis+unix:///p?db=1&pass=hunter2&user=alice"),
            "redis+unix:///p?db=1&pass=[redacted]&user=[redacted]"
        );
        // An encoded parameter name is a parameter name too.
        assert_eq!(
            redact_url("unix:///p?p%61ss=hunter2&PASSWORD=hunter2"),
            "unix:///p?p%61ss=[redacted]&PASSWORD=[redacted]"
        );
        for odd in [
            "unix://alice:hunter2@/run/redis.sock",
            "nonsense:hunter2",
            "hunter2",
            "redis://alice:hunter2@[::1",
            "redis://:hunter2@h:99999",
            "",
        ] {
            let shown = redact_url(odd);
            assert!(!shown.contains("hunter2"), "{odd} -> {shown}");
            assert!(!shown.contains("alice"), "{odd} -> {shown}");
        }
    }

    #[test]
    fn a_redis_url_the_client_refuses_is_not_echoed_in_the_error() {
        for url in [
            "redis://alice:hunter2@/0",
            "http://alice:hunter2@h:6379",
            "unix://alice:hunter2@/run/redis.sock",
            "hunter2",
        ] {
            let Err(e) = RedisStore::new(&Secret::new(url.to_owned()), "wx1", Arc::from("i"))
            else {
                panic!("{url} was accepted");
            };
            let text = format!("{e} {e:?}");
            assert!(!text.contains("hunter2"), "{url} -> {text}");
            assert!(!text.contains("alice"), "{url} -> {text}");
        }
    }

    #[tokio::test]
    async fn cluster_seeds_the_client_refuses_are_not_echoed_in_the_error() {
        for seeds in [
            &["redis://alice:hunter2@/0"][..],
            &["redis://:hunter2@n1:6379", "redis://:other@n2:6379"][..],
            &["redis://:hunter2@n1:6379", "http://alice:hunter2@h"][..],
        ] {
            let seeds: Vec<Secret> = seeds.iter().map(|s| Secret::new(*s)).collect();
            let Err(e) = RedisStore::with_cluster(&seeds, "wx1", Arc::from("i")) else {
                panic!("{seeds:?} was accepted");
            };
            let text = format!("{e} {e:?}");
            assert!(text.starts_with("REDIS_CLUSTER_URLS"), "{text}");
            assert!(!text.contains("hunter2"), "{text}");
            assert!(!text.contains("alice"), "{text}");
        }
    }

    #[test]
    fn notices_parse_and_garbage_is_refused() {
        let n = parse_notice(r#"{"k":"r","s":"abc","g":"7","r":"{}"}"#);
        assert!(matches!(n, Some(Notice::Result { generation: 7, .. })));
        let n = parse_notice(r#"{"k":"x","s":"abc","g":"3"}"#);
        assert!(matches!(n, Some(Notice::Replaced { generation: 3, .. })));
        assert!(parse_notice(r#"{"k":"r","s":"a b","g":"1","r":"{}"}"#).is_none());
        assert!(parse_notice("nope").is_none());
    }
}
