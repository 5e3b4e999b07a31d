//! Login inside WeChat's browser (web authorization, `snsapi_base`): `GET /oauth/authorize`
//! sends the browser to WeChat with a state bound to it (a cookie), `GET /oauth/callback`
//! takes WeChat's answer and returns the browser to its page with a result handle in the URL
//! fragment, and `POST /oauth/result` trades the handle, once, for the login. The flow itself
//! is [`crate::login::oauth`]'s.

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::access::{page_access_from, page_account};
use super::error::HttpError;
use crate::auth::page_token::normalize_origin;
use crate::login::oauth::{Finished, OauthError, OauthFlow, STATE_TTL};

/// The account when none is named: the one of the environment.
const DEFAULT_ACCOUNT: &str = "default";
/// The longest code accepted from WeChat's redirect (WeChat's are 32 characters).
const MAX_CODE: usize = 128;

/// The query of `GET /oauth/authorize`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuthorizeQuery {
    /// `API_TOKEN` or a page token (bound, if at all, to `return_to`'s origin).
    token: Option<String>,
    /// The account to log in with (`default` when absent).
    account: Option<String>,
    /// Where the browser returns, with `#wxlogin_oauth=<handle>`: a URL on an origin of
    /// `OAUTH_RETURN_ORIGINS`, without a fragment.
    return_to: Option<String>,
}

/// The query WeChat returns the browser with.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CallbackQuery {
    /// The authorization code (absent when the visitor declined).
    code: Option<String>,
    /// The state `GET /oauth/authorize` gave WeChat.
    state: Option<String>,
    /// The account, for one other than `default` (wxlogin puts it in the `redirect_uri`).
    account: Option<String>,
}

/// The body of `POST /oauth/result`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ResultRequest {
    /// The handle from the fragment `#wxlogin_oauth=<handle>`.
    handle: String,
    /// The account the login was started with (`default` when absent).
    account: Option<String>,
}

/// The web authorization of the account named `account` (`default` when absent).
fn flow(state: &AppState, account: Option<&str>) -> Result<OauthFlow, HttpError> {
    let account = state
        .accounts
        .get(account.unwrap_or(DEFAULT_ACCOUNT))
        .ok_or_else(|| HttpError::BadRequest("unknown account".into()))?;
    account.oauth.clone().ok_or(HttpError::Forbidden(
        "this account does not offer login inside WeChat (LOGIN_MODES has no oauth)",
    ))
}

impl From<OauthError> for HttpError {
    fn from(e: OauthError) -> Self {
        match e {
            OauthError::ReturnTo | OauthError::State | OauthError::CodeInvalid => {
                Self::BadRequest(e.to_string())
            }
            OauthError::CodeUsed => Self::Conflict("the code has been used already"),
            OauthError::Handle => Self::Gone("unknown, expired or used result handle"),
            OauthError::Origin => Self::Forbidden("the result belongs to another origin"),
            OauthError::Wechat(_) => Self::Unavailable {
                retry_after: Duration::from_secs(1),
                message: "WeChat cannot exchange the code now",
            },
            OauthError::Store(e) => e.into(),
        }
    }
}

/// The cookie of the login under `state`: named after the state, so that logins started in
/// two tabs of one browser do not overwrite each other's.
fn cookie_name(state: &str) -> String {
    format!("wxl_oauth_{}", &state[..state.len().min(8)])
}

/// The value of the cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A state as `GET /oauth/authorize` makes them: 32 hex digits.
fn is_state(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `GET /oauth/authorize`: the browser leaves for WeChat's authorize page.
#[utoipa::path(get, path = "/oauth/authorize", tag = "login",
    params(AuthorizeQuery),
    responses(
        (status = 302, description = "To WeChat's authorize page (`WECHAT_OPEN_BASE`), with a `state` bound to this browser by a cookie"),
        (status = 400, description = "`return_to` missing, not on an origin of `OAUTH_RETURN_ORIGINS`, or with a fragment; an unknown account", body = serde_json::Value),
        (status = 401, description = "Wrong token, or a page token bound to another origin than `return_to`'s", body = serde_json::Value),
        (status = 403, description = "`LOGIN_MODES` has no `oauth`", body = serde_json::Value)))]
