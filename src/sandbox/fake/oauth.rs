//! The fake's web authorization (网页授权): the authorize page, played as a phone on which the
//! visitor approves or declines, and the code exchange with WeChat's rules: a code lives 5
//! minutes and is exchanged once (errcode 40029 for a code unknown or expired, 40163 for one
//! used), for the account's appid and secret only.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{FakeWechat, error_reply, lock, random_text};
use crate::wechat::error::errcode;

/// The life of an authorization code, as WeChat gives it.
pub const CODE_TTL: Duration = Duration::from_secs(300);

/// The visitor the fake phone authorizes, and the codes it was given.
#[derive(Default)]
pub(super) struct OauthState {
    /// The openid (and unionid) the phone's page offers; random until set.
    user: Option<(String, Option<String>)>,
    codes: HashMap<String, IssuedCode>,
}

struct IssuedCode {
    openid: String,
    unionid: Option<String>,
    expires_at: Instant,
    used: bool,
}

impl FakeWechat {
    /// The visitor the authorize page approves for from now on: `openid`, and `unionid` in the
    /// code exchange's reply when given.
    pub fn set_oauth_user(&self, openid: &str, unionid: Option<&str>) {
        lock(&self.state.oauth).user = Some((openid.to_owned(), unionid.map(str::to_owned)));
    }

    /// The visitor the authorize page approves for (made up the first time it is asked).
    pub fn oauth_user(&self) -> (String, Option<String>) {
        lock(&self.state.oauth)
            .user
            .get_or_insert_with(|| (super::super::phone::random_openid(), None))
            .clone()
    }

    /// A code for the phone's visitor, as approving the authorize page gives one.
    pub fn issue_oauth_code(&self) -> String {
        let (openid, unionid) = self.oauth_user();
        let code = random_text(24);
        let mut oauth = lock(&self.state.oauth);
        let now = Instant::now();
        oauth.codes.retain(|_, c| c.expires_at + CODE_TTL > now);
        oauth.codes.insert(
            code.clone(),
            IssuedCode {
                openid,
                unionid,
                expires_at: now + CODE_TTL,
                used: false,
            },
        );
        code
    }

    /// Makes `code` expire now.
    pub fn expire_oauth_code(&self, code: &str) {
        if let Some(c) = lock(&self.state.oauth).codes.get_mut(code) {
            c.expires_at = Instant::now();
        }
    }
}

/// The authorize page's query, as wxlogin sends browsers to it.
#[derive(Deserialize)]
pub(super) struct AuthorizeQuery {
    appid: Option<String>,
    redirect_uri: Option<String>,
    response_type: Option<String>,
    scope: Option<String>,
    state: Option<String>,
}

/// What the phone's page sends back: the same query and the visitor's answer.
#[derive(Deserialize)]
pub(super) struct ApproveQuery {
    redirect_uri: Option<String>,
    state: Option<String>,
    /// `allow` or anything else (declined).
    decision: Option<String>,
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn refused(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Html(format!(
            "<!doctype html><meta charset=utf-8><title>微信</title><p id=error>{}</p>",
            escape(message)
        )),
    )
        .into_response()
}

/// `redirect_uri` with `code` (unless declined) and `state` added to its query; `None` if it
/// is not a URL.
fn back_to(redirect_uri: &str, code: Option<&str>, state: &str) -> Option<String> {
    let mut to = url::Url::parse(redirect_uri).ok()?;
    {
        let mut query = to.query_pairs_mut();
        if let Some(code) = code {
            query.append_pair("code", code);
        }
        query.append_pair("state", state);
    }
    Some(to.into())
}

