//! The token broker: other services read the account's access token with `TOKEN_BROKER_KEY`,
//! and a crowd of them that found it rejected causes one refresh, on one instance or two.

use serde_json::{Value, json};

use crate::helpers::{TestApp, count, on_every_backend, spawn_app_with, spawn_instances};

const KEY: &str = "broker-key-0123456789abcdef";
const TOKEN_PATH: &str = "/wechat/default/access_token";
const REFRESH_PATH: &str = "/wechat/default/access_token/refresh";

/// `GET path` with `Authorization: Bearer key` (no header without a key).
async fn read(app: &TestApp, path: &str, key: Option<&str>) -> reqwest::Response {
    let mut request = app.client.get(format!("{}{path}", app.base));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.expect("request sent")
}

/// `POST path` with the broker key and `body`.
async fn post(app: &TestApp, path: &str, body: &str) -> reqwest::Response {
    app.client
        .post(format!("{}{path}", app.base))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("request sent")
}

/// A refresh naming `token` as the one WeChat rejected: the status and the JSON answer.
async fn refresh(app: &TestApp, token: &str) -> (u16, Value) {
    let response = post(
        app,
        REFRESH_PATH,
        &json!({ "access_token": token }).to_string(),
    )
    .await;
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON answer"))
}

/// Whether the fake WeChat takes `token` as the current one (through `user/info`).
async fn fake_accepts(app: &TestApp, token: &str) -> bool {
    let reply: Value = app
        .client
        .get(format!("{}/cgi-bin/user/info", app.fake_base))
        .query(&[("access_token", token), ("openid", "oBroker")])
        .send()
        .await
        .expect("request sent")
        .json()
        .await
        .expect("JSON");
    reply.get("errcode").is_none()
}

/// The app with the broker on, its QR stock made (so its token is cached).
async fn broker_app() -> TestApp {
    let app = spawn_app_with(&[("TOKEN_BROKER_KEY", KEY)]).await;
    app.wait_ready().await;
    app
}

async fn the_broker_key_reads_the_cached_token_without_a_token_call() {
    let app = broker_app().await;
    let fetched = count(&app.fake.counters().token_requests);
    assert_eq!(fetched, 1);

    for _ in 0..3 {
        let response = read(&app, TOKEN_PATH, Some(KEY)).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        let token = body["access_token"].as_str().expect("access_token");
        assert!(fake_accepts(&app, token).await, "the token works at WeChat");
        let expires_in = body["expires_in"].as_u64().expect("expires_in");
        // WeChat's 7200 s less the five minutes before expiry that wxlogin stops using it.
        assert!((6800..=6900).contains(&expires_in), "{expires_in}");
    }
    assert_eq!(
        count(&app.fake.counters().token_requests),
        fetched,
        "no token call for a read"
    );
    assert!(
        app.metric("wxlogin_token_broker_requests_total{outcome=\"read\"}")
            .await
            >= 3
    );
}

