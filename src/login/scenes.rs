//! The login sessions, by scene, over the store; and the streams of this instance attached
//! to them.
//!
//! A scene is opened when a stream takes its QR code and lives until the stream's wait ends
//! (its deadline). While it waits, the stream that holds it can come and go: when a stream
//! drops (a network blip), the scene stays and a reconnecting stream that names it resumes it,
//! on this instance or another. A scan resolves a waiting scene exactly once (one atomic step
//! in the store): to the attached stream, wherever it is, and the result is kept for the rest
//! of the QR code's life and handed over on resume to a stream that has not seen it. A scene
//! whose wait ended (timeout, or deadline passed with nobody attached) resolves nothing: a
//! late scan logs nobody in.
//!
//! The store keeps the sessions (shared by all instances with Redis); the [`Registry`] keeps
//! this instance's waiters. A result for a waiter here is handed over directly; one for a
//! waiter on another instance travels as a [`Notice`] that the store delivers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::{FutureExt as _, StreamExt as _};
use tokio::sync::oneshot;

use subtle::ConstantTimeEq as _;

use serde::{Deserialize, Serialize};

use super::code::LoginCode;
use super::event::{Lang, LoginResult, StreamKey};
use super::pool::QrCode;
use super::registry::Registry;
use crate::store::{
    Attached, Bound, Closed, Found, Holder, Inbox, Notice, Outcome, SessionRecord, SessionState,
    Store, StoreError, instant_to_ms, ms_to_instant, unix_now_ms,
};
use crate::wechat::callback::Binding;
use crate::wechat::ids::Scene;

/// What a stream needs to (re)show a scene.
#[derive(Debug, Clone)]
pub struct SceneView {
    /// The QR code.
    pub qr: QrCode,
    /// The login code the stream shows beside it (`LOGIN_MODES` with `code`).
    pub code: Option<LoginCode>,
    /// When the wait ends.
    pub deadline: Instant,
    /// The stream's secret, for its event ids.
    pub key: StreamKey,
}

/// A stream attached to a waiting scene. Dropping it detaches the stream (the scene stays
/// resumable until its deadline).
pub struct Attachment {
    scenes: Scenes,
    scene: Scene,
    generation: u64,
    /// Receives the result, once; closed without one when a newer stream took over.
    pub result: oneshot::Receiver<LoginResult>,
}

impl Attachment {
    /// The scene.
    pub fn scene(&self) -> &Scene {
        &self.scene
    }

    /// Ends the wait without a result (its deadline passed): the scene is closed and a later
    /// scan resolves nothing. Unless a scan resolved it first, here or on another instance
    /// (its notice still on the way): then that result, which the stream sends instead of its
    /// timeout. A scan that was accepted always reaches the browser.
    pub async fn close(mut self) -> Option<LoginResult> {
        let scenes = self.scenes.clone();
        if !scenes.inner.registry.remove(&self.scene, self.generation) {
            // Delivered here just now (the result waits in the channel), or replaced.
            return self.result.try_recv().ok();
        }
        let holder = scenes.holder(self.generation);
        match scenes.inner.store.close(&self.scene, &holder).await {
            Ok(Closed::Resolved(result)) => decode_result(&result)
                .map_err(|e| tracing::error!(error = %e, "unreadable result of a closing session"))
                .ok(),
            Ok(Closed::Closed | Closed::NotHeld) => None,
            Err(e) => {
                // Its deadline has passed: the session resolves nothing either way.
                tracing::warn!(error = %e, scene = %self.scene.short(), "cannot close a session");
                None
            }
        }
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if !self
            .scenes
            .inner
            .registry
            .remove(&self.scene, self.generation)
        {
            return;
        }
        let holder = self.scenes.holder(self.generation);
        let detach = self.scenes.inner.store.detach(self.scene.clone(), holder);
        let scene = self.scene.clone();
        let mut finish = async move {
            if let Err(e) = detach.await {
                tracing::warn!(error = %e, scene = %scene.short(), "cannot detach a stream; its session ends with its wait");
            }
        }
        .boxed();
        // The memory store is done at once; Redis needs a task.
        if (&mut finish).now_or_never().is_none()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(finish);
        }
    }
}

/// What a reconnecting stream finds.
pub enum Resumed {
    /// The scene still waits; the stream is attached to it now.
    Waiting(SceneView, Attachment),
    /// The scene was scanned and the stream has not seen the result: here it is.
    Result(SceneView, LoginResult),
}

