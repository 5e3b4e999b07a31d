//! The browser side, embedded in the binary: `GET /wxlogin.js` (the login widget) and the
//! demo page (`GET /`, in the sandbox and in serve mode with `DEMO_PAGE=true`).
//!
//! The widget's URL is not versioned, so it is cached for a day (then revalidated with its
//! `ETag`, a cheap `304`), not forever: an upgraded wxlogin reaches browsers within a day. Its
//! Subresource Integrity hash is computed from the very bytes served, so the
//! `integrity="sha384-…"` that README tells sites to pin always matches this build (and changes
//! with it: a site that pins it updates it when it upgrades wxlogin).

use std::sync::LazyLock;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::Rng as _;
use sha2::{Digest as _, Sha384};

use crate::wechat::secret::Secret;

/// The widget, as served.
pub const WXLOGIN_JS: &str = include_str!("../../assets/wxlogin.js");

/// The demo page, with `__API_TOKEN__`, `__SANDBOX__`, `__WXLOGIN_SRI__` and `__NONCE__` to
/// fill in.
const DEMO_PAGE: &str = include_str!("../../assets/sandbox.html");

/// How long browsers and CDNs keep the widget before revalidating it (see the module doc).
const WXLOGIN_JS_CACHE: &str = "public, max-age=86400, stale-while-revalidate=604800";

/// What the widget's bytes hash to, computed once.
struct Fingerprint {
    /// `sha384-<base64>`, the value of an `integrity` attribute.
    integrity: String,
    /// A strong `ETag`: the first 128 bits of the same digest, quoted.
    etag: HeaderValue,
}

static FINGERPRINT: LazyLock<Fingerprint> = LazyLock::new(|| {
    let digest = Sha384::digest(WXLOGIN_JS.as_bytes());
    let etag = format!("\"{}\"", hex::encode(&digest[..16]));
    Fingerprint {
        integrity: format!("sha384-{}", STANDARD.encode(digest)),
        // Hex digits in quotes are always a valid header value.
        etag: HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"wxlogin\"")),
    }
});

/// The Subresource Integrity hash of `/wxlogin.js`: `sha384-<base64>`. The same value comes
/// from `openssl dgst -sha384 -binary assets/wxlogin.js | openssl base64 -A`.
pub fn wxlogin_js_integrity() -> &'static str {
    &FINGERPRINT.integrity
}

/// `GET /wxlogin.js`. Merge into the app's router (before the common layers, so CORS applies:
/// module scripts loaded from another origin are fetched in CORS mode).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/wxlogin.js", get(wxlogin_js))
}

/// The widget, or `304 Not Modified` when the browser's copy is current.
#[utoipa::path(get, path = "/wxlogin.js", tag = "login",
    params(("If-None-Match" = Option<String>, Header, description = "The ETag of a cached copy")),
    responses(
        (status = 200, description = "The login widget: one ES module (`mount(element, options)`), with ETag and a one-day cache life", body = String, content_type = "text/javascript"),
        (status = 304, description = "The cached copy is current")))]
pub async fn wxlogin_js(headers: HeaderMap) -> Response {
    let etag = &FINGERPRINT.etag;
    let current = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == "*" || tag.as_bytes() == etag.as_bytes());
    let cache = [
        (header::ETAG, etag.clone()),
        (
            header::CACHE_CONTROL,
            HeaderValue::from_static(WXLOGIN_JS_CACHE),
        ),
    ];
    if current {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (
        cache,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/javascript; charset=utf-8"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            // Pages that isolate themselves (COEP) may still load it from wxlogin's origin.
            (
                header::HeaderName::from_static("cross-origin-resource-policy"),
                HeaderValue::from_static("cross-origin"),
            ),
        ],
        WXLOGIN_JS,
    )
        .into_response()
}

/// `GET /`: the demo page. `sandbox` shows the fake phone's "scan" buttons (only `wxlogin
/// sandbox` has `/sandbox/scan`).
///
/// The page carries `api_token`, as the FastAPI service's demo did: fine for the sandbox's
/// made-up token; in serve mode `DEMO_PAGE=true` publishes the real one to anyone who can load
/// `/`.
pub fn demo_routes<S: Clone + Send + Sync + 'static>(
    api_token: Secret,
    sandbox: bool,
) -> Router<S> {
    Router::new().route(
        "/",
        get(move || {
            let page = demo_page(api_token.expose(), sandbox);
            async move { page }
        }),
    )
}

