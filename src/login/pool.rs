//! The stock of fresh QR codes.
//!
//! `POOL_SIZE` codes are made at start-up and one is made for each taken, so `/sse` rarely
//! waits on WeChat; an idle service makes none (codes that aged in stock are dropped, not
//! replaced, until there is demand again). Every code is handed out once, only while it has the
//! stream's wait plus a margin of life left, and never goes back into the stock. When the stock
//! is empty a code is made on demand; when WeChat cannot give one the pool backs off and says
//! for how long, which `/sse` passes on as `Retry-After`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
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

impl QrCode {
    /// Life left.
    pub fn remaining(&self) -> Duration {
        self.expires_at.saturating_duration_since(Instant::now())
    }
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
    /// Codes in stock with enough life left.
    pub stock: usize,
    /// Codes made since start.
    pub made: u64,
    /// Codes made today (UTC), against WeChat's daily quota.
    pub made_today: u64,
    /// The last error, when unhealthy.
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
    last_error: Option<String>,
    config_error: bool,
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
    stock: Mutex<VecDeque<QrCode>>,
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
    /// A pool keeping `target` codes of `ttl_secs` life, handing out only codes with at
    /// least `min_life` left.
    pub fn new(
        tokens: TokenCache,
        target: usize,
        ttl_secs: u32,
        min_life: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                tokens,
                stock: Mutex::new(VecDeque::with_capacity(target)),
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
    pub async fn take(&self) -> Result<QrCode, Unavailable> {
        if let Some(qr) = self.pop_fresh() {
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
        if let Some(qr) = self.pop_fresh() {
            return Ok(qr);
        }
        self.check_backoff()?;
        self.make_one().await.map_err(|e| Unavailable {
            retry_after: self.retry_after(),
            reason: e.to_string(),
        })
    }

    /// Pops the oldest code that still has enough life; drops the ones that do not.
    fn pop_fresh(&self) -> Option<QrCode> {
        let mut stock = lock(&self.inner.stock);
        while let Some(qr) = stock.pop_front() {
            if qr.remaining() >= self.inner.min_life {
                return Some(qr);
            }
            tracing::debug!(scene = %qr.scene, "dropping a QR code that aged in stock");
        }
        None
    }

    fn check_backoff(&self) -> Result<(), Unavailable> {
        let health = lock(&self.inner.health);
        match health.backoff_until {
            Some(until) if until > Instant::now() => Err(Unavailable {
                retry_after: until - Instant::now(),
                reason: health.last_error.clone().unwrap_or_default(),
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

    async fn make_one(&self) -> Result<QrCode, ApiError> {
        let scene = Scene::random();
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
        health.last_error = Some(match e.advice() {
            Some(advice) => format!("{e} ({advice})"),
            None => e.to_string(),
        });
        health.config_error = kind == ErrorKind::Config;
        if kind == ErrorKind::Config {
            tracing::error!(errcode = e.errcode(), error = %e, advice = e.advice(), "WeChat refuses: configuration error");
        } else {
            tracing::warn!(errcode = e.errcode(), error = %e, backoff_ms = pause.as_millis() as u64, "could not make a QR code");
        }
    }

    /// The state for `/readyz`.
    pub fn status(&self) -> PoolStatus {
        let stock = lock(&self.inner.stock)
            .iter()
            .filter(|qr| qr.remaining() >= self.inner.min_life)
            .count();
        let health = lock(&self.inner.health);
        let healthy = health.ever_succeeded && health.consecutive_failures == 0;
        PoolStatus {
            healthy,
            stock,
            made: self.inner.made.load(Ordering::Relaxed),
            made_today: lock(&self.inner.today).count,
            last_error: if healthy {
                None
            } else {
                health
                    .last_error
                    .clone()
                    .or_else(|| Some("no QR code made yet".into()))
            },
            config_error: health.config_error,
        }
    }

    /// Codes in stock (any age).
    pub fn stock_len(&self) -> usize {
        lock(&self.inner.stock).len()
    }

    /// Keeps the stock at its target until `cancel`: fills it at start, then makes one code
    /// for each one taken, backing off while WeChat fails.
    pub async fn run_refill(self, cancel: CancellationToken) {
        loop {
            let missing = self.inner.target.saturating_sub(self.stock_len());
            if missing > 0 {
                let backoff_until = lock(&self.inner.health).backoff_until;
                if let Some(until) = backoff_until {
                    tokio::select! {
                        () = tokio::time::sleep_until(until.into()) => {}
                        () = cancel.cancelled() => return,
                    }
                }
                let batch = missing.min(REFILL_CONCURRENCY);
                let made = tokio::select! {
                    made = futures_util::future::join_all((0..batch).map(|_| self.make_one())) => made,
                    () = cancel.cancelled() => return,
                };
                lock(&self.inner.stock).extend(made.into_iter().flatten());
                continue;
            }
            tokio::select! {
                () = self.inner.wake.notified() => {}
                () = cancel.cancelled() => return,
            }
        }
    }
}
