//! The key of page tokens: 256 random bits that every instance on one store shares, so that
//! a page token minted by one is accepted by all, and that nothing derived from `API_TOKEN`
//! alone can forge or test one.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::page_token::PageTokens;
use crate::store::{Store, StoreError};
use crate::wechat::secret::Secret;

/// How often an instance checks that the store still holds its page-token key.
const PAGE_KEY_CHECK: Duration = Duration::from_secs(10);
/// The backoff between attempts to read the page-token key while the store is down.
const PAGE_KEY_RETRY_FIRST: Duration = Duration::from_millis(250);
const PAGE_KEY_RETRY_MAX: Duration = Duration::from_secs(5);

/// Why page tokens cannot be minted or checked now (503).
#[derive(Debug, thiserror::Error)]
pub enum PageKeyError {
    /// The store holding the key's random part does not answer.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The key could not be made.
    #[error("cannot key page tokens: {0}")]
    Key(#[from] jsonwebtoken::errors::Error),
}

/// Page tokens under the key the store holds: one random key for every instance on one
/// store, read at start and checked every few seconds. An instance starts while the store
/// is down; until it answers, page tokens are refused with 503 (`API_TOKEN` still works).
pub struct PageKeys {
    store: Arc<dyn Store>,
    api_token: Secret,
    default_ttl: Duration,
    /// The tokens and the random key they are made from; `None` until the store answered.
    /// Replaced when the store holds another key (a Redis that lost it and got another
    /// instance's), so that the instances come to agree again.
    loaded: RwLock<Option<Arc<Loaded>>>,
}

struct Loaded {
    random: [u8; 32],
    tokens: PageTokens,
}

impl PageKeys {
    /// Page tokens of `api_token` under the key `store` holds (not read yet).
    pub fn new(store: Arc<dyn Store>, api_token: Secret, default_ttl: Duration) -> Self {
        Self {
            store,
            api_token,
            default_ttl,
            loaded: RwLock::new(None),
        }
    }

    fn current(&self) -> Option<Arc<Loaded>> {
        self.loaded
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The page tokens, if the key has been read.
    pub fn loaded(&self) -> Option<impl std::ops::Deref<Target = PageTokens>> {
        self.current().map(LoadedTokens)
    }

    /// The page tokens, reading the key from the store if it has not been read.
    pub async fn get(&self) -> Result<impl std::ops::Deref<Target = PageTokens>, PageKeyError> {
        match self.current() {
            Some(loaded) => Ok(LoadedTokens(loaded)),
            None => self.load().await.map(LoadedTokens),
        }
    }

    /// Reads the key now from a store that answers without waiting (the memory store), so
    /// that page tokens work from the first request; other stores are left to
    /// [`PageKeys::keep_loaded`].
    pub fn load_from_memory(&self) {
        use futures_util::FutureExt as _;
        if let Some(Err(e)) = self.load().now_or_never() {
            tracing::warn!(error = %e, "cannot key page tokens");
        }
    }

    /// Offers the store this instance's key (a fresh random one if it has none), so that a
    /// store that lost the key gets back the one the instances use, and adopts the one the
    /// store holds.
    async fn load(&self) -> Result<Arc<Loaded>, PageKeyError> {
        let current = self.current();
        let candidate = match &current {
            Some(loaded) => loaded.random,
            None => {
                use rand::RngCore as _;
                let mut random = [0u8; 32];
                rand::rng().fill_bytes(&mut random);
                random
            }
        };
        let random = self.store.page_key(&candidate).await?;
        if let Some(current) = current
            && current.random == random
        {
            return Ok(current);
        }
        let loaded = Arc::new(Loaded {
            random,
            tokens: PageTokens::new(&random, &self.api_token, self.default_ttl)?,
        });
        let mut slot = self.loaded.write().unwrap_or_else(|p| p.into_inner());
        if let Some(current) = slot.as_ref() {
            // Another call read the same key meanwhile (the first requests at start).
            if current.random == random {
                return Ok(Arc::clone(current));
            }
            tracing::warn!(
                "the store holds another page-token key: adopting it (page tokens minted under the previous one are refused)"
            );
        }
        *slot = Some(Arc::clone(&loaded));
        Ok(loaded)
    }

    /// Reads the key until the store answers, then checks it every few seconds, until
    /// `cancel`.
    pub async fn keep_loaded(self: Arc<Self>, cancel: CancellationToken) {
        let mut retry = PAGE_KEY_RETRY_FIRST;
        loop {
            let wait = match self.load().await {
                Ok(_) => {
                    retry = PAGE_KEY_RETRY_FIRST;
                    PAGE_KEY_CHECK
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the page-token key; page tokens are refused until the store answers");
                    let wait = retry;
                    retry = (retry * 2).min(PAGE_KEY_RETRY_MAX);
                    wait
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = cancel.cancelled() => return,
            }
        }
    }
}

/// Page tokens borrowed from [`PageKeys`], valid whatever replaces them meanwhile.
struct LoadedTokens(Arc<Loaded>);

impl std::ops::Deref for LoadedTokens {
    type Target = PageTokens;
    fn deref(&self) -> &PageTokens {
        &self.0.tokens
    }
}
