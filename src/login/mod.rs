//! The product's flow, without HTTP: hand a stream a fresh QR code, resolve a scan to the one
//! session waiting on it, and let a stream that dropped resume its session (on any instance).
//!
//! - [`code`]: login codes, and how a text message is read as one.
//! - [`oauth`]: login inside WeChat's browser (web authorization), no stream needed.
//! - [`policy`]: wxlogin's scenes (their prefix) and the one place a scene is made.
//! - [`pool`]: the stock of fresh QR codes.
//! - [`scenes`]: the login sessions, by scene, and the streams attached to them.
//! - `registry`: the streams attached on this instance.
//! - [`event`]: what the browser receives.
//! - [`advice`]: what an operator should do about WeChat's refusals, naming wxlogin's settings.

pub mod advice;
pub mod code;
pub mod event;
pub mod oauth;
pub mod policy;
pub mod pool;
mod registry;
pub mod scenes;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use self::code::{CodeLength, LoginCode};
use self::event::{Lang, LoginKind, LoginResult, StreamKey};
use self::pool::{QrCode, QrPool, TakeError};
use self::scenes::{Attachment, Face, Resumed, SceneView, Scenes, Status};
use crate::auth::login_token::LoginTokens;
use crate::config::QR_LIFE_MARGIN;
use crate::metrics::{self, Metrics};
pub use crate::store::Outcome;
use crate::store::{Bound, Inbox, Store, StoreError};
use crate::wechat::callback::{Binding, ScanEvent, TextMessage};
use crate::wechat::ids::{OpenId, Scene, UnionId};
use crate::wechat::token::TokenCache;

/// How long a callback's event key (openid and `CreateTime`) is kept: longer than WeChat's
/// retries (3 × 5 s), which may come under new queries. Replays are the bindings' business:
/// they live as long as a query's timestamp would pass.
pub const EVENT_KEY_TTL: Duration = Duration::from_secs(30);

/// The most a unionid look-up may add to a login (`USER_INFO`): past it the login goes out
/// without it, well within the 5 s WeChat waits for the callback's answer.
pub const USER_INFO_BUDGET: Duration = Duration::from_secs(2);

/// How long a sender's code attempts are counted together (`CODE_ATTEMPTS_PER_MIN`).
pub const CODE_ATTEMPT_WINDOW: Duration = Duration::from_secs(60);

/// Codes drawn for one stream before giving up: with a million codes and even 100,000 live
/// ones, eight draws all taken happens once in 100 million streams (five, once in 100,000:
/// the benchmark's 100,000 streams on Redis saw it). A draw costs only when the code is taken.
const CODE_DRAWS: usize = 8;

/// Login codes (`LOGIN_MODES` with `code`).
#[derive(Clone, Copy, Debug)]
pub struct CodePolicy {
    /// `CODE_DIGITS`.
    pub length: CodeLength,
    /// `CODE_ATTEMPTS_PER_MIN`.
    pub attempts_per_min: u32,
}

/// What became of a text message read as a login code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeOutcome {
    /// The code's stream is logged in (or its result kept for its return); the stream's
    /// language, for the reply.
    LoggedIn(Lang),
    /// WeChat retrying a message handled before; `login` when that one logged in.
    Duplicate {
        /// Whether the first one was a login.
        login: bool,
        /// The language of the code's stream, for the reply (Chinese when unknown).
        lang: Lang,
    },
    /// The code's session is over: logged in already (by a scan or by this code) or its wait
    /// is over. Nothing is delivered; the sender is told, in the stream's language.
    Late(Lang),
    /// No stream waits on that code: unknown, or expired with its stream's wait.
    NoSuchCode,
    /// The sender made too many attempts in the last minute: not matched.
    TooManyAttempts,
    /// A signed query sent again with another body.
    Replayed,
}

