//! Liveness and readiness.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use serde_json::json;

use super::AppState;
use super::error::HttpError;

/// `GET /healthz`: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is alive", body = String, content_type = "text/plain")))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: 200 when the last contact with WeChat succeeded (a token was had and QR
/// codes were made) and no backoff is running; 503 otherwise, with the reason. The body also
/// reports the stock and open streams.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready: WeChat answers and QR codes can be made", body = serde_json::Value),
        (status = 503, description = "Not ready, with the reason", body = serde_json::Value)))]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let pool = state.login.pool().status();
    let status = if pool.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": pool.healthy,
        "open_streams": state.login.open_streams(),
        "live_scenes": state.login.live_scenes(),
        "pool": pool,
    });
    (status, Json(body))
}

/// `GET /metrics`: Prometheus text format; with `METRICS_TOKEN` set, only with
/// `Authorization: Bearer METRICS_TOKEN`.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition format", body = String, content_type = "text/plain"),
        (status = 401, description = "METRICS_TOKEN is set and was not given")))]
pub async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, HttpError> {
    if let Some(token) = &state.metrics_token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !token.ct_eq(given.trim()) {
            return Err(HttpError::Unauthorized(
                "Authorization: Bearer METRICS_TOKEN is required",
            ));
        }
    }
    let m = &state.metrics;
    let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    m.open_streams.set(gauge(state.login.open_streams()));
    m.live_scenes.set(gauge(state.login.live_scenes()));
    m.qr_stock.set(gauge(state.login.pool().status().stock));
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.render(),
    ))
}
