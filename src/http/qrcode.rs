//! `GET /qrcode/{scene}.svg`: the QR code of a waiting stream, rendered here from the ticket's
//! content, so pages need not hotlink mp.weixin.qq.com (which strict referrer or CSP settings
//! break). Only scenes with a stream waiting are served; the scene is a 128-bit secret.

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::IntoResponse;

use super::AppState;
use super::error::HttpError;
use crate::wechat::ids::Scene;

/// Renders `content` as an SVG QR code.
pub fn render_svg(content: &str) -> Option<String> {
    let code = ::qrcode::QrCode::with_error_correction_level(content, ::qrcode::EcLevel::M).ok()?;
    Some(
        code.render::<::qrcode::render::svg::Color<'_>>()
            .min_dimensions(240, 240)
            .quiet_zone(true)
            .build(),
    )
}

/// The query of the QR image.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SvgQuery {
    /// The stream's account (`default` when absent), as its first event's `qrcode_svg` says.
    account: Option<String>,
}

/// The handler.
#[utoipa::path(get, path = "/qrcode/{file}", tag = "login",
    params(("file" = String, Path, description = "`<scene_id>.svg`"), SvgQuery),
    responses(
        (status = 200, description = "The QR code", body = String, content_type = "image/svg+xml"),
        (status = 404, description = "No session waits on that scene", body = serde_json::Value)))]
pub async fn svg(
    State(state): State<AppState>,
    Path(file): Path<String>,
    Query(q): Query<SvgQuery>,
) -> Result<impl IntoResponse, HttpError> {
    let account = match q.account.as_deref() {
        None | Some("") => state.accounts.default_account(),
        Some(name) => state.accounts.get(name).ok_or(HttpError::NotFound)?,
    };
    let scene = file
        .strip_suffix(".svg")
        .and_then(|s| Scene::parse(s).ok())
        .ok_or(HttpError::NotFound)?;
    let content = account
        .login
        .qr_content(&scene)
        .await?
        .ok_or(HttpError::NotFound)?;
    let svg = render_svg(&content).ok_or(HttpError::NotFound)?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "private, max-age=300"),
        ],
        svg,
    ))
}
