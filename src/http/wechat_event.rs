//! `/wechat_event`: WeChat's URL check (GET) and its event pushes (POST).
//!
//! A POST is believed only after its signature (constant time) and timestamp (within five
//! minutes) check out; the body must be UTF-8 XML without DTDs; WeChat's retries of one event
//! are recognised. Whatever is not a login scan is answered `success` and otherwise ignored.
//! Answers come well inside WeChat's 5 s: nothing here waits on WeChat.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::error::HttpError;
use crate::login::Outcome;
use crate::wechat::callback::{Callback, classify};
use crate::wechat::signature::verify_signature;
use crate::wechat::xml;

/// How far a callback's `timestamp` may be from our clock.
pub const MAX_CLOCK_SKEW_SECS: i64 = 300;

/// The query of the URL check.
#[derive(Debug, Deserialize)]
pub struct VerifyQuery {
    signature: Option<String>,
    timestamp: Option<String>,
    nonce: Option<String>,
    echostr: Option<String>,
}

/// The query of an event push.
#[derive(Debug, Deserialize)]
pub struct EventQuery {
    signature: Option<String>,
    timestamp: Option<String>,
    nonce: Option<String>,
    /// Safe mode: `aes`.
    encrypt_type: Option<String>,
}

fn plain(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// `GET /wechat_event`: answers `echostr` when the signature matches; 400 otherwise.
pub async fn verify(
    State(state): State<AppState>,
    Query(q): Query<VerifyQuery>,
) -> Result<Response, HttpError> {
    let (Some(signature), Some(timestamp), Some(nonce), Some(echostr)) =
        (q.signature, q.timestamp, q.nonce, q.echostr)
    else {
        return Err(HttpError::BadRequest(
            "signature, timestamp, nonce and echostr are required".into(),
        ));
    };
    if !verify_signature(state.mp_token.expose(), &timestamp, &nonce, &signature) {
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

/// `POST /wechat_event`: checks the callback and delivers a login scan to its stream.
pub async fn receive(
    State(state): State<AppState>,
    Query(q): Query<EventQuery>,
    body: Bytes,
) -> Result<Response, HttpError> {
    let (Some(signature), Some(timestamp), Some(nonce)) = (q.signature, q.timestamp, q.nonce)
    else {
        return Err(HttpError::Unauthorized(
            "signature, timestamp and nonce are required",
        ));
    };
    if !verify_signature(state.mp_token.expose(), &timestamp, &nonce, &signature) {
        tracing::warn!("callback with a wrong signature rejected");
        return Err(HttpError::Unauthorized("signature mismatch"));
    }
    let sent: i64 = timestamp
        .parse()
        .map_err(|_| HttpError::BadRequest("timestamp is not a number".into()))?;
    if (now_secs() - sent).abs() > MAX_CLOCK_SKEW_SECS {
        tracing::warn!(timestamp = sent, "callback with a stale timestamp rejected");
        return Err(HttpError::Unauthorized(
            "timestamp is more than 5 minutes from now",
        ));
    }
    let text = std::str::from_utf8(&body)
        .map_err(|_| HttpError::BadRequest("the body is not UTF-8".into()))?;
    let message = xml::parse(text).map_err(|e| HttpError::BadRequest(e.to_string()))?;
    if q.encrypt_type.as_deref() == Some("aes") && message.msg_type.is_none() {
        return Err(HttpError::BadRequest(
            "encrypted callback, but safe mode (ENCODING_AES_KEY) is not configured".into(),
        ));
    }
    if let Callback::Scan(scan) = classify(&message) {
        let outcome = state.login.complete(&scan).await.map_err(|e| {
            tracing::error!(error = %e, "cannot record the callback; WeChat will retry");
            HttpError::Unavailable {
                retry_after: std::time::Duration::from_secs(1),
                message: "temporarily unable to process the event",
            }
        })?;
        match outcome {
            Outcome::Delivered => {}
            Outcome::Duplicate => {
                tracing::debug!(scene = %scan.scene, "retry of a handled callback");
            }
            Outcome::NoWaiter => tracing::info!(
                scene = %scan.scene,
                openid = %scan.openid.short(),
                "scan for a QR code no stream waits on: delivered to nobody"
            ),
        }
    }
    Ok(plain(StatusCode::OK, "success".into()))
}