/// What became of a verified scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scanned {
    /// What the sessions made of it.
    pub outcome: Outcome,
    /// The scan came for a session that is over (logged in already, by another scan or by a
    /// code, or its wait ended): nothing is delivered, and its sender is told so, in the
    /// stream's language. `None` for a login, a retry of one, or an unknown scene.
    pub late: Option<Lang>,
}

/// The stream's language when a scan or a code came for a session that is over: the session
/// is still known (its `face`) and the callback resolved nothing, now or when WeChat first
/// sent it. A retry of the callback that won ([`Outcome::Duplicate`] with `login`) is not late:
/// it is answered as the login was.
fn late(outcome: &Outcome, face: Option<&Face>) -> Option<Lang> {
    match outcome {
        Outcome::Nobody | Outcome::Duplicate { login: false } => face.map(|f| f.lang),
        _ => None,
    }
}

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
    /// Whether streams get QR codes (`LOGIN_MODES` with `qr`); without, the pool is idle.
    qr: bool,
    /// Login codes, when on.
    codes: Option<CodePolicy>,
    /// With `USER_INFO`, the account's token cache, through which each login looks up the
    /// user's unionid.
    user_info: Option<TokenCache>,
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
        qr: bool,
        codes: Option<CodePolicy>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                scenes: Scenes::new(Arc::clone(&store), result_keep),
                store,
                tokens,
                wait,
                qr,
                codes,
                user_info: None,
                metrics,
            }),
        }
    }

    /// The same service, looking up each login's unionid through `tokens` (`USER_INFO`).
    /// Called while building, before the service is shared: a clone is left as it was.
    #[must_use]
    pub fn with_user_info(mut self, tokens: TokenCache) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.user_info = Some(tokens),
            None => tracing::error!("USER_INFO set on a login flow already shared: ignored"),
        }
        self
    }

    /// The unionid of `openid`, with `USER_INFO`: asked of WeChat (`user/info`) within
    /// [`USER_INFO_BUDGET`]. A failure never fails the login: it is logged and counted, and
    /// the result goes out without it.
    async fn unionid(&self, openid: &str) -> Option<UnionId> {
        let tokens = self.inner.user_info.as_ref()?;
        let openid = OpenId::new(openid);
        let api = tokens.api();
        let lookup = tokens.with_token(|token| {
            let openid = &openid;
            async move { api.user_info(&token, openid).await }
        });
        let (outcome, unionid) = match tokio::time::timeout(USER_INFO_BUDGET, lookup).await {
            Ok(Ok(info)) => match info.unionid {
                Some(unionid) => ("found", Some(unionid)),
                None => ("none", None),
            },
            Ok(Err(e)) => {
                tracing::warn!(openid = %openid.short(), error = %e, "cannot look up the unionid; the login goes out without it");
                ("failed", None)
            }
            Err(_) => {
                tracing::warn!(openid = %openid.short(), budget_ms = USER_INFO_BUDGET.as_millis(), "WeChat did not give the unionid in time; the login goes out without it");
                ("failed", None)
            }
        };
        Metrics::count(&self.inner.metrics.user_info, outcome);
        unionid
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Starts a login: takes a fresh QR code (and, with codes on, a login code reserved for
    /// the session's wait) and opens a session with the stream attached. `audience` is who
    /// the login token will be for (a page token's origin); `lang` the stream's language.
    pub async fn start(
        &self,
        audience: Option<Arc<str>>,
        lang: Lang,
    ) -> Result<(SceneView, Attachment), TakeError> {
        let deadline = Instant::now() + self.inner.wait;
        let qr = if self.inner.qr {
            self.inner.pool.take().await?
        } else {
            // Code-only: the session's scene is made here and no QR code shows it.
            QrCode::none(policy::new_scene(), deadline + QR_LIFE_MARGIN)
        };
        let code = match self.inner.codes {
            Some(policy) => Some(self.reserve_code(policy.length, &qr.scene).await?),
            None => None,
        };
        let face = Face { qr, code, lang };
        let opened = self
            .inner
            .scenes
            .open_face(face.clone(), deadline, audience)
            .await;
        let opened = match opened {
            Ok(opened) => opened,
            Err(e) => {
                if let Some(code) = &face.code {
                    self.release_code(code, &face.qr.scene).await;
                }
                return Err(e.into());
            }
        };
        self.inner
            .metrics
            .streams
            .get_or_create(&metrics::Outcome {
                outcome: "new".into(),
            })
            .inc();
        Ok(opened)
    }

    /// Draws a code free among live streams (on every instance) and binds it to `scene` for
    /// the wait; a few draws, then [`TakeError::NoFreeCode`].
    async fn reserve_code(
        &self,
        length: CodeLength,
        scene: &Scene,
    ) -> Result<LoginCode, TakeError> {
        for _ in 0..CODE_DRAWS {
            let code = LoginCode::random(length);
            if self
                .inner
                .store
                .code_reserve(code.as_str(), scene, self.inner.wait)
                .await?
            {
                return Ok(code);
            }
        }
        tracing::warn!(
            draws = CODE_DRAWS,
            "every login code drawn is live on another stream: raise CODE_DIGITS"
        );
        Err(TakeError::NoFreeCode)
    }

    /// Ends the code of `scene`, whose session could not be opened. (A resolved session keeps
    /// its code while it keeps its result, `RESULT_KEEP_SECS`, so that a late sender is told
    /// the login is over; see [`Store::resolve`].) A
    /// failure only leaves the code to its expiry with the wait (it resolves nothing
    /// meanwhile: it names no session).
    async fn release_code(&self, code: &LoginCode, scene: &Scene) {
        if let Err(e) = self.inner.store.code_release(code.as_str(), scene).await {
            tracing::warn!(error = %e, scene = %scene.short(), "cannot release a login code; it expires with its wait");
        }
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
    /// A scan of a session that is over is [`Scanned::late`]. The session's login code
    /// stays until its wait ends, so that a code sent after the scan is told so too.
    pub async fn complete(
        &self,
        scan: &ScanEvent<'_>,
        binding: &Binding,
    ) -> Result<Scanned, StoreError> {
        let unionid = self.unionid(scan.openid).await;
        let (outcome, face) = self
            .inner
            .scenes
            .resolve_face(
                &scan.scene,
                binding,
                scan.dedupe_key(),
                EVENT_KEY_TTL,
                |audience| {
                    let login_token = self
                        .inner
                        .tokens
                        .issue_with_unionid(
                            scan.openid,
                            scan.scene.as_str(),
                            scan.kind.as_str(),
                            audience,
                            unionid.as_ref().map(UnionId::as_str),
                        )
                        .map_err(|e| tracing::error!(error = %e, "cannot sign a login token"))
                        .ok();
                    LoginResult {
                        openid: scan.openid(),
                        kind: scan.kind.into(),
                        login_token,
                        unionid: unionid.clone(),
                        resolved_at: Instant::now(),
                    }
                },
            )
            .await?;
        if let Some(label) = outcome.label() {
            self.inner.metrics.scan(label);
        }
        let late = late(&outcome, face.as_ref());
        Ok(Scanned { outcome, late })
    }

    /// Resolves a verified text message that reads as `code`: counts the attempt against
    /// its sender's limit (once per message: a retry is not another attempt), then resolves the session the code names exactly as a scan would
    /// (once per callback, once per message: WeChat's retries carry the same `MsgId`, once
    /// per session). The code stays until its stream's wait ends, naming its session: a
    /// later attempt at it (or a retry of this one) finds the session over and is answered so,
    /// in the stream's language. A code no session waits on resolves nothing.
    pub async fn complete_code(
        &self,
        text: &TextMessage<'_>,
        code: &LoginCode,
        binding: &Binding,
    ) -> Result<CodeOutcome, StoreError> {
        let outcome = self.resolve_code(text, code, binding).await?;
        let label = match outcome {
            CodeOutcome::LoggedIn(_) => Some("code"),
            CodeOutcome::NoSuchCode | CodeOutcome::Late(_) => Some("code_unmatched"),
            CodeOutcome::TooManyAttempts => Some("code_limited"),
            CodeOutcome::Duplicate { .. } => Some("duplicate"),
            CodeOutcome::Replayed => None,
        };
        if let Some(label) = label {
            self.inner.metrics.scan(label);
        }
        Ok(outcome)
    }

    async fn resolve_code(
        &self,
        text: &TextMessage<'_>,
        code: &LoginCode,
        binding: &Binding,
    ) -> Result<CodeOutcome, StoreError> {
        let store = &self.inner.store;
        let limit = self.inner.codes.map_or(0, |p| p.attempts_per_min);
        // Counted per message: WeChat's retries of this one use up nothing.
        let attempts = store
            .code_attempt(text.openid, text.msg_id, CODE_ATTEMPT_WINDOW)
            .await?;
        let dedupe_key = text.dedupe_key().to_string();
        let unmatched = |bound: Bound| match bound {
            Bound::Conflict => CodeOutcome::Replayed,
            Bound::Retry { login } => CodeOutcome::Duplicate {
                login,
                lang: Lang::Zh,
            },
            Bound::First => CodeOutcome::NoSuchCode,
        };
        if attempts > limit {
            return Ok(match unmatched(store.bind(binding).await?) {
                CodeOutcome::NoSuchCode => CodeOutcome::TooManyAttempts,
                other => other,
            });
        }
        let Some(scene) = store.code_lookup(code.as_str()).await? else {
            return Ok(match unmatched(store.bind(binding).await?) {
                // A retry under a new query of a message that used its code already: the
                // message's key says so (it was claimed when the code was).
                CodeOutcome::NoSuchCode
                    if !store.claim_once(&dedupe_key, EVENT_KEY_TTL).await? =>
                {
                    CodeOutcome::Duplicate {
                        login: false,
                        lang: Lang::Zh,
                    }
                }
                other => other,
            });
        };
        let openid = text.openid();
        let unionid = self.unionid(text.openid).await;
        let (outcome, face) = self
            .inner
            .scenes
            .resolve_face(&scene, binding, &dedupe_key, EVENT_KEY_TTL, |audience| {
                let login_token = self
                    .inner
                    .tokens
                    .issue_with_unionid(
                        text.openid,
                        scene.as_str(),
                        LoginKind::Code.as_str(),
                        audience,
                        unionid.as_ref().map(UnionId::as_str),
                    )
                    .map_err(|e| tracing::error!(error = %e, "cannot sign a login token"))
                    .ok();
                LoginResult {
                    openid,
                    kind: LoginKind::Code,
                    login_token,
                    unionid: unionid.clone(),
                    resolved_at: Instant::now(),
                }
            })
            .await?;
        if let Some(lang) = late(&outcome, face.as_ref()) {
            return Ok(CodeOutcome::Late(lang));
        }
        let lang = face.map_or(Lang::Zh, |f| f.lang);
        Ok(match outcome {
            Outcome::Delivered(()) | Outcome::Parked => CodeOutcome::LoggedIn(lang),
            Outcome::Duplicate { login } => CodeOutcome::Duplicate { login, lang },
            Outcome::Replayed => CodeOutcome::Replayed,
            Outcome::Nobody => CodeOutcome::NoSuchCode,
        })
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
        let content = self.inner.scenes.content(scene).await?;
        // A code-only session has no QR code to render.
        Ok(content.filter(|c| !c.is_empty()))
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

    /// Whether streams get QR codes (`LOGIN_MODES` with `qr`).
    pub fn shows_qr(&self) -> bool {
        self.inner.qr
    }

    /// Login codes, when on.
    pub fn codes(&self) -> Option<CodePolicy> {
        self.inner.codes
    }
}
