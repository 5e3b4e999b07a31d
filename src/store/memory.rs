//! The in-memory store: the default, for one process. Every operation is done under a lock
//! before the returned future is made, so its futures are ready at once; a periodic
//! [`Store::purge_expired`] keeps memory following the live state, not the history.

mod codes;
mod once;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher as _, RandomState};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use futures_util::future::{self, BoxFuture};
use hashbrown::HashTable;
use hashbrown::hash_table::Entry;
use tokio_util::sync::CancellationToken;

use subtle::ConstantTimeEq as _;

use self::codes::{Attempts, Codes};
use self::once::Once;
use super::{
    ATTACHED_GRACE, Attached, Bound, Closed, Found, Holder, Inbox, Outcome, SessionRecord,
    SessionState, Snapshot, StockedQr, Store, StoreError, millis, unix_now_ms,
};
use crate::wechat::callback::{Binding, replayable_for};
use crate::wechat::ids::Scene;
use crate::wechat::token::TokenShare;

/// The state of one process. Cheap to clone.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    instance: Arc<str>,
    /// Claimed keys by fingerprint. A busy account claims one per login and keeps it for
    /// seconds to minutes, so each costs a few bytes, not a string and an `Instant`.
    keys: Mutex<ByFingerprint<Claim>>,
    /// Callbacks' queries bound to their bodies: one per callback WeChat sends. In shards
    /// (by fingerprint), so that callbacks on different worker threads rarely wait on, and
    /// sleep behind, one another's lock.
    bindings: [Mutex<Bindings>; BINDING_SHARDS],
    /// The clock of `keys`.
    epoch: Instant,
    /// Keyed per process (SipHash with a random key), so nobody can aim two keys at one
    /// fingerprint; among the few hundred thousand keys held at once, an accidental match is
    /// about one in 10^13.
    fingerprints: RandomState,
    stock: Mutex<Stock>,
    sessions: Mutex<HashMap<Scene, Snapshot>>,
    /// The page-token key: the first candidate offered, for the life of the process.
    page_key: OnceLock<[u8; 32]>,
    /// QR codes counted today: the day's name and the count.
    made: Mutex<(String, u64)>,
    /// Live login codes. One lock: a code is reserved once per stream and taken or looked up
    /// once per text message, far fewer than the callbacks the sharded bindings take.
    codes: Mutex<Codes>,
    /// Attempts at codes by sender, in each sender's current window.
    attempts: Mutex<Attempts>,
    /// Values read once, by key.
    once: Mutex<Once>,
}

/// A claimed key.
#[derive(Clone, Copy)]
struct Claim {
    /// When it expires, in milliseconds since `epoch`.
    expires: u64,
    /// For a callback's event: whether it logged somebody in.
    login: bool,
}

/// The longest life a code or a window of attempts is given: `Instant` cannot reach as far
/// as any `Duration`.
const FAR: Duration = Duration::from_secs(100 * 365 * 86_400);

/// How many locks the bindings are spread over.
const BINDING_SHARDS: usize = 16;

/// Values under fingerprints. A fingerprint is a keyed hash already, so the table uses it as
/// its hash rather than hashing it again.
struct ByFingerprint<V>(HashTable<(u64, V)>);

impl<V> ByFingerprint<V> {
    fn with_capacity(capacity: usize) -> Self {
        Self(HashTable::with_capacity(capacity))
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn get_mut(&mut self, fingerprint: u64) -> Option<&mut V> {
        self.0
            .find_mut(fingerprint, |(f, _)| *f == fingerprint)
            .map(|(_, v)| v)
    }

    fn entry(&mut self, fingerprint: u64) -> Entry<'_, (u64, V)> {
        self.0
            .entry(fingerprint, |(f, _)| *f == fingerprint, |(f, _)| *f)
    }

    fn retain(&mut self, mut keep: impl FnMut(&V) -> bool) {
        self.0.retain(|(_, v)| keep(v));
    }
}

/// Callbacks' queries bound to their bodies, by the second the query was signed (its
/// `timestamp`). A query can be replayed only while its timestamp passes the freshness check,
/// so the bindings of one second lapse together and go as one table; and the table being
/// filled, now's, stays small enough to be in cache at any rate of callbacks.
#[derive(Default)]
struct Bindings {
    by_second: BTreeMap<i64, Second>,
}

/// How many seconds after its own a second's bindings are settled (see [`Second`]): WeChat's
/// callbacks carry WeChat's clock, so a second keeps getting bindings for as long as the two
/// clocks differ.
const SETTLE_AFTER_SECS: i64 = 5;

