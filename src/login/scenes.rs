//! The login sessions of this instance, by scene.
//!
//! A scene is opened when a stream takes its QR code and lives until the stream's wait ends
//! (its deadline). While it waits, the stream that holds it can come and go: when a stream
//! drops (a network blip), the scene stays and a reconnecting stream that names it resumes it.
//! A scan resolves a waiting scene exactly once: to the attached stream, or, when none is
//! attached, parked for the rest of the QR code's life and handed over once on resume. A scene
//! whose wait ended (timeout, or deadline passed with nobody attached) resolves nothing: a
//! late scan logs nobody in. Expired scenes are removed by [`Scenes::purge_expired`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::oneshot;

use super::event::LoginResult;
use super::pool::QrCode;
use crate::wechat::ids::Scene;

/// How long past its deadline a session with a stream attached may stay, should its
/// stream fail to close it (it closes it at the deadline).
const ATTACHED_GRACE: Duration = Duration::from_secs(30);

/// The stream attached to a waiting scene.
struct Waiter {
    /// Which attachment this is: a resumed stream replaces an older one.
    generation: u64,
    tx: oneshot::Sender<LoginResult>,
}

enum State {
    /// Waiting for a scan; `waiter` is the stream attached now, if any.
    Waiting { waiter: Option<Waiter> },
    /// Scanned. `delivered` once a stream has received the result.
    Done {
        result: LoginResult,
        delivered: bool,
    },
}

struct Session {
    qr: QrCode,
    /// When the wait ends.
    deadline: Instant,
    /// Who the login token will be for (the page token's origin), if bound.
    audience: Option<Arc<str>>,
    state: State,
}

/// What a stream needs to (re)show a scene.
#[derive(Debug, Clone)]
pub struct SceneView {
    /// The QR code.
    pub qr: QrCode,
    /// When the wait ends.
    pub deadline: Instant,
}

/// A stream attached to a waiting scene. Dropping it detaches the stream (the scene stays
/// resumable until its deadline).
pub struct Attachment {
    scenes: Scenes,
    scene: Scene,
    generation: u64,
    /// Receives the result, once.
    pub result: oneshot::Receiver<LoginResult>,
}

impl Attachment {
    /// The scene.
    pub fn scene(&self) -> &Scene {
        &self.scene
    }

