//! Liveness and readiness.

use std::time::Duration;

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

/// How long readiness waits for the store to answer.
const STORE_PING_TIMEOUT: Duration = Duration::from_secs(1);

/// `GET /readyz`: 200 when the store answers (Redis, with this instance subscribed to its
/// deliveries) and the last contact with WeChat succeeded (a token was had and QR codes were
/// made) with no backoff running; 503 otherwise, with the reason. The body also reports the
/// stock and open streams.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let store = match tokio::time::timeout(STORE_PING_TIMEOUT, state.login.store().ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the store does not answer".to_owned()),
    };
    let pool = state.login.pool().status().await;
    let ready = pool.healthy && store.is_ok();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": ready,
        "open_streams": state.login.open_streams(),
        "live_scenes": state.login.live_scenes(),
        "store": match &store {
            Ok(()) => json!({"ok": true}),
            Err(e) => json!({"ok": false, "error": e}),
        },
        "pool": pool,
    });
    (status, Json(body))
}