/// What `/login/{scene}/status` reports.
#[derive(Debug, Clone)]
pub enum Status {
    /// Waiting for a scan until the deadline.
    Pending(SceneView),
    /// Scanned.
    Done(LoginResult),
    /// Unknown, timed out, or expired.
    Expired,
}

/// The sessions and this instance's streams. Cheap to clone.
#[derive(Clone)]
pub struct Scenes {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    /// How long a result handed to its stream is kept for a reconnect.
    result_keep: Duration,
    registry: Registry,
    generations: AtomicU64,
}

fn decode_result(json: &str) -> Result<LoginResult, StoreError> {
    serde_json::from_str(json).map_err(|_| StoreError::Corrupt { what: "result" })
}

/// What a session shows its stream, as the record's `qr` keeps it: the QR code, and with a
/// login code the code and the language the stream asked for (a code's passive reply speaks
/// it). A session without a code keeps the QR code's own encoding.
#[derive(Debug, Clone)]
pub struct Face {
    /// The QR code.
    pub qr: QrCode,
    /// The login code, if the stream has one.
    pub code: Option<LoginCode>,
    /// The stream's language.
    pub lang: Lang,
}

/// A [`Face`] with a code, as stored.
#[derive(Serialize, Deserialize)]
struct StoredFace<'a> {
    /// [`QrCode::encode`].
    qr: std::borrow::Cow<'a, str>,
    login_code: std::borrow::Cow<'a, str>,
    #[serde(default)]
    en: bool,
}

impl Face {
    /// The record's `qr`.
    pub fn encode(&self) -> String {
        let qr = self.qr.encode();
        match &self.code {
            None => qr,
            Some(code) => serde_json::to_string(&StoredFace {
                qr: qr.into(),
                login_code: code.as_str().into(),
                en: self.lang == Lang::En,
            })
            .unwrap_or_default(),
        }
    }

    /// A face from [`Face::encode`] and the QR code's expiry.
    pub fn decode(s: &str, expires_ms: u64) -> Result<Self, StoreError> {
        match serde_json::from_str::<StoredFace<'_>>(s) {
            Ok(stored) => Ok(Self {
                qr: QrCode::decode(&stored.qr, expires_ms)?,
                code: Some(
                    LoginCode::parse(&stored.login_code)
                        .ok_or(StoreError::Corrupt { what: "login code" })?,
                ),
                lang: if stored.en { Lang::En } else { Lang::Zh },
            }),
            Err(_) => Ok(Self {
                qr: QrCode::decode(s, expires_ms)?,
                code: None,
                lang: Lang::Zh,
            }),
        }
    }
}

fn view_of(record: &SessionRecord, key: StreamKey) -> Result<SceneView, StoreError> {
    let face = Face::decode(&record.qr, record.expires_ms)?;
    Ok(SceneView {
        qr: face.qr,
        code: face.code,
        deadline: ms_to_instant(record.deadline_ms),
        key,
    })
}

/// Whether `key` is the key of the session `record`, compared in constant time.
fn is_key_of(key: &StreamKey, record: &SessionRecord) -> bool {
    key.digest()
        .as_bytes()
        .ct_eq(record.key_digest.as_bytes())
        .into()
}

