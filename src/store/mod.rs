//! State that several instances of wxlogin would share.
//!
//! Today: the keys that recognise WeChat's retries of one callback. The in-memory store is the
//! default; a Redis store will implement the same trait so that one test suite runs against
//! both.

pub mod memory;

use std::time::Duration;

use futures_util::future::BoxFuture;

/// Why the store could not answer. Callers answer WeChat with 5xx so it retries.
#[derive(Debug, thiserror::Error)]
#[error("store unavailable: {0}")]
pub struct StoreError(pub String);

/// Shared state behind one interface; a trait object so the backend is picked from config.
pub trait Store: Send + Sync + 'static {
    /// Sets `key` if it is absent, to expire after `ttl`. `true` when this call set it: the
    /// caller is the first to see the event the key names.
    fn claim_once<'a>(
        &'a self,
        key: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
}
