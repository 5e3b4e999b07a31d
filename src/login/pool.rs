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
//!
//! Every code costs one call of WeChat's daily quota, and once the quota is gone nobody can log
//! in until the next day. So each call is counted in the store before it is made, against
//! `QR_DAILY_BUDGET` (below the quota), by China's day, since that is when the quota resets:
//! past the budget no code is made by any instance, and new streams are refused until
//! midnight China time. Codes in stock are still handed out: they are paid for.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::advice;
use super::policy::new_scene;
use crate::metrics::Metrics;
use crate::store::{
    StockedQr, Store, StoreError, instant_to_ms, millis, ms_to_instant, unix_now_ms,
};
use crate::wechat::error::{ApiError, ErrorKind};
use crate::wechat::ids::{Scene, Ticket};
use crate::wechat::token::TokenCache;

/// WeChat's daily allowance of `qrcode/create` calls per account.
pub const DAILY_QR_QUOTA: u64 = 100_000;
/// WeChat's day, when its quota resets: China's (UTC+8, no daylight saving).
const CHINA_OFFSET_SECS: i64 = 8 * 3600;
/// The longest `Retry-After` given while the daily budget is spent: a client comes back within
/// the hour rather than at midnight, so a budget raised (and the service restarted) is used.
const BUDGET_RETRY_MAX: Duration = Duration::from_secs(3600);
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
    /// No QR code: what a code-only session (`LOGIN_MODES=code`) holds in its place, its
    /// scene made by wxlogin, no ticket, no content, living until `expires_at`.
    pub fn none(scene: Scene, expires_at: Instant) -> Self {
        Self {
            scene,
            ticket: Ticket::new(""),
            content: "".into(),
            expires_at,
        }
    }

    /// Whether this is a real QR code (not [`QrCode::none`]).
    pub fn is_some(&self) -> bool {
        !self.content.is_empty()
    }

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
        let unreadable = || StoreError::Corrupt { what: "QR code" };
        let stored: Stored<'_> = serde_json::from_str(s).map_err(|_| unreadable())?;
        Ok(Self {
            scene: Scene::parse(stored.scene).map_err(|_| unreadable())?,
            ticket: Ticket::new(stored.ticket),
            content: stored.content.into(),
            expires_at: ms_to_instant(expires_ms),
        })
    }
}

/// A day as WeChat counts its quota: China's calendar day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaDay {
    /// `yyyymmdd`, which names the day's count in the store.
    pub name: String,
    /// Time left until the next day.
    pub left: Duration,
}

impl QuotaDay {
    /// The day at Unix time `unix_secs`.
    pub fn at(unix_secs: i64) -> Self {
        let local = unix_secs.saturating_add(CHINA_OFFSET_SECS);
        let into_day = local.rem_euclid(86_400);
        let name = chrono::DateTime::from_timestamp(local - into_day, 0)
            .map(|d| d.format("%Y%m%d").to_string())
            .unwrap_or_default();
        Self {
            name,
            left: Duration::from_secs(u64::try_from(86_400 - into_day).unwrap_or(86_400)),
        }
    }

    /// Today.
    pub fn now() -> Self {
        Self::at(chrono::Utc::now().timestamp())
    }
}