/// `GET /connect/oauth2/authorize`: WeChat's page, as the phone shows it.
pub(super) async fn authorize(
    State(fake): State<FakeWechat>,
    Query(q): Query<AuthorizeQuery>,
) -> Response {
    if q.appid.as_deref() != Some(fake.account().appid.as_str()) {
        return refused("appid 错误 (wrong appid)");
    }
    if q.response_type.as_deref() != Some("code") {
        return refused("response_type 错误 (must be code)");
    }
    if !matches!(q.scope.as_deref(), Some("snsapi_base" | "snsapi_userinfo")) {
        return refused("scope 参数错误或没有 scope 权限 (errcode 10005)");
    }
    let Some(redirect_uri) = q
        .redirect_uri
        .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
    else {
        return refused("redirect_uri 参数错误 (errcode 10003)");
    };
    let state = q.state.unwrap_or_default();
    if state.len() > 128 || !state.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return refused("state 参数错误 (a-zA-Z0-9, at most 128)");
    }
    let (openid, _) = fake.oauth_user();
    let page = include_str!("oauth.html")
        .replace("{{appid}}", &escape(&fake.account().appid))
        .replace("{{openid}}", &escape(&openid))
        .replace("{{redirect_uri}}", &escape(&redirect_uri))
        .replace("{{state}}", &escape(&state));
    ([(header::CACHE_CONTROL, "no-store")], Html(page)).into_response()
}

/// `GET /connect/oauth2/approve`: the phone's answer; back to `redirect_uri`, with a code when
/// allowed.
pub(super) async fn approve(
    State(fake): State<FakeWechat>,
    Query(q): Query<ApproveQuery>,
) -> Response {
    let Some(redirect_uri) = q
        .redirect_uri
        .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
    else {
        return refused("redirect_uri 参数错误 (errcode 10003)");
    };
    let state = q.state.unwrap_or_default();
    let code = (q.decision.as_deref() == Some("allow")).then(|| fake.issue_oauth_code());
    match back_to(&redirect_uri, code.as_deref(), &state) {
        Some(to) => (StatusCode::FOUND, [(header::LOCATION, to)]).into_response(),
        None => refused("redirect_uri 参数错误 (errcode 10003)"),
    }
}

/// The code exchange's query.
#[derive(Deserialize)]
pub(super) struct ExchangeQuery {
    appid: Option<String>,
    secret: Option<String>,
    code: Option<String>,
    grant_type: Option<String>,
}

/// `GET /sns/oauth2/access_token`.
pub(super) async fn access_token(
    State(fake): State<FakeWechat>,
    Query(q): Query<ExchangeQuery>,
) -> Response {
    fake.state
        .counters
        .oauth_exchanges
        .fetch_add(1, Ordering::Relaxed);
    if let Some(code) = fake.check_credentials(
        q.appid.as_deref().unwrap_or_default(),
        q.secret.as_deref().unwrap_or_default(),
    ) {
        return error_reply(code);
    }
    if q.grant_type.as_deref() != Some("authorization_code") {
        return error_reply(40002);
    }
    let Some(code) = q.code.filter(|c| !c.is_empty()) else {
        return error_reply(41008);
    };
    let identity = {
        let mut oauth = lock(&fake.state.oauth);
        match oauth.codes.get_mut(&code) {
            Some(c) if c.used => Err(errcode::CODE_USED),
            Some(c) if c.expires_at <= Instant::now() => Err(errcode::INVALID_CODE),
            Some(c) => {
                c.used = true;
                Ok((c.openid.clone(), c.unionid.clone()))
            }
            None => Err(errcode::INVALID_CODE),
        }
    };
    let (openid, unionid) = match identity {
        Ok(identity) => identity,
        Err(code) => return error_reply(code),
    };
    let mut reply = json!({
        "access_token": random_text(48),
        "expires_in": 7200,
        "refresh_token": random_text(48),
        "openid": openid,
        "scope": "snsapi_base",
    });
    if let Some(unionid) = unionid {
        reply["unionid"] = unionid.into();
    }
    Json(reply).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_phone_returns_to_the_redirect_uri_with_code_and_state() {
        assert_eq!(
            back_to("https://a.example/cb", Some("C1"), "s1").as_deref(),
            Some("https://a.example/cb?code=C1&state=s1")
        );
        assert_eq!(
            back_to("https://a.example/cb?x=1", None, "s1").as_deref(),
            Some("https://a.example/cb?x=1&state=s1")
        );
    }
}
