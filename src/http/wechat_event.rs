//! `/wechat_event`: WeChat's URL check (GET) and its event pushes (POST).
//!
//! A POST is believed only after `wechat::callback::open` checked it (signature, freshness,
//! safe mode, XML; see there). Its signed query is then bound to its body in the store, on
//! every instance: the same query and body again is WeChat retrying and is answered as the
//! first one was; the same query with another body is a replay, refused with 401. A login scan
//! may be answered with a text reply (`REPLY_TEXT`, encrypted with the key that opened the
//! request). A text message that reads as a login code (`LOGIN_MODES` with `code`) is resolved
//! like a scan and always answered in the chat: logged in, no such code, or too many tries. A
//! scan or a code that comes for a session already over (the other way won, or its wait ended)
//! delivers nothing and its sender is told so.
//! Other callbacks go to `FORWARD_URL` or get `success`. Answers come well inside
//! WeChat's 5 s: nothing here waits on WeChat.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::error::HttpError;
use super::forward::Forwarded;
use super::{AppState, MAX_CALLBACK_BODY};
use crate::accounts::Account;
use crate::login::code::{self, LoginCode, Reading};
use crate::login::{CodeOutcome, Outcome, Scanned};
use crate::metrics::{Metrics, Outcome as Label};
use crate::store::{Bound, StoreError};
use crate::wechat::callback::{
    self, Binding, Callback, CallbackError, Opened, TextMessage, classify,
};
use crate::wechat::crypto::{KeySlot, seal_reply};
use crate::wechat::ids::short_openid;
use crate::wechat::reply::text_reply;
use crate::wechat::signature::verify_signature;

/// The query of the URL check.
#[derive(Debug, Deserialize)]
pub struct VerifyQuery {
    signature: Option<String>,
    timestamp: Option<String>,
    nonce: Option<String>,
    echostr: Option<String>,
}

/// A plain-text answer. The header value is static: a `&str` would be copied into a fresh one
/// on every callback.
fn plain(status: StatusCode, body: impl IntoResponse) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

/// `GET /wechat_event`: answers `echostr` when the signature matches; 400 otherwise.
#[utoipa::path(get, path = "/wechat_event", tag = "wechat", operation_id = "wechat_url_check",
    params(
        ("signature" = String, Query, description = "hex SHA-1 of the sorted MP_TOKEN, timestamp, nonce"),
        ("timestamp" = String, Query), ("nonce" = String, Query),
        ("echostr" = String, Query, description = "Echoed back when the signature matches")),
    responses(
        (status = 200, description = "The echostr", body = String, content_type = "text/plain"),
        (status = 400, description = "Missing parameters or wrong signature", body = serde_json::Value)))]
pub async fn verify(
    State(state): State<AppState>,
    Query(q): Query<VerifyQuery>,
) -> Result<Response, HttpError> {
    check_url(&state.accounts.default_account(), q)
}

/// `GET /wechat_event/{account}`: the URL check of the account's own callback URL.
#[utoipa::path(get, path = "/wechat_event/{account}", tag = "wechat", operation_id = "wechat_url_check_of_account",
    params(
        ("account" = String, Path, description = "The account's name in ACCOUNTS_FILE"),
        ("signature" = String, Query, description = "hex SHA-1 of the sorted mp_token, timestamp, nonce"),
        ("timestamp" = String, Query), ("nonce" = String, Query),
        ("echostr" = String, Query, description = "Echoed back when the signature matches")),
    responses(
        (status = 200, description = "The echostr", body = String, content_type = "text/plain"),
        (status = 400, description = "Missing parameters or wrong signature", body = serde_json::Value),
        (status = 404, description = "No account of that name is served", body = serde_json::Value)))]
pub async fn verify_account(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<VerifyQuery>,
) -> Result<Response, HttpError> {
    let account = state.accounts.get(&name).ok_or(HttpError::UnknownAccount)?;
    check_url(&account, q)
}