pub async fn authorize(
    State(state): State<AppState>,
    Query(q): Query<AuthorizeQuery>,
) -> Result<Response, HttpError> {
    let flow = flow(&state, q.account.as_deref())?;
    let return_to = q
        .return_to
        .filter(|r| !r.is_empty())
        .ok_or_else(|| HttpError::BadRequest("return_to is missing".into()))?;
    let origin = flow.return_origin(&return_to)?;
    let grant = page_access_from(&state, q.token.as_deref(), Some(&origin))?;
    // A page token bound to an account starts logins of that account only.
    page_account(
        &state,
        &grant,
        Some(q.account.as_deref().unwrap_or(DEFAULT_ACCOUNT)),
    )?;
    let started = flow.begin(&return_to, grant.audience.as_deref()).await?;
    let secure = if flow.secure_cookie() { "; Secure" } else { "" };
    let cookie = format!(
        "{}={}; Max-Age={}; Path=/oauth/callback; HttpOnly; SameSite=Lax{secure}",
        cookie_name(&started.state),
        started.browser_key,
        STATE_TTL.as_secs()
    );
    Ok((
        StatusCode::FOUND,
        [
            (header::LOCATION, started.authorize_url),
            (header::SET_COOKIE, cookie),
            (header::CACHE_CONTROL, "no-store".to_owned()),
            (header::REFERRER_POLICY, "no-referrer".to_owned()),
        ],
    )
        .into_response())
}

/// `GET /oauth/callback`: WeChat returns the browser here.
#[utoipa::path(get, path = "/oauth/callback", tag = "login",
    params(CallbackQuery),
    responses(
        (status = 303, description = "To `return_to#wxlogin_oauth=<handle>`, or `return_to#wxlogin_oauth_error=declined` when the visitor declined"),
        (status = 400, description = "State missing, unknown, expired, used, or not this browser's (no cookie); code invalid or expired (errcode 40029)", body = serde_json::Value),
        (status = 403, description = "`LOGIN_MODES` has no `oauth`", body = serde_json::Value),
        (status = 409, description = "The code was used before (errcode 40163)", body = serde_json::Value),
        (status = 503, description = "WeChat cannot exchange the code now, or the store does not answer", body = serde_json::Value)))]
pub async fn callback(
    State(state): State<AppState>,
    Query(q): Query<CallbackQuery>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let flow = flow(&state, q.account.as_deref())?;
    let oauth_state = q
        .state
        .filter(|s| is_state(s))
        .ok_or_else(|| HttpError::BadRequest("state is missing or malformed".into()))?;
    let name = cookie_name(&oauth_state);
    let key = cookie(&headers, &name).ok_or_else(|| {
        HttpError::BadRequest(
            "the login's cookie is missing: finish the login in the browser that started it, with cookies on"
                .into(),
        )
    })?;
    let code = q.code.filter(|c| !c.is_empty());
    if code.as_ref().is_some_and(|c| c.len() > MAX_CODE) {
        return Err(HttpError::BadRequest("the code is malformed".into()));
    }
    let location = match flow.finish(&oauth_state, key, code.as_deref()).await? {
        Finished::LoggedIn(to) | Finished::Declined(to) => to,
    };
    let clear = format!("{name}=; Max-Age=0; Path=/oauth/callback; HttpOnly; SameSite=Lax");
    Ok((
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, location),
            (header::SET_COOKIE, clear),
            (header::CACHE_CONTROL, "no-store".to_owned()),
            (header::REFERRER_POLICY, "no-referrer".to_owned()),
        ],
    )
        .into_response())
}

/// `POST /oauth/result`: the page trades its handle for the login, once.
#[utoipa::path(post, path = "/oauth/result", tag = "login",
    request_body = ResultRequest,
    responses(
        (status = 200, description = "`{userId, event: \"oauth\", login_token}`, and `unionId` when WeChat gave one", body = serde_json::Value),
        (status = 400, description = "Malformed body", body = serde_json::Value),
        (status = 403, description = "The request's `Origin` is not `return_to`'s, or `LOGIN_MODES` has no `oauth`", body = serde_json::Value),
        (status = 410, description = "The handle is unknown, used or expired (it lives 60 s)", body = serde_json::Value)))]
pub async fn result(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<ResultRequest>, JsonRejection>,
) -> Result<Response, HttpError> {
    let Json(req) = body.map_err(|e| HttpError::BadRequest(e.body_text()))?;
    let flow = flow(&state, req.account.as_deref())?;
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(normalize_origin);
    let login = flow.redeem(&req.handle, origin.as_deref()).await?;
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(login)).into_response())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; wxl_oauth_0123abcd=k1"),
        );
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("wxl_oauth_ffff0000=k2"),
        );
        assert_eq!(cookie(&headers, "wxl_oauth_0123abcd"), Some("k1"));
        assert_eq!(cookie(&headers, "wxl_oauth_ffff0000"), Some("k2"));
        assert_eq!(cookie(&headers, "wxl_oauth"), None);
        assert!(is_state("0123456789abcdef0123456789ABCDEF"));
        assert!(!is_state("0123456789abcdef0123456789abcdeg"));
        assert_eq!(cookie_name("0123456789abcdef"), "wxl_oauth_01234567");
    }
}
