//! The access token cache.
//!
//! One refresh for all concurrent callers (an async mutex around the fetch, with the cache
//! re-checked once it is held). When WeChat rejects a token (40001/40014/42001) the cached token
//! is dropped only if it is still the one that failed, so a burst of failures causes one fetch,
//! not one each. `force_refresh` is rationed by WeChat (20 a day, 30 s apart): it is used only
//! when a plain fetch hands back the very token that was just rejected.
//!
//! Several instances share one token through a [`TokenShare`] (the Redis store implements it):
//! an instance without a fresh token reads the shared one; if there is none, the instance that
//! takes the refresh lock fetches it and shares it, and the others wait for it. WeChat then
//! sees one refresh for all instances. When the share cannot be reached, an instance fetches
//! for itself (`stable_token` does not invalidate tokens held elsewhere).
//!
//! Other programs of the same account can hold this very token instead of fetching their own
//! (which would invalidate each other's): [`TokenCache::current`] hands it out, and
//! [`TokenCache::refresh_if_current`] renews it only if the token a caller found rejected is
//! still the current one, so a crowd of callers causes one refresh, on every instance.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;

use super::api::{AccessToken, TOKEN_LIFE_MAX, WechatApi};
use super::error::{ApiError, ErrorKind};
use super::secret::Secret;

/// How long the refresh lock is held at most (a fetch is bounded by the API timeout).
const SHARE_LOCK_TTL: Duration = Duration::from_secs(10);
/// How often an instance waiting on another's refresh looks for the shared token.
const SHARE_POLL: Duration = Duration::from_millis(50);

/// Why the shared token could not be read or written. The cache treats either as the share
/// being down: it fetches a token for itself.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// The share could not be reached, or refused the command.
    #[error("token share unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The share answered, but not with what was written to it.
    #[error("token share unavailable: a stored {what} is unreadable")]
    Corrupt {
        /// What was read.
        what: &'static str,
    },
}

impl ShareError {
    /// The share could not be reached, for this reason.
    pub fn unavailable(cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Unavailable(Box::new(cause))
    }
}

/// A place several instances share the access token in, with a refresh lock.
pub trait TokenShare: Send + Sync + 'static {
    /// The shared token and when it expires (Unix ms), if there is one.
    fn load(&self) -> BoxFuture<'_, Result<Option<(Secret, u64)>, ShareError>>;
    /// Takes the refresh lock for `ttl`; `true` when this call took it.
    fn try_lock(&self, ttl: Duration) -> BoxFuture<'_, Result<bool, ShareError>>;
    /// Shares `token`, expiring at `expires_ms`, and releases the lock if held.
    fn put<'a>(
        &'a self,
        token: &'a Secret,
        expires_ms: u64,
    ) -> BoxFuture<'a, Result<(), ShareError>>;
    /// Releases the lock if held (after a failed fetch).
    fn unlock(&self) -> BoxFuture<'_, Result<(), ShareError>>;
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

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

impl Cached {
    /// The token with the seconds left before this cache stops using it.
    fn lease(&self) -> AccessToken {
        AccessToken {
            value: self.token.value.clone(),
            expires_in: self
                .use_until
                .saturating_duration_since(Instant::now())
                .as_secs(),
        }
    }
}

/// A token and where it came from.
struct Fetched {
    token: AccessToken,
    /// Fetched from WeChat by this instance (not read from the share).
    here: bool,
}

impl Fetched {
    fn here(token: AccessToken) -> Self {
        Self { token, here: true }
    }

    fn shared(token: AccessToken) -> Self {
        Self { token, here: false }
    }
}

/// What [`TokenCache::refresh_if_current`] did.
#[derive(Clone, Debug)]
pub struct Renewal {
    /// The current token; `expires_in` is what is left of the time wxlogin uses it.
    pub token: AccessToken,
    /// Whether this call fetched a new token from WeChat (`false`: the token the caller
    /// found rejected had been replaced already, here or by another instance).
    pub refreshed: bool,
}

/// A shared access token for one account. Cheap to clone.
#[derive(Clone)]
pub struct TokenCache {
    inner: Arc<Inner>,
}