/// Why a stream gets no QR code.
#[derive(Debug, thiserror::Error)]
pub enum TakeError {
    /// WeChat gives none now.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// Today's budget of QR codes is spent.
    #[error(transparent)]
    BudgetSpent(#[from] BudgetSpent),
    /// The store cannot be reached.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Every login code drawn for the stream was live on another one already (the space of
    /// codes is nearly full: too many streams for `CODE_DIGITS`).
    #[error("no free login code")]
    NoFreeCode,
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

/// The daily budget of QR codes is spent: no code is made until China's next day.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the daily QR code budget ({budget}) is used up until midnight China time")]
pub struct BudgetSpent {
    /// When to try again: the next day, or sooner (at most [`BUDGET_RETRY_MAX`]).
    pub retry_after: Duration,
    /// `QR_DAILY_BUDGET`.
    pub budget: u64,
}

/// Why a code could not be made.
#[derive(Debug, thiserror::Error)]
enum MakeError {
    #[error(transparent)]
    Budget(#[from] BudgetSpent),
    /// The day's count could not be taken: no call is made uncounted.
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Api(#[from] ApiError),
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
    /// Codes asked of WeChat today (China's day, when its quota resets) by all instances,
    /// against `budget`.
    pub made_today: u64,
    /// `QR_DAILY_BUDGET`: codes all instances may make per day.
    pub budget: u64,
    /// Whether today's budget is spent: no code is made until midnight China time.
    pub budget_exhausted: bool,
    /// Why no new code can be had (the budget, or the last WeChat error), when so: a
    /// sentence with WeChat's errcode and what to do, never WeChat's errmsg (it can name the
    /// server's egress IP) or a transport error's text; those are in the log.
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
    /// `QR_DAILY_BUDGET`.
    budget: u64,
    /// The day this instance found the budget spent (by any instance): it stops asking the
    /// store that day, and warns once.
    spent_on: Mutex<Option<String>>,
    on_demand: Semaphore,
    metrics: Arc<Metrics>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl QrPool {
    /// A pool keeping `target` codes of `ttl_secs` life in `store`'s stock, handing out only
    /// codes with at least `min_life` left, and making at most `budget` codes a day (with the
    /// other instances on `store`).
    pub fn new(
        tokens: TokenCache,
        store: Arc<dyn Store>,
        (target, ttl_secs): (usize, u32),
        min_life: Duration,
        budget: u64,
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
                budget,
                spent_on: Mutex::new(None),
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
        self.check_budget()?;
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
        self.check_budget()?;
        self.check_backoff()?;
        match self.make_one(new_scene()).await {
            Ok(qr) => Ok(qr),
            Err(MakeError::Budget(spent)) => Err(spent.into()),
            Err(MakeError::Store(e)) => Err(e.into()),
            Err(MakeError::Api(e)) => Err(Unavailable {
                retry_after: self.retry_after(),
                reason: e.to_string(),
            }
            .into()),
        }
    }

    fn spent(&self, day: &QuotaDay) -> bool {
        lock(&self.inner.spent_on).as_deref() == Some(day.name.as_str())
    }

    fn budget_spent(&self, day: &QuotaDay) -> BudgetSpent {
        BudgetSpent {
            retry_after: day.left.min(BUDGET_RETRY_MAX),
            budget: self.inner.budget,
        }
    }

    /// Refuses at once when this instance knows today's budget is spent.
    fn check_budget(&self) -> Result<(), BudgetSpent> {
        let day = QuotaDay::now();
        if self.spent(&day) {
            return Err(self.budget_spent(&day));
        }
        Ok(())
    }

    /// Counts one call of `qrcode/create` against today's budget, before it is made.
    async fn count_one(&self) -> Result<(), MakeError> {
        let day = QuotaDay::now();
        if self.spent(&day) {
            return Err(self.budget_spent(&day).into());
        }
        let budget = self.inner.budget;
        match self.inner.store.qr_budget_take(&day.name, budget).await? {
            Some(made) => {
                if made == budget * 8 / 10 || made == budget * 95 / 100 {
                    tracing::warn!(
                        made_today = made,
                        budget,
                        quota = DAILY_QR_QUOTA,
                        "QR codes made today are nearing QR_DAILY_BUDGET"
                    );
                }
                Ok(())
            }
            None => {
                let first = {
                    let mut spent_on = lock(&self.inner.spent_on);
                    let first = spent_on.as_deref() != Some(day.name.as_str());
                    *spent_on = Some(day.name.clone());
                    first
                };
                if first {
                    tracing::warn!(
                        budget,
                        quota = DAILY_QR_QUOTA,
                        next_day_in_secs = day.left.as_secs(),
                        "the daily QR code budget (QR_DAILY_BUDGET) is used up: no new login streams until midnight China time"
                    );
                }
                Err(self.budget_spent(&day).into())
            }
        }
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

    async fn make_one(&self, scene: Scene) -> Result<QrCode, MakeError> {
        self.count_one().await?;
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
                Err(e.into())
            }
        }
    }

    fn record_success(&self) {
        let made = self.inner.made.fetch_add(1, Ordering::Relaxed) + 1;
        self.inner.metrics.qr_made.inc();
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
            summary: advice::summary(e),
            full: advice::explain(e),
        });
        health.config_error = kind == ErrorKind::Config;
        if kind == ErrorKind::Config {
            tracing::error!(errcode = e.errcode(), error = %e, advice = advice::advice_for(e), "WeChat refuses: configuration error");
        } else {
            tracing::warn!(errcode = e.errcode(), error = %e, backoff_ms = pause.as_millis() as u64, "could not make a QR code");
        }
    }

    /// The state for `/readyz`.
    pub async fn status(&self) -> PoolStatus {
        let stock = self.inner.store.stock_len().await.unwrap_or_default();
        let day = QuotaDay::now();
        let made_today = self
            .inner
            .store
            .qr_made_on(&day.name)
            .await
            .unwrap_or_default();
        let budget = self.inner.budget;
        let budget_exhausted = made_today >= budget || self.spent(&day);
        let health = lock(&self.inner.health);
        // Codes in the shared stock prove WeChat gives them, even if another instance made
        // them all.
        let healthy = (health.ever_succeeded || stock > 0) && health.consecutive_failures == 0;
        let last_error = if budget_exhausted {
            Some(self.budget_spent(&day).to_string())
        } else if healthy {
            None
        } else {
            Some(
                health
                    .last_error
                    .as_ref()
                    .map_or_else(|| "no QR code made yet".to_owned(), |e| e.summary.clone()),
            )
        };
        PoolStatus {
            healthy,
            stock,
            made: self.inner.made.load(Ordering::Relaxed),
            made_today,
            budget,
            budget_exhausted,
            last_error,
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
            if self.spent(&QuotaDay::now()) {
                // Nothing is made until the next day; the stock is handed out as it is.
                tokio::select! {
                    () = self.inner.wake.notified() => {}
                    () = tokio::time::sleep(REFILL_TICK) => {}
                    () = cancel.cancelled() => return,
                }
                continue;
            }
            let scenes: Vec<Scene> = (0..REFILL_CONCURRENCY.min(self.inner.target))
                .map(|_| new_scene())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quota_day_turns_at_midnight_china_time() {
        // 1970-01-01 00:00 UTC is 08:00 in China: 16 hours to the next day.
        let day = QuotaDay::at(0);
        assert_eq!(day.name, "19700101");
        assert_eq!(day.left, Duration::from_secs(16 * 3600));
        // 2024-02-29 15:59:59 UTC is the leap day's last second in China.
        let last = QuotaDay::at(1_709_222_399);
        assert_eq!(last.name, "20240229");
        assert_eq!(last.left, Duration::from_secs(1));
        let next = QuotaDay::at(1_709_222_400);
        assert_eq!(next.name, "20240301");
        assert_eq!(next.left, Duration::from_secs(86_400));
    }
}
