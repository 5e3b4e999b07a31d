//! The in-memory store: the default, for one process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use futures_util::future::BoxFuture;

use super::{Store, StoreError};

/// Keys with an expiry, in one process. Cheap to clone; sharded, so concurrent callbacks do
/// not queue on one lock.
#[derive(Clone, Default)]
pub struct MemoryStore {
    keys: Arc<DashMap<String, Instant>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Drops expired keys. Called by a periodic task, so that memory follows the live keys
    /// and not the history.
    pub fn purge_expired(&self) {
        let now = Instant::now();
        self.keys.retain(|_, expires| *expires > now);
    }

    /// The number of keys held (expired ones not yet purged included).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl Store for MemoryStore {
    fn claim_once<'a>(
        &'a self,
        key: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let now = Instant::now();
        let claimed = match self.keys.entry(key.to_owned()) {
            Entry::Occupied(mut e) if *e.get() <= now => {
                e.insert(now + ttl);
                true
            }
            Entry::Occupied(_) => false,
            Entry::Vacant(e) => {
                e.insert(now + ttl);
                true
            }
        };
        Box::pin(std::future::ready(Ok(claimed)))
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
        assert!(
            store.claim_once("a", ttl).await.unwrap(),
            "expired: claimable again"
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
        store.purge_expired();
        assert!(store.is_empty());
    }
}
