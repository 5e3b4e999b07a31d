//! The product's flow, without HTTP: hand a stream a fresh QR code, and resolve a scan to the
//! one stream waiting on it.
//!
//! - [`pool`]: the stock of fresh QR codes.
//! - [`registry`]: the streams waiting on this instance.
//! - [`event`]: what the browser receives.

pub mod event;
pub mod pool;
pub mod registry;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::oneshot;

use self::event::ScanResult;
use self::pool::{QrCode, QrPool, Unavailable};
use self::registry::{Registry, WaiterGuard};
use crate::store::{Store, StoreError};
use crate::wechat::callback::ScanEvent;
use crate::wechat::ids::Scene;

/// How long a callback's dedupe key is kept: longer than WeChat's retries (3 × 5 s) and the
/// accepted timestamp window.
pub const DEDUPE_TTL: Duration = Duration::from_secs(600);

/// Counters of what happened, for operators.
#[derive(Debug, Default)]
pub struct Stats {
    /// Streams started (a QR code handed out).
    pub streams_started: AtomicU64,
    /// Scans handed to their waiting stream.
    pub scans_delivered: AtomicU64,
    /// Scans for which no stream waited (late, unknown, or not ours).
    pub scans_undeliverable: AtomicU64,
    /// WeChat's retries of an event already seen.
    pub scans_duplicate: AtomicU64,
}

/// The login flow. Cheap to clone.
#[derive(Clone)]
pub struct LoginService {
    inner: Arc<Inner>,
}

struct Inner {
    pool: QrPool,
    registry: Registry,
    store: Arc<dyn Store>,
    stats: Stats,
}

/// A stream's login in progress: its QR code, and where the result will arrive. Dropping it
/// unregisters the scene.
pub struct PendingLogin {
    /// The QR code to show.
    pub qr: QrCode,
    /// Receives the scan, once.
    pub result: oneshot::Receiver<ScanResult>,
    /// Unregisters the scene when dropped.
    pub guard: WaiterGuard,
}

/// What became of a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Handed to the stream waiting on its scene.
    Delivered,
    /// No stream waits on that scene (any more): delivered to nobody.
    NoWaiter,
    /// A retry of an event already handled.
    Duplicate,
}

impl LoginService {
    /// Builds the service over a QR pool and a store.
    pub fn new(pool: QrPool, store: Arc<dyn Store>) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                registry: Registry::new(),
                store,
                stats: Stats::default(),
            }),
        }
    }

    /// Starts a login: takes a fresh QR code and registers the stream that will wait on it.
    pub async fn start(&self) -> Result<PendingLogin, Unavailable> {
        let qr = self.inner.pool.take().await?;
        let (guard, result) = self
            .inner
            .registry
            .register(qr.scene.clone(), Arc::clone(&qr.content));
        self.inner
            .stats
            .streams_started
            .fetch_add(1, Ordering::Relaxed);
        Ok(PendingLogin { qr, result, guard })
    }

    /// Resolves a verified scan: once per event (WeChat's retries are recognised), to the one
    /// stream waiting on its scene, if any.
    pub async fn complete(&self, scan: &ScanEvent) -> Result<Outcome, StoreError> {
        let stats = &self.inner.stats;
        if !self
            .inner
            .store
            .claim_once(&scan.dedupe_key(), DEDUPE_TTL)
            .await?
        {
            stats.scans_duplicate.fetch_add(1, Ordering::Relaxed);
            return Ok(Outcome::Duplicate);
        }
        let result = ScanResult {
            openid: scan.openid.clone(),
            kind: scan.kind,
        };
        if self.inner.registry.deliver(&scan.scene, result) {
            stats.scans_delivered.fetch_add(1, Ordering::Relaxed);
            Ok(Outcome::Delivered)
        } else {
            stats.scans_undeliverable.fetch_add(1, Ordering::Relaxed);
            Ok(Outcome::NoWaiter)
        }
    }

    /// The content of the QR code of a stream waiting now (for rendering its image).
    pub fn qr_content(&self, scene: &Scene) -> Option<Arc<str>> {
        self.inner.registry.content(scene)
    }

    /// Streams waiting on this instance now.
    pub fn open_streams(&self) -> usize {
        self.inner.registry.len()
    }

    /// The QR pool.
    pub fn pool(&self) -> &QrPool {
        &self.inner.pool
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }
}
