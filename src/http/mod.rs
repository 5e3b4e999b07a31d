//! The axum adapter: routes, and nothing else of the product's logic.
//!
//! - [`sse`]: `GET /sse`, the stream a page waits on (and resumes).
//! - [`wechat_event`]: `GET`/`POST /wechat_event` (and `/wechat_event/{account}`), WeChat's
//!   URL check and callbacks.
//! - [`login`]: polling status, `POST /login/verify`, `POST /tokens`, the JWKS.
//! - [`oauth`]: login inside WeChat's browser (`/oauth/authorize`, `/oauth/callback`,
//!   `/oauth/result`).
//! - [`broker`]: the account's access token for the company's other services.
//! - [`access`]: who may call what (`API_TOKEN`, page tokens and their key).
//! - [`qrcode`]: `GET /qrcode/{scene}.svg`, the QR image rendered here.
//! - [`health`]: `GET /healthz`, `GET /readyz`, `GET /metrics`.
//! - [`limits`]: streams per client IP, the cap on open streams, the client IP itself.
//! - [`forward`]: passing other callbacks on to `FORWARD_URL`.
//! - [`docs`]: `GET /openapi.json` and the `/docs` page.
//! - [`assets`]: `GET /wxlogin.js` (the login widget) and the demo page.
//! - [`error`]: the one error type, each variant with its status.

pub mod access;
pub mod assets;
pub mod broker;
pub mod docs;
pub mod error;
pub mod forward;
pub mod health;
pub mod limits;
pub mod login;
pub mod oauth;
pub mod qrcode;
pub mod serve;
pub mod sse;
pub mod wechat_event;

use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::StatusCode;
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;
use tower_http::cors::{Any, CorsLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use std::sync::Arc;

use self::broker::Broker;
use self::limits::Limits;
use crate::accounts::Accounts;
use crate::auth::page_key::PageKeys;
use crate::metrics::Metrics;
use crate::wechat::secret::Secret;

/// The largest callback body accepted; WeChat's are a few hundred bytes.
pub const MAX_CALLBACK_BODY: usize = 64 * 1024;

/// What the handlers share: one allocation, so the clone that axum makes for every request
/// is a reference count, not a copy of every setting.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// Shares `shared` among the handlers.
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The settings and services behind [`AppState`].
pub struct Shared {
    /// The Official Accounts served, each with its login flow, callback checker, reply text
    /// and forwarder: `state.accounts.get(name)`, `state.accounts.default_account()`.
    pub accounts: Arc<Accounts>,
    /// `API_TOKEN`, compared in constant time.
    pub api_token: Secret,
    /// Page tokens, once their key is read from the store.
    pub page_keys: Arc<PageKeys>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// `METRICS_TOKEN`, when `/metrics` is protected.
    pub metrics_token: Option<Secret>,
    /// Per-IP and global stream limits.
    pub limits: Arc<Limits>,
    /// Interval of keep-alive comments.
    pub sse_keepalive: Duration,
    /// The token broker, with `TOKEN_BROKER_KEY`.
    pub broker: Option<Broker>,
    /// Cancelled at shutdown: open streams end so the server can stop.
    pub shutdown: CancellationToken,
}

/// Every request but a stream must be answered within this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The service's routes. Every route but the stream itself has a timeout.
pub fn router(state: AppState) -> Router {
    let bounded = Router::new()
        .route(
            "/wechat_event",
            // The POST handler reads its body itself, at most MAX_CALLBACK_BODY.
            get(wechat_event::verify).post(wechat_event::receive),
        )
        .route(
            "/wechat_event/{account}",
            get(wechat_event::verify_account).post(wechat_event::receive_account),
        )
        .route("/qrcode/{file}", get(qrcode::svg))
        .route("/login/{scene}/status", get(login::status))
        .route("/login/verify", post(login::verify))
        .route("/tokens", post(login::mint))
        .route("/oauth/authorize", get(oauth::authorize))
        .route("/oauth/callback", get(oauth::callback))
        .route("/oauth/result", post(oauth::result))
        .route("/.well-known/jwks.json", get(login::jwks))
        .route("/wechat/{account}/access_token", get(broker::access_token))
        .route(
            "/wechat/{account}/access_token/refresh",
            post(broker::refresh),
        )
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(docs::openapi_json))
        .route("/docs", get(docs::page))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ));
    Router::new()
        .route("/sse", get(sse::sse))
        .merge(bounded)
        .with_state(state)
        .merge(assets::routes())
}

/// Layers that apply to every route, the sandbox's included: CORS open to any origin (as the
/// FastAPI service had) and a trace span per request that names the route, never the URI
/// (which carries `?token=`).
pub fn common_layers(router: Router) -> Router {
    router
        .layer(
            CorsLayer::new()
                .allow_origin(Any)
                .allow_methods(Any)
                .allow_headers(Any)
                // The widget reads it to wait before retrying a 503 or 429.
                .expose_headers([axum::http::header::RETRY_AFTER]),
        )
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let route = req
                .extensions()
                .get::<MatchedPath>()
                .map_or("(unmatched)", MatchedPath::as_str);
            tracing::debug_span!("request", method = %req.method(), route)
        }))
}
