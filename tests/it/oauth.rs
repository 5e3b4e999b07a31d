//! Login inside WeChat's browser: `/oauth/authorize` → the fake's authorize page (its phone
//! approves or declines) → `/oauth/callback` → `return_to#wxlogin_oauth=<handle>` →
//! `POST /oauth/result`, over real HTTP, redirects followed by hand so that each hop is seen.

use std::time::Duration;

use serde_json::{Value, json};
use wxlogin::wechat::api::WechatApi;
use wxlogin::wechat::secret::Secret;

use crate::helpers::{TestApp, on_every_backend, spawn_app, spawn_app_with};

/// The site the tests return browsers to.
const SITE: &str = "https://site.example";

async fn spawn_oauth_app() -> TestApp {
    spawn_app_with(&[
        ("LOGIN_MODES", "qr,code,oauth"),
        (
            "OAUTH_RETURN_ORIGINS",
            "https://site.example, http://localhost:3000",
        ),
    ])
    .await
}

/// A client that does not follow redirects: each hop is checked.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn location(response: &reqwest::Response) -> String {
    response.headers()["location"].to_str().unwrap().to_owned()
}

/// A login that left for WeChat: the state WeChat was given and the browser's cookie.
struct Leaving {
    state: String,
    cookie: String,
    authorize_url: String,
}

async fn authorize(app: &TestApp, return_to: &str) -> reqwest::Response {
    browser()
        .get(format!("{}/oauth/authorize", app.base))
        .query(&[
            ("token", app.api_token.as_str()),
            ("account", "default"),
            ("return_to", return_to),
        ])
        .send()
        .await
        .unwrap()
}

async fn leave_for_wechat(app: &TestApp, return_to: &str) -> Leaving {
    let response = authorize(app, return_to).await;
    assert_eq!(response.status(), 302);
    let to = location(&response);
    let set_cookie = response.headers()["set-cookie"].to_str().unwrap();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Lax"));
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let url = reqwest::Url::parse(&to).unwrap();
    assert_eq!(url.fragment(), Some("wechat_redirect"));
    let query: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    assert_eq!(query["scope"], "snsapi_base");
    assert_eq!(query["appid"], app.fake.account().appid);
    assert_eq!(
        query["redirect_uri"],
        format!("{}/oauth/callback", app.base)
    );
    Leaving {
        state: query["state"].clone(),
        cookie,
        authorize_url: to,
    }
}

