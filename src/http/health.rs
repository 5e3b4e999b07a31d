//! Liveness and readiness.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use serde_json::json;

use super::AppState;
use super::error::HttpError;
use crate::accounts::Account;
use crate::metrics::render_accounts;

/// `GET /healthz`: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is alive", body = String, content_type = "text/plain")))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// How long readiness waits for the store to answer.
const STORE_PING_TIMEOUT: Duration = Duration::from_secs(1);

/// `GET /readyz`: 200 when the store answers (Redis, with this instance subscribed to its
/// deliveries) and the last contact with WeChat succeeded (a token was had and QR codes were
/// made) with no backoff running; 503 otherwise, with the reason. The body also reports the
/// stock, the codes made today against the budget (`pool.budget_exhausted`, with the reason in
/// `pool.last_error`: new streams are refused, the rest is served), and open streams; under
/// `accounts`, each account's own pool (the default account's decides readiness). Reasons are fixed sentences:
/// raw Redis errors and WeChat's errmsg (which can name the server's egress IP) go to the log
/// and to `wxlogin check`, not here.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready: the store answers, WeChat answers and QR codes can be made within today's budget", body = serde_json::Value),
        (status = 503, description = "Not ready, with the reason", body = serde_json::Value)))]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let account = state.accounts.default_account();
    let store = match tokio::time::timeout(STORE_PING_TIMEOUT, account.login.store().ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: the store fails");
            Err("cannot reach Redis, or not subscribed to its deliveries (the log says which)")
        }
        Err(_) => Err("the store does not answer"),
    };
    let pool = account.login.pool().status().await;
    // A spent budget leaves the instance ready: it still serves resumed streams and WeChat's
    // callbacks for the codes already out, and every instance refuses new streams alike, so
    // a load balancer taking them all out of rotation would only cut those off.
    let ready = (pool.healthy || !account.login.shows_qr()) && store.is_ok();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // Other accounts are reported, not counted: each instance serves them alike, so one
    // account's broken WeChat setup taken out on every instance would take the others too.
    let mut accounts = serde_json::Map::new();
    for other in state.accounts.all() {
        let pool = other.login.pool().status().await;
        let ready = pool.healthy || !other.login.shows_qr();
        accounts.insert(
            other.name.to_string(),
            json!({"ready": ready, "appid": other.settings.appid, "pool": pool}),
        );
    }
    let body = json!({
        "ready": ready,
        "accounts": accounts,
        "open_streams": account.login.open_streams(),
        "live_scenes": account.login.live_scenes(),
        "store": match &store {
            Ok(()) => json!({"ok": true}),
            Err(e) => json!({"ok": false, "error": e}),
        },
        "pool": pool,
    });
    (status, Json(body))
}

/// `GET /metrics`: Prometheus text format, every series labelled with its account
/// (`account="default"`, or a name from `ACCOUNTS_FILE`); with `METRICS_TOKEN` set, only with
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
    let accounts = state.accounts.all();
    for account in &accounts {
        set_gauges(account).await;
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        render_accounts(accounts.iter().map(|a| (a.name.as_str(), &*a.metrics))),
    ))
}

/// Sets `account`'s gauges of current state (read at scrape time).
async fn set_gauges(account: &Account) {
    let m = &account.metrics;
    let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    m.open_streams.set(gauge(account.login.open_streams()));
    // Unknown with Redis (counting would mean scanning every key): the gauge stays unset.
    if let Some(live) = account.login.live_scenes() {
        m.live_scenes.set(gauge(live));
    }
    let pool = account.login.pool().status().await;
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    m.qr_stock.set(gauge(pool.stock));
    m.qr_made_today.set(count(pool.made_today));
    m.qr_daily_budget.set(count(pool.budget));
    m.qr_budget_exhausted.set(i64::from(pool.budget_exhausted));
}
