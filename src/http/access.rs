//! Who may call what: `API_TOKEN` (server to server, and pages of sites that accept putting
//! it in browser code, as the FastAPI service required) or a page token minted by
//! `POST /tokens`.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, header};

use super::AppState;
use super::error::HttpError;
use crate::accounts::Account;
use crate::auth::page_token::{PageTokenError, normalize_origin, origin_of_url};

/// 503 while page tokens cannot be checked or minted.
pub fn page_keys_unavailable() -> HttpError {
    HttpError::Unavailable {
        retry_after: Duration::from_secs(1),
        message: "page tokens are temporarily unavailable",
    }
}

/// The origin a browser request comes from: its `Origin`, else the origin of its `Referer`
/// (browsers omit `Origin` on same-origin GETs).
pub fn request_origin(headers: &HeaderMap) -> Option<String> {
    if let Some(origin) = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .filter(|o| *o != "null")
    {
        return Some(normalize_origin(origin));
    }
    headers
        .get(header::REFERER)
        .and_then(|v| v.to_str().ok())
        .and_then(origin_of_url)
}

/// What a page's token lets it do.
#[derive(Debug, Default)]
pub struct PageGrant {
    /// The page token's origin, which becomes the login token's audience.
    pub audience: Option<Arc<str>>,
    /// The account the page token is bound to, if any.
    pub account: Option<String>,
}

/// Checks the token a page presents (`?token=`): `API_TOKEN` or a valid page token from the
/// right origin.
pub fn page_access(
    state: &AppState,
    token: Option<&str>,
    headers: &HeaderMap,
) -> Result<PageGrant, HttpError> {
    page_access_from(state, token, request_origin(headers).as_deref())
}

/// [`page_access`] for a page of `origin`: where a login's result will go, when that is known
/// better than the request's headers say (a top-level navigation may carry no `Referer`).
pub fn page_access_from(
    state: &AppState,
    token: Option<&str>,
    origin: Option<&str>,
) -> Result<PageGrant, HttpError> {
    let token = token
        .filter(|t| !t.is_empty())
        .ok_or(HttpError::Unauthorized("the token parameter is missing"))?;
    if state.api_token.ct_eq(token) {
        return Ok(PageGrant::default());
    }
    let Some(page_tokens) = state.page_keys.loaded() else {
        return Err(page_keys_unavailable());
    };
    match page_tokens.verify(token, origin) {
        Ok(claims) => Ok(PageGrant {
            audience: claims.origin.map(Into::into),
            account: claims.account,
        }),
        Err(PageTokenError::Expired) => Err(HttpError::Unauthorized("the page token has expired")),
        Err(PageTokenError::WrongOrigin) => Err(HttpError::Unauthorized(
            "the page token is bound to another origin",
        )),
        Err(PageTokenError::Invalid) => Err(HttpError::Unauthorized("wrong token")),
    }
}

/// The account a page's request is for: the one its page token is bound to, else `asked`
/// (`?account=`), else `default`. A token bound to one account opens nothing of another
/// (401); an account not served now is 404.
pub fn page_account(
    state: &AppState,
    grant: &PageGrant,
    asked: Option<&str>,
) -> Result<Arc<Account>, HttpError> {
    let asked = asked.filter(|a| !a.is_empty());
    let name = match (&grant.account, asked) {
        (Some(bound), Some(asked)) if bound != asked => {
            return Err(HttpError::Unauthorized(
                "the page token is bound to another account",
            ));
        }
        (Some(bound), _) => bound.as_str(),
        (None, Some(asked)) => asked,
        (None, None) => return Ok(state.accounts.default_account()),
    };
    state.accounts.get(name).ok_or(HttpError::UnknownAccount)
}

/// Checks `Authorization: Bearer API_TOKEN` (server-to-server calls).
pub fn require_api_token(state: &AppState, headers: &HeaderMap) -> Result<(), HttpError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(HttpError::Unauthorized(
            "Authorization: Bearer API_TOKEN is required",
        ))?;
    if state.api_token.ct_eq(given.trim()) {
        Ok(())
    } else {
        Err(HttpError::Unauthorized("wrong API token"))
    }
}
