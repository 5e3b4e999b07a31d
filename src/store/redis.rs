//! The Redis store: several instances of wxlogin share one Redis (`REDIS_URL`).
//!
//! Every key starts with `wxlogin:<appid>:` and has a TTL. A session is one hash whose key
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
//! Commands go through a [`ConnectionManager`] (one multiplexed connection, reconnecting by
//! itself) with short timeouts, so that a Redis outage turns into errors at once (503 for
//! browsers, 5xx for WeChat) and not into hanging requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands as _, Client, Script};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::{
    ATTACHED_GRACE, Attached, Holder, Inbox, Notice, Resolved, SessionRecord, SessionState,
    Snapshot, StockedQr, Store, StoreError, millis, unix_now_ms,
};
use crate::wechat::ids::Scene;
use crate::wechat::secret::Secret;
use crate::wechat::token::{ShareError, TokenShare};

/// Limits on talking to Redis: a command, a connection attempt.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the subscription is checked with a PING, and the backoff between attempts to
/// subscribe again.
const INBOX_PING: Duration = Duration::from_secs(5);
const RESUBSCRIBE_FIRST: Duration = Duration::from_millis(100);
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(2);
/// How long a day's count of QR codes is kept: past the day, for instances whose clocks lag.
const QR_DAY_KEEP: Duration = Duration::from_secs(2 * 86_400);

/// `REDIS_URL` with its password (and user name) replaced, fit for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "[unparsable URL]".into();
    };
    match rest.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://[redacted]@{host}"),
        None => format!("{scheme}://{rest}"),
    }
}

/// Why the Redis store could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("REDIS_URL {url} is not usable: {reason}")]
pub struct RedisSetupError {
    /// The URL, redacted.
    pub url: String,
    /// Why.
    pub reason: String,
}

struct Scripts {
    open: Script,
    attach: Script,
    detach: Script,
    close: Script,
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

struct Inner {
    client: Client,
    conn: ConnectionManager,
    /// `wxlogin:<appid>:`.
    prefix: String,
    instance: Arc<str>,
    /// Whether this instance's inbox subscription is up.
    listening: AtomicBool,
    scripts: Scripts,
}

fn err(e: redis::RedisError) -> StoreError {
    StoreError(e.to_string())
}

fn bad_reply(what: &str) -> StoreError {
    StoreError(format!("unexpected reply from Redis to {what}"))
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
const SESSION_FIELDS: [&str; 8] = ["st", "qr", "aud", "dl", "ex", "h", "r", "k"];

/// A session from `HMGET` of [`SESSION_FIELDS`].
fn snapshot(fields: &[Option<String>]) -> Option<Snapshot> {
    let [st, qr, aud, dl, ex, h, r, k] = fields else {
        return None;
    };
    let record = SessionRecord {
        qr: qr.clone()?,
        audience: aud.clone().filter(|a| !a.is_empty()),
        deadline_ms: dl.as_deref()?.parse().ok()?,
        expires_ms: ex.as_deref()?.parse().ok()?,
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
        let setup_error = |reason: String| RedisSetupError {
            url: redact_url(url.expose()),
            reason,
        };
        let client = Client::open(url.expose()).map_err(|e| setup_error(e.to_string()))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| setup_error(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                conn,
                prefix: format!("wxlogin:{appid}:"),
                instance,
                listening: AtomicBool::new(false),
                scripts: Scripts::new(),
            }),
        })
    }

    fn conn(&self) -> ConnectionManager {
        self.inner.conn.clone()
    }

    fn session_key(&self, scene: &Scene) -> String {
        format!("{}s:{{{scene}}}", self.inner.prefix)
    }

    fn once_key(&self, key: &str) -> String {
        format!("{}once:{key}", self.inner.prefix)
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
        format!("{}{{{}}}", self.inbox_prefix(), self.inner.instance)
    }

    /// Subscribes to this instance's inbox and hands its messages to `inbox` until the
    /// connection fails or `cancel`. `Ok(true)` when cancelled.
    async fn listen_once(
        &self,
        inbox: &Arc<dyn Inbox>,
        cancel: &CancellationToken,
    ) -> Result<bool, redis::RedisError> {
        let pubsub = tokio::time::timeout(CONNECT_TIMEOUT, self.inner.client.get_async_pubsub())
            .await
            .map_err(|_| {
                redis::RedisError::from((redis::ErrorKind::Io, "timed out connecting to Redis"))
            })??;
        let (mut sink, mut messages) = pubsub.split();
        tokio::time::timeout(RESPONSE_TIMEOUT, sink.subscribe(self.inbox()))
            .await
            .map_err(|_| {
                redis::RedisError::from((redis::ErrorKind::Io, "timed out subscribing"))
            })??;
        // Notices arriving meanwhile wait in the subscription.
        inbox.reconnected().await;
        self.inner.listening.store(true, Ordering::Relaxed);
        tracing::info!("listening for deliveries from other instances");
        let mut ping = tokio::time::interval(INBOX_PING);
        ping.tick().await;
        let ended = loop {
            tokio::select! {
                message = messages.next() => match message {
                    Some(message) => {
                        let notice = message
                            .get_payload::<String>()
                            .ok()
                            .and_then(|p| parse_notice(&p));
                        match notice {
                            Some(notice) => inbox.notice(notice),
                            None => tracing::warn!("ignoring a malformed message in the inbox"),
                        }
                    }
                    None => break Ok(false),
                },
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(RESPONSE_TIMEOUT, sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        break Ok(false);
                    }
                }
                () = cancel.cancelled() => break Ok(true),
            }
        };
        self.inner.listening.store(false, Ordering::Relaxed);
        ended
    }
}