/// Answers a URL check signed with `account`'s `mp_token`.
fn check_url(account: &Account, q: VerifyQuery) -> Result<Response, HttpError> {
    let (Some(signature), Some(timestamp), Some(nonce), Some(echostr)) =
        (q.signature, q.timestamp, q.nonce, q.echostr)
    else {
        return Err(HttpError::BadRequest(
            "signature, timestamp, nonce and echostr are required".into(),
        ));
    };
    if !verify_signature(
        account.callbacks.token().expose(),
        &timestamp,
        &nonce,
        &signature,
    ) {
        tracing::warn!("URL check with a wrong signature");
        return Err(HttpError::BadRequest("signature mismatch".into()));
    }
    Ok(plain(StatusCode::OK, echostr))
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// A rejected callback: the reason for the metrics, and the answer.
struct Rejected(&'static str, HttpError);

impl From<CallbackError> for Rejected {
    /// The one mapping of a callback's checks to statuses: 401 for what is not WeChat's,
    /// 400 for what is malformed. Safe mode's failures are logged (why, for the operator),
    /// never told in more detail (a padding oracle).
    fn from(e: CallbackError) -> Self {
        match &e {
            CallbackError::Undecryptable(cause) => {
                tracing::warn!(error = %cause, "encrypted callback does not decrypt");
            }
            CallbackError::BadSignature | CallbackError::BadMsgSignature => {
                tracing::warn!(
                    reason = e.reason(),
                    "callback with a wrong signature rejected"
                );
            }
            CallbackError::Stale
            | CallbackError::SignedBeforeStart
            | CallbackError::NotEncrypted => {
                tracing::warn!(reason = e.reason(), "callback rejected");
            }
            _ => {}
        }
        let reason = e.reason();
        let error = if e.is_unauthenticated() {
            HttpError::Unauthorized(match e {
                CallbackError::MissingSignature => "signature, timestamp and nonce are required",
                CallbackError::BadSignature => "signature mismatch",
                CallbackError::Stale => "timestamp is more than 5 minutes from now",
                CallbackError::SignedBeforeStart => {
                    "the callback was signed before this service started"
                }
                CallbackError::NotEncrypted => {
                    "callbacks must be encrypted (encrypt_type=aes with msg_signature): ENCODING_AES_KEY is set"
                }
                _ => "msg_signature mismatch",
            })
        } else {
            HttpError::BadRequest(match e {
                CallbackError::SafeModeOff => {
                    "encrypted callback, but safe mode (ENCODING_AES_KEY) is not configured".into()
                }
                other => other.to_string(),
            })
        };
        Self(reason, error)
    }
}

/// A signed query sent again with another body.
fn replayed() -> Rejected {
    tracing::warn!("a signed callback query came again with another body: refused as a replay");
    Rejected(
        "replayed",
        HttpError::Unauthorized("this signed query was used with another body"),
    )
}

/// The store could not record the callback: WeChat retries it.
impl From<StoreError> for Rejected {
    fn from(e: StoreError) -> Self {
        Self("store_unavailable", e.into())
    }
}

/// `POST /wechat_event`: checks the callback and resolves a login scan.
#[utoipa::path(post, path = "/wechat_event", tag = "wechat", operation_id = "wechat_callback",
    params(
        ("signature" = String, Query), ("timestamp" = String, Query), ("nonce" = String, Query),
        ("openid" = Option<String>, Query),
        ("encrypt_type" = Option<String>, Query, description = "`aes` in safe and compatible mode; required when ENCODING_AES_KEY is set"),
        ("msg_signature" = Option<String>, Query, description = "Safe and compatible mode: signature over Encrypt; required when ENCODING_AES_KEY is set")),
    request_body(content = String, content_type = "text/xml", description = "WeChat's event XML (at most 64 KiB)"),
    responses(
        (status = 200, description = "`success`, a passive reply (REPLY_TEXT), or the FORWARD_URL's answer; a retry (same signed query, same body) gets the first one's answer", body = String),
        (status = 400, description = "Malformed: not UTF-8, not XML, a DTD, undecryptable", body = serde_json::Value),
        (status = 401, description = "Missing or wrong signature, stale timestamp, a plaintext callback while ENCODING_AES_KEY is set, or a signed query used before with another body", body = serde_json::Value),
        (status = 413, description = "Body over 64 KiB"),
        (status = 503, description = "Cannot record the event now: WeChat retries", body = serde_json::Value)))]
