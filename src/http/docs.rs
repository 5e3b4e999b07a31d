//! `GET /openapi.json`, generated from the handlers' annotations, and `GET /docs`, a page that
//! renders it (self-contained: nothing is fetched from elsewhere, at build time or in the
//! browser).

use axum::Json;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "wxlogin",
        description = "Log website users in by scanning a WeChat Official Account QR code. Pages wait on `/sse`; WeChat calls `/wechat_event`; site backends verify `login_token`s."
    ),
    paths(
        super::sse::sse,
        super::qrcode::svg,
        super::assets::wxlogin_js,
        super::login::status,
        super::oauth::authorize,
        super::oauth::callback,
        super::oauth::result,
        super::login::verify,
        super::login::mint,
        super::login::jwks,
        super::wechat_event::verify,
        super::wechat_event::receive,
        super::wechat_event::verify_account,
        super::wechat_event::receive_account,
        super::broker::access_token,
        super::broker::refresh,
        super::health::healthz,
        super::health::readyz,
        super::health::metrics,
        openapi_json,
        page,
    ),
    modifiers(&BearerApiToken),
    tags(
        (name = "login", description = "What a page uses"),
        (name = "site backend", description = "Server to server, with `Authorization: Bearer API_TOKEN`"),
        (name = "wechat", description = "The callback URL set in the WeChat console"),
        (name = "token broker", description = "The account's access token for the company's other services, with `Authorization: Bearer TOKEN_BROKER_KEY`"),
        (name = "operations", description = "Health, readiness, metrics, these docs"),
    )
)]
pub struct ApiDoc;

struct BearerApiToken;

impl Modify for BearerApiToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        components.add_security_scheme(
            "token_broker_key",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The OpenAPI document as JSON text (also printed by `wxlogin openapi`).
pub fn openapi_text() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_default()
}

/// `GET /openapi.json`.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "This document", body = serde_json::Value)))]
pub async fn openapi_json() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}

/// `GET /docs`: a readable page of the API.
#[utoipa::path(get, path = "/docs", tag = "operations",
    responses((status = 200, description = "The API documentation page", body = String, content_type = "text/html")))]
pub async fn page() -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "public, max-age=300")],
        Html(include_str!("../../assets/docs.html")),
    )
}
