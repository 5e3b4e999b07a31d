//! `GET /sse?token=…`: the stream a page waits on.
//!
//! First event: the QR code. Then exactly one of: the scan result, a timeout event when the
//! wait is over, or nothing at shutdown; then the stream ends. Keep-alive comments keep
//! proxies from closing it. Every event has an id, `<scene>.<key>.0` for the QR code and
//! `<scene>.<key>.1` for the last event, where the key is the stream's secret: a reconnecting
//! EventSource names what it saw (`Last-Event-ID`) and resumes its session (same QR code)
//! instead of starting a new one; `?id=` does the same for clients that cannot set the header
//! (the widget after a page reload). The scene alone resumes nothing: it is an address that
//! WeChat, logs and the QR image's URL carry.

use std::convert::Infallible;
use std::future::ready;
use std::time::Instant;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use futures_util::stream::{self, BoxStream};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::access::{page_access, page_account};
use super::error::HttpError;
use super::limits::{HoldError, StreamSlot};
use crate::accounts::Account;
use crate::config::AccountName;
use crate::login::code::LoginCode;
use crate::login::event::{
    EventId, Lang, LoginEvent, LoginResult, QrIssued, StreamKey, TimeoutEvent,
};
use crate::login::pool::TakeError;
use crate::login::scenes::{Attachment, Resumed, SceneView};
use crate::metrics::Metrics;
use crate::wechat::ids::Scene;

/// The query of `/sse`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SseQuery {
    /// `API_TOKEN` or a page token from `POST /tokens`.
    token: Option<String>,
    /// `en` for English texts; Chinese otherwise.
    lang: Option<String>,
    /// Resume the stream of this event id (as `Last-Event-ID` does).
    id: Option<String>,
    /// The Official Account to log in with (a name from `ACCOUNTS_FILE`); `default` when
    /// absent, or the page token's account.
    account: Option<String>,
    /// Ignored: a scene alone resumes nothing (it is no secret). Kept so that old pages that
    /// send it get a new QR code rather than an error.
    #[allow(dead_code)]
    scene: Option<String>,
}

/// How soon a client refused for want of room under a stream cap should try again.
const HOLD_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// How soon a browser told to reconnect at shutdown should come back (to another instance).
const SHUTDOWN_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

fn data_event(id: String, data: &impl Serialize) -> Event {
    // These payloads are plain structs of strings and numbers: serialising cannot fail.
    let json = serde_json::to_string(data).unwrap_or_default();
    Event::default().id(id).data(json)
}

/// The event id a reconnecting client names: its `Last-Event-ID`, else `?id=`. Anything
/// that is not one of our ids names nothing.
pub fn named_event(headers: &HeaderMap, query: Option<&str>) -> Option<EventId> {
    let last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty());
    EventId::parse(last_id.or(query)?)
}

/// What follows the QR code on the stream.
enum Tail {
    /// Wait for the scan on this attachment.
    Wait(Attachment),
    /// The result is known already.
    Result(LoginResult),
}

/// The handler.
#[utoipa::path(get, path = "/sse", tag = "login",
    params(SseQuery, ("Last-Event-ID" = Option<String>, Header, description = "Set by EventSource on reconnect (an event id, `<scene>.<key>.<n>`): resumes that stream")),
    responses(
        (status = 200, description = "text/event-stream. Data events (default type): first `{scene_id, qrcode_url, expire_seconds, timeout_seconds, qrcode_svg}`, plus `login_code` when LOGIN_MODES has `code` (and, with `code` alone, no `qrcode_url` nor `qrcode_svg` but `account_qrcode_url` when set), then `{userId, event, login_token}` on a scan or a login code (`event` `SCAN`, `subscribe` or `code`) or `{event: \"timeout\", message}`; ids `<scene>.<key>.0` and `<scene>.<key>.1`, the key being the stream's secret; at shutdown an `event: shutdown` with a `retry:` hint", content_type = "text/event-stream", body = String),
        (status = 401, description = "Wrong, expired or other-origin token", body = serde_json::Value),
        (status = 429, description = "Too many new streams from this client in the last minute (`SSE_PER_IP_PER_MIN`), or too many open at once (`SSE_PER_IP_OPEN`); see Retry-After", body = serde_json::Value),
        (status = 503, description = "No QR code can be had (WeChat fails, or today's `QR_DAILY_BUDGET` is used up: the message says which), or the stream cap is reached (see Retry-After)", body = serde_json::Value)))]
