//! The access token cache.
//!
//! One refresh for all concurrent callers (an async mutex around the fetch, with the cache
//! re-checked once it is held). When WeChat rejects a token (40001/40014/42001) the cached token
//! is dropped only if it is still the one that failed, so a burst of failures causes one fetch,
//! not one each. `force_refresh` is rationed by WeChat (20 a day, 30 s apart): it is used only
//! when a plain fetch hands back the very token that was just rejected.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::api::{AccessToken, WechatApi};
use super::error::{ApiError, ErrorKind};

/// Forced refreshes allowed in 24 hours, and the least time between two.
const FORCE_PER_DAY: usize = 20;
const FORCE_SPACING: Duration = Duration::from_secs(30);
const DAY: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone)]
struct Cached {
    token: AccessToken,
    /// When we stop using it: shortly before WeChat's expiry.
    use_until: Instant,
}

/// A shared access token for one account. Cheap to clone.
#[derive(Clone)]
pub struct TokenCache {
    inner: Arc<Inner>,
}

struct Inner {
    api: WechatApi,
    cached: Mutex<Option<Cached>>,
    /// Held while fetching, so concurrent callers wait for one fetch.
    refresh: tokio::sync::Mutex<()>,
    /// When forced refreshes happened, newest last (at most [`FORCE_PER_DAY`]).
    forced: Mutex<VecDeque<Instant>>,
}

impl TokenCache {
    /// A cache that fetches through `api`.
    pub fn new(api: WechatApi) -> Self {
        Self {
            inner: Arc::new(Inner {
                api,
                cached: Mutex::new(None),
                refresh: tokio::sync::Mutex::new(()),
                forced: Mutex::new(VecDeque::new()),
            }),
        }
    }

    /// The API client behind the cache.
    pub fn api(&self) -> &WechatApi {
        &self.inner.api
    }

    fn fresh(&self) -> Option<AccessToken> {
        let cached = self.inner.cached.lock().unwrap_or_else(|p| p.into_inner());
        cached
            .as_ref()
            .filter(|c| Instant::now() < c.use_until)
            .map(|c| c.token.clone())
    }

    fn store(&self, token: AccessToken) {
        // Stop using a token five minutes before WeChat's expiry (or at half-life for short
        // ones), so a call never starts with a token about to lapse.
        let margin = Duration::from_secs(300.min(token.expires_in / 2));
        let use_until = Instant::now() + Duration::from_secs(token.expires_in) - margin;
        *self.inner.cached.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Cached { token, use_until });
    }

    /// A valid access token: the cached one, or a fresh one fetched once for all callers.
    pub async fn get(&self) -> Result<AccessToken, ApiError> {
        if let Some(token) = self.fresh() {
            return Ok(token);
        }
        let _guard = self.inner.refresh.lock().await;
        if let Some(token) = self.fresh() {
            return Ok(token);
        }
        let token = self.inner.api.stable_token(false).await?;
        tracing::info!(
            expires_in = token.expires_in,
            "fetched a WeChat access token"
        );
        self.store(token.clone());
        Ok(token)
    }

    /// Runs `call` with a token; if WeChat rejects the token, gets a new one and retries once.
    pub async fn with_token<T, F, Fut>(&self, call: F) -> Result<T, ApiError>
    where
        F: Fn(AccessToken) -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let token = self.get().await?;
        match call(token.clone()).await {
            Err(e) if e.kind() == ErrorKind::Token => {
                tracing::warn!(error = %e, "WeChat rejected the access token; renewing it");
                let renewed = self.renew_after_rejection(&token).await?;
                call(renewed).await
            }
            other => other,
        }
    }

    async fn renew_after_rejection(&self, rejected: &AccessToken) -> Result<AccessToken, ApiError> {
        let _guard = self.inner.refresh.lock().await;
        // Somebody else may have replaced it while we waited.
        if let Some(current) = self.fresh() {
            if current.value != rejected.value {
                return Ok(current);
            }
        }
        let token = self.inner.api.stable_token(false).await?;
        let token = if token.value == rejected.value {
            self.take_force_ration()?;
            tracing::warn!("WeChat handed back the rejected token; forcing a refresh");
            self.inner.api.stable_token(true).await?
        } else {
            token
        };
        self.store(token.clone());
        Ok(token)
    }

    fn take_force_ration(&self) -> Result<(), ApiError> {
        let now = Instant::now();
        let mut forced = self.inner.forced.lock().unwrap_or_else(|p| p.into_inner());
        while forced
            .front()
            .is_some_and(|t| now.duration_since(*t) >= DAY)
        {
            forced.pop_front();
        }
        let too_soon = forced
            .back()
            .is_some_and(|t| now.duration_since(*t) < FORCE_SPACING);
        if forced.len() >= FORCE_PER_DAY || too_soon {
            return Err(ApiError::ForceRefreshRationed);
        }
        forced.push_back(now);
        Ok(())
    }
}