impl Scenes {
    /// Sessions kept in `store`; a result handed to its stream is kept `result_keep` longer
    /// for a reconnect (a parked one until its QR code expires).
    pub fn new(store: Arc<dyn Store>, result_keep: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                result_keep,
                registry: Registry::default(),
                generations: AtomicU64::new(1),
            }),
        }
    }

    fn holder(&self, generation: u64) -> Holder {
        Holder {
            instance: Arc::clone(self.inner.store.instance()),
            generation,
        }
    }

    fn attachment(&self, scene: &Scene) -> Attachment {
        let generation = self.inner.generations.fetch_add(1, Ordering::Relaxed);
        let result = self.inner.registry.insert(scene, generation);
        Attachment {
            scenes: self.clone(),
            scene: scene.clone(),
            generation,
            result,
        }
    }

    /// Opens a session for a fresh QR code, with a stream attached, waiting until `deadline`.
    /// `audience` is who the login token will be for.
    pub async fn open(
        &self,
        qr: QrCode,
        deadline: Instant,
        audience: Option<Arc<str>>,
    ) -> Result<(SceneView, Attachment), StoreError> {
        let face = Face {
            qr,
            code: None,
            lang: Lang::Zh,
        };
        self.open_face(face, deadline, audience).await
    }

    /// Opens a session showing `face` (a QR code, and perhaps a login code reserved for its
    /// scene), as [`Scenes::open`].
    pub async fn open_face(
        &self,
        face: Face,
        deadline: Instant,
        audience: Option<Arc<str>>,
    ) -> Result<(SceneView, Attachment), StoreError> {
        let qr = face.qr.clone();
        let scene = qr.scene.clone();
        let key = StreamKey::random();
        let attachment = self.attachment(&scene);
        let record = SessionRecord {
            qr: face.encode(),
            audience: audience.map(|a| a.to_string()),
            deadline_ms: instant_to_ms(deadline),
            expires_ms: instant_to_ms(qr.expires_at),
            key_digest: key.digest(),
        };
        let holder = self.holder(attachment.generation);
        self.inner.store.open(&scene, &record, &holder).await?;
        self.inner
            .registry
            .confirm(&scene, attachment.generation, record);
        Ok((
            SceneView {
                qr,
                code: face.code,
                deadline,
                key,
            },
            attachment,
        ))
    }

    /// A reconnecting stream names `scene` and its `key`: attach it if the scene still waits
    /// (replacing a stream still attached, which then ends, wherever it is), or hand it the
    /// result unless it says it has it already (`has_result`: its `Last-Event-ID` was the
    /// result's). A result is sent to a stream the moment it arrives, but the bytes may die
    /// with the connection: a client that reconnects saying it saw only the QR code gets it
    /// again. A key that is not the scene's resumes nothing and changes nothing.
    pub async fn resume(
        &self,
        scene: &Scene,
        key: &StreamKey,
        has_result: bool,
    ) -> Result<Option<Resumed>, StoreError> {
        let attachment = self.attachment(scene);
        let holder = self.holder(attachment.generation);
        let attached = self
            .inner
            .store
            .attach(scene, &key.digest(), &holder, has_result, unix_now_ms())
            .await;
        let attached = match attached {
            Ok(attached) => attached,
            Err(e) => {
                self.inner.registry.remove(scene, attachment.generation);
                return Err(e);
            }
        };
        match attached {
            Some(Attached::Waiting { record, replaced }) => {
                if let Some(old) = replaced.filter(|h| h.instance == holder.instance) {
                    self.inner.registry.remove(scene, old.generation);
                }
                let view = view_of(&record, key.clone())?;
                self.inner
                    .registry
                    .confirm(scene, attachment.generation, record);
                Ok(Some(Resumed::Waiting(view, attachment)))
            }
            Some(Attached::Result { record, result }) => {
                self.inner.registry.remove(scene, attachment.generation);
                Ok(Some(Resumed::Result(
                    view_of(&record, key.clone())?,
                    decode_result(&result)?,
                )))
            }
            None => {
                self.inner.registry.remove(scene, attachment.generation);
                Ok(None)
            }
        }
    }

    /// Resolves a scan of `scene`, once per callback (its `binding`), once per `event_key`
    /// and once per scene. `make` builds the result (signing its login token for the
    /// session's audience) only when there is a waiting scene to resolve; the event's key is
    /// written out only when there is a session.
    pub async fn resolve(
        &self,
        scene: &Scene,
        binding: &Binding,
        event_key: impl std::fmt::Display,
        event_ttl: std::time::Duration,
        make: impl FnOnce(Option<&str>) -> LoginResult,
    ) -> Result<Outcome, StoreError> {
        self.resolve_face(scene, binding, event_key, event_ttl, make)
            .await
            .map(|(outcome, _)| outcome)
    }

    /// [`Scenes::resolve`], with what the session showed its stream (its login code, its
    /// language) when there was a session.
    pub async fn resolve_face(
        &self,
        scene: &Scene,
        binding: &Binding,
        event_key: impl std::fmt::Display,
        event_ttl: std::time::Duration,
        make: impl FnOnce(Option<&str>) -> LoginResult,
    ) -> Result<(Outcome, Option<Face>), StoreError> {
        // No session for the scene: it resolves nothing. Only the callback's binding is
        // recorded, in the same step as the look (a signed callback is WeChat's, or a replay
        // the binding refuses); the event's key would only let floods of unknown scenes grow
        // memory.
        let session = match self.inner.store.session_or_bind(scene, binding).await? {
            Found::Session(session) => session,
            Found::Bound(bound) => {
                let outcome = match bound {
                    Bound::First => Outcome::Nobody,
                    Bound::Retry { login } => Outcome::Duplicate { login },
                    Bound::Conflict => Outcome::Replayed,
                };
                return Ok((outcome, None));
            }
        };
        let face = Face::decode(&session.record.qr, session.record.expires_ms)
            .map_err(
                |e| tracing::warn!(error = %e, scene = %scene.short(), "unreadable session face"),
            )
            .ok();
        let now_ms = unix_now_ms();
        let result = (matches!(session.state, SessionState::Waiting { .. })
            && now_ms < session.record.deadline_ms)
            .then(|| make(session.record.audience.as_deref()));
        let encoded = match &result {
            Some(r) => Some(
                serde_json::to_string(r).map_err(|source| StoreError::Encode {
                    what: "a result",
                    source,
                })?,
            ),
            None => None,
        };
        let event_key = event_key.to_string();
        let resolved = self
            .inner
            .store
            .resolve(
                scene,
                binding,
                &event_key,
                event_ttl,
                encoded.as_deref(),
                face.as_ref()
                    .and_then(|f| f.code.as_ref())
                    .map(LoginCode::as_str),
                self.inner.result_keep,
                now_ms,
            )
            .await?;
        let outcome = match (resolved, result) {
            (o @ (Outcome::Replayed | Outcome::Duplicate { .. }), _) => o.forget_holder(),
            (_, None) => Outcome::Nobody,
            (Outcome::Delivered(h), Some(result)) if &h.instance == self.inner.store.instance() => {
                if self.inner.registry.deliver(scene, h.generation, result) {
                    Outcome::Delivered(())
                } else {
                    // The stream went away just now: its result stays for its return as long
                    // as a parked one would.
                    self.keep_for_return(scene).await;
                    Outcome::Parked
                }
            }
            (other, Some(_)) => other.forget_holder(),
        };
        Ok((outcome, face))
    }

    /// Keeps the result of `scene` until its QR code expires (its stream was gone).
    async fn keep_for_return(&self, scene: &Scene) {
        if let Err(e) = self.inner.store.keep_for_return(scene).await {
            tracing::warn!(error = %e, scene = %scene.short(), "cannot keep a result for its stream's return; it stays for RESULT_KEEP_SECS");
        }
    }

    /// The state of `scene`, for a polling client that proves it is the stream's with `key`.
    /// A wrong key reads as an unknown scene.
    pub async fn status(&self, scene: &Scene, key: &StreamKey) -> Result<Status, StoreError> {
        let now_ms = unix_now_ms();
        let Some(session) = self.inner.store.session(scene).await? else {
            return Ok(Status::Expired);
        };
        if !is_key_of(key, &session.record) {
            return Ok(Status::Expired);
        }
        Ok(match &session.state {
            SessionState::Waiting { .. } if now_ms < session.record.deadline_ms => {
                Status::Pending(view_of(&session.record, key.clone())?)
            }
            SessionState::Done {
                result,
                kept_until_ms,
            } if now_ms < *kept_until_ms => Status::Done(decode_result(result)?),
            _ => Status::Expired,
        })
    }

    /// The content of the QR code of a scene that still waits.
    pub async fn content(&self, scene: &Scene) -> Result<Option<Arc<str>>, StoreError> {
        let now_ms = unix_now_ms();
        match self.inner.store.session(scene).await? {
            Some(s)
                if matches!(s.state, SessionState::Waiting { .. })
                    && now_ms < s.record.deadline_ms =>
            {
                Ok(Some(
                    Face::decode(&s.record.qr, s.record.expires_ms)?.qr.content,
                ))
            }
            _ => Ok(None),
        }
    }

    /// Streams attached on this instance now.
    pub fn attached(&self) -> usize {
        self.inner.registry.len()
    }

    /// Sessions held (waiting, or holding a result), when the store can count them.
    pub fn live(&self) -> Option<usize> {
        self.inner.store.live_sessions()
    }

    /// Checks every stream held here against its session, after notices may have been lost:
    /// hands over results that arrived meanwhile, ends streams another instance took over,
    /// and re-creates sessions the store lost. Sessions that cannot be checked now (a shard of
    /// a Redis Cluster still failing over) are checked again in the background until they
    /// can be, or their streams are gone.
    pub async fn recover(&self) {
        let held = self.inner.registry.held();
        if held.is_empty() {
            return;
        }
        tracing::info!(
            streams = held.len(),
            "checking the sessions of this instance's streams"
        );
        let failed = self.recover_each(held).await;
        if !failed.is_empty() {
            tokio::spawn(self.clone().recover_later(failed));
        }
    }

    /// [`Self::recover_one`] for each of `held`, some at once: those that failed.
    async fn recover_each(
        &self,
        held: Vec<(Scene, u64, SessionRecord)>,
    ) -> Vec<(Scene, u64, SessionRecord)> {
        /// Sessions checked at once.
        const CONCURRENCY: usize = 64;
        let failed: Vec<_> = futures_util::stream::iter(held)
            .map(|(scene, generation, record)| async move {
                let outcome = self.recover_one(&scene, generation, &record).await;
                outcome.err().map(|e| (e, (scene, generation, record)))
            })
            .buffer_unordered(CONCURRENCY)
            .filter_map(std::future::ready)
            .collect()
            .await;
        if let Some((e, _)) = failed.first() {
            tracing::warn!(error = %e, failed = failed.len(), "cannot check sessions; checking them again soon");
        }
        failed.into_iter().map(|(_, held)| held).collect()
    }

    /// Checks `failed` again, with growing pauses, while their streams are held here.
    async fn recover_later(self, mut failed: Vec<(Scene, u64, SessionRecord)>) {
        const FIRST: Duration = Duration::from_millis(250);
        const MOST: Duration = Duration::from_secs(4);
        let mut pause = FIRST;
        while !failed.is_empty() {
            tokio::time::sleep(pause).await;
            failed.retain(|(scene, generation, _)| self.inner.registry.holds(scene, *generation));
            failed = self.recover_each(failed).await;
            pause = (pause * 2).min(MOST);
        }
    }

    async fn recover_one(
        &self,
        scene: &Scene,
        generation: u64,
        record: &SessionRecord,
    ) -> Result<(), StoreError> {
        let holder = self.holder(generation);
        let now_ms = unix_now_ms();
        let Some(session) = self
            .inner
            .store
            .recover(scene, record, &holder, now_ms)
            .await?
        else {
            // Its wait is over: the stream ends by itself.
            return Ok(());
        };
        match session.state {
            SessionState::Done { result, .. } => {
                self.inner
                    .registry
                    .deliver(scene, generation, decode_result(&result)?);
            }
            SessionState::Waiting { holder: Some(h) } if h != holder => {
                self.inner.registry.remove(scene, generation);
            }
            SessionState::Waiting { holder: None } => {
                self.inner
                    .store
                    .attach(scene, &record.key_digest, &holder, false, now_ms)
                    .await?;
            }
            SessionState::Waiting { .. } => {}
        }
        Ok(())
    }
}

