//! The stock of fresh QR codes.
//!
//! `POOL_SIZE` codes are made at start-up and one is made for each taken, so `/sse` rarely
//! waits on WeChat; an idle service makes none (codes that aged in stock are dropped, not
//! replaced, until there is demand again). Every code is handed out once, only while it has the
//! stream's wait plus a margin of life left, and never goes back into the stock. When the stock
//! is empty a code is made on demand; when WeChat cannot give one the pool backs off and says
//! for how long, which `/sse` passes on as `Retry-After`.
//!
//! The stock itself is in the store, shared by all instances: a take is atomic there, and an
//! instance reserves room before making codes, so that instances refilling at once keep the
//! shared stock at `POOL_SIZE`, not a multiple of it.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::{
    StockedQr, Store, StoreError, instant_to_ms, millis, ms_to_instant, unix_now_ms,
};
use crate::wechat::error::{ApiError, ErrorKind};
use crate::wechat::ids::{Scene, Ticket};
use crate::wechat::token::TokenCache;

/// WeChat's daily allowance of `qrcode/create` calls per account.
pub const DAILY_QR_QUOTA: u64 = 100_000;
/// Codes made at once while refilling, and on demand.
const REFILL_CONCURRENCY: usize = 8;
const ON_DEMAND_CONCURRENCY: usize = 64;
/// Backoff after failures: first pause, and the longest (quota errors wait longer).
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
const BACKOFF_MAX_QUOTA: Duration = Duration::from_secs(300);
/// How long a reservation for a code being made holds its room in the stock.
const RESERVATION: Duration = Duration::from_secs(30);
/// How often the refill task looks at the shared stock without being woken (other instances
/// take from it too).
const REFILL_TICK: Duration = Duration::from_secs(2);

/// A temporary QR code made for one stream.
#[derive(Debug, Clone)]
pub struct QrCode {
    /// Its scene: random, never reused.
    pub scene: Scene,
    /// WeChat's ticket.
    pub ticket: Ticket,
    /// The content of the code.
    pub content: Arc<str>,
    /// When WeChat stops honouring it (counted from before the request, so conservative).
    pub expires_at: Instant,
}

/// A QR code as the store keeps it (its expiry is kept beside it, in Unix ms).
#[derive(Serialize, Deserialize)]
struct Stored<'a> {
    scene: &'a str,
    ticket: &'a str,
    content: &'a str,
}

impl QrCode {
    /// Life left.
    pub fn remaining(&self) -> Duration {
        self.expires_at.saturating_duration_since(Instant::now())
    }

    /// The code as the store keeps it (without its expiry).
    pub fn encode(&self) -> String {
        serde_json::to_string(&Stored {
            scene: self.scene.as_str(),
            ticket: self.ticket.as_str(),
            content: &self.content,
        })
        .unwrap_or_default()
    }

    /// A code from [`QrCode::encode`] and its expiry.
    pub fn decode(s: &str, expires_ms: u64) -> Result<Self, StoreError> {
        let unreadable = || StoreError("a stored QR code is unreadable".into());
        let stored: Stored<'_> = serde_json::from_str(s).map_err(|_| unreadable())?;
        Ok(Self {
            scene: Scene::parse(stored.scene).map_err(|_| unreadable())?,
            ticket: Ticket::new(stored.ticket),
            content: stored.content.into(),
            expires_at: ms_to_instant(expires_ms),
        })
    }
}

/// Why a stream gets no QR code.
#[derive(Debug, thiserror::Error)]
pub enum TakeError {
    /// WeChat gives none now.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// The store cannot be reached.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// No QR code can be had now.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no QR code available: {reason}")]
pub struct Unavailable {
    /// When to try again.
    pub retry_after: Duration,
    /// WeChat's error, for the log.
    pub reason: String,
}

/// What `/readyz` reports about the pool.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PoolStatus {
    /// Whether the last contact with WeChat succeeded and no backoff is running.
    pub healthy: bool,
    /// Codes in stock (the shared stock, with Redis), fresh or aged.
    pub stock: usize,
    /// Codes made since start.
    pub made: u64,
    /// Codes made today (UTC), against WeChat's daily quota.
    pub made_today: u64,
    /// The last error, when unhealthy: a sentence with WeChat's errcode and what to do, never
    /// WeChat's errmsg (it can name the server's egress IP) or a transport error's text; those
    /// are in the log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// An operator must fix the configuration (secret, whitelist, permission).
    pub config_error: bool,
}

#[derive(Default)]
struct Health {
    ever_succeeded: bool,
    consecutive_failures: u32,
    backoff_until: Option<Instant>,
    /// The last error: its summary (for `/readyz`) and its full text (for the log).
    last_error: Option<LastError>,
    config_error: bool,
}

struct LastError {
    summary: String,
    full: String,
}

#[derive(Default)]
struct DailyCount {
    day: u64,
    count: u64,
}