/// One second's bindings. A hash table while its callbacks arrive; once the second is past,
/// its bindings sorted in a slice of their exact size: a table's slots come in powers of two
/// and it is half empty as often as not, and a second's bindings are kept for five minutes,
/// so settled seconds hold them in about half the memory. A binding that comes for a settled
/// second (a clock further off) goes to a table beside it.
enum Second {
    Filling(ByFingerprint<Bond>),
    Settled {
        sorted: Box<[(u64, Bond)]>,
        late: ByFingerprint<Bond>,
    },
}

impl Second {
    fn len(&self) -> usize {
        match self {
            Self::Filling(table) => table.len(),
            Self::Settled { sorted, late } => sorted.len() + late.len(),
        }
    }

    fn bind(&mut self, fingerprint: u64, digest: [u8; 16]) -> Bound {
        let table = match self {
            Self::Filling(table) => table,
            Self::Settled { sorted, late } => match find(sorted, fingerprint) {
                Some(bond) => return bond.seen(digest),
                None => late,
            },
        };
        match table.entry(fingerprint) {
            Entry::Occupied(seen) => seen.get().1.seen(digest),
            Entry::Vacant(slot) => {
                slot.insert((fingerprint, Bond::new(digest)));
                Bound::First
            }
        }
    }

    fn get_mut(&mut self, fingerprint: u64) -> Option<&mut Bond> {
        match self {
            Self::Filling(table) => table.get_mut(fingerprint),
            Self::Settled { sorted, late } => match find(sorted, fingerprint) {
                Some(bond) => Some(bond),
                None => late.get_mut(fingerprint),
            },
        }
    }

    /// Sorts a filling second's bindings into a slice of their size.
    fn settle(&mut self) {
        if let Self::Filling(table) = self {
            let mut sorted: Vec<(u64, Bond)> =
                std::mem::replace(table, ByFingerprint::with_capacity(0))
                    .0
                    .into_iter()
                    .collect();
            sorted.sort_unstable_by_key(|(fingerprint, _)| *fingerprint);
            *self = Self::Settled {
                sorted: sorted.into_boxed_slice(),
                late: ByFingerprint::with_capacity(0),
            };
        }
    }
}

/// The binding of `fingerprint` in `sorted`, if there.
fn find(sorted: &mut [(u64, Bond)], fingerprint: u64) -> Option<&mut Bond> {
    let at = sorted
        .binary_search_by_key(&fingerprint, |(f, _)| *f)
        .ok()?;
    sorted.get_mut(at).map(|(_, bond)| bond)
}

impl Bindings {
    /// Binds the query of `fingerprint`, signed at `second`, to the body of `digest` unless it
    /// is bound already.
    fn bind(&mut self, second: i64, fingerprint: u64, digest: [u8; 16]) -> Bound {
        // A new second's table is sized for as many as the latest one holds: at a steady rate
        // it is never grown (and rehashed) while filling.
        let latest = self.by_second.last_key_value().map_or(0, |(_, s)| s.len());
        self.by_second
            .entry(second)
            .or_insert_with(|| Second::Filling(ByFingerprint::with_capacity(latest)))
            .bind(fingerprint, digest)
    }

    /// Notes that the callback bound under `fingerprint`, signed at `second`, logged
    /// somebody in.
    fn mark_login(&mut self, second: i64, fingerprint: u64) {
        if let Some(bond) = self
            .by_second
            .get_mut(&second)
            .and_then(|s| s.get_mut(fingerprint))
        {
            bond.login = true;
        }
    }

    /// Drops the seconds whose queries no longer pass the freshness check at `now`, and
    /// settles those that are past.
    fn purge(&mut self, now: i64) {
        self.by_second
            .retain(|second, _| !replayable_for(*second, now).is_zero());
        for (_, second) in self
            .by_second
            .range_mut(..now.saturating_sub(SETTLE_AFTER_SECS))
        {
            second.settle();
        }
    }
}

/// A callback's query bound to its body: one is kept per callback WeChat sends, for minutes.
#[derive(Clone, Copy)]
struct Bond {
    /// The first 96 bits of the body's digest: another body with the same ones takes about
    /// 2^96 hashes to find, within the minutes a binding lives.
    digest: [u8; 12],
    /// Whether the callback logged somebody in.
    login: bool,
}

impl Bond {
    fn new(digest: [u8; 16]) -> Self {
        let mut short = [0u8; 12];
        short.copy_from_slice(&digest[..12]);
        Self {
            digest: short,
            login: false,
        }
    }