impl Store for RedisStore {
    fn instance(&self) -> &Arc<str> {
        &self.inner.instance
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let mut conn = self.conn();
            let _: String = redis::cmd("PING")
                .query_async(&mut conn)
                .await
                .map_err(err)?;
            if !self.inner.listening.load(Ordering::Relaxed) {
                return Err(StoreError("the inbox subscription is down".into()));
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
            let mut conn = self.conn();
            let set: Option<String> = redis::cmd("SET")
                .arg(self.once_key(key))
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(millis(ttl).max(1))
                .query_async(&mut conn)
                .await
                .map_err(err)?;
            Ok(set.is_some())
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
                .invoke_async(&mut self.conn())
                .await
                .map_err(err)?;
            Ok(())
        })
    }

    fn attach<'a>(
        &'a self,
        scene: &'a Scene,
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
                .invoke_async(&mut self.conn())
                .await
                .map_err(err)?;
            let Some(reply) = reply else {
                return Ok(None);
            };
            let [kind, qr, aud, dl, ex, last] = reply.as_slice() else {
                return Err(bad_reply("attach"));
            };
            let record = SessionRecord {
                qr: qr.clone(),
                audience: Some(aud.clone()).filter(|a| !a.is_empty()),
                deadline_ms: dl.parse().map_err(|_| bad_reply("attach"))?,
                expires_ms: ex.parse().map_err(|_| bad_reply("attach"))?,
            };
            Ok(Some(match kind.as_str() {
                "w" => Attached::Waiting {
                    record,
                    replaced: Holder::decode(last).filter(|h| h != holder),
                },
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
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let _: i64 = self
                .inner
                .scripts
                .close
                .key(self.session_key(scene))
                .arg(holder.encode())
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
                .invoke_async(&mut self.conn())
                .await
                .map_err(err)?;
            Ok(fields.and_then(|f| snapshot(&f)))
        })
    }

    fn resolve<'a>(
        &'a self,
        scene: &'a Scene,
        event_key: &'a str,
        event_ttl: Duration,
        result: Option<&'a str>,
        keep: Duration,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Resolved, StoreError>> {
        Box::pin(async move {
            let reply: Vec<String> = self
                .inner
                .scripts
                .resolve
                .key(self.session_key(scene))
                .key(self.once_key(event_key))
                .arg(millis(event_ttl).max(1))
                .arg(now_ms)
                .arg(result.unwrap_or_default())
                .arg(self.inner.instance.as_ref())
                .arg(self.inbox_prefix())
                .arg(scene.as_str())
                .arg(millis(keep))
                .invoke_async(&mut self.conn())
                .await
                .map_err(err)?;
            match reply.as_slice() {
                [k] if k == "dup" => Ok(Resolved::Duplicate),
                [k] if k == "nobody" => Ok(Resolved::Nobody),
                [k] if k == "parked" => Ok(Resolved::Parked),
                [k, h] if k == "delivered" => Holder::decode(h)
                    .map(Resolved::Delivered)
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
    ShareError(e.to_string())
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
            let set: Option<String> = redis::cmd("SET")
                .arg(lock)
                .arg(self.inner.instance.as_ref())
                .arg("NX")
                .arg("PX")
                .arg(millis(ttl).max(1))
                .query_async(&mut self.conn())
                .await
                .map_err(share_err)?;
            Ok(set.is_some())
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
        assert!(!redact_url("nonsense:hunter2").contains("hunter2"));
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