pub async fn receive(State(state): State<AppState>, request: Request) -> Response {
    let account = state.accounts.default_account();
    receive_for(&account, request).await
}

/// `POST /wechat_event/{account}`: a callback on the account's own URL, checked with that
/// account's `mp_token` and keys, resolving that account's streams only.
#[utoipa::path(post, path = "/wechat_event/{account}", tag = "wechat", operation_id = "wechat_callback_of_account",
    params(
        ("account" = String, Path, description = "The account's name in ACCOUNTS_FILE"),
        ("signature" = String, Query), ("timestamp" = String, Query), ("nonce" = String, Query),
        ("openid" = Option<String>, Query),
        ("encrypt_type" = Option<String>, Query), ("msg_signature" = Option<String>, Query)),
    request_body(content = String, content_type = "text/xml", description = "WeChat's event XML (at most 64 KiB)"),
    responses(
        (status = 200, description = "As `POST /wechat_event`, for this account", body = String),
        (status = 400, description = "Malformed", body = serde_json::Value),
        (status = 401, description = "Not signed with this account's mp_token (a callback of another account included), stale, or replayed", body = serde_json::Value),
        (status = 404, description = "No account of that name is served", body = serde_json::Value),
        (status = 413, description = "Body over 64 KiB"),
        (status = 503, description = "Cannot record the event now: WeChat retries", body = serde_json::Value)))]
pub async fn receive_account(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    let Some(account) = state.accounts.get(&name) else {
        state.metrics.reject_callback("unknown_account");
        return HttpError::UnknownAccount.into_response();
    };
    receive_for(&account, request).await
}

async fn receive_for(account: &Account, request: Request) -> Response {
    let started = Instant::now();
    // The request is taken apart here rather than by extractors, which would copy the query
    // string and the headers of every callback (the hot path of a busy account).
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_CALLBACK_BODY).await {
        Ok(body) => body,
        Err(e) => {
            let too_large = e
                .into_inner()
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            let (reason, error) = if too_large {
                ("too_large", HttpError::PayloadTooLarge)
            } else {
                (
                    "unreadable_body",
                    HttpError::BadRequest("the body was cut off".into()),
                )
            };
            account.metrics.reject_callback(reason);
            return error.into_response();
        }
    };
    let raw_query = parts.uri.query();
    // Pinned in place: awaited directly, its future would be stored twice over in this one,
    // which every callback allocates and copies (BENCHMARKS.md).
    let handled = std::pin::pin!(handle(account, raw_query, &parts.headers, &body));
    let answer = match handled.await {
        Ok(answer) => answer,
        Err(Rejected(reason, error)) => {
            account.metrics.reject_callback(reason);
            error.into_response()
        }
    };
    Metrics::observe(&account.metrics.callback_seconds, started.elapsed());
    answer
}