    /// What a callback whose query is bound already is: WeChat's retry with the same body,
    /// else a replay with another.
    fn seen(self, digest: [u8; 16]) -> Bound {
        if self.digest.ct_eq(&digest[..12]).into() {
            Bound::Retry { login: self.login }
        } else {
            Bound::Conflict
        }
    }
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
                keys: Mutex::new(ByFingerprint::with_capacity(0)),
                bindings: Default::default(),
                epoch: Instant::now(),
                fingerprints: RandomState::new(),
                stock: Mutex::new(Stock::default()),
                sessions: Mutex::new(HashMap::new()),
                page_key: OnceLock::new(),
                made: Mutex::new((String::new(), 0)),
                codes: Mutex::new(Codes::default()),
                attempts: Mutex::new(Attempts::default()),
                once: Mutex::new(Once::default()),
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

    /// The fingerprint of a key or a query's name, under which it is claimed or bound.
    fn fingerprint(&self, key: &[u8]) -> u64 {
        self.inner.fingerprints.hash_one(key)
    }

    /// Claims the key of `fingerprint` for `ttl` unless it is claimed and not expired: `Err`
    /// with the claim found.
    fn claim(&self, fingerprint: u64, ttl: Duration) -> Result<(), Claim> {
        let now = self.keys_now();
        let fresh = Claim {
            expires: now.saturating_add(millis(ttl)),
            login: false,
        };
        match lock(&self.inner.keys).entry(fingerprint) {
            Entry::Occupied(mut held) => {
                let claim = &mut held.get_mut().1;
                if claim.expires > now {
                    return Err(*claim);
                }
                *claim = fresh;
            }
            Entry::Vacant(slot) => {
                slot.insert((fingerprint, fresh));
            }
        }
        Ok(())
    }

    /// Notes that the event of the claimed key of `fingerprint` logged somebody in.
    fn mark_login(&self, fingerprint: u64) {
        if let Some(claim) = lock(&self.inner.keys).get_mut(fingerprint) {
            claim.login = true;
        }
    }