pub async fn sse(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<SseQuery>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let metrics = &state.metrics;
    let grant = page_access(&state, query.token.as_deref(), &headers).inspect_err(|_| {
        metrics.refuse_stream("unauthorized");
    })?;
    let account = page_account(&state, &grant, query.account.as_deref()).inspect_err(|_| {
        metrics.refuse_stream("unknown_account");
    })?;
    // From here on the account is known: its own metrics count.
    let metrics = &account.metrics;
    let audience = grant.audience;
    let lang = Lang::parse(query.lang.as_deref());
    let client = state.limits.client(peer, &headers);
    // Taken before anything else, a QR code above all, and held by the stream's body: the
    // check and the count are one step, so concurrent opens cannot overshoot the caps.
    let slot = state.limits.hold_stream(client).map_err(|e| match e {
        HoldError::ClientFull => {
            metrics.refuse_stream("client_open");
            HttpError::TooManyRequests {
                retry_after: HOLD_RETRY,
                message: "too many open streams from this address; close one or try again later",
            }
        }
        HoldError::ServiceFull => {
            metrics.refuse_stream("max_streams");
            tracing::warn!(
                max = state.limits.max_streams,
                "stream cap reached: refusing"
            );
            HttpError::Unavailable {
                retry_after: HOLD_RETRY,
                message: "too many open streams; try again shortly",
            }
        }
    })?;
    // A resume with a wrong key finds nothing and changes nothing: the client gets a new
    // stream, as for a scene that is gone, so the answer tells nothing about the scene.
    let resumed = match named_event(&headers, query.id.as_deref()) {
        Some(id) => {
            account
                .login
                .resume(&id.scene, &id.key, id.seen_last)
                .await?
        }
        None => None,
    };
    let (view, tail) = match resumed {
        Some(Resumed::Waiting(view, attachment)) => {
            tracing::debug!(scene = %view.qr.scene.short(), "stream resumed");
            (view, Tail::Wait(attachment))
        }
        Some(Resumed::Result(view, result)) => {
            tracing::debug!(scene = %view.qr.scene.short(), "stream resumed to a parked result");
            (view, Tail::Result(result))
        }
        None => {
            if let Err(wait) = state.limits.take_stream_token(client) {
                metrics.refuse_stream("rate_limited");
                return Err(HttpError::TooManyRequests {
                    retry_after: wait,
                    message: "too many new streams from this address; try again later",
                });
            }
            let (view, attachment) =
                account
                    .login
                    .start(audience, lang)
                    .await
                    .map_err(|e| match e {
                        TakeError::Unavailable(e) => {
                            metrics.refuse_stream("no_qr");
                            tracing::warn!(reason = %e.reason, "no QR code for a new stream");
                            HttpError::Unavailable {
                                retry_after: e.retry_after,
                                message: "no QR code can be had from WeChat right now",
                            }
                        }
                        TakeError::BudgetSpent(e) => {
                            metrics.refuse_stream("budget_spent");
                            HttpError::Unavailable {
                                retry_after: e.retry_after,
                                message: "the daily QR code budget is used up; try again tomorrow",
                            }
                        }
                        TakeError::NoFreeCode => {
                            metrics.refuse_stream("no_code");
                            HttpError::Unavailable {
                                retry_after: HOLD_RETRY,
                                message: "no free login code right now; try again shortly",
                            }
                        }
                        TakeError::Store(e) => e.into(),
                    })?;
            tracing::debug!(scene = %view.qr.scene.short(), "stream opened");
            (view, Tail::Wait(attachment))
        }
    };
    Ok(respond(&state, &account, view, tail, lang, slot))
}

fn qr_event(account: &Account, view: &SceneView) -> Event {
    let scene = &view.qr.scene;
    let qr = view.qr.is_some();
    data_event(
        EventId::format(scene, &view.key, false),
        &QrIssued {
            scene_id: scene.as_str(),
            qrcode_url: qr.then(|| view.qr.ticket.showqrcode_url()),
            expire_seconds: view.qr.remaining().as_secs(),
            timeout_seconds: ceil_secs(view.deadline.saturating_duration_since(Instant::now())),
            qrcode_svg: qr.then(|| match account.name.is_default() {
                true => format!("/qrcode/{scene}.svg"),
                false => format!("/qrcode/{scene}.svg?account={}", account.name),
            }),
            login_code: view.code.as_ref().map(LoginCode::as_str),
            account_qrcode_url: if qr {
                None
            } else {
                account.settings.account_qrcode_url.as_deref()
            },
            account: Some(account.name.as_str()),
            oauth: account.oauth.is_some(),
        },
    )
}

