//! The streams attached on this instance: one waiter per attachment, by scene and generation.
//! A waiter is where a result (found here, or announced by another instance) is handed to its
//! stream; removing one without a result ends that stream. It also remembers its session, so
//! that the session can be recovered after notices may have been lost.

use dashmap::DashMap;
use tokio::sync::oneshot;

use super::event::LoginResult;
use crate::store::SessionRecord;
use crate::wechat::ids::Scene;

struct Waiter {
    tx: oneshot::Sender<LoginResult>,
    /// The session, once the store confirmed the attachment.
    record: Option<SessionRecord>,
}

/// The waiters of this instance.
#[derive(Default)]
pub(crate) struct Registry {
    waiters: DashMap<(Scene, u64), Waiter>,
}

impl Registry {
    /// Registers attachment `generation` of `scene`, before the store is told, so that a
    /// result arriving meanwhile finds it.
    pub(crate) fn insert(&self, scene: &Scene, generation: u64) -> oneshot::Receiver<LoginResult> {
        let (tx, rx) = oneshot::channel();
        self.waiters
            .insert((scene.clone(), generation), Waiter { tx, record: None });
        rx
    }

    /// Notes the session of a waiter, as the store confirmed it.
    pub(crate) fn confirm(&self, scene: &Scene, generation: u64, record: SessionRecord) {
        if let Some(mut w) = self.waiters.get_mut(&(scene.clone(), generation)) {
            w.record = Some(record);
        }
    }

    /// Hands `result` to the waiter, which is then gone. `false` when there is none (or its
    /// stream is gone).
    pub(crate) fn deliver(&self, scene: &Scene, generation: u64, result: LoginResult) -> bool {
        match self.waiters.remove(&(scene.clone(), generation)) {
            Some((_, w)) => w.tx.send(result).is_ok(),
            None => false,
        }
    }

    /// Removes the waiter (its stream, if still there, ends without a result). `true` if it
    /// was there.
    pub(crate) fn remove(&self, scene: &Scene, generation: u64) -> bool {
        self.waiters.remove(&(scene.clone(), generation)).is_some()
    }

    /// Whether the waiter is still registered.
    pub(crate) fn holds(&self, scene: &Scene, generation: u64) -> bool {
        self.waiters.contains_key(&(scene.clone(), generation))
    }

    /// Waiters registered now.
    pub(crate) fn len(&self) -> usize {
        self.waiters.len()
    }

    /// The confirmed waiters and their sessions.
    pub(crate) fn held(&self) -> Vec<(Scene, u64, SessionRecord)> {
        self.waiters
            .iter()
            .filter_map(|w| {
                let (scene, generation) = w.key();
                Some((scene.clone(), *generation, w.record.clone()?))
            })
            .collect()
    }
}