    /// The shard of the bindings that holds `fingerprint`'s. Chosen by bits the tables'
    /// probing does not use (it starts from the low bits and tags with the top seven).
    fn bindings(&self, fingerprint: u64) -> MutexGuard<'_, Bindings> {
        let shard = (fingerprint >> 32) as usize % BINDING_SHARDS;
        lock(&self.inner.bindings[shard])
    }

    /// Binds the query of `binding` (of `fingerprint`) to its body unless bound already.
    fn bind_now(&self, fingerprint: u64, binding: &Binding) -> Bound {
        self.bindings(fingerprint)
            .bind(binding.signed_at(), fingerprint, binding.digest())
    }

    /// Notes that the callback of `binding` (of `fingerprint`) logged somebody in.
    fn mark_bound_login(&self, fingerprint: u64, binding: &Binding) {
        self.bindings(fingerprint)
            .mark_login(binding.signed_at(), fingerprint);
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
        ready(self.claim(self.fingerprint(key.as_bytes()), ttl).is_ok())
    }

    fn page_key<'a>(
        &'a self,
        candidate: &'a [u8; 32],
    ) -> BoxFuture<'a, Result<[u8; 32], StoreError>> {
        ready(*self.inner.page_key.get_or_init(|| *candidate))
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

    fn once_put<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let now = Instant::now();
        ready(lock(&self.inner.once).put(key, value, now, now + ttl.min(FAR)))
    }

    fn once_take<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        ready(lock(&self.inner.once).take(key, Instant::now()))
    }

    fn code_reserve<'a>(
        &'a self,
        code: &'a str,
        scene: &'a Scene,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let now = Instant::now();
        ready(lock(&self.inner.codes).reserve(code, scene, now, now + ttl.min(FAR)))
    }

    fn code_lookup<'a>(
        &'a self,
        code: &'a str,
    ) -> BoxFuture<'a, Result<Option<Scene>, StoreError>> {
        ready(lock(&self.inner.codes).lookup(code, Instant::now()))
    }

    fn code_release<'a>(
        &'a self,
        code: &'a str,
        scene: &'a Scene,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        ready(lock(&self.inner.codes).release(code, scene, Instant::now()))
    }

    fn code_attempt<'a>(
        &'a self,
        sender: &'a str,
        message: &'a str,
        window: Duration,
    ) -> BoxFuture<'a, Result<u32, StoreError>> {
        let window = window.min(FAR);
        ready(lock(&self.inner.attempts).count(sender, message, window, Instant::now()))
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
        key_digest: &'a str,
        holder: &'a Holder,
        has_result: bool,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Option<Attached>, StoreError>> {
        let mut sessions = self.sessions();
        let Some(session) = sessions.get_mut(scene) else {
            return ready(None);
        };
        let key_matches: bool = session
            .record
            .key_digest
            .as_bytes()
            .ct_eq(key_digest.as_bytes())
            .into();
        if !key_matches {
            return ready(None);
        }
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
    ) -> BoxFuture<'a, Result<Closed, StoreError>> {
        let mut sessions = self.sessions();
        let closed = match sessions.get(scene).map(|s| &s.state) {
            Some(SessionState::Waiting { holder: Some(h) }) if h == holder => {
                sessions.remove(scene);
                Closed::Closed
            }
            Some(SessionState::Done { result, .. }) => Closed::Resolved(result.clone()),
            _ => Closed::NotHeld,
        };
        ready(closed)
    }

    fn keep_for_return<'a>(&'a self, scene: &'a Scene) -> BoxFuture<'a, Result<(), StoreError>> {
        if let Some(s) = self.sessions().get_mut(scene)
            && let SessionState::Done { kept_until_ms, .. } = &mut s.state
        {
            *kept_until_ms = (*kept_until_ms).max(s.record.expires_ms);
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

    fn bind<'a>(&'a self, binding: &'a Binding) -> BoxFuture<'a, Result<Bound, StoreError>> {
        ready(self.bind_now(self.fingerprint(binding.name()), binding))
    }

    fn session_or_bind<'a>(
        &'a self,
        scene: &'a Scene,
        binding: &'a Binding,
    ) -> BoxFuture<'a, Result<Found, StoreError>> {
        let session = self.sessions().get(scene).cloned();
        ready(match session {
            Some(session) => Found::Session(session),
            None => Found::Bound(self.bind_now(self.fingerprint(binding.name()), binding)),
        })
    }

    fn resolve<'a>(
        &'a self,
        scene: &'a Scene,
        binding: &'a Binding,
        event_key: &'a str,
        event_ttl: Duration,
        result: Option<&'a str>,
        code: Option<&'a str>,
        keep: Duration,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Outcome<Holder>, StoreError>> {
        // All under the sessions' lock (the binding's and the keys' are taken inside it):
        // nothing else resolves this scene, or records this callback, in between.
        let mut sessions = self.sessions();
        let bound = self.fingerprint(binding.name());
        let event = self.fingerprint(event_key.as_bytes());
        match self.bind_now(bound, binding) {
            Bound::Conflict => return ready(Outcome::Replayed),
            Bound::Retry { login } => return ready(Outcome::Duplicate { login }),
            Bound::First => {}
        }
        if let Err(first) = self.claim(event, event_ttl) {
            if first.login {
                self.mark_bound_login(bound, binding);
            }
            return ready(Outcome::Duplicate { login: first.login });
        }
        let Some(result) = result else {
            return ready(Outcome::Nobody);
        };
        let Some(session) = sessions.get_mut(scene) else {
            return ready(Outcome::Nobody);
        };
        let SessionState::Waiting { holder } = &session.state else {
            return ready(Outcome::Nobody);
        };
        if now_ms >= session.record.deadline_ms {
            return ready(Outcome::Nobody);
        }
        let expires_ms = session.record.expires_ms;
        let (resolved, kept_until_ms) = match holder {
            Some(h) => (
                Outcome::Delivered(h.clone()),
                expires_ms.min(now_ms.saturating_add(millis(keep))),
            ),
            None => (Outcome::Parked, expires_ms),
        };
        session.state = SessionState::Done {
            result: result.to_owned(),
            kept_until_ms,
        };
        if let Some(code) = code {
            lock(&self.inner.codes).lapse_by(code, scene, Instant::now() + keep.min(FAR));
        }
        self.mark_login(event);
        self.mark_bound_login(bound, binding);
        ready(resolved)
    }

    fn live_sessions(&self) -> Option<usize> {
        Some(self.sessions().len())
    }

    fn purge_expired(&self) {
        let now = self.keys_now();
        lock(&self.inner.keys).retain(|claim| claim.expires > now);
        let instant = Instant::now();
        lock(&self.inner.codes).purge(instant);
        lock(&self.inner.attempts).purge(instant);
        lock(&self.inner.once).purge(instant);
        let now_ms = unix_now_ms();
        let now_secs = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX);
        for shard in &self.inner.bindings {
            lock(shard).purge(now_secs);
        }
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
    use crate::login::policy::new_scene;

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
    async fn the_first_page_key_offered_stays() {
        let store = MemoryStore::new();
        assert_eq!(store.page_key(&[1; 32]).await.unwrap(), [1; 32]);
        assert_eq!(store.page_key(&[2; 32]).await.unwrap(), [1; 32]);
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

    #[tokio::test]
    async fn lapsed_codes_and_ended_windows_of_attempts_are_purged() {
        let store = MemoryStore::new();
        let (short, long) = (Duration::from_millis(30), Duration::from_secs(60));
        let scene = new_scene();
        assert!(store.code_reserve("111111", &scene, short).await.unwrap());
        assert!(store.code_reserve("222222", &scene, long).await.unwrap());
        assert_eq!(store.code_attempt("o1", "m1", short).await.unwrap(), 1);
        assert_eq!(store.code_attempt("o2", "m2", long).await.unwrap(), 1);
        tokio::time::sleep(Duration::from_millis(40)).await;
        store.purge_expired();
        assert_eq!(lock(&store.inner.codes).len(), 1);
        assert_eq!(lock(&store.inner.attempts).len(), 1);
    }

    #[test]
    fn a_ttl_too_long_for_an_instant_does_not_panic() {
        let store = MemoryStore::new();
        let scene = new_scene();
        let reserved = futures_util::FutureExt::now_or_never(store.code_reserve(
            "123456",
            &scene,
            Duration::MAX,
        ));
        assert!(matches!(reserved, Some(Ok(true))));
        let counted =
            futures_util::FutureExt::now_or_never(store.code_attempt("o1", "m1", Duration::MAX));
        assert!(matches!(counted, Some(Ok(1))));
    }

    #[test]
    fn a_settled_second_answers_as_it_did_while_filling_and_takes_late_bindings() {
        let mut bindings = Bindings::default();
        let now = 1_800_000_000;
        let (a, b) = ([1; 16], [2; 16]);
        for fingerprint in (0..100).map(|n| n * 7919) {
            assert_eq!(bindings.bind(now, fingerprint, a), Bound::First);
        }
        bindings.mark_login(now, 7919);
        bindings.purge(now + SETTLE_AFTER_SECS - 1);
        assert!(matches!(
            bindings.by_second.get(&now),
            Some(Second::Filling(_))
        ));
        bindings.purge(now + SETTLE_AFTER_SECS + 1);
        let Some(Second::Settled { sorted, late }) = bindings.by_second.get(&now) else {
            panic!("the second is settled");
        };
        assert_eq!((sorted.len(), late.len()), (100, 0));
        assert!(sorted.is_sorted_by_key(|(f, _)| *f));
        assert_eq!(bindings.bind(now, 0, a), Bound::Retry { login: false });
        assert_eq!(bindings.bind(now, 7919, a), Bound::Retry { login: true });
        assert_eq!(bindings.bind(now, 99 * 7919, b), Bound::Conflict);
        // A binding for the settled second, from a clock further off.
        assert_eq!(bindings.bind(now, 5, b), Bound::First);
        assert_eq!(bindings.bind(now, 5, a), Bound::Conflict);
        bindings.mark_login(now, 5);
        bindings.mark_login(now, 2 * 7919);
        assert_eq!(bindings.bind(now, 5, b), Bound::Retry { login: true });
        assert_eq!(
            bindings.bind(now, 2 * 7919, a),
            Bound::Retry { login: true }
        );
        assert_eq!(bindings.by_second.get(&now).map(Second::len), Some(101));
    }

    #[test]
    fn a_second_of_bindings_goes_when_its_queries_no_longer_pass() {
        let mut bindings = Bindings::default();
        let now = 1_800_000_000;
        let (a, b) = ([1; 16], [2; 16]);
        assert_eq!(bindings.bind(now, 7, a), Bound::First);
        assert_eq!(bindings.bind(now, 7, a), Bound::Retry { login: false });
        bindings.mark_login(now, 7);
        assert_eq!(bindings.bind(now, 7, a), Bound::Retry { login: true });
        assert_eq!(bindings.bind(now, 7, b), Bound::Conflict);
        // Another second's query with the same fingerprint is another query.
        assert_eq!(bindings.bind(now + 1, 7, b), Bound::First);
        let lapses = now + i64::try_from(replayable_for(now, now).as_secs()).unwrap();
        bindings.purge(lapses - 1);
        assert_eq!(bindings.bind(now, 7, b), Bound::Conflict);
        bindings.purge(lapses);
        assert_eq!(bindings.by_second.len(), 1);
        assert_eq!(bindings.bind(now + 1, 7, a), Bound::Conflict);
    }
}