struct Inner {
    api: WechatApi,
    /// Where instances share the token, if they do.
    share: Option<Arc<dyn TokenShare>>,
    cached: Mutex<Option<Cached>>,
    /// Held while fetching, so concurrent callers wait for one fetch.
    refresh: tokio::sync::Mutex<()>,
    /// When forced refreshes happened, newest last (at most [`FORCE_PER_DAY`]).
    forced: Mutex<VecDeque<Instant>>,
}

impl TokenCache {
    /// A cache that fetches through `api`, sharing the token through `share` if given.
    pub fn new(api: WechatApi, share: Option<Arc<dyn TokenShare>>) -> Self {
        Self {
            inner: Arc::new(Inner {
                api,
                share,
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
        self.fresh_cached().map(|c| c.token)
    }

    fn fresh_cached(&self) -> Option<Cached> {
        let cached = self.inner.cached.lock().unwrap_or_else(|p| p.into_inner());
        cached
            .as_ref()
            .filter(|c| Instant::now() < c.use_until)
            .cloned()
    }

    fn store(&self, token: AccessToken) -> Cached {
        // Stop using a token five minutes before WeChat's expiry (or at half-life for short
        // ones), so a call never starts with a token about to lapse. The client keeps the
        // life in range; capping it here too keeps the clock arithmetic from overflowing.
        let life = token.expires_in.min(TOKEN_LIFE_MAX);
        let margin = 300.min(life / 2);
        let now = Instant::now();
        let use_until = now
            .checked_add(Duration::from_secs(life - margin))
            .unwrap_or(now);
        let cached = Cached { token, use_until };
        *self.inner.cached.lock().unwrap_or_else(|p| p.into_inner()) = Some(cached.clone());
        cached
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
        let token = match &self.inner.share {
            Some(share) => self.fetch_shared(share.as_ref(), None).await?.token,
            None => self.fetch(false).await?,
        };
        self.store(token.clone());
        Ok(token)
    }

    async fn fetch(&self, force: bool) -> Result<AccessToken, ApiError> {
        let token = self.inner.api.stable_token(force).await?;
        tracing::info!(
            expires_in = token.expires_in,
            force,
            "fetched a WeChat access token"
        );
        Ok(token)
    }

    /// The shared token if it is usable and not `rejected`.
    async fn load_shared(
        share: &dyn TokenShare,
        rejected: Option<&Secret>,
    ) -> Result<Option<AccessToken>, ShareError> {
        let now = unix_ms();
        Ok(share.load().await?.and_then(|(value, expires_ms)| {
            // Another instance's word: trusted no further than WeChat's own.
            let expires_in = (expires_ms.saturating_sub(now) / 1000).min(TOKEN_LIFE_MAX);
            // Like `store`: not within the last minutes of its life.
            let margin = 300.min(expires_in / 2);
            (expires_in > margin && rejected != Some(&value))
                .then_some(AccessToken { value, expires_in })
        }))
    }

    /// A token through the share: the shared one, else fetched by whichever instance takes
    /// the refresh lock (this one, or another that this one waits for). Without the share
    /// (unreachable, or the holder of the lock too slow), fetched here.
    async fn fetch_shared(
        &self,
        share: &dyn TokenShare,
        rejected: Option<&Secret>,
    ) -> Result<Fetched, ApiError> {
        enum Step {
            Got(Fetched),
            Wait,
            ShareDown(ShareError),
            Failed(ApiError),
        }
        let give_up_at = Instant::now() + SHARE_LOCK_TTL;
        loop {
            let step = async {
                if let Some(token) = Self::load_shared(share, rejected).await? {
                    return Ok(Step::Got(Fetched::shared(token)));
                }
                if !share.try_lock(SHARE_LOCK_TTL).await? {
                    return Ok(Step::Wait);
                }
                // Somebody may have shared one just before we took the lock.
                if let Some(token) = Self::load_shared(share, rejected).await? {
                    let _ = share.unlock().await;
                    return Ok(Step::Got(Fetched::shared(token)));
                }
                match self.fetch_here(rejected).await {
                    Ok(token) => {
                        let expires_ms =
                            unix_ms().saturating_add(token.expires_in.saturating_mul(1000));
                        if let Err(e) = share.put(&token.value, expires_ms).await {
                            tracing::warn!(error = %e, "cannot share the access token");
                        }
                        Ok(Step::Got(Fetched::here(token)))
                    }
                    Err(e) => {
                        let _ = share.unlock().await;
                        Ok(Step::Failed(e))
                    }
                }
            }
            .await
            .unwrap_or_else(Step::ShareDown);
            match step {
                Step::Got(token) => return Ok(token),
                Step::Failed(e) => return Err(e),
                Step::Wait if Instant::now() < give_up_at => tokio::time::sleep(SHARE_POLL).await,
                Step::Wait => {
                    tracing::warn!(
                        "the instance refreshing the access token is slow; fetching here"
                    );
                    return self.fetch_here(rejected).await.map(Fetched::here);
                }
                Step::ShareDown(e) => {
                    tracing::warn!(error = %e, "the shared access token is unreachable; fetching here");
                    return self.fetch_here(rejected).await.map(Fetched::here);
                }
            }
        }
    }

    /// Fetches a token from WeChat: a plain fetch, or after `rejected` was refused, one that
    /// differs from it (forcing a refresh when WeChat hands the same one back).
    async fn fetch_here(&self, rejected: Option<&Secret>) -> Result<AccessToken, ApiError> {
        let token = self.fetch(false).await?;
        match rejected {
            Some(rejected) if token.value == *rejected => {
                self.take_force_ration()?;
                tracing::warn!("WeChat handed back the rejected token; forcing a refresh");
                self.fetch(true).await
            }
            _ => Ok(token),
        }
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
        if let Some(current) = self.fresh()
            && current.value != rejected.value
        {
            return Ok(current);
        }
        let token = match &self.inner.share {
            Some(share) => {
                self.fetch_shared(share.as_ref(), Some(&rejected.value))
                    .await?
                    .token
            }
            None => self.fetch_here(Some(&rejected.value)).await?,
        };
        self.store(token.clone());
        Ok(token)
    }

    /// The token for another program of the same account (wxlogin as the account's one
    /// holder of the token): with the share, the shared one (another instance may have
    /// renewed it since this one cached its own), else the cached one, fetched once for all
    /// callers when there is none. Its `expires_in` is what is left of the time this cache
    /// itself uses it, so that the caller comes back for the next one no later than wxlogin.
    pub async fn current(&self) -> Result<AccessToken, ApiError> {
        if let Some(share) = &self.inner.share {
            match Self::load_shared(share.as_ref(), None).await {
                Ok(Some(token)) => return Ok(self.store(token).lease()),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "the shared access token is unreachable; using this instance's")
                }
            }
        }
        if let Some(cached) = self.fresh_cached() {
            return Ok(cached.lease());
        }
        self.get().await?;
        match self.fresh_cached() {
            Some(cached) => Ok(cached.lease()),
            // Fetched with a life shorter than this cache's margin: hand it on as it is.
            None => self.get().await,
        }
    }

    /// Compare and refresh, for another program that found `seen` rejected by WeChat: a new
    /// token only if `seen` is still the current one (here, or with the share on every
    /// instance), else the current one. A crowd of callers holding the same rejected token
    /// causes one refresh: the first renews it under the refresh lock (and the share's), the
    /// others find that the current token is no longer theirs.
    pub async fn refresh_if_current(&self, seen: &Secret) -> Result<Renewal, ApiError> {
        let _guard = self.inner.refresh.lock().await;
        let fetched = match &self.inner.share {
            // The share holds the current token: this instance's copy may be older.
            Some(share) => self.fetch_shared(share.as_ref(), Some(seen)).await?,
            None => match self.fresh_cached() {
                Some(cached) if !cached.token.value.ct_eq(seen.expose()) => {
                    return Ok(Renewal {
                        token: cached.lease(),
                        refreshed: false,
                    });
                }
                _ => Fetched::here(self.fetch_here(Some(seen)).await?),
            },
        };
        if fetched.here {
            tracing::info!("renewed the access token for a caller that found it rejected");
        }
        Ok(Renewal {
            token: self.store(fetched.token).lease(),
            refreshed: fetched.here,
        })
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

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn an_unreachable_share_keeps_its_cause() {
        let cause = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = ShareError::unavailable(cause);
        assert_eq!(e.to_string(), "token share unavailable: refused");
        let source = e.source().map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("refused"));
    }
}
