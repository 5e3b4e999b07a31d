//! The in-memory store: the default, for one process. Every operation is done under a lock
//! before the returned future is made, so its futures are ready at once; a periodic
//! [`Store::purge_expired`] keeps memory following the live state, not the history.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher as _, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::future::{self, BoxFuture};
use tokio_util::sync::CancellationToken;

use super::{
    ATTACHED_GRACE, Attached, Holder, Inbox, Resolved, SessionRecord, SessionState, Snapshot,
    StockedQr, Store, StoreError, millis, unix_now_ms,
};
use crate::wechat::ids::Scene;
use crate::wechat::token::TokenShare;

/// The state of one process. Cheap to clone.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    instance: Arc<str>,
    /// Claimed keys: their fingerprint, and when they expire in milliseconds since `epoch`.
    /// A busy account claims one per login and keeps it for minutes, so each costs 16 bytes,
    /// not a string and an `Instant`.
    keys: Mutex<HashMap<u64, u64>>,
    /// The clock of `keys`.
    epoch: Instant,
    /// Keyed per process (SipHash with a random key), so nobody can aim two keys at one
    /// fingerprint; among the few hundred thousand keys held at once, an accidental match is
    /// about one in 10^13.
    fingerprints: RandomState,
    stock: Mutex<Stock>,
    sessions: Mutex<HashMap<Scene, Snapshot>>,
    /// QR codes counted today: the day's name and the count.
    made: Mutex<(String, u64)>,
}