async fn a_missing_or_wrong_key_is_refused_and_the_api_token_is_not_a_key() {
    let app = broker_app().await;
    let api_token = app.api_token.clone();
    for key in [
        None,
        Some("wrong-key-0123456789abcdef"),
        Some(api_token.as_str()),
    ] {
        let response = read(&app, TOKEN_PATH, key).await;
        assert_eq!(response.status(), 401, "{key:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "unauthorized");
        assert!(!body.to_string().contains("access_token\":"), "{body}");
    }
    // Without the key an unknown account is not told apart from a known one.
    assert_eq!(
        read(&app, "/wechat/other/access_token", None)
            .await
            .status(),
        401
    );
    let refused = app
        .client
        .post(format!("{}{REFRESH_PATH}", app.base))
        .bearer_auth("wrong-key-0123456789abcdef")
        .json(&json!({"access_token": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert!(
        app.metric("wxlogin_token_broker_requests_total{outcome=\"unauthorized\"}")
            .await
            >= 4
    );
}

async fn an_unknown_account_is_not_found() {
    let app = broker_app().await;
    for path in [
        "/wechat/other/access_token",
        "/wechat/Default/access_token",
        "/wechat/%00/access_token",
    ] {
        let response = read(&app, path, Some(KEY)).await;
        assert_eq!(response.status(), 404, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "not_found");
    }
    let (status, _) = {
        let response = post(
            &app,
            "/wechat/other/access_token/refresh",
            r#"{"access_token":"x"}"#,
        )
        .await;
        (response.status().as_u16(), ())
    };
    assert_eq!(status, 404);
}

async fn the_broker_is_off_without_its_key() {
    let app = spawn_app_with(&[]).await;
    for key in [Some(KEY), Some(app.api_token.as_str()), None] {
        assert_eq!(read(&app, TOKEN_PATH, key).await.status(), 404);
    }
    assert_eq!(
        post(&app, REFRESH_PATH, r#"{"access_token":"x"}"#)
            .await
            .status(),
        404
    );
}

async fn fifty_concurrent_refreshes_of_a_stale_token_cause_one_refresh() {
    let app = broker_app().await;
    let body: Value = read(&app, TOKEN_PATH, Some(KEY))
        .await
        .json()
        .await
        .unwrap();
    let stale = body["access_token"].as_str().unwrap().to_owned();
    // Another program takes a token with /cgi-bin/token: the one every service holds is dead.
    app.fake.revoke_token();
    assert!(!fake_accepts(&app, &stale).await);
    let before = count(&app.fake.counters().token_requests);

    let answers = futures_util::future::join_all((0..50).map(|_| refresh(&app, &stale))).await;

    assert_eq!(
        count(&app.fake.counters().token_requests),
        before + 1,
        "exactly one more token call"
    );
    let fresh = answers[0].1["access_token"].as_str().unwrap().to_owned();
    assert_ne!(fresh, stale);
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(
            body["access_token"],
            fresh.as_str(),
            "every caller gets the new one"
        );
        assert!(body["expires_in"].as_u64().unwrap() > 6000);
    }
    assert!(fake_accepts(&app, &fresh).await);
    assert_eq!(
        app.metric("wxlogin_token_broker_requests_total{outcome=\"refreshed\"}")
            .await,
        1
    );
    // A caller late with the stale token, or with one never issued, gets the current one.
    for old in [stale.as_str(), "never-issued"] {
        let (status, body) = refresh(&app, old).await;
        assert_eq!(
            (status, body["access_token"].as_str()),
            (200, Some(fresh.as_str()))
        );
    }
    assert_eq!(count(&app.fake.counters().token_requests), before + 1);
}

async fn a_malformed_refresh_request_gets_400() {
    let app = broker_app().await;
    let long = json!({ "access_token": "x".repeat(5000) }).to_string();
    for body in [
        "",
        "{}",
        "not json",
        r#"{"access_token":""}"#,
        r#"{"access_token":7}"#,
        &long,
    ] {
        let response = post(&app, REFRESH_PATH, body).await;
        assert_eq!(response.status(), 400, "{body:?}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"], "bad_request");
    }
    assert_eq!(count(&app.fake.counters().token_requests), 1);
}

on_every_backend!(
    the_broker_key_reads_the_cached_token_without_a_token_call,
    a_missing_or_wrong_key_is_refused_and_the_api_token_is_not_a_key,
    an_unknown_account_is_not_found,
    the_broker_is_off_without_its_key,
    fifty_concurrent_refreshes_of_a_stale_token_cause_one_refresh,
    a_malformed_refresh_request_gets_400,
);

#[tokio::test]
async fn refresh_requests_past_the_burst_get_429() {
    let app = broker_app().await;
    let answers =
        futures_util::future::join_all((0..130).map(|_| refresh(&app, "never-issued"))).await;
    let limited = answers.iter().filter(|(status, _)| *status == 429).count();
    assert!(limited > 0, "some were limited");
    assert!(answers.iter().all(|(s, _)| *s == 200 || *s == 429));
    assert_eq!(
        app.metric("wxlogin_token_broker_requests_total{outcome=\"limited\"}")
            .await,
        limited as u64
    );
}

#[tokio::test]
async fn fifty_refreshes_over_two_instances_on_redis_cause_one_refresh() {
    let apps = spawn_instances(2, &[("TOKEN_BROKER_KEY", KEY)]).await;
    for app in &apps {
        app.wait_ready().await;
    }
    let fake = &apps[0].fake;
    // Both instances hold the one shared token.
    let mut held = Vec::new();
    for app in &apps {
        let body: Value = read(app, TOKEN_PATH, Some(KEY)).await.json().await.unwrap();
        held.push(body["access_token"].as_str().unwrap().to_owned());
    }
    assert_eq!(held[0], held[1]);
    let stale = held.remove(0);
    assert_eq!(count(&fake.counters().token_requests), 1);
    fake.revoke_token();

    let answers =
        futures_util::future::join_all((0..50).map(|i| refresh(&apps[i % 2], &stale))).await;

    assert_eq!(
        count(&fake.counters().token_requests),
        2,
        "exactly one more token call for both instances"
    );
    let fresh = answers[0].1["access_token"].as_str().unwrap().to_owned();
    assert_ne!(fresh, stale);
    assert!(
        answers
            .iter()
            .all(|(status, body)| *status == 200 && body["access_token"] == fresh.as_str()),
        "every caller on either instance gets the new token"
    );
    // Either instance now reads the new token.
    for app in &apps {
        let body: Value = read(app, TOKEN_PATH, Some(KEY)).await.json().await.unwrap();
        assert_eq!(body["access_token"], fresh.as_str());
    }
    assert_eq!(count(&fake.counters().token_requests), 2);
}

#[tokio::test]
async fn the_broker_key_and_the_tokens_never_reach_the_logs() {
    let fake =
        wxlogin::sandbox::fake::FakeWechat::new(wxlogin::sandbox::fake::FakeAccount::random());
    let cancel = tokio_util::sync::CancellationToken::new();
    let fake_addr = wxlogin::sandbox::spawn_fake(&fake, cancel.clone())
        .await
        .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bind = format!("127.0.0.1:{port}");
    let account = fake.account();
    let wrong_key = "wrong-key-that-must-not-be-logged";
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_wxlogin"))
        .arg("serve")
        .current_dir(tempfile::tempdir().unwrap().path())
        .env_clear()
        .envs([
            ("API_TOKEN", "logs-api-token-0123"),
            ("APPID", account.appid.as_str()),
            ("SECRET_KEY", account.secret.expose()),
            ("MP_TOKEN", account.mp_token.expose()),
            ("WECHAT_API_BASE", &format!("http://{fake_addr}")),
            ("TOKEN_BROKER_KEY", KEY),
            ("RUST_LOG", "debug"),
            ("BIND", bind.as_str()),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let url = format!("http://{bind}{TOKEN_PATH}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let first: Value = loop {
        if let Ok(r) = client.get(&url).bearer_auth(KEY).send().await {
            assert_eq!(r.status(), 200);
            break r.json().await.unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "no answer");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let old = first["access_token"].as_str().unwrap().to_owned();
    fake.revoke_token();
    let renewed: Value = client
        .post(format!("{url}/refresh"))
        .bearer_auth(KEY)
        .json(&json!({ "access_token": old }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new = renewed["access_token"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    let refused = client
        .get(&url)
        .bearer_auth(wrong_key)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    cancel.cancel();
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        logs.contains("token refresh requested by another service"),
        "{logs}"
    );
    for secret in [KEY, wrong_key, old.as_str(), new.as_str()] {
        assert!(!logs.contains(secret), "{secret} in the logs:\n{logs}");
    }
}

/// A wxlogin with the broker on, serving the fake's first account (`default`) and `shop` from
/// `ACCOUNTS_FILE` (with `extra` lines in its table), its QR stock made.
pub(crate) async fn spawn_with_shop(
    extra: &str,
) -> (
    TestApp,
    wxlogin::sandbox::fake::FakeAccount,
    crate::accounts::AccountsFile,
) {
    let fake =
        wxlogin::sandbox::fake::FakeWechat::new(wxlogin::sandbox::fake::FakeAccount::random());
    let shop = wxlogin::sandbox::fake::FakeAccount::random();
    fake.add_account(shop.clone());
    let file = crate::accounts::AccountsFile::new(&format!(
        "{}{extra}",
        crate::accounts::table("shop", &shop)
    ));
    let path = file.path.to_string_lossy().into_owned();
    let app = crate::helpers::spawn_app_on(
        fake,
        &[("ACCOUNTS_FILE", path.as_str()), ("TOKEN_BROKER_KEY", KEY)],
    )
    .await;
    app.phone
        .set_callback_for(&shop.appid, format!("{}/wechat_event/shop", app.base));
    app.wait_ready().await;
    (app, shop, file)
}

/// The token the broker gives for `account`.
async fn token_of(app: &TestApp, account: &str) -> String {
    let response = read(app, &format!("/wechat/{account}/access_token"), Some(KEY)).await;
    assert_eq!(response.status(), 200, "{account}");
    let body: Value = response.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

async fn each_account_of_the_registry_has_its_own_token_and_refresh() {
    let (app, shop, _file) = spawn_with_shop("").await;
    let home = token_of(&app, "default").await;
    let shop_token = token_of(&app, "shop").await;
    assert_ne!(home, shop_token);
    assert!(fake_accepts(&app, &home).await && fake_accepts(&app, &shop_token).await);
    let before = count(&app.fake.counters().token_requests);

    // Another program of the shop's AppID takes a token: only the shop's is dead.
    app.fake.revoke_token_of(&shop.appid);
    let answers = futures_util::future::join_all((0..20).map(|_| async {
        let response = post(
            &app,
            "/wechat/shop/access_token/refresh",
            &json!({ "access_token": shop_token }).to_string(),
        )
        .await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        body["access_token"].as_str().unwrap().to_owned()
    }))
    .await;

    assert_eq!(count(&app.fake.counters().token_requests), before + 1);
    assert!(answers.iter().all(|t| *t == answers[0] && *t != shop_token));
    assert!(fake_accepts(&app, &answers[0]).await);
    assert_eq!(token_of(&app, "shop").await, answers[0]);
    assert_eq!(
        token_of(&app, "default").await,
        home,
        "the default account's is untouched"
    );
    // The default account's refresh endpoint does not take the shop's token for its own.
    let (status, body) = refresh(&app, &answers[0]).await;
    assert_eq!(
        (status, body["access_token"].as_str()),
        (200, Some(home.as_str()))
    );
    assert_eq!(count(&app.fake.counters().token_requests), before + 1);
    // Each account counts its own: the shop's crowd under the shop, the default's one refresh
    // request under the default account.
    let refreshed = "wxlogin_token_broker_requests_total{outcome=\"refreshed\"}";
    let unchanged = "wxlogin_token_broker_requests_total{outcome=\"unchanged\"}";
    assert_eq!(app.metric_of(refreshed, "shop").await, 1);
    assert_eq!(app.metric_of(unchanged, "shop").await, 19);
    assert_eq!(app.metric_of(refreshed, "default").await, 0);
    assert_eq!(app.metric_of(unchanged, "default").await, 1);
}

on_every_backend!(each_account_of_the_registry_has_its_own_token_and_refresh);

#[tokio::test]
async fn an_account_without_an_appsecret_has_no_token_to_give() {
    let app = spawn_app_with(&[
        ("TOKEN_BROKER_KEY", KEY),
        ("LOGIN_MODES", "code"),
        ("SECRET_KEY", ""),
    ])
    .await;
    let response = read(&app, TOKEN_PATH, Some(KEY)).await;
    assert_eq!(response.status(), 409);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("SECRET_KEY"),
        "{body}"
    );
    assert_eq!(
        post(&app, REFRESH_PATH, r#"{"access_token":"x"}"#)
            .await
            .status(),
        409
    );
    assert_eq!(
        count(&app.fake.counters().token_requests),
        0,
        "WeChat is not asked"
    );
}