/// The demo page with its placeholders filled, under a strict Content Security Policy (same
/// origin only, inline code only with this response's nonce): the widget has to work on such
/// pages, and the demo proves it does.
pub fn demo_page(api_token: &str, sandbox: bool) -> Response {
    let nonce = {
        let mut bytes = [0u8; 16];
        rand::rng().fill(&mut bytes);
        STANDARD.encode(bytes)
    };
    // The token sits inside a JSON string inside a <script> element.
    let token = serde_json::to_string(api_token).unwrap_or_default();
    let token = token
        .trim_matches('"')
        .replace('<', "\\u003c")
        .replace('>', "\\u003e");
    let html = DEMO_PAGE
        .replace("__SANDBOX__", if sandbox { "true" } else { "false" })
        .replace("__WXLOGIN_SRI__", wxlogin_js_integrity())
        .replace("__NONCE__", &nonce)
        .replace("__API_TOKEN__", &token);
    let csp = format!(
        "default-src 'none'; script-src 'self' 'nonce-{nonce}'; style-src 'self' 'nonce-{nonce}'; \
         img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    );
    let csp = HeaderValue::from_str(&csp)
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'self'"));
    (
        [
            (header::CONTENT_SECURITY_POLICY, csp),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        Html(html),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use axum::body::{Body, to_bytes};
    use axum::http::Request;
    use tower::ServiceExt as _;

    use super::*;

    async fn get_js(if_none_match: Option<&str>) -> Response {
        let mut request = Request::get("/wxlogin.js");
        if let Some(tag) = if_none_match {
            request = request.header(header::IF_NONE_MATCH, tag);
        }
        routes::<()>()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    async fn text(response: Response) -> String {
        let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn the_integrity_hash_is_sha384_of_the_served_bytes() {
        let value = wxlogin_js_integrity();
        let b64 = value.strip_prefix("sha384-").unwrap();
        let digest = STANDARD.decode(b64).unwrap();
        assert_eq!(digest.len(), 48);
        assert_eq!(
            digest.as_slice(),
            Sha384::digest(WXLOGIN_JS.as_bytes()).as_slice()
        );
    }

    #[tokio::test]
    async fn the_widget_is_served_as_javascript_with_cache_headers() {
        let response = get_js(None).await;
        assert_eq!(response.status(), StatusCode::OK);
        let h = response.headers();
        assert_eq!(h[header::CONTENT_TYPE], "text/javascript; charset=utf-8");
        assert!(
            h[header::CACHE_CONTROL]
                .to_str()
                .unwrap()
                .contains("max-age=86400")
        );
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        let etag = h[header::ETAG].to_str().unwrap().to_owned();
        assert!(etag.starts_with('"') && etag.len() == 34, "{etag}");
        let body = text(response).await;
        assert_eq!(body, WXLOGIN_JS);
        assert!(body.contains("export function mount("));
    }

    #[tokio::test]
    async fn a_current_etag_gets_304_and_a_stale_one_the_script() {
        let etag = FINGERPRINT.etag.to_str().unwrap().to_owned();
        let fresh = get_js(Some(&format!("\"old\", W/{etag}"))).await;
        assert_eq!(fresh.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(fresh.headers()[header::ETAG], etag.as_str());
        assert!(text(fresh).await.is_empty());
        let stale = get_js(Some("\"0123\"")).await;
        assert_eq!(stale.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn the_demo_page_fills_every_placeholder_and_escapes_the_token() {
        let response = demo_page("t\"</script>", false);
        let csp = response.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .to_owned();
        let html = text(response).await;
        for placeholder in [
            "__API_TOKEN__",
            "__SANDBOX__",
            "__WXLOGIN_SRI__",
            "__NONCE__",
        ] {
            assert!(
                !html.contains(placeholder),
                "{placeholder} left in the page"
            );
        }
        assert!(html.contains(r#""token":"t\"\u003c/script\u003e""#));
        assert!(html.contains(r#""sandbox":false"#));
        assert!(html.contains(wxlogin_js_integrity()));
        let nonce = csp
            .split("'nonce-")
            .nth(1)
            .and_then(|s| s.split('\'').next())
            .unwrap();
        assert!(html.contains(&format!("nonce=\"{nonce}\"")));
        assert!(csp.contains("default-src 'none'"));
    }

    #[tokio::test]
    async fn the_sandbox_page_has_its_buttons_on() {
        let page = demo_routes::<()>(Secret::new("sandbox-token"), true)
            .oneshot(Request::get("/").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        let html = text(page).await;
        assert!(html.contains(r#""token":"sandbox-token","sandbox":true"#));
    }
}