#[derive(Default)]
struct Stock {
    codes: VecDeque<StockedQr>,
    /// Reservations by scene, with when they lapse.
    making: HashMap<String, Instant>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn ready<'a, T: Send + 'a>(value: T) -> BoxFuture<'a, Result<T, StoreError>> {
    Box::pin(future::ready(Ok(value)))
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                instance: "local".into(),
                keys: Mutex::new(HashMap::new()),
                epoch: Instant::now(),
                fingerprints: RandomState::new(),
                stock: Mutex::new(Stock::default()),
                sessions: Mutex::new(HashMap::new()),
                made: Mutex::new((String::new(), 0)),
            }),
        }
    }

    /// The number of claimed keys held (expired ones not yet purged included).
    pub fn len(&self) -> usize {
        lock(&self.inner.keys).len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Milliseconds since the keys' epoch.
    fn keys_now(&self) -> u64 {
        millis(self.inner.epoch.elapsed())
    }

    /// Claims `key` for `ttl` unless it is claimed and not expired.
    fn claim(&self, key: &str, ttl: Duration) -> bool {
        let fingerprint = self.inner.fingerprints.hash_one(key);
        let now = self.keys_now();
        let mut keys = lock(&self.inner.keys);
        match keys.get(&fingerprint) {
            Some(expires) if *expires > now => false,
            _ => {
                keys.insert(fingerprint, now.saturating_add(millis(ttl)));
                true
            }
        }
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<Scene, Snapshot>> {
        lock(&self.inner.sessions)
    }

    fn detach_now(&self, scene: &Scene, holder: &Holder) {
        if let Some(s) = self.sessions().get_mut(scene)
            && let SessionState::Waiting { holder: h } = &mut s.state
            && h.as_ref() == Some(holder)
        {
            *h = None;
        }
    }
}

impl Store for MemoryStore {
    fn instance(&self) -> &Arc<str> {
        &self.inner.instance
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        ready(())
    }

    fn claim_once<'a>(
        &'a self,
        key: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        ready(self.claim(key, ttl))
    }

    fn stock_reserve<'a>(
        &'a self,
        scenes: &'a [String],
        target: usize,
        hold: Duration,
    ) -> BoxFuture<'a, Result<usize, StoreError>> {
        let now = Instant::now();
        let mut stock = lock(&self.inner.stock);
        stock.making.retain(|_, until| *until > now);
        let free = target.saturating_sub(stock.codes.len() + stock.making.len());
        let granted = free.min(scenes.len());
        for scene in &scenes[..granted] {
            stock.making.insert(scene.clone(), now + hold);
        }
        ready(granted)
    }

    fn stock_put<'a>(&'a self, qr: &'a StockedQr) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut stock = lock(&self.inner.stock);
        stock.making.remove(&qr.scene);
        stock.codes.push_back(qr.clone());
        ready(())
    }

    fn stock_release<'a>(&'a self, scene: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        lock(&self.inner.stock).making.remove(scene);
        ready(())
    }

    fn stock_take(
        &self,
        fresh_until_ms: u64,
    ) -> BoxFuture<'_, Result<Option<StockedQr>, StoreError>> {
        let mut stock = lock(&self.inner.stock);
        while let Some(qr) = stock.codes.pop_front() {
            if qr.expires_ms >= fresh_until_ms {
                return ready(Some(qr));
            }
            tracing::debug!(scene = %qr.scene, "dropping a QR code that aged in stock");
        }
        ready(None)
    }

    fn stock_len(&self) -> BoxFuture<'_, Result<usize, StoreError>> {
        ready(lock(&self.inner.stock).codes.len())
    }

    fn qr_budget_take<'a>(
        &'a self,
        day: &'a str,
        budget: u64,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        let mut made = lock(&self.inner.made);
        if made.0 != day {
            *made = (day.to_owned(), 0);
        }
        if made.1 >= budget {
            return ready(None);
        }
        made.1 += 1;
        ready(Some(made.1))
    }

    fn qr_made_on<'a>(&'a self, day: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        let made = lock(&self.inner.made);
        ready(if made.0 == day { made.1 } else { 0 })
    }

    fn open<'a>(
        &'a self,
        scene: &'a Scene,
        record: &'a SessionRecord,
        holder: &'a Holder,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.sessions().insert(
            scene.clone(),
            Snapshot {
                record: record.clone(),
                state: SessionState::Waiting {
                    holder: Some(holder.clone()),
                },
            },
        );
        ready(())
    }

    fn attach<'a>(
        &'a self,
        scene: &'a Scene,
        holder: &'a Holder,
        has_result: bool,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Option<Attached>, StoreError>> {
        let mut sessions = self.sessions();
        let Some(session) = sessions.get_mut(scene) else {
            return ready(None);
        };
        let record = session.record.clone();
        let attached = match &mut session.state {
            SessionState::Waiting { holder: h } if now_ms < record.deadline_ms => {
                let replaced = h.replace(holder.clone());
                Some(Attached::Waiting { record, replaced })
            }
            SessionState::Done {
                result,
                kept_until_ms,
            } if !has_result && now_ms < *kept_until_ms => Some(Attached::Result {
                result: result.clone(),
                record,
            }),
            _ => None,
        };
        ready(attached)
    }

    fn detach(&self, scene: Scene, holder: Holder) -> BoxFuture<'static, Result<(), StoreError>> {
        self.detach_now(&scene, &holder);
        Box::pin(future::ready(Ok(())))
    }

    fn close<'a>(
        &'a self,
        scene: &'a Scene,
        holder: &'a Holder,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut sessions = self.sessions();
        let held = sessions.get(scene).is_some_and(
            |s| matches!(&s.state, SessionState::Waiting { holder: Some(h) } if h == holder),
        );
        if held {
            sessions.remove(scene);
        }
        ready(())
    }

    fn session<'a>(
        &'a self,
        scene: &'a Scene,
    ) -> BoxFuture<'a, Result<Option<Snapshot>, StoreError>> {
        ready(self.sessions().get(scene).cloned())
    }

    fn recover<'a>(
        &'a self,
        scene: &'a Scene,
        _record: &'a SessionRecord,
        _holder: &'a Holder,
        _now_ms: u64,
    ) -> BoxFuture<'a, Result<Option<Snapshot>, StoreError>> {
        // Nothing is lost in memory: the session is as it is.
        self.session(scene)
    }

    fn resolve<'a>(
        &'a self,
        scene: &'a Scene,
        event_key: &'a str,
        event_ttl: Duration,
        result: Option<&'a str>,
        keep: Duration,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Resolved, StoreError>> {
        // The key and the session under their locks in turn: nothing else resolves this scene
        // in between, since it is resolved under the sessions' lock.
        if !self.claim(event_key, event_ttl) {
            return ready(Resolved::Duplicate);
        }
        let Some(result) = result else {
            return ready(Resolved::Nobody);
        };
        let mut sessions = self.sessions();
        let Some(session) = sessions.get_mut(scene) else {
            return ready(Resolved::Nobody);
        };
        let SessionState::Waiting { holder } = &session.state else {
            return ready(Resolved::Nobody);
        };
        if now_ms >= session.record.deadline_ms {
            return ready(Resolved::Nobody);
        }
        let expires_ms = session.record.expires_ms;
        let (resolved, kept_until_ms) = match holder {
            Some(h) => (
                Resolved::Delivered(h.clone()),
                expires_ms.min(now_ms.saturating_add(millis(keep))),
            ),
            None => (Resolved::Parked, expires_ms),
        };
        session.state = SessionState::Done {
            result: result.to_owned(),
            kept_until_ms,
        };
        ready(resolved)
    }

    fn live_sessions(&self) -> Option<usize> {
        Some(self.sessions().len())
    }

    fn purge_expired(&self) {
        let now = self.keys_now();
        lock(&self.inner.keys).retain(|_, expires| *expires > now);
        let now_ms = unix_now_ms();
        let grace = millis(ATTACHED_GRACE);
        self.sessions().retain(|_, s| match &s.state {
            SessionState::Waiting { holder: Some(_) } => {
                now_ms < s.record.deadline_ms.saturating_add(grace)
            }
            SessionState::Waiting { holder: None } => now_ms < s.record.deadline_ms,
            SessionState::Done { kept_until_ms, .. } => now_ms < *kept_until_ms,
        });
    }

    fn listen(&self, _inbox: Arc<dyn Inbox>, cancel: CancellationToken) -> BoxFuture<'static, ()> {
        // One process: every holder is here, and the login flow delivers directly.
        Box::pin(async move { cancel.cancelled().await })
    }

    fn token_share(&self) -> Option<Arc<dyn TokenShare>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_is_claimed_once_until_it_expires() {
        let store = MemoryStore::new();
        let ttl = Duration::from_millis(50);
        assert!(store.claim_once("a", ttl).await.unwrap());
        assert!(!store.claim_once("a", ttl).await.unwrap());
        assert!(store.claim_once("b", ttl).await.unwrap());
        tokio::time::sleep(Duration::from_millis(60)).await;
        store.purge_expired();
        assert!(store.is_empty());
        assert!(store.claim_once("a", ttl).await.unwrap());
    }

    #[tokio::test]
    async fn the_daily_budget_is_counted_to_its_end_and_starts_again_the_next_day() {
        let store = MemoryStore::new();
        assert_eq!(store.qr_budget_take("20250101", 2).await.unwrap(), Some(1));
        assert_eq!(store.qr_budget_take("20250101", 2).await.unwrap(), Some(2));
        assert_eq!(store.qr_budget_take("20250101", 2).await.unwrap(), None);
        assert_eq!(store.qr_made_on("20250101").await.unwrap(), 2);
        assert_eq!(store.qr_made_on("20250102").await.unwrap(), 0);
        assert_eq!(store.qr_budget_take("20250102", 2).await.unwrap(), Some(1));
        assert_eq!(store.qr_made_on("20250102").await.unwrap(), 1);
    }
}
