//! Page tokens: bound to their origin, under a key that cannot be computed from `API_TOKEN`,
//! shared by the instances on one Redis.

use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};
use crate::login_tokens::{claims_of, hs256_under, verify_like_a_site};

pub(crate) async fn mint(app: &TestApp, body: Value) -> reqwest::Response {
    app.client
        .post(format!("{}/tokens", app.base))
        .bearer_auth(&app.api_token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn open_as(app: &TestApp, token: &str, origin: Option<&str>) -> reqwest::StatusCode {
    let mut request = app.client.get(format!("{}/sse?token={token}", app.base));
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    request.send().await.unwrap().status()
}

async fn page_tokens_open_streams_from_their_origin_only() {
    let app = spawn_app().await;
    let r = app
        .client
        .post(format!("{}/tokens", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "minting needs API_TOKEN");

    let r = mint(&app, json!({"origin": "https://shop.example.com"})).await;
    assert_eq!(r.status(), 201);
    let minted: Value = r.json().await.unwrap();
    let token = minted["token"].as_str().unwrap();
    assert_eq!(minted["expires_in"], 300);
    assert_eq!(
        open_as(&app, token, Some("https://shop.example.com")).await,
        200
    );
    assert_eq!(
        open_as(&app, token, Some("https://evil.example")).await,
        401
    );
    assert_eq!(open_as(&app, token, None).await, 401);
    assert_eq!(open_as(&app, "forged.page.token", None).await, 401);

    // The login token of a stream opened with it is for that origin.
    let mut stream = app
        .client
        .get(format!("{}/sse?token={token}", app.base))
        .header("origin", "https://shop.example.com")
        .send()
        .await
        .unwrap()
        .bytes_stream();
    let mut text = String::new();
    while !text.contains("scene_id") {
        text.push_str(&String::from_utf8_lossy(
            &stream.next().await.unwrap().unwrap(),
        ));
    }
    let scene = text
        .split("\"scene_id\":\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    app.scan(&scene, "oShopper", false).await;
    while !text.contains("login_token") {
        text.push_str(&String::from_utf8_lossy(
            &stream.next().await.unwrap().unwrap(),
        ));
    }
    let token = text
        .split("\"login_token\":\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let claims = verify_like_a_site(&app, token).await.unwrap();
    assert_eq!(claims["aud"], "https://shop.example.com");

    let unbound: Value = mint(&app, json!({})).await.json().await.unwrap();
    assert_eq!(
        open_as(&app, unbound["token"].as_str().unwrap(), None).await,
        200
    );
    assert_eq!(
        mint(&app, json!({"origin": "https://a.example/path"}))
            .await
            .status(),
        400
    );
}

/// `GET /login/<unknown scene>/status` with `token`: 200 when the token opens the door, 401
/// when it does not, 503 while page tokens cannot be checked.
async fn probe(app: &TestApp, token: &str) -> reqwest::StatusCode {
    app.get(&format!(
        "/login/AAAAAAAAAAAAAAAAAAAAAA/status?token={token}&id=x"
    ))
    .await
    .status()
}

/// `POST /tokens` at `app` with `api_token` as the bearer.
async fn mint_with(app: &TestApp, api_token: &str) -> reqwest::Response {
    app.client
        .post(format!("{}/tokens", app.base))
        .bearer_auth(api_token)
        .send()
        .await
        .unwrap()
}

async fn page_tokens_signed_under_a_key_computed_from_api_token_alone_are_refused() {
    use sha2::Digest as _;
    let app = spawn_app().await;
    let minted: Value = mint(&app, json!({})).await.json().await.unwrap();
    let genuine = minted["token"].as_str().unwrap();
    assert_eq!(probe(&app, genuine).await, 200);
    let claims = claims_of(genuine);
    let api_token = app.api_token.as_bytes();
    let labelled = |label: &[u8]| -> Vec<u8> {
        let mut hasher = sha2::Sha256::new();
        hasher.update(label);
        hasher.update(api_token);
        hasher.finalize().to_vec()
    };
    for key in [
        labelled(b"wxlogin page token v1\0"),
        labelled(b"wxlogin page token v2\0"),
        labelled(b""),
        api_token.to_vec(),
    ] {
        let forged = hs256_under(&key, &claims);
        assert_eq!(probe(&app, &forged).await, 401);
        assert_eq!(open_as(&app, &forged, None).await, 401);
    }
}

#[tokio::test]
async fn instances_on_one_redis_accept_each_others_page_tokens_until_api_token_changes() {
    let apps = crate::helpers::spawn_instances(2, &[]).await;
    let (a, b) = (&apps[0], &apps[1]);
    let from_a: Value = mint(a, json!({})).await.json().await.unwrap();
    let from_b: Value = mint(b, json!({})).await.json().await.unwrap();
    let (from_a, from_b) = (
        from_a["token"].as_str().unwrap(),
        from_b["token"].as_str().unwrap(),
    );
    assert_eq!(probe(b, from_a).await, 200);
    assert_eq!(probe(a, from_b).await, 200);

    // The same Redis, another API_TOKEN: the earlier page tokens are refused.
    let other_api_token = "another-api-token-0123456789";
    let c = crate::helpers::spawn_instances_on(a, &[("API_TOKEN", other_api_token)]).await;
    let from_c: Value = mint_with(&c, other_api_token).await.json().await.unwrap();
    assert_eq!(probe(&c, from_c["token"].as_str().unwrap()).await, 200);
    assert_eq!(probe(&c, from_a).await, 401);
    assert_eq!(probe(&c, from_b).await, 401);
}

#[tokio::test]
async fn an_instance_started_while_redis_is_down_answers_page_tokens_503_until_it_is_back() {
    let apps = crate::helpers::spawn_instances(1, &[]).await;
    let a = &apps[0];
    let minted: Value = mint(a, json!({})).await.json().await.unwrap();
    let page_token = minted["token"].as_str().unwrap();
    let redis = a.redis.clone().unwrap();
    redis.lock().unwrap().kill();

    let late = crate::helpers::spawn_instances_on(a, &[]).await;
    let r = mint_with(&late, &late.api_token).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(probe(&late, page_token).await, 503);
    assert_eq!(open_as(&late, page_token, None).await, 503);
    // The instance that read the key before still checks page tokens.
    assert_eq!(probe(a, "forged.page.token").await, 401);

    redis.lock().unwrap().restart();
    crate::helpers::wait_until(Duration::from_secs(10), || async {
        mint_with(&late, &late.api_token).await.status() == 201
    })
    .await;
    let minted: Value = mint_with(&late, &late.api_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(probe(&late, minted["token"].as_str().unwrap()).await, 200);
}

#[tokio::test]
async fn an_expired_page_token_is_refused() {
    let app = spawn_app().await;
    let minted: Value = mint(&app, json!({"ttl_seconds": 1}))
        .await
        .json()
        .await
        .unwrap();
    let token = minted["token"].as_str().unwrap();
    assert_eq!(open_as(&app, token, None).await, 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(open_as(&app, token, None).await, 401);
}

crate::helpers::on_every_backend!(
    page_tokens_open_streams_from_their_origin_only,
    page_tokens_signed_under_a_key_computed_from_api_token_alone_are_refused,
);
