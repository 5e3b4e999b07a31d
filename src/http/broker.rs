//! The token broker: the account's access token for the company's other services.
//!
//! WeChat keeps one `cgi-bin/token` token per AppID, so services that each fetch their own
//! invalidate each other. wxlogin keeps the token right already (`stable_token`, one refresh
//! for all callers, shared in Redis); with `TOKEN_BROKER_KEY` set, other services read it here:
//!
//! - `GET /wechat/{account}/access_token`: `{access_token, expires_in}` from the cache.
//! - `POST /wechat/{account}/access_token/refresh` with `{"access_token": "<the rejected
//!   one>"}`: compare and refresh. A new token only if that one is still the current one, so
//!   a crowd of callers holding the same rejected token causes one refresh (on every instance
//!   of one Redis); each gets the current token.
//!
//! Both need `Authorization: Bearer TOKEN_BROKER_KEY` (never `API_TOKEN`, which pages hold).
//! Unset, the routes answer 404 as if they did not exist.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, header};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::HttpError;
use crate::accounts::Account;
use crate::config::AccountName;
use crate::metrics::Metrics;
use crate::wechat::api::AccessToken;
use crate::wechat::error::ApiError;
use crate::wechat::secret::Secret;

/// Refresh requests one instance takes at once for one account: a crowd of callers that all found the same
/// token rejected (each gets an answer, and WeChat sees one refresh).
const REFRESH_BURST: u32 = 100;
/// Refresh requests per second one instance takes for one account after a burst. A caller in a loop is
/// answered 429 instead of costing a store read (and, with the current token, a WeChat call)
/// each time.
const REFRESH_PER_SEC: u32 = 2;

/// The longest access token accepted in a refresh request (WeChat's are about 140 characters,
/// and documented to stay under 512).
const MAX_TOKEN_LEN: usize = 2048;

/// The broker of one app: its key and the refresh limit. The tokens are the accounts' own
/// caches, which their QR stock uses too: one token for wxlogin and the other services.
pub struct Broker {
    /// `TOKEN_BROKER_KEY`, compared in constant time.
    key: Secret,
    /// Refresh requests this instance takes, by account.
    refreshes: DefaultKeyedRateLimiter<AccountName>,
}

impl Broker {
    /// A broker handing out the accounts' tokens to holders of `key`.
    pub fn new(key: Secret) -> Self {
        let burst = NonZeroU32::new(REFRESH_BURST).unwrap_or(NonZeroU32::MIN);
        let rate = NonZeroU32::new(REFRESH_PER_SEC).unwrap_or(NonZeroU32::MIN);
        Self {
            key,
            refreshes: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
        }
    }
}

/// What a caller gets: the token and the seconds it may use it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenReply {
    /// The access token.
    pub access_token: String,
    /// Seconds left before wxlogin itself stops using it: come back for the next one then.
    pub expires_in: u64,
}

impl From<AccessToken> for TokenReply {
    fn from(token: AccessToken) -> Self {
        Self {
            access_token: token.value.expose().to_owned(),
            expires_in: token.expires_in,
        }
    }
}

/// The body of a refresh request.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct RefreshRequest {
    /// The token WeChat rejected for the caller.
    access_token: String,
}

/// The broker and the account, once the caller has shown the key: 404 when the broker is off
/// or the account unknown, 401 without the right key (checked before the account, so that no
/// account name is confirmed to a caller without it).
fn authorize<'a>(
    state: &'a AppState,
    account: &str,
    headers: &HeaderMap,
) -> Result<(&'a Broker, Arc<Account>), HttpError> {
    let broker = state.broker.as_ref().ok_or(HttpError::NotFound)?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let refused = match given {
        None => Some("Authorization: Bearer TOKEN_BROKER_KEY is required"),
        Some(given) if !broker.key.ct_eq(given.trim()) => Some("wrong token broker key"),
        Some(_) => None,
    };
    if let Some(reason) = refused {
        // Counted under the default account: the caller has not earned an answer about which
        // accounts exist.
        Metrics::count(&state.metrics.token_broker, "unauthorized");
        return Err(HttpError::Unauthorized(reason));
    }
    let account = state.accounts.get(account).ok_or(HttpError::NotFound)?;
    if account.settings.secret_key.expose().is_empty() {
        // LOGIN_MODES=code without SECRET_KEY: no token can be had, and asking WeChat for one
        // with an empty secret at every request would only earn errcode 40125.
        return Err(HttpError::Conflict(
            "this account has no SECRET_KEY, so wxlogin holds no access token for it",
        ));
    }
    Ok((broker, account))
}

