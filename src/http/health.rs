//! Liveness and readiness.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::json;

use super::AppState;

/// `GET /healthz`: the process answers.
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: 200 when the last contact with WeChat succeeded (a token was had and QR
/// codes were made) and no backoff is running; 503 otherwise, with the reason. The body also
/// reports the stock and open streams.
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