/// The fake phone's answer on the authorize page: where WeChat sends the browser back.
async fn phone_answers(app: &TestApp, leaving: &Leaving, allow: bool) -> String {
    let page = browser()
        .get(leaving.authorize_url.split('#').next().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains(&app.fake.oauth_user().0));
    let answer = browser()
        .get(format!("{}/connect/oauth2/approve", app.fake_base))
        .query(&[
            (
                "redirect_uri",
                format!("{}/oauth/callback", app.base).as_str(),
            ),
            ("state", leaving.state.as_str()),
            ("decision", if allow { "allow" } else { "deny" }),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 302);
    location(&answer)
}

async fn callback(url: &str, cookie: &str) -> reqwest::Response {
    browser()
        .get(url)
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
}

async fn trade(app: &TestApp, handle: &str, origin: &str) -> reqwest::Response {
    app.client
        .post(format!("{}/oauth/result", app.base))
        .header("origin", origin)
        .json(&json!({ "handle": handle }))
        .send()
        .await
        .unwrap()
}

/// The whole path: the handle from the fragment of where the browser returns.
async fn log_in(app: &TestApp, return_to: &str) -> String {
    let leaving = leave_for_wechat(app, return_to).await;
    let back = phone_answers(app, &leaving, true).await;
    let returned = callback(&back, &leaving.cookie).await;
    assert_eq!(returned.status(), 303);
    let to = location(&returned);
    let (page, handle) = to.split_once("#wxlogin_oauth=").unwrap();
    assert_eq!(page, return_to);
    handle.to_owned()
}

async fn error_of(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    (
        status,
        body["message"].as_str().unwrap_or_default().to_owned(),
    )
}

async fn a_browser_inside_wechat_logs_in_without_a_qr_code() {
    let app = spawn_oauth_app().await;
    let return_to = "https://site.example/account?next=%2Fhome";
    let handle = log_in(&app, return_to).await;
    let login: Value = trade(&app, &handle, SITE).await.json().await.unwrap();
    let openid = app.fake.oauth_user().0;
    assert_eq!(login["userId"], openid);
    assert_eq!(login["event"], "oauth");
    assert!(login.get("unionId").is_none());
    let claims = app.verified(&login).await;
    assert_eq!(
        (claims["sub"].as_str(), claims["event"].as_str()),
        (Some(openid.as_str()), Some("oauth"))
    );
    // Single use: the handle is spent.
    let (status, message) = error_of(trade(&app, &handle, SITE).await).await;
    assert_eq!(status, 410, "{message}");
}

async fn a_unionid_from_wechat_reaches_the_result_and_the_login_token() {
    let app = spawn_oauth_app().await;
    app.fake
        .set_oauth_user("oUnionUser0000000000000000000", Some("uUnion42"));
    let handle = log_in(&app, "https://site.example/").await;
    let login: Value = trade(&app, &handle, SITE).await.json().await.unwrap();
    assert_eq!(login["unionId"], "uUnion42");
    let token = login["login_token"].as_str().unwrap();
    let claims = app.login.tokens().verify(token, None).unwrap();
    assert_eq!(claims.union_id.as_deref(), Some("uUnion42"));
    assert_eq!(claims.sub, "oUnionUser0000000000000000000");
}

async fn a_replayed_state_is_refused() {
    let app = spawn_oauth_app().await;
    let leaving = leave_for_wechat(&app, "https://site.example/").await;
    let back = phone_answers(&app, &leaving, true).await;
    assert_eq!(callback(&back, &leaving.cookie).await.status(), 303);
    // The same return, and the same state with a fresh code: the state is spent.
    let (status, message) = error_of(callback(&back, &leaving.cookie).await).await;
    assert_eq!(status, 400);
    assert!(message.contains("state"), "{message}");
    let fresh = format!(
        "{}/oauth/callback?code={}&state={}",
        app.base,
        app.fake.issue_oauth_code(),
        leaving.state
    );
    assert_eq!(
        error_of(callback(&fresh, &leaving.cookie).await).await.0,
        400
    );
}

async fn a_state_is_refused_to_another_browser_and_kept_for_its_own() {
    let app = spawn_oauth_app().await;
    let leaving = leave_for_wechat(&app, "https://site.example/").await;
    let back = phone_answers(&app, &leaving, true).await;
    let (name, _) = leaving.cookie.split_once('=').unwrap();
    let (status, message) = error_of(callback(&back, &format!("{name}=someone-else")).await).await;
    assert_eq!(status, 400, "{message}");
    let (status, message) = error_of(callback(&back, "").await).await;
    assert_eq!(status, 400);
    assert!(message.contains("cookie"), "{message}");
    assert_eq!(callback(&back, &leaving.cookie).await.status(), 303);
}

async fn a_reused_code_is_refused() {
    let app = spawn_oauth_app().await;
    let first = leave_for_wechat(&app, "https://site.example/").await;
    let back = phone_answers(&app, &first, true).await;
    let code = reqwest::Url::parse(&back)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    assert_eq!(callback(&back, &first.cookie).await.status(), 303);
    // The code again, under another login's state and cookie.
    let second = leave_for_wechat(&app, "https://site.example/").await;
    let again = format!(
        "{}/oauth/callback?code={code}&state={}",
        app.base, second.state
    );
    let (status, message) = error_of(callback(&again, &second.cookie).await).await;
    assert_eq!(status, 409);
    assert!(message.contains("code has been used"), "{message}");
    // A code WeChat does not know.
    let third = leave_for_wechat(&app, "https://site.example/").await;
    let unknown = format!(
        "{}/oauth/callback?code=nosuchcode&state={}",
        app.base, third.state
    );
    let (status, message) = error_of(callback(&unknown, &third.cookie).await).await;
    assert_eq!(status, 400);
    assert!(message.contains("invalid or expired"), "{message}");
}

async fn a_return_to_on_another_origin_is_refused() {
    let app = spawn_oauth_app().await;
    for bad in [
        "https://evil.example/",
        "https://site.example.evil.example/",
        "http://site.example/",
        "https://site.example/#x",
        "https://user@site.example/",
        "//evil.example/",
        "javascript:alert(1)",
        "",
    ] {
        let response = authorize(&app, bad).await;
        assert!(response.headers().get("location").is_none(), "{bad}");
        let (status, message) = error_of(response).await;
        assert_eq!(status, 400, "{bad}: {message}");
        assert!(message.contains("return_to"), "{bad}: {message}");
    }
    // Allowed: another listed origin.
    assert_eq!(
        authorize(&app, "http://localhost:3000/x").await.status(),
        302
    );
}

async fn a_declined_authorization_returns_to_the_page_with_the_refusal() {
    let app = spawn_oauth_app().await;
    let leaving = leave_for_wechat(&app, "https://site.example/login").await;
    let back = phone_answers(&app, &leaving, false).await;
    assert!(!back.contains("code="));
    let returned = callback(&back, &leaving.cookie).await;
    assert_eq!(returned.status(), 303);
    assert_eq!(
        location(&returned),
        "https://site.example/login#wxlogin_oauth_error=declined"
    );
}

async fn a_handle_is_traded_once_and_only_by_its_origin() {
    let app = spawn_oauth_app().await;
    let handle = log_in(&app, "https://site.example/").await;
    let (status, _) = error_of(trade(&app, &handle, "https://evil.example").await).await;
    assert_eq!(status, 403);
    // Presented elsewhere, it is spent: nobody else gets to try it again.
    assert_eq!(error_of(trade(&app, &handle, SITE).await).await.0, 410);
    assert_eq!(
        error_of(trade(&app, "no-such-handle", SITE).await).await.0,
        410
    );
}

on_every_backend!(
    a_browser_inside_wechat_logs_in_without_a_qr_code,
    a_unionid_from_wechat_reaches_the_result_and_the_login_token,
    a_replayed_state_is_refused,
    a_state_is_refused_to_another_browser_and_kept_for_its_own,
    a_reused_code_is_refused,
    a_return_to_on_another_origin_is_refused,
    a_declined_authorization_returns_to_the_page_with_the_refusal,
    a_handle_is_traded_once_and_only_by_its_origin,
);

#[tokio::test]
async fn without_oauth_in_login_modes_the_authorize_step_is_forbidden() {
    let app = spawn_app().await;
    let (status, message) = error_of(authorize(&app, "https://site.example/").await).await;
    assert_eq!(status, 403);
    assert!(message.contains("LOGIN_MODES"), "{message}");
}

#[tokio::test]
async fn an_unknown_account_is_refused() {
    let app = spawn_oauth_app().await;
    let response = browser()
        .get(format!("{}/oauth/authorize", app.base))
        .query(&[
            ("token", app.api_token.as_str()),
            ("account", "other"),
            ("return_to", "https://site.example/"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(response).await.0, 400);
}

#[tokio::test]
async fn the_fake_exchanges_a_code_once_as_wechat_does() {
    let app = spawn_app().await;
    let account = app.fake.account();
    let api = WechatApi::new(
        &app.fake_base,
        account.appid.clone(),
        account.secret.clone(),
        Duration::from_secs(3),
    )
    .unwrap();
    let code = app.fake.issue_oauth_code();
    let identity = api.oauth_access_token(&code).await.unwrap();
    assert_eq!(identity.openid.as_str(), app.fake.oauth_user().0);
    let used = api.oauth_access_token(&code).await.unwrap_err();
    assert_eq!(used.errcode(), Some(40163));
    let unknown = api.oauth_access_token("nosuchcode").await.unwrap_err();
    assert_eq!(unknown.errcode(), Some(40029));
    let expired = app.fake.issue_oauth_code();
    app.fake.expire_oauth_code(&expired);
    assert_eq!(
        api.oauth_access_token(&expired)
            .await
            .unwrap_err()
            .errcode(),
        Some(40029)
    );
    let wrong = WechatApi::new(
        &app.fake_base,
        account.appid.clone(),
        Secret::new("wrong"),
        Duration::from_secs(3),
    )
    .unwrap();
    let code = app.fake.issue_oauth_code();
    assert_eq!(
        wrong.oauth_access_token(&code).await.unwrap_err().errcode(),
        Some(40125)
    );
}

#[tokio::test]
async fn the_first_event_says_whether_the_account_offers_login_inside_wechat() {
    let app = spawn_oauth_app().await;
    let (_stream, _scene, qr) = app.open_with_qr().await;
    assert_eq!(qr["oauth"], true);
    let plain = spawn_app().await;
    let (_stream, _scene, qr) = plain.open_with_qr().await;
    assert!(qr.get("oauth").is_none(), "{qr}");
}

#[tokio::test]
async fn each_step_may_be_served_by_another_instance_on_one_redis() {
    let settings = [
        ("LOGIN_MODES", "qr,code,oauth"),
        ("OAUTH_RETURN_ORIGINS", SITE),
    ];
    let apps = crate::helpers::spawn_instances(2, &settings).await;
    let (a, b) = (&apps[0], &apps[1]);
    let leaving = leave_for_wechat(a, "https://site.example/").await;
    let code = a.fake.issue_oauth_code();
    // WeChat returns the browser to another instance than the one it left from.
    let back = format!(
        "{}/oauth/callback?code={code}&state={}",
        b.base, leaving.state
    );
    let returned = callback(&back, &leaving.cookie).await;
    assert_eq!(returned.status(), 303);
    let to = location(&returned);
    let handle = to.split_once("#wxlogin_oauth=").unwrap().1;
    let login: Value = trade(a, handle, SITE).await.json().await.unwrap();
    assert_eq!(login["userId"], a.fake.oauth_user().0);
    // Spent everywhere.
    assert_eq!(error_of(trade(b, handle, SITE).await).await.0, 410);
    assert_eq!(
        error_of(callback(&back, &leaving.cookie).await).await.0,
        400
    );
}
