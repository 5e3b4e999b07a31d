//! The axum adapter: routes, and nothing else of the product's logic.
//!
//! - [`sse`]: `GET /sse`, the stream a page waits on (and resumes).
//! - [`wechat_event`]: `GET`/`POST /wechat_event`, WeChat's URL check and callbacks.
//! - [`login`]: polling status, `POST /login/verify`, `POST /tokens`, the JWKS.
//! - [`access`]: who may call what (`API_TOKEN`, page tokens).
//! - [`qrcode`]: `GET /qrcode/{scene}.svg`, the QR image rendered here.
//! - [`health`]: `GET /healthz`, `GET /readyz`.
//! - [`error`]: the one error type, each variant with its status.

pub mod access;
pub mod error;
pub mod health;
pub mod login;
pub mod qrcode;
pub mod sse;
pub mod wechat_event;

use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;
use tower_http::cors::{Any, CorsLayer};
use tower_http::trace::TraceLayer;

use std::sync::Arc;

use crate::auth::page_token::PageTokens;
use crate::login::LoginService;
use crate::wechat::crypto::KeyRing;
use crate::wechat::secret::Secret;

/// The largest callback body accepted; WeChat's are a few hundred bytes.
pub const MAX_CALLBACK_BODY: usize = 64 * 1024;

/// What the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The login flow.
    pub login: LoginService,
    /// `API_TOKEN`, compared in constant time.
    pub api_token: Secret,
    /// `MP_TOKEN`, for callback signatures.
    pub mp_token: Secret,
    /// The account's appid (safe mode checks messages are for it).
    pub appid: String,
    /// Safe mode keys, when configured.
    pub aes_keys: Option<KeyRing>,
    /// `REPLY_TEXT`, the reply to a login scan.
    pub reply_text: Option<String>,
    /// Page tokens.
    pub page_tokens: Arc<PageTokens>,
    /// Interval of keep-alive comments.
    pub sse_keepalive: Duration,
    /// Cancelled at shutdown: open streams end so the server can stop.
    pub shutdown: CancellationToken,
}

/// The service's routes, with CORS open to any origin (as the FastAPI service had) and a
/// trace span per request that names the route, never the URI (which carries `?token=`).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/sse", get(sse::sse))
        .route(
            "/wechat_event",
            get(wechat_event::verify)
                .post(wechat_event::receive)
                .layer(DefaultBodyLimit::max(MAX_CALLBACK_BODY)),
        )
        .route("/qrcode/{file}", get(qrcode::svg))
        .route("/login/{scene}/status", get(login::status))
        .route("/login/verify", post(login::verify))
        .route("/tokens", post(login::mint))
        .route("/.well-known/jwks.json", get(login::jwks))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .with_state(state)
}

/// Layers that apply to every route, the sandbox's included.
pub fn common_layers(router: Router) -> Router {
    router
        .layer(
            CorsLayer::new()
                .allow_origin(Any)
                .allow_methods(Any)
                .allow_headers(Any),
        )
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let route = req
                .extensions()
                .get::<MatchedPath>()
                .map_or("(unmatched)", MatchedPath::as_str);
            tracing::debug_span!("request", method = %req.method(), route)
        }))
}
