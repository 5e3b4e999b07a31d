//! The streams waiting on this instance, by scene.
//!
//! Registering returns a guard; dropping the guard (the stream ended for any reason: result,
//! timeout, client gone, shutdown) removes the entry, so nothing of a closed stream is left
//! behind. Delivering removes the entry first: a scene resolves once.

use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::oneshot;

use super::event::ScanResult;
use crate::wechat::ids::Scene;

struct Waiter {
    tx: oneshot::Sender<ScanResult>,
    /// The QR code's content, for rendering its image while the stream is open.
    content: Arc<str>,
}

/// Waiting streams by scene. Cheap to clone. Sharded, so callbacks and new streams on
/// different scenes do not contend on one lock.
#[derive(Clone, Default)]
pub struct Registry {
    waiters: Arc<DashMap<Scene, Waiter>>,
}

/// Keeps a scene registered; removes it when dropped.
pub struct WaiterGuard {
    waiters: Arc<DashMap<Scene, Waiter>>,
    scene: Scene,
}

impl Drop for WaiterGuard {
    fn drop(&mut self) {
        self.waiters.remove(&self.scene);
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a stream waiting on `scene`, whose QR code encodes `content`.
    /// Scenes are fresh random values, so an existing entry is never replaced.
    pub fn register(
        &self,
        scene: Scene,
        content: Arc<str>,
    ) -> (WaiterGuard, oneshot::Receiver<ScanResult>) {
        let (tx, rx) = oneshot::channel();
        self.waiters.insert(scene.clone(), Waiter { tx, content });
        (
            WaiterGuard {
                waiters: Arc::clone(&self.waiters),
                scene,
            },
            rx,
        )
    }

    /// Hands `result` to the stream waiting on `scene`, removing it. `false` when no stream
    /// waits (ended, timed out, never ours) or it went away just now.
    pub fn deliver(&self, scene: &Scene, result: ScanResult) -> bool {
        match self.waiters.remove(scene) {
            Some((_, waiter)) => waiter.tx.send(result).is_ok(),
            None => false,
        }
    }

    /// The content of the QR code of a waiting stream.
    pub fn content(&self, scene: &Scene) -> Option<Arc<str>> {
        self.waiters.get(scene).map(|w| Arc::clone(&w.content))
    }

    /// Streams waiting now.
    pub fn len(&self) -> usize {
        self.waiters.len()
    }

    /// Whether no stream waits.
    pub fn is_empty(&self) -> bool {
        self.waiters.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wechat::callback::ScanKind;
    use crate::wechat::ids::OpenId;

    fn result() -> ScanResult {
        ScanResult {
            openid: OpenId::new("o1"),
            kind: ScanKind::Scan,
        }
    }

    #[tokio::test]
    async fn a_scene_is_delivered_once_and_then_forgotten() {
        let registry = Registry::new();
        let scene = Scene::random();
        let (_guard, rx) = registry.register(scene.clone(), "u".into());
        assert!(registry.deliver(&scene, result()));
        assert!(!registry.deliver(&scene, result()));
        assert_eq!(rx.await.unwrap(), result());
        assert!(registry.is_empty());
    }

    #[test]
    fn dropping_the_guard_removes_the_waiter() {
        let registry = Registry::new();
        let scene = Scene::random();
        let (guard, _rx) = registry.register(scene.clone(), "u".into());
        assert_eq!(registry.content(&scene).as_deref(), Some("u"));
        drop(guard);
        assert!(registry.is_empty());
        assert!(!registry.deliver(&scene, result()));
    }
}