    /// Ends the wait without a result (the stream sent its timeout event): the scene is
    /// closed and a later scan resolves nothing.
    pub fn close(self) {
        let generation = self.generation;
        let removed = self.scenes.inner.sessions.remove_if(&self.scene, |_, s| {
            matches!(&s.state, State::Waiting { waiter: Some(w) } if w.generation == generation)
        });
        if removed.is_some() {
            self.scenes.inner.attached.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if let Some(mut session) = self.scenes.inner.sessions.get_mut(&self.scene) {
            if let State::Waiting { waiter } = &mut session.state {
                if waiter
                    .as_ref()
                    .is_some_and(|w| w.generation == self.generation)
                {
                    *waiter = None;
                    self.scenes.inner.attached.fetch_sub(1, Ordering::Relaxed);
                }
            }
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

/// What became of a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Handed to the attached stream.
    Delivered,
    /// No stream attached right now: parked for its return.
    Parked,
    /// No waiting scene: unknown, already resolved, or its wait is over.
    Nobody,
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

/// The sessions. Cheap to clone; sharded, so scenes do not contend on one lock.
#[derive(Clone, Default)]
pub struct Scenes {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    sessions: DashMap<Scene, Session>,
    generations: AtomicU64,
    /// Streams attached now.
    attached: AtomicUsize,
}

impl Scenes {
    /// No sessions.
    pub fn new() -> Self {
        Self::default()
    }

    fn next_generation(&self) -> u64 {
        self.inner.generations.fetch_add(1, Ordering::Relaxed)
    }

    fn attach_waiter(&self, scene: &Scene, generation: u64) -> (Waiter, Attachment) {
        let (tx, rx) = oneshot::channel();
        self.inner.attached.fetch_add(1, Ordering::Relaxed);
        (
            Waiter { generation, tx },
            Attachment {
                scenes: self.clone(),
                scene: scene.clone(),
                generation,
                result: rx,
            },
        )
    }

    /// Opens a session for a fresh QR code, with a stream attached, waiting until `deadline`.
    /// `audience` is who the login token will be for.
    pub fn open(
        &self,
        qr: QrCode,
        deadline: Instant,
        audience: Option<Arc<str>>,
    ) -> (SceneView, Attachment) {
        let scene = qr.scene.clone();
        let (waiter, attachment) = self.attach_waiter(&scene, self.next_generation());
        let view = SceneView {
            qr: qr.clone(),
            deadline,
        };
        self.inner.sessions.insert(
            scene,
            Session {
                qr,
                deadline,
                audience,
                state: State::Waiting {
                    waiter: Some(waiter),
                },
            },
        );
        (view, attachment)
    }

    /// A reconnecting stream names `scene`: attach it if the scene still waits (replacing a
    /// stream still attached, which then ends), or hand it the result unless it says it has
    /// it already (`has_result`: its `Last-Event-ID` was the result's). A result is sent to
    /// a stream the moment it arrives, but the bytes may die with the connection: a client
    /// that reconnects saying it saw only the QR code gets the result again.
    pub fn resume(&self, scene: &Scene, has_result: bool) -> Option<Resumed> {
        let now = Instant::now();
        let mut session = self.inner.sessions.get_mut(scene)?;
        let view = SceneView {
            qr: session.qr.clone(),
            deadline: session.deadline,
        };
        match &mut session.state {
            State::Waiting { waiter } if now < view.deadline => {
                let (new, attachment) = self.attach_waiter(scene, self.next_generation());
                if waiter.replace(new).is_some() {
                    self.inner.attached.fetch_sub(1, Ordering::Relaxed);
                }
                Some(Resumed::Waiting(view, attachment))
            }
            State::Done { result, delivered } if !has_result && now < view.qr.expires_at => {
                *delivered = true;
                Some(Resumed::Result(view, result.clone()))
            }
            _ => None,
        }
    }

    /// Resolves a scan of `scene`, once. `make` builds the result (signing its login token
    /// for the session's audience) only when there is a waiting scene to resolve.
    pub fn resolve(
        &self,
        scene: &Scene,
        make: impl FnOnce(Option<&str>) -> LoginResult,
    ) -> Resolution {
        let now = Instant::now();
        let Some(mut session) = self.inner.sessions.get_mut(scene) else {
            return Resolution::Nobody;
        };
        if now >= session.deadline {
            return Resolution::Nobody;
        }
        if !matches!(session.state, State::Waiting { .. }) {
            return Resolution::Nobody;
        }
        let result = make(session.audience.as_deref());
        let State::Waiting { waiter } = &mut session.state else {
            return Resolution::Nobody;
        };
        let delivered = match waiter.take() {
            Some(w) => {
                self.inner.attached.fetch_sub(1, Ordering::Relaxed);
                w.tx.send(result.clone()).is_ok()
            }
            None => false,
        };
        session.state = State::Done { result, delivered };
        if delivered {
            Resolution::Delivered
        } else {
            Resolution::Parked
        }
    }

    /// The state of `scene`, for polling clients.
    pub fn status(&self, scene: &Scene) -> Status {
        let now = Instant::now();
        let Some(session) = self.inner.sessions.get(scene) else {
            return Status::Expired;
        };
        match &session.state {
            State::Waiting { .. } if now < session.deadline => Status::Pending(SceneView {
                qr: session.qr.clone(),
                deadline: session.deadline,
            }),
            State::Done { result, .. } if now < session.qr.expires_at => {
                Status::Done(result.clone())
            }
            _ => Status::Expired,
        }
    }

    /// Whether a session exists for `scene` (waiting, or holding a result).
    pub fn contains(&self, scene: &Scene) -> bool {
        self.inner.sessions.contains_key(scene)
    }

    /// The content of the QR code of a scene that still waits.
    pub fn content(&self, scene: &Scene) -> Option<Arc<str>> {
        let session = self.inner.sessions.get(scene)?;
        matches!(session.state, State::Waiting { .. }).then(|| Arc::clone(&session.qr.content))
    }

    /// Removes sessions whose wait is over (and results whose QR code expired). A session
    /// with a stream attached is left to that stream, which closes it at the deadline with a
    /// timeout event; removing it first would cut the stream short of that event.
    pub fn purge_expired(&self) {
        let now = Instant::now();
        self.inner.sessions.retain(|_, s| match &s.state {
            State::Waiting { waiter: Some(_) } => now < s.deadline + ATTACHED_GRACE,
            State::Waiting { waiter: None } => now < s.deadline,
            State::Done { .. } => now < s.qr.expires_at,
        });
    }

    /// Streams attached now.
    pub fn attached(&self) -> usize {
        self.inner.attached.load(Ordering::Relaxed)
    }

    /// Sessions held (waiting, or holding a result).
    pub fn len(&self) -> usize {
        self.inner.sessions.len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.inner.sessions.is_empty()
    }

    /// Sessions still waiting for a scan.
    pub fn waiting(&self) -> usize {
        self.inner
            .sessions
            .iter()
            .filter(|s| matches!(s.state, State::Waiting { .. }))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wechat::callback::ScanKind;
    use crate::wechat::ids::{OpenId, Ticket};

    fn qr() -> QrCode {
        QrCode {
            scene: Scene::random(),
            ticket: Ticket::new("t"),
            content: "http://weixin.qq.com/q/x".into(),
            expires_at: Instant::now() + Duration::from_secs(600),
        }
    }

    fn result(openid: &str) -> LoginResult {
        LoginResult {
            openid: OpenId::new(openid),
            kind: ScanKind::Scan,
            login_token: None,
            resolved_at: Instant::now(),
        }
    }

    fn later(secs: u64) -> Instant {
        Instant::now() + Duration::from_secs(secs)
    }

    #[tokio::test]
    async fn a_scan_reaches_the_attached_stream_once() {
        let scenes = Scenes::new();
        let (view, mut attachment) = scenes.open(qr(), later(60), None);
        let scene = view.qr.scene.clone();
        assert_eq!(
            scenes.resolve(&scene, |_| result("o1")),
            Resolution::Delivered
        );
        assert_eq!(scenes.resolve(&scene, |_| result("o2")), Resolution::Nobody);
        assert_eq!(
            (&mut attachment.result).await.unwrap().openid.as_str(),
            "o1"
        );
        assert_eq!(scenes.attached(), 0);
    }

    #[tokio::test]
    async fn a_scan_while_the_stream_is_away_is_parked_and_handed_over_on_resume() {
        let scenes = Scenes::new();
        let (view, attachment) = scenes.open(qr(), later(60), None);
        let scene = view.qr.scene.clone();
        drop(attachment);
        assert_eq!(scenes.attached(), 0);
        assert_eq!(scenes.resolve(&scene, |_| result("o1")), Resolution::Parked);
        assert!(matches!(scenes.status(&scene), Status::Done(r) if r.openid.as_str() == "o1"));
        match scenes.resume(&scene, false) {
            Some(Resumed::Result(_, r)) => assert_eq!(r.openid.as_str(), "o1"),
            _ => panic!("no parked result"),
        }
        // A client that saw the result does not get it again.
        assert!(scenes.resume(&scene, true).is_none());
    }

    #[tokio::test]
    async fn a_resumed_stream_replaces_the_old_one_and_receives_the_scan() {
        let scenes = Scenes::new();
        let (view, mut old) = scenes.open(qr(), later(60), None);
        let scene = view.qr.scene.clone();
        let Some(Resumed::Waiting(_, mut new)) = scenes.resume(&scene, false) else {
            panic!("not resumed")
        };
        assert_eq!(scenes.attached(), 1);
        assert!((&mut old.result).await.is_err(), "the replaced stream ends");
        assert_eq!(
            scenes.resolve(&scene, |_| result("o1")),
            Resolution::Delivered
        );
        assert_eq!((&mut new.result).await.unwrap().openid.as_str(), "o1");
    }

    #[test]
    fn a_closed_or_overdue_scene_resolves_nothing() {
        let scenes = Scenes::new();
        let (view, attachment) = scenes.open(qr(), later(60), None);
        let scene = view.qr.scene.clone();
        attachment.close();
        assert_eq!(scenes.attached(), 0);
        assert!(scenes.is_empty());
        assert_eq!(
            scenes.resolve(&scene, |_| result("late")),
            Resolution::Nobody
        );
        assert!(matches!(scenes.status(&scene), Status::Expired));

        let (view, attachment) = scenes.open(qr(), Instant::now(), None);
        let scene = view.qr.scene.clone();
        assert_eq!(
            scenes.resolve(&scene, |_| result("late")),
            Resolution::Nobody
        );
        assert!(scenes.resume(&scene, false).is_none());
        // Its stream closes it itself; a purge leaves it to the stream for a while...
        scenes.purge_expired();
        assert_eq!(scenes.len(), 1);
        // ...but once the stream is gone, an overdue session is purged.
        drop(attachment);
        scenes.purge_expired();
        assert!(scenes.is_empty());
    }

    #[test]
    fn the_result_is_built_with_the_sessions_audience_only_when_resolving() {
        let scenes = Scenes::new();
        let (view, _a) = scenes.open(qr(), later(60), Some("https://a.example".into()));
        let mut seen = None;
        scenes.resolve(&view.qr.scene, |aud| {
            seen = aud.map(str::to_owned);
            result("o1")
        });
        assert_eq!(seen.as_deref(), Some("https://a.example"));
        let mut called = false;
        scenes.resolve(&Scene::random(), |_| {
            called = true;
            result("o2")
        });
        assert!(!called);
    }
}