/// The QR stock. Cheap to clone.
#[derive(Clone)]
pub struct QrPool {
    inner: Arc<Inner>,
}

struct Inner {
    tokens: TokenCache,
    /// Where the stock is.
    store: Arc<dyn Store>,
    target: usize,
    ttl_secs: u32,
    /// The least life a code must have left to be handed out.
    min_life: Duration,
    /// Wakes the refill task after a take.
    wake: Notify,
    health: Mutex<Health>,
    made: AtomicU64,
    today: Mutex<DailyCount>,
    on_demand: Semaphore,
    metrics: Arc<Metrics>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl QrPool {
    /// A pool keeping `target` codes of `ttl_secs` life in `store`'s stock, handing out only
    /// codes with at least `min_life` left.
    pub fn new(
        tokens: TokenCache,
        store: Arc<dyn Store>,
        target: usize,
        ttl_secs: u32,
        min_life: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                tokens,
                store,
                target,
                ttl_secs,
                min_life,
                wake: Notify::new(),
                health: Mutex::new(Health::default()),
                made: AtomicU64::new(0),
                today: Mutex::new(DailyCount::default()),
                on_demand: Semaphore::new(ON_DEMAND_CONCURRENCY),
                metrics,
            }),
        }
    }

    /// A fresh code: from stock, else made now. Never the same code twice.
    pub async fn take(&self) -> Result<QrCode, TakeError> {
        if let Some(qr) = self.pop_fresh().await? {
            self.inner.wake.notify_one();
            return Ok(qr);
        }
        self.check_backoff()?;
        self.inner.wake.notify_one();
        let _permit = self
            .inner
            .on_demand
            .acquire()
            .await
            .map_err(|_| Unavailable {
                retry_after: BACKOFF_FIRST,
                reason: "shutting down".into(),
            })?;
        // The refill task may have stocked up while we waited for a permit.
        if let Some(qr) = self.pop_fresh().await? {
            return Ok(qr);
        }
        self.check_backoff()?;
        let made = self
            .make_one(Scene::random())
            .await
            .map_err(|e| Unavailable {
                retry_after: self.retry_after(),
                reason: e.to_string(),
            })?;
        Ok(made)
    }

    /// Takes the oldest code that still has enough life; the store drops the ones that do not.
    async fn pop_fresh(&self) -> Result<Option<QrCode>, StoreError> {
        let fresh_until = unix_now_ms().saturating_add(millis(self.inner.min_life));
        match self.inner.store.stock_take(fresh_until).await? {
            Some(stocked) => Ok(Some(QrCode::decode(&stocked.payload, stocked.expires_ms)?)),
            None => Ok(None),
        }
    }

    fn check_backoff(&self) -> Result<(), Unavailable> {
        let health = lock(&self.inner.health);
        match health.backoff_until {
            Some(until) if until > Instant::now() => Err(Unavailable {
                retry_after: until - Instant::now(),
                reason: health
                    .last_error
                    .as_ref()
                    .map(|e| e.full.clone())
                    .unwrap_or_default(),
            }),
            _ => Ok(()),
        }
    }

    fn retry_after(&self) -> Duration {
        lock(&self.inner.health)
            .backoff_until
            .map(|u| u.saturating_duration_since(Instant::now()))
            .filter(|d| !d.is_zero())
            .unwrap_or(BACKOFF_FIRST)
    }

    async fn make_one(&self, scene: Scene) -> Result<QrCode, ApiError> {
        let started = Instant::now();
        let ttl = self.inner.ttl_secs;
        let api = self.inner.tokens.api().clone();
        let result = self
            .inner
            .tokens
            .with_token(|token| {
                let api = api.clone();
                let scene = scene.clone();
                async move { api.create_qr(&token, &scene, ttl).await }
            })
            .await;
        // A code that would be handed out with less than a stream's wait left is no code.
        let result = result.and_then(|ticket| {
            if Duration::from_secs(ticket.expire_seconds.into()) < self.inner.min_life {
                Err(ApiError::ShortLived {
                    expire_seconds: ticket.expire_seconds.into(),
                })
            } else {
                Ok(ticket)
            }
        });
        match result {
            Ok(ticket) => {
                self.record_success();
                Ok(QrCode {
                    scene,
                    ticket: ticket.ticket,
                    content: ticket.url.into(),
                    expires_at: started + Duration::from_secs(ticket.expire_seconds.into()),
                })
            }
            Err(e) => {
                self.record_failure(&e);
                Err(e)
            }
        }
    }

    fn record_success(&self) {
        let made = self.inner.made.fetch_add(1, Ordering::Relaxed) + 1;
        self.inner.metrics.qr_made.inc();
        let day = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() / 86_400)
            .unwrap_or_default();
        let today = {
            let mut t = lock(&self.inner.today);
            if t.day != day {
                *t = DailyCount { day, count: 0 };
            }
            t.count += 1;
            t.count
        };
        if today == DAILY_QR_QUOTA * 8 / 10 || today == DAILY_QR_QUOTA * 95 / 100 {
            tracing::warn!(
                made_today = today,
                quota = DAILY_QR_QUOTA,
                "QR codes made today are nearing WeChat's daily quota"
            );
        }
        let mut health = lock(&self.inner.health);
        if health.consecutive_failures > 0 {
            tracing::info!(made, "WeChat gives QR codes again");
        }
        *health = Health {
            ever_succeeded: true,
            ..Health::default()
        };
    }

    fn record_failure(&self, e: &ApiError) {
        let kind = e.kind();
        let mut health = lock(&self.inner.health);
        health.consecutive_failures = health.consecutive_failures.saturating_add(1);
        let cap = if kind == ErrorKind::Quota {
            BACKOFF_MAX_QUOTA
        } else {
            BACKOFF_MAX
        };
        let pause = BACKOFF_FIRST
            .saturating_mul(1 << health.consecutive_failures.saturating_sub(1).min(10))
            .min(cap);
        health.backoff_until = Some(Instant::now() + pause);
        health.last_error = Some(LastError {
            summary: e.summary(),
            full: match e.advice() {
                Some(advice) => format!("{e} ({advice})"),
                None => e.to_string(),
            },
        });
        health.config_error = kind == ErrorKind::Config;
        if kind == ErrorKind::Config {
            tracing::error!(errcode = e.errcode(), error = %e, advice = e.advice(), "WeChat refuses: configuration error");
        } else {
            tracing::warn!(errcode = e.errcode(), error = %e, backoff_ms = pause.as_millis() as u64, "could not make a QR code");
        }
    }

    /// The state for `/readyz`.
    pub async fn status(&self) -> PoolStatus {
        let stock = self.inner.store.stock_len().await.unwrap_or_default();
        let health = lock(&self.inner.health);
        // Codes in the shared stock prove WeChat gives them, even if another instance made
        // them all.
        let healthy = (health.ever_succeeded || stock > 0) && health.consecutive_failures == 0;
        PoolStatus {
            healthy,
            stock,
            made: self.inner.made.load(Ordering::Relaxed),
            made_today: lock(&self.inner.today).count,
            last_error: if healthy {
                None
            } else {
                Some(
                    health
                        .last_error
                        .as_ref()
                        .map_or_else(|| "no QR code made yet".to_owned(), |e| e.summary.clone()),
                )
            },
            config_error: health.config_error,
        }
    }

    /// Makes codes for the reserved `scenes` and puts them in stock; ends the reservations
    /// of those that could not be made.
    async fn make_reserved(&self, scenes: Vec<Scene>) {
        let made = futures_util::future::join_all(scenes.into_iter().map(|scene| async move {
            let name = scene.as_str().to_owned();
            match self.make_one(scene).await {
                Ok(qr) => {
                    let stocked = StockedQr {
                        scene: name,
                        expires_ms: instant_to_ms(qr.expires_at),
                        payload: qr.encode(),
                    };
                    self.inner.store.stock_put(&stocked).await
                }
                Err(_) => self.inner.store.stock_release(&name).await,
            }
        }))
        .await;
        if let Some(Err(e)) = made.into_iter().find(Result::is_err) {
            tracing::warn!(error = %e, "cannot stock QR codes");
        }
    }

    /// Keeps the stock at its target until `cancel`: fills it at start, then makes one code
    /// for each one taken (by any instance), backing off while WeChat fails.
    pub async fn run_refill(self, cancel: CancellationToken) {
        let mut store_down = false;
        loop {
            let backoff_until = lock(&self.inner.health).backoff_until;
            if let Some(until) = backoff_until.filter(|u| *u > Instant::now()) {
                tokio::select! {
                    () = tokio::time::sleep_until(until.into()) => {}
                    () = cancel.cancelled() => return,
                }
            }
            let scenes: Vec<Scene> = (0..REFILL_CONCURRENCY.min(self.inner.target))
                .map(|_| Scene::random())
                .collect();
            let names: Vec<String> = scenes.iter().map(|s| s.as_str().to_owned()).collect();
            let reserved = self
                .inner
                .store
                .stock_reserve(&names, self.inner.target, RESERVATION)
                .await;
            match reserved {
                Ok(granted) if granted > 0 => {
                    store_down = false;
                    let made = self.make_reserved(scenes.into_iter().take(granted).collect());
                    tokio::select! {
                        () = made => {}
                        () = cancel.cancelled() => return,
                    }
                    // Less than asked for: the stock is full now; wait for the next take.
                    if granted == names.len() {
                        continue;
                    }
                }
                Ok(_) => store_down = false,
                Err(e) => {
                    if !store_down {
                        tracing::warn!(error = %e, "cannot refill the QR stock");
                    }
                    store_down = true;
                }
            }
            tokio::select! {
                () = self.inner.wake.notified() => {}
                () = tokio::time::sleep(REFILL_TICK) => {}
                () = cancel.cancelled() => return,
            }
        }
    }
}