async fn handle(
    account: &Account,
    raw_query: Option<&str>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, Rejected> {
    let query = callback::Query::parse(raw_query.unwrap_or_default());
    let Opened {
        message,
        slot,
        binding,
    } = callback::open(&account.callbacks, &query, body, now_secs())?;
    let scan = match classify(&message) {
        Callback::Scan(scan) if crate::login::policy::is_login_scene(&scan.scene) => scan,
        Callback::Text(text) => {
            let attempt = account
                .login
                .codes()
                .map(|policy| code::read(text.content, policy.length));
            if let Some(Reading::Attempt(code)) = attempt {
                return Box::pin(login_code(
                    account, &text, &code, &binding, slot, raw_query, headers, body,
                ))
                .await;
            }
            // Not a code attempt: the account's own business, as any other message.
            return Box::pin(other(account, &binding, raw_query, headers, body)).await;
        }
        // Not a login scan of ours: the account's own backend may want it.
        // Boxed: its future is larger than the rest of this handler, which every callback
        // would otherwise carry (and copy) for the few that are forwarded.
        _ => {
            return Box::pin(other(account, &binding, raw_query, headers, body)).await;
        }
    };
    let Scanned { outcome, late } = account.login.complete(&scan, &binding).await?;
    match outcome {
        Outcome::Delivered(()) => {}
        Outcome::Replayed => return Err(replayed()),
        Outcome::Parked => tracing::info!(
            scene = %scan.scene.short(),
            openid = %short_openid(scan.openid),
            "scan while the stream is away: kept for its return"
        ),
        Outcome::Duplicate { .. } => {
            tracing::debug!(scene = %scan.scene, "retry of a handled callback");
        }
        // Debug, not info: anyone may send scans of unknown scenes, at any rate; the
        // scans_total{outcome="undeliverable"} metric counts them.
        Outcome::Nobody => tracing::debug!(
            scene = %scan.scene,
            openid = %short_openid(scan.openid),
            "scan for a QR code no stream waits on: delivered to nobody"
        ),
    }
    if let Some(lang) = late {
        // Its session is over (a code or another scan won, or its wait ended): told so.
        return Ok(reply(
            account,
            scan.openid,
            scan.account,
            chat_replies::late(lang),
            slot,
        ));
    }
    match (&account.settings.reply_text, outcome.is_login()) {
        (Some(template), true) => Ok(reply(
            account,
            scan.openid,
            scan.account,
            &fill_reply(template),
            slot,
        )),
        _ => Ok(success()),
    }
}

/// What a login code's sender, or the sender of a scan that came too late, reads in the chat.
mod chat_replies {
    use crate::login::event::Lang;

    /// The code logged the page in (`REPLY_TEXT` wins when set).
    pub fn logged_in(lang: Lang) -> &'static str {
        match lang {
            Lang::Zh => "登录成功，请回到网页继续。",
            Lang::En => "You are logged in. Go back to the web page to continue.",
        }
    }

    /// The session is over: logged in already (by a scan or a code) or its wait ended.
    pub fn late(lang: Lang) -> &'static str {
        match lang {
            Lang::Zh => "这次登录已在别处完成或已过期，无需再操作。如需登录，请刷新网页。",
            Lang::En => {
                "This login was already completed elsewhere or has expired. To log in, refresh the web page."
            }
        }
    }

    /// No stream waits on the code. The stream's language is unknown: Chinese.
    pub const UNKNOWN: &str = "验证码无效或已过期，请刷新网页获取新的验证码。";

    /// Over `CODE_ATTEMPTS_PER_MIN`.
    pub const TOO_MANY: &str = "尝试次数过多，请一分钟后再试。";
}