/// WeChat could not give a token: logged here (never the token), the caller told to retry.
fn unavailable(account: &Account, e: &ApiError) -> HttpError {
    Metrics::count(&account.metrics.token_broker, "failed");
    let account = &account.name;
    tracing::warn!(%account, error = %e, "the token broker has no access token to give");
    match e {
        ApiError::ForceRefreshRationed => HttpError::TooManyRequests {
            retry_after: Duration::from_secs(30),
            message: "WeChat rations forced refreshes and the token was refreshed moments ago; \
                      retry later",
        },
        _ => HttpError::Unavailable {
            retry_after: Duration::from_secs(5),
            message: "WeChat does not give an access token now",
        },
    }
}

/// `GET /wechat/{account}/access_token` (bearer `TOKEN_BROKER_KEY`): the account's current
/// access token, from wxlogin's cache (no WeChat call while it is fresh).
#[utoipa::path(get, path = "/wechat/{account}/access_token", tag = "token broker",
    params(("account" = String, Path, description = "The account's name (`default`: the environment's)")),
    security(("token_broker_key" = [])),
    responses(
        (status = 200, description = "The current token", body = TokenReply),
        (status = 401, description = "TOKEN_BROKER_KEY missing or wrong", body = serde_json::Value),
        (status = 404, description = "No such account, or the broker is off (TOKEN_BROKER_KEY unset)", body = serde_json::Value),
        (status = 409, description = "The account has no SECRET_KEY (LOGIN_MODES=code): no token to give", body = serde_json::Value),
        (status = 503, description = "WeChat gives no token now; retry after Retry-After", body = serde_json::Value)))]
pub async fn access_token(
    State(state): State<AppState>,
    Path(account): Path<String>,
    headers: HeaderMap,
) -> Result<Json<TokenReply>, HttpError> {
    let (_, account) = authorize(&state, &account, &headers)?;
    let token = account
        .tokens
        .current()
        .await
        .map_err(|e| unavailable(&account, &e))?;
    Metrics::count(&account.metrics.token_broker, "read");
    Ok(Json(token.into()))
}

/// `POST /wechat/{account}/access_token/refresh` (bearer `TOKEN_BROKER_KEY`): compare and
/// refresh. A new token only if the one named is still the current one; every caller gets the
/// current token.
#[utoipa::path(post, path = "/wechat/{account}/access_token/refresh", tag = "token broker",
    params(("account" = String, Path, description = "The account's name (`default`: the environment's)")),
    request_body = RefreshRequest,
    security(("token_broker_key" = [])),
    responses(
        (status = 200, description = "The current token (new if the one named was current)", body = TokenReply),
        (status = 400, description = "Malformed body", body = serde_json::Value),
        (status = 401, description = "TOKEN_BROKER_KEY missing or wrong", body = serde_json::Value),
        (status = 404, description = "No such account, or the broker is off (TOKEN_BROKER_KEY unset)", body = serde_json::Value),
        (status = 409, description = "The account has no SECRET_KEY (LOGIN_MODES=code): no token to give", body = serde_json::Value),
        (status = 429, description = "Too many refresh requests, or no forced refresh allowed by WeChat now; retry after Retry-After", body = serde_json::Value),
        (status = 503, description = "WeChat gives no token now; retry after Retry-After", body = serde_json::Value)))]
pub async fn refresh(
    State(state): State<AppState>,
    Path(account): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<TokenReply>, HttpError> {
    let (broker, account) = authorize(&state, &account, &headers)?;
    let seen = serde_json::from_slice::<RefreshRequest>(&body)
        .map_err(|_| {
            HttpError::BadRequest(
                r#"the body must be JSON {"access_token": "<the token WeChat rejected>"}"#.into(),
            )
        })?
        .access_token;
    if seen.is_empty() || seen.len() > MAX_TOKEN_LEN {
        return Err(HttpError::BadRequest(format!(
            "access_token must be 1 to {MAX_TOKEN_LEN} characters"
        )));
    }
    if broker.refreshes.check_key(&account.name).is_err() {
        Metrics::count(&account.metrics.token_broker, "limited");
        tracing::warn!(account = %account.name, "token refresh requests over the limit: 429");
        return Err(HttpError::TooManyRequests {
            retry_after: Duration::from_secs(1),
            message: "too many token refresh requests",
        });
    }
    let client = state.limits.client_ip(peer, &headers);
    let renewal = account
        .tokens
        .refresh_if_current(&Secret::new(seen))
        .await
        .map_err(|e| unavailable(&account, &e))?;
    let outcome = if renewal.refreshed {
        "refreshed"
    } else {
        "unchanged"
    };
    Metrics::count(&account.metrics.token_broker, outcome);
    tracing::info!(account = %account.name, %client, outcome, "token refresh requested by another service");
    Ok(Json(renewal.token.into()))
}
