//! The login's other doors: polling for clients that cannot hold a stream, the site
//! backend's verification of a login token, page tokens, and the public key set.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::access::{page_access, page_account, page_keys_unavailable, require_api_token};
use super::error::HttpError;
use super::sse::named_event;
use crate::auth::login_token::LoginTokenError;
use crate::auth::page_token::{normalize_origin, origin_of_url};
use crate::auth::unix_now;
use crate::login::event::LoginEvent;
use crate::login::scenes::Status;

/// The query of the status endpoint.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatusQuery {
    /// `API_TOKEN` or a page token.
    token: Option<String>,
    /// The stream's event id (`<scene>.<key>.<n>`, as the first event's `id:`), when the
    /// client cannot send it as `Last-Event-ID`.
    id: Option<String>,
    /// The stream's account, as given to `/sse` (`default` when absent).
    account: Option<String>,
}

fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, HttpError> {
    body.map(|Json(t)| t)
        .map_err(|e| HttpError::BadRequest(e.body_text()))
}

/// `GET /login/{scene}/status?token=…&id=…`: `pending`, `done` with the result, or
/// `expired`. The stream's event id (header `Last-Event-ID`, else `?id=`) proves the client
/// is the stream's: without the right one a scene reads as expired, whatever its state.
#[utoipa::path(get, path = "/login/{scene}/status", tag = "login",
    params(("scene" = String, Path, description = "The scene_id of the first event"), StatusQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "The stream's event id (preferred to `?id=`: it stays out of access logs)")),
    responses(
        (status = 200, description = "`{status: pending, scene_id, expire_seconds}`, `{status: done, userId, event, login_token}` or `{status: expired}` (also for an id that is not the scene's)", body = serde_json::Value),
        (status = 400, description = "No event id given", body = serde_json::Value),
        (status = 401, description = "Wrong token", body = serde_json::Value),
        (status = 503, description = "The store does not answer, or page tokens cannot be checked until it does (see Retry-After)", body = serde_json::Value)))]
pub async fn status(
    State(state): State<AppState>,
    Path(scene): Path<String>,
    Query(q): Query<StatusQuery>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let grant = page_access(&state, q.token.as_deref(), &headers)?;
    let account = page_account(&state, &grant, q.account.as_deref())?;
    let has_id = headers.contains_key("last-event-id") || q.id.is_some();
    if !has_id {
        return Err(HttpError::BadRequest(
            "the stream's event id is required (Last-Event-ID, or ?id=)".into(),
        ));
    }
    let named = named_event(&headers, q.id.as_deref()).filter(|id| id.scene.as_str() == scene);
    let body = match named {
        None => json!({"status": "expired"}),
        Some(id) => match account.login.status(&id.scene, &id.key).await? {
            Status::Pending(view) => json!({
                "status": "pending",
                "scene_id": id.scene.as_str(),
                "expire_seconds": view.deadline.saturating_duration_since(Instant::now()).as_secs(),
            }),
            Status::Done(result) => {
                let event = LoginEvent::from(&result).with_account(account.name.as_str());
                let mut body = serde_json::to_value(event).unwrap_or_else(|_| json!({}));
                body["status"] = "done".into();
                body
            }
            Status::Expired => json!({"status": "expired"}),
        },
    };
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response())
}

/// The body of `POST /login/verify`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct VerifyRequest {
    /// The token the page received.
    login_token: String,
    /// The audience the token must be for: the origin its page token was bound to; when
    /// absent, `LOGIN_TOKEN_AUDIENCE` (so a token minted for a site's origin fails).
    audience: Option<String>,
}

/// `POST /login/verify` (bearer `API_TOKEN`): valid and unused → 200 with the claims, and
/// the token is used up; used before → 409; expired, forged, not wxlogin's, for another
/// appid or audience, or (memory store) issued before this process started → 401.
#[utoipa::path(post, path = "/login/verify", tag = "site backend", operation_id = "verify_login_token",
    request_body = VerifyRequest,
    security(("api_token" = [])),
    responses(
        (status = 200, description = "The claims; the token is now used", body = serde_json::Value),
        (status = 400, description = "Malformed body", body = serde_json::Value),
        (status = 401, description = "Wrong API token, or the login token is expired, forged, not issued by wxlogin, for another appid, for another audience (without `audience`: other than `LOGIN_TOKEN_AUDIENCE`), or issued before this process started (memory store: its use cannot be known)", body = serde_json::Value),
        (status = 409, description = "The login token was used before", body = serde_json::Value)))]