/// A text message that reads as a login code: resolved like a scan, and answered in the chat
/// (a login, a code no stream waits on, or too many attempts). With `FORWARD_URL` set, a code
/// that matches nothing goes downstream instead: it may be the account's own business (an
/// order number).
#[allow(clippy::too_many_arguments)]
async fn login_code(
    account: &Account,
    text: &TextMessage<'_>,
    code: &LoginCode,
    binding: &Binding,
    slot: Option<KeySlot>,
    raw_query: Option<&str>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, Rejected> {
    let outcome = account.login.complete_code(text, code, binding).await?;
    let answer = |message: &str| reply(account, text.openid, text.account, message, slot);
    let logged_in = |lang| match &account.settings.reply_text {
        Some(template) => answer(&fill_reply(template)),
        None => answer(chat_replies::logged_in(lang)),
    };
    Ok(match outcome {
        CodeOutcome::LoggedIn(lang) => {
            tracing::info!(openid = %short_openid(text.openid), "login by code");
            logged_in(lang)
        }
        CodeOutcome::Duplicate { login: true, lang } => logged_in(lang),
        CodeOutcome::Duplicate { login: false, .. } => success(),
        CodeOutcome::Late(lang) => {
            tracing::debug!(openid = %short_openid(text.openid), "code of a session that is over: told so");
            answer(chat_replies::late(lang))
        }
        CodeOutcome::Replayed => return Err(replayed()),
        CodeOutcome::TooManyAttempts => {
            tracing::debug!(openid = %short_openid(text.openid), "code attempts over the limit: not matched");
            answer(chat_replies::TOO_MANY)
        }
        CodeOutcome::NoSuchCode if account.forwarder.is_some() => {
            return Box::pin(other(account, binding, raw_query, headers, body)).await;
        }
        CodeOutcome::NoSuchCode => answer(chat_replies::UNKNOWN),
    })
}

fn success() -> Response {
    plain(StatusCode::OK, "success")
}

/// A callback that is not a login scan of ours: its binding recorded (a replay of its query
/// with a login body must fail too), then passed on to `FORWARD_URL`, if set, and the answer
/// relayed. A retry is passed on again, as WeChat would have sent it there.
async fn other(
    account: &Account,
    binding: &Binding,
    raw_query: Option<&str>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, Rejected> {
    match account.login.bind(binding).await {
        Ok(Bound::Conflict) => return Err(replayed()),
        Ok(Bound::First | Bound::Retry { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let Some(forwarder) = &account.forwarder else {
        return Ok(success());
    };
    let outcome = |o: &str| Label { outcome: o.into() };
    Ok(
        match forwarder.forward(raw_query, headers, body.clone()).await {
            Forwarded::Answer(answer) => {
                account
                    .metrics
                    .callbacks_forwarded
                    .get_or_create(&outcome("relayed"))
                    .inc();
                answer
            }
            Forwarded::Failed(why) => {
                tracing::warn!(error = %why, "FORWARD_URL gave no answer to relay; answering success");
                account
                    .metrics
                    .callbacks_forwarded
                    .get_or_create(&outcome("failed"))
                    .inc();
                success()
            }
        },
    )
}

/// Fills `{time}` (HH:MM) and `{date}` (YYYY-MM-DD), in China Standard Time.
pub fn fill_reply(template: &str) -> String {
    let beijing =
        chrono::FixedOffset::east_opt(8 * 3600).map(|tz| chrono::Utc::now().with_timezone(&tz));
    match beijing {
        Some(now) => template
            .replace("{time}", &now.format("%H:%M").to_string())
            .replace("{date}", &now.format("%Y-%m-%d").to_string()),
        None => template.to_owned(),
    }
}

/// The passive text reply `message` to `openid` from the account's `gh_id`, encrypted (with
/// `account`'s keys) when the request was.
fn reply(
    account: &Account,
    openid: &str,
    gh_id: &str,
    message: &str,
    slot: Option<KeySlot>,
) -> Response {
    let xml = text_reply(openid, gh_id, now_secs(), message);
    let body = match (slot, account.callbacks.keys()) {
        (Some(slot), Some(keys)) => {
            let timestamp = now_secs().to_string();
            let nonce = crate::auth::random_id();
            match seal_reply(
                keys.key(slot),
                account.callbacks.token().expose(),
                account.callbacks.appid(),
                &xml,
                &timestamp,
                &nonce,
            ) {
                Ok(sealed) => sealed,
                Err(e) => {
                    tracing::error!(error = %e, "cannot encrypt the reply; answering success");
                    return success();
                }
            }
        }
        _ => xml,
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
        body,
    )
        .into_response()
}