impl Inbox for Scenes {
    fn notice(&self, notice: Notice) {
        match notice {
            Notice::Result {
                scene,
                generation,
                result,
            } => match decode_result(&result) {
                Ok(result) => {
                    if !self.inner.registry.deliver(&scene, generation, result) {
                        tracing::debug!(scene = %scene.short(), "a result for a stream that is gone: kept for its return");
                        let scenes = self.clone();
                        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                            runtime.spawn(async move { scenes.keep_for_return(&scene).await });
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, scene = %scene.short(), "unreadable result in a notice")
                }
            },
            Notice::Replaced { scene, generation } => {
                self.inner.registry.remove(&scene, generation);
            }
        }
    }

    fn reconnected(&self) -> BoxFuture<'static, ()> {
        let scenes = self.clone();
        Box::pin(async move { scenes.recover().await })
    }
}

/// The session semantics on every store are tested in `tests/it/sessions.rs`; here, what
/// only this module decides.
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::login::policy::new_scene;
    use crate::wechat::ids::Ticket;

    #[test]
    fn a_face_keeps_its_code_and_language_and_a_plain_qr_code_reads_as_a_face_without() {
        let face = Face {
            qr: QrCode {
                scene: new_scene(),
                ticket: Ticket::new("t"),
                content: "http://weixin.qq.com/q/x".into(),
                expires_at: Instant::now() + Duration::from_secs(600),
            },
            code: LoginCode::parse("048392"),
            lang: Lang::En,
        };
        let back = Face::decode(&face.encode(), 0).unwrap();
        assert_eq!(back.qr.scene, face.qr.scene);
        assert_eq!(back.code, face.code);
        assert_eq!(back.lang, Lang::En);
        // A session opened without a code (or by an older version) keeps the QR code alone.
        let plain = Face::decode(&face.qr.encode(), 0).unwrap();
        assert_eq!((plain.code, plain.lang), (None, Lang::Zh));
        assert!(Face::decode("{\"qr\":\"x\",\"login_code\":\"12\"}", 0).is_err());
    }
}
