//! `GET /sse?token=…`: the stream a page waits on.
//!
//! First event: the QR code. Then exactly one of: the scan result, a timeout event after
//! `SSE_TIMEOUT_SECS`, or nothing at shutdown; then the stream ends. Keep-alive comments keep
//! proxies from closing it. Every event has an id (`<scene>.<n>`) so a reconnecting
//! EventSource names what it saw.

use std::convert::Infallible;
use std::future::ready;

use axum::extract::{Query, State};
use axum::http::{HeaderName, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use futures_util::stream;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::HttpError;
use crate::login::PendingLogin;
use crate::login::event::{Lang, LoginEvent, QrIssued, TimeoutEvent};

/// The query of `/sse`.
#[derive(Debug, Deserialize)]
pub struct SseQuery {
    /// `API_TOKEN`.
    token: Option<String>,
    /// `en` for English texts; Chinese otherwise.
    lang: Option<String>,
}

fn data_event(id: String, data: &impl Serialize) -> Event {
    // These payloads are plain structs of strings and numbers: serialising cannot fail.
    let json = serde_json::to_string(data).unwrap_or_default();
    Event::default().id(id).data(json)
}

/// The handler.
pub async fn sse(
    State(state): State<AppState>,
    Query(query): Query<SseQuery>,
) -> Result<Response, HttpError> {
    let token = query
        .token
        .ok_or(HttpError::Unauthorized("the token parameter is missing"))?;
    if !state.api_token.ct_eq(&token) {
        return Err(HttpError::Unauthorized("wrong token"));
    }
    let lang = Lang::parse(query.lang.as_deref());
    let PendingLogin { qr, result, guard } = state.login.start().await.map_err(|e| {
        tracing::warn!(reason = %e.reason, "no QR code for a new stream");
        HttpError::Unavailable {
            retry_after: e.retry_after,
            message: "no QR code can be had from WeChat right now",
        }
    })?;
    let scene = qr.scene.clone();
    tracing::debug!(%scene, "stream opened");
    let first = data_event(
        format!("{scene}.0"),
        &QrIssued {
            scene_id: scene.as_str(),
            qrcode_url: qr.ticket.showqrcode_url(),
            expire_seconds: qr.remaining().as_secs(),
            timeout_seconds: state.sse_timeout.as_secs(),
            qrcode_svg: format!("/qrcode/{scene}.svg"),
        },
    );
    let timeout = state.sse_timeout;
    let shutdown = state.shutdown.clone();
    let last = async move {
        // The guard lives as long as this future: when the client goes away the body stream
        // is dropped, the guard with it, and the scene is unregistered.
        let _guard = guard;
        tokio::select! {
            received = result => match received {
                Ok(result) => {
                    tracing::info!(%scene, openid = %result.openid.short(), event = result.kind.as_str(), "login delivered");
                    Some(data_event(format!("{scene}.1"), &LoginEvent::from(&result)))
                }
                Err(_) => None,
            },
            () = tokio::time::sleep(timeout) => {
                tracing::debug!(%scene, "stream timed out");
                Some(data_event(format!("{scene}.1"), &TimeoutEvent::new(lang)))
            }
            () = shutdown.cancelled() => None,
        }
    };
    let events = stream::once(ready(first))
        .chain(stream::once(last).filter_map(ready))
        .map(Ok::<_, Infallible>);
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(state.sse_keepalive))
        .into_response();
    // Tells nginx not to buffer the stream (axum already sets Cache-Control: no-cache).
    response.headers_mut().insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    Ok(response)
}
