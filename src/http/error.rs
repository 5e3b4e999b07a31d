//! The one error type of the HTTP layer. Each variant has its status; the body says what was
//! wrong with the request, never internal causes (those are logged where they happen).

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::store::StoreError;

/// An error answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// 400: the request is malformed; the message says how.
    #[error("{0}")]
    BadRequest(String),
    /// 401: a token or signature is missing, wrong or stale.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// 403: the request is understood, and this deployment does not allow it.
    #[error("{0}")]
    Forbidden(&'static str),
    /// 404: no such thing (or no longer).
    #[error("not found")]
    NotFound,
    /// 404: no account of that name is served (`/wechat_event/{account}`, `?account=`).
    #[error("no such account")]
    UnknownAccount,
    /// 410: a single-use value that is unknown, used or past its life; the message says which
    /// value.
    #[error("{0}")]
    Gone(&'static str),
    /// 413: the body is larger than allowed.
    #[error("the body is larger than 64 KiB")]
    PayloadTooLarge,
    /// 409: the request conflicts with what happened before (a login token used twice).
    #[error("{0}")]
    Conflict(&'static str),
    /// 429 with `Retry-After`: this client opened, or holds, too many streams.
    #[error("{message}")]
    TooManyRequests {
        /// When to try again.
        retry_after: Duration,
        /// Which allowance is used up.
        message: &'static str,
    },
    /// 503 with `Retry-After`: cannot serve now; try again later.
    #[error("{message}")]
    Unavailable {
        /// When to try again (rounded up to whole seconds, at least 1).
        retry_after: Duration,
        /// What is unavailable.
        message: &'static str,
    },
}

/// The store (Redis) cannot answer now: logged here, once, with its cause; the client is told
/// only to come back shortly (WeChat retries a callback by itself).
impl From<StoreError> for HttpError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, kind = e.kind(), "the store cannot answer: 503");
        Self::Unavailable {
            retry_after: Duration::from_secs(1),
            message: "temporarily unavailable",
        }
    }
}

impl HttpError {
    fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound => "not_found",
            Self::UnknownAccount => "unknown_account",
            Self::Gone(_) => "gone",
            Self::Conflict(_) => "conflict",
            Self::PayloadTooLarge => "payload_too_large",
            Self::TooManyRequests { .. } => "too_many_requests",
            Self::Unavailable { .. } => "unavailable",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound | Self::UnknownAccount => StatusCode::NOT_FOUND,
            Self::Gone(_) => StatusCode::GONE,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let body = Json(json!({ "error": self.code(), "message": self.to_string() }));
        let mut response = (self.status(), body).into_response();
        if let Self::Unavailable { retry_after, .. } | Self::TooManyRequests { retry_after, .. } =
            self
        {
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}