pub async fn verify(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<VerifyRequest>, JsonRejection>,
) -> Result<Response, HttpError> {
    require_api_token(&state, &headers)?;
    let req = json_body(body)?;
    // Every account signs with the one key; the token's appid names its account.
    let claims = state
        .accounts
        .default_account()
        .login
        .tokens()
        .verify_any_appid(&req.login_token, req.audience.as_deref())
        .map_err(|e| match e {
            LoginTokenError::Expired => HttpError::Unauthorized("the login token has expired"),
            LoginTokenError::WrongAudience => {
                HttpError::Unauthorized("the login token is for another audience")
            }
            LoginTokenError::WrongIssuer => {
                HttpError::Unauthorized("the login token was not issued by wxlogin")
            }
            LoginTokenError::WrongAppid => {
                HttpError::Unauthorized("the login token is for another appid")
            }
            LoginTokenError::BeforeStart => HttpError::Unauthorized(
                "the login token was issued before this process started: its use cannot be known",
            ),
            LoginTokenError::Invalid => HttpError::Unauthorized("the login token is invalid"),
        })?;
    let account = state
        .accounts
        .by_appid(&claims.appid)
        .ok_or(HttpError::Unauthorized(
            "the login token is for another appid",
        ))?;
    // Keep the used id a little past the token's expiry, after which it is refused anyway.
    let ttl = Duration::from_secs(claims.exp.saturating_sub(unix_now()) + 60);
    let first = account
        .login
        .store()
        .claim_once(&format!("jti:{}", claims.jti), ttl)
        .await?;
    if !first {
        return Err(HttpError::Conflict("the login token has been used already"));
    }
    Ok(Json(claims).into_response())
}

/// The body of `POST /tokens` (optional).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct MintRequest {
    /// Bind the token to this origin (`https://www.example.com`).
    origin: Option<String>,
    /// Life in seconds (default `PAGE_TOKEN_TTL_SECS`, at most 3600).
    ttl_seconds: Option<u64>,
    /// Bind the token to this account (a name from `ACCOUNTS_FILE`, or `default`): it opens
    /// streams of that account only.
    account: Option<String>,
}

/// `POST /tokens` (bearer `API_TOKEN`): a page token for `/sse` and the status endpoint.
#[utoipa::path(post, path = "/tokens", tag = "site backend",
    request_body(content = Option<MintRequest>, description = "Optional: `{origin, ttl_seconds}`"),
    security(("api_token" = [])),
    responses(
        (status = 201, description = "`{token, expires_in, origin}`", body = serde_json::Value),
        (status = 400, description = "Malformed body or origin", body = serde_json::Value),
        (status = 401, description = "Wrong API token", body = serde_json::Value),
        (status = 503, description = "The store holding the page-token key does not answer (see Retry-After)", body = serde_json::Value)))]
pub async fn mint(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, HttpError> {
    require_api_token(&state, &headers)?;
    let req: MintRequest = if body.iter().all(u8::is_ascii_whitespace) {
        MintRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| HttpError::BadRequest(format!("invalid JSON body: {e}")))?
    };
    if let Some(origin) = &req.origin {
        // An origin is scheme://host[:port], nothing after it.
        let valid = origin.len() <= 255
            && (origin.starts_with("https://") || origin.starts_with("http://"))
            && origin_of_url(origin).as_deref() == Some(normalize_origin(origin).as_str());
        if !valid {
            return Err(HttpError::BadRequest(
                "origin must look like https://www.example.com".into(),
            ));
        }
    }
    if let Some(account) = &req.account
        && state.accounts.get(account).is_none()
    {
        return Err(HttpError::UnknownAccount);
    }
    let ttl = req.ttl_seconds.map(Duration::from_secs);
    let page_tokens = state.page_keys.get().await.map_err(|e| {
        tracing::error!(error = %e, "cannot read the page-token key");
        page_keys_unavailable()
    })?;
    let (token, expires_in) = page_tokens
        .mint(req.origin.as_deref(), ttl, req.account.as_deref())
        .map_err(|e| {
            tracing::error!(error = %e, "cannot sign a page token");
            HttpError::Unavailable {
                retry_after: Duration::from_secs(1),
                message: "temporarily unable to mint tokens",
            }
        })?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "token": token,
            "expires_in": expires_in,
            "origin": req.origin,
            "account": req.account,
        })),
    )
        .into_response())
}

/// `GET /.well-known/jwks.json`: the public key that signs login tokens (EdDSA).
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "site backend",
    responses((status = 200, description = "JSON Web Key Set (empty with HS256)", body = serde_json::Value)))]
pub async fn jwks(State(state): State<AppState>) -> Response {
    (
        [(header::CACHE_CONTROL, "public, max-age=300")],
        Json(state.accounts.default_account().login.tokens().jwks()),
    )
        .into_response()
}
