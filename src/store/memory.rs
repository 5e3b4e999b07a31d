//! The in-memory store: the default, for one process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

use super::{Store, StoreError};

/// Keys with an expiry, in one process. Cheap to clone.
#[derive(Clone, Default)]
pub struct MemoryStore {
    keys: Arc<Mutex<HashMap<String, Instant>>>,
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
        self.lock().retain(|_, expires| *expires > now);
    }

    /// The number of keys held (expired ones not yet purged included).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for MemoryStore {
    fn claim_once<'a>(
        &'a self,
        key: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let now = Instant::now();
        let mut keys = self.lock();
        let claimed = match keys.get(key) {
            Some(expires) if *expires > now => false,
            _ => {
                keys.insert(key.to_owned(), now + ttl);
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
        store.purge_expired();
        assert!(store.is_empty());
        assert!(store.claim_once("a", ttl).await.unwrap());
    }
}