/// Whole seconds, rounded up: a fresh 120 s wait reads 120, not 119.
fn ceil_secs(d: std::time::Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn result_event(
    account: &AccountName,
    scene: &Scene,
    key: &StreamKey,
    result: &LoginResult,
) -> Event {
    data_event(
        EventId::format(scene, key, true),
        &LoginEvent::from(result).with_account(account.as_str()),
    )
}

fn respond(
    state: &AppState,
    account: &Account,
    view: SceneView,
    tail: Tail,
    lang: Lang,
    slot: StreamSlot,
) -> Response {
    let first = stream::once(ready(qr_event(account, &view)));
    let events: BoxStream<'static, Event> = match tail {
        Tail::Result(result) => first
            .chain(stream::once(ready(result_event(
                &account.name,
                &view.qr.scene,
                &view.key,
                &result,
            ))))
            .boxed(),
        Tail::Wait(attachment) => {
            // The wait keeps what its last event needs, not the whole view: it is held for
            // as long as the stream is.
            let last = wait_for_result(
                attachment,
                account.name.clone(),
                Waited {
                    key: view.key,
                    deadline: view.deadline,
                    qr: view.qr.is_some(),
                },
                state.shutdown.clone(),
                Arc::clone(&account.metrics),
                lang,
            );
            first.chain(stream::once(last).filter_map(ready)).boxed()
        }
    };
    let events = events.map(move |event| {
        // The body owns the slot: it is given back when the stream ends or the client goes.
        let _held = &slot;
        Ok::<_, Infallible>(event)
    });
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(state.sse_keepalive))
        .into_response();
    // Tells nginx not to buffer the stream (axum already sets Cache-Control: no-cache).
    response.headers_mut().insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    response
}

/// What a stream's last event needs of its [`SceneView`].
struct Waited {
    key: StreamKey,
    deadline: Instant,
    /// Whether the stream shows a QR code (its timeout event says so).
    qr: bool,
}

/// Waits for the scan, the end of the wait, or shutdown. The attachment lives as long as this
/// future: when the client goes away the body stream is dropped, the attachment with it, and
/// the stream is detached (its session stays resumable until the deadline).
async fn wait_for_result(
    mut attachment: Attachment,
    account: AccountName,
    waited: Waited,
    shutdown: tokio_util::sync::CancellationToken,
    metrics: Arc<Metrics>,
    lang: Lang,
) -> Option<Event> {
    enum End {
        Result(LoginResult),
        Replaced,
        Timeout,
        Shutdown,
    }
    let end = tokio::select! {
        received = &mut attachment.result => match received {
            Ok(result) => End::Result(result),
            // A newer stream resumed this session.
            Err(_) => End::Replaced,
        },
        () = tokio::time::sleep_until(waited.deadline.into()) => End::Timeout,
        () = shutdown.cancelled() => End::Shutdown,
    };
    let delivered = |scene: &Scene, result: LoginResult| {
        tracing::info!(scene = %scene.short(), openid = %result.openid.short(), event = result.kind.as_str(), "login delivered");
        Metrics::observe(&metrics.scan_to_push_seconds, result.resolved_at.elapsed());
        result_event(&account, scene, &waited.key, &result)
    };
    match end {
        End::Result(result) => Some(delivered(attachment.scene(), result)),
        End::Shutdown => {
            // The session stays: the browser reconnects (to another instance, with a shared
            // store) and resumes it.
            Some(
                Event::default()
                    .event("shutdown")
                    .retry(SHUTDOWN_RETRY)
                    .data(r#"{"event":"shutdown","message":"server restarting; reconnecting"}"#),
            )
        }
        End::Timeout => {
            let scene = attachment.scene().clone();
            match attachment.close().await {
                // A scan resolved the session as the wait ended: it goes to the browser.
                Some(result) => Some(delivered(&scene, result)),
                None => {
                    tracing::debug!(scene = %scene.short(), "stream timed out");
                    Some(data_event(
                        EventId::format(&scene, &waited.key, true),
                        &if waited.qr {
                            TimeoutEvent::new(lang)
                        } else {
                            TimeoutEvent::code_only(lang)
                        },
                    ))
                }
            }
        }
        End::Replaced => None,
    }
}
