//! The example site backends (`examples/site.py`, `examples/site.mjs`) against a real
//! `wxlogin sandbox`: each mints page tokens, serves the widget, and turns a `login_token` into
//! its own session; a replayed token gets 409, a forged or foreign one 401, a request from
//! another origin 403.
//!
//! Needs Python 3 with PyJWT[crypto] (`target/py-venv`, made by `scripts/test`) and Node 18 or
//! later; a missing one fails the test with what to install, it is never skipped.

// Test code: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/mod.rs"]
mod common;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use reqwest::header::{COOKIE, ORIGIN, SET_COOKIE};
use serde_json::{Value, json};

use common::example_site::{Example, Site};
use common::sandbox::Sandbox;
use common::sse::Stream;

const EVIL: &str = "https://evil.example";

/// Opens a stream with `token` from a page of `origin`, has the phone scan its code as
/// `openid`, and returns the login token the stream delivers.
async fn scanned_login_token(
    sandbox: &Sandbox,
    token: &str,
    origin: Option<&str>,
    openid: &str,
) -> String {
    let mut request = reqwest::Client::new()
        .get(format!("{}/sse", sandbox.base))
        .query(&[("token", token)]);
    if let Some(origin) = origin {
        request = request.header(ORIGIN, origin);
    }
    let response = request.send().await.expect("GET /sse");
    assert_eq!(response.status(), 200, "the stream opens");
    let mut stream = Stream::from_response(response);
    let first = stream.next_json().await;
    let scene = first["scene_id"].as_str().expect("a scene").to_owned();
    assert_eq!(sandbox.scan(&scene, openid, false).await, 200);
    let result = stream.next_json().await;
    assert_eq!(result["userId"], openid, "{result}");
    result["login_token"]
        .as_str()
        .expect("a login token")
        .to_owned()
}

/// The same token with its `sub` claim changed and the signature kept.
fn forged(login_token: &str, sub: &str) -> String {
    let parts: Vec<&str> = login_token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).expect("JSON claims");
    claims["sub"] = sub.into();
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
    format!("{}.{payload}.{}", parts[0], parts[2])
}

async fn a_scan_logs_the_visitor_in_once(example: Example) {
    let sandbox = Sandbox::start(&[]).await;
    let site = Site::start(example, &sandbox).await;
    let origin = site.base.clone();

    // The page loads the widget from wxlogin, and its policy lets it talk to wxlogin only.
    let page = site
        .http
        .get(format!("{}/", site.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains(&format!("connect-src 'self' {}", sandbox.base)),
        "{csp}"
    );
    let html = page.text().await.unwrap();
    assert!(
        html.contains("id=\"wechat-login\"") && html.contains("/app.js"),
        "{html}"
    );
    let script = site
        .http
        .get(format!("{}/app.js", site.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        script.contains(&format!("'{}/wxlogin.js'", sandbox.base)),
        "{script}"
    );
    assert!(
        !script.contains(&sandbox.api_token),
        "API_TOKEN stays on the server"
    );

    // Page tokens only for the site's own pages.
    for other in [Some(EVIL), None] {
        let refused = site.post("/api/wxlogin-token", other, json!({})).await;
        assert_eq!(refused.status(), 403, "a page token for {other:?}");
    }
    let minted = site
        .post("/api/wxlogin-token", Some(&origin), json!({}))
        .await;
    assert_eq!(minted.status(), 200);
    let page_token = minted.text().await.unwrap();
    assert_ne!(page_token, sandbox.api_token);

    // The page token is bound to the site: another origin cannot open a stream with it.
    let elsewhere = reqwest::Client::new()
        .get(format!("{}/sse", sandbox.base))
        .query(&[("token", page_token.as_str())])
        .header(ORIGIN, EVIL)
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), 401);

    let login_token =
        scanned_login_token(&sandbox, &page_token, Some(&origin), "oExampleVisitor").await;

    // Another origin cannot hand the token in (login CSRF), and trying does not use it up.
    let cross = site
        .post(
            "/api/login",
            Some(EVIL),
            json!({ "login_token": login_token }),
        )
        .await;
    assert_eq!(cross.status(), 403);
    assert_eq!(site.me(None).await.0, 401, "nobody is logged in yet");

    // A forged token (the claims changed, the signature kept) is refused, and does not use
    // up the real one.
    let forgery = site.login(&forged(&login_token, "oSomebodyElse")).await;
    assert_eq!(forgery.status(), 401);

    let logged_in = site.login(&login_token).await;
    assert_eq!(logged_in.status(), 200);
    let set_cookie = logged_in.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    assert!(set_cookie.starts_with("site_session="), "{set_cookie}");
    assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
    assert!(set_cookie.contains("SameSite=Lax"), "{set_cookie}");
    let body: Value = logged_in.json().await.unwrap();
    assert_eq!(body["openid"], "oExampleVisitor");
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    assert_eq!(
        site.me(Some(&cookie)).await,
        (StatusCode::OK, Some("oExampleVisitor".to_owned()))
    );

    // The same token again: a replay.
    let replay = site.login(&login_token).await;
    assert_eq!(replay.status(), 409);

    // A token wxlogin issued for another audience (a stream opened with API_TOKEN, no origin)
    // is not this site's.
    let foreign = scanned_login_token(&sandbox, &sandbox.api_token, None, "oOtherSite").await;
    assert_eq!(site.login(&foreign).await.status(), 401);

    // Garbage, and a body without a token.
    assert_eq!(site.login("not.a.jwt").await.status(), 401);
    let empty = site.post("/api/login", Some(&origin), json!({})).await;
    assert_eq!(empty.status(), 400);

    // Logging out ends the session.
    let out = site
        .http
        .post(format!("{}/api/logout", site.base))
        .header(ORIGIN, &origin)
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 200);
    assert_eq!(site.me(Some(&cookie)).await.0, 401);
}

#[tokio::test]
async fn the_python_example_logs_a_visitor_in_once_and_refuses_replays_forgeries_and_other_origins()
{
    a_scan_logs_the_visitor_in_once(Example::Python).await;
}

#[tokio::test]
async fn the_node_example_logs_a_visitor_in_once_and_refuses_replays_forgeries_and_other_origins() {
    a_scan_logs_the_visitor_in_once(Example::Node).await;
}
