//! The product's flow, without HTTP: hand a stream a fresh QR code, resolve a scan to the one
//! session waiting on it, and let a stream that dropped resume its session (on any instance).
//!
//! - [`code`]: login codes, and how a text message is read as one.
//! - [`policy`]: wxlogin's scenes (their prefix) and the one place a scene is made.
//! - [`pool`]: the stock of fresh QR codes.
//! - [`scenes`]: the login sessions, by scene, and the streams attached to them.
//! - `registry`: the streams attached on this instance.
//! - [`event`]: what the browser receives.
//! - [`advice`]: what an operator should do about WeChat's refusals, naming wxlogin's settings.

pub mod advice;
pub mod code;
pub mod event;
pub mod policy;
pub mod pool;
mod registry;
pub mod scenes;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use self::event::{LoginResult, StreamKey};
use self::pool::{QrPool, TakeError};
use self::scenes::{Attachment, Resumed, SceneView, Scenes, Status};
use crate::auth::login_token::LoginTokens;
use crate::metrics::{self, Metrics};
pub use crate::store::Outcome;
use crate::store::{Bound, Inbox, Store, StoreError};
use crate::wechat::callback::{Binding, ScanEvent};
use crate::wechat::ids::Scene;

/// How long a callback's event key (openid and `CreateTime`) is kept: longer than WeChat's
/// retries (3 × 5 s), which may come under new queries. Replays are the bindings' business:
/// they live as long as a query's timestamp would pass.
pub const EVENT_KEY_TTL: Duration = Duration::from_secs(30);

/// The login flow. Cheap to clone.
#[derive(Clone)]
pub struct LoginService {
    inner: Arc<Inner>,
}

struct Inner {
    pool: QrPool,
    scenes: Scenes,
    store: Arc<dyn Store>,
    tokens: Arc<LoginTokens>,
    /// How long a stream waits for a scan.
    wait: Duration,
    metrics: Arc<Metrics>,
}

impl LoginService {
    /// Builds the service. `wait` is how long a stream waits for a scan, `result_keep` how
    /// long a result handed to its stream is kept for a reconnect.
    pub fn new(
        pool: QrPool,
        store: Arc<dyn Store>,
        tokens: Arc<LoginTokens>,
        (wait, result_keep): (Duration, Duration),
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                scenes: Scenes::new(Arc::clone(&store), result_keep),
                store,
                tokens,
                wait,
                metrics,
            }),
        }
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Starts a login: takes a fresh QR code and opens a session with the stream attached.
    /// `audience` is who the login token will be for (a page token's origin).
    pub async fn start(
        &self,
        audience: Option<Arc<str>>,
    ) -> Result<(SceneView, Attachment), TakeError> {
        let qr = self.inner.pool.take().await?;
        let deadline = Instant::now() + self.inner.wait;
        let opened = self.inner.scenes.open(qr, deadline, audience).await?;
        self.inner
            .metrics
            .streams
            .get_or_create(&metrics::Outcome {
                outcome: "new".into(),
            })
            .inc();
        Ok(opened)
    }

    /// A reconnecting stream names its scene and key; see [`Scenes::resume`].
    pub async fn resume(
        &self,
        scene: &Scene,
        key: &StreamKey,
        has_result: bool,
    ) -> Result<Option<Resumed>, StoreError> {
        let resumed = self.inner.scenes.resume(scene, key, has_result).await?;
        if resumed.is_some() {
            self.inner
                .metrics
                .streams
                .get_or_create(&metrics::Outcome {
                    outcome: "resumed".into(),
                })
                .inc();
        }
        Ok(resumed)
    }

    /// Resolves a verified scan: once per callback (its signed query bound to its body:
    /// `binding`) and once per event (WeChat's retries under new queries are recognised, on any
    /// instance, for [`EVENT_KEY_TTL`]), to the one session waiting on its scene, if any.
    pub async fn complete(
        &self,
        scan: &ScanEvent<'_>,
        binding: &Binding,
    ) -> Result<Outcome, StoreError> {
        let outcome = self
            .inner
            .scenes
            .resolve(
                &scan.scene,
                binding,
                scan.dedupe_key(),
                EVENT_KEY_TTL,
                |audience| {
                    let login_token = self
                        .inner
                        .tokens
                        .issue(
                            scan.openid,
                            scan.scene.as_str(),
                            scan.kind.as_str(),
                            audience,
                        )
                        .map_err(|e| tracing::error!(error = %e, "cannot sign a login token"))
                        .ok();
                    LoginResult {
                        openid: scan.openid(),
                        kind: scan.kind,
                        login_token,
                        resolved_at: Instant::now(),
                    }
                },
            )
            .await?;
        if let Some(label) = outcome.label() {
            self.inner.metrics.scan(label);
        }
        Ok(outcome)
    }

    /// Records the binding of a verified callback that is not a login scan of ours, before
    /// it is answered or forwarded: [`Bound::Conflict`] for a replay of its query with
    /// another body.
    pub async fn bind(&self, binding: &Binding) -> Result<Bound, StoreError> {
        self.inner.store.bind(binding).await
    }

    /// The state of a scene, for a polling client with the stream's key.
    pub async fn status(&self, scene: &Scene, key: &StreamKey) -> Result<Status, StoreError> {
        self.inner.scenes.status(scene, key).await
    }

    /// The content of the QR code of a session that still waits (for rendering its image).
    pub async fn qr_content(&self, scene: &Scene) -> Result<Option<Arc<str>>, StoreError> {
        self.inner.scenes.content(scene).await
    }

    /// Streams attached to this instance now.
    pub fn open_streams(&self) -> usize {
        self.inner.scenes.attached()
    }

    /// Sessions held now (waiting, or holding a result for a returning stream), when the
    /// store can count them (the memory store; not Redis).
    pub fn live_scenes(&self) -> Option<usize> {
        self.inner.scenes.live()
    }

    /// Removes sessions and keys whose time is over (the memory store).
    pub fn purge_expired(&self) {
        self.inner.store.purge_expired();
    }

    /// Hands notices from other instances to this instance's streams until `cancel` (a
    /// no-op with the memory store).
    pub async fn run_inbox(self, cancel: CancellationToken) {
        let inbox: Arc<dyn Inbox> = Arc::new(self.inner.scenes.clone());
        self.inner.store.listen(inbox, cancel).await;
    }

    /// The QR pool.
    pub fn pool(&self) -> &QrPool {
        &self.inner.pool
    }

    /// The login token issuer.
    pub fn tokens(&self) -> &LoginTokens {
        &self.inner.tokens
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// How long a stream waits for a scan.
    pub fn wait(&self) -> Duration {
        self.inner.wait
    }
}
