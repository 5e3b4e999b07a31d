//! Safe mode, login tokens a site backend can trust (and only for this deployment, its
//! audience, and once), page tokens whose key cannot be guessed from one, resuming a dropped
//! stream, polling, and the passive reply.

use std::time::Duration;

use base64::Engine as _;
use futures_util::StreamExt as _;
use serde_json::{Value, json};
use wxlogin::sandbox::fake::FakeAccount;
use wxlogin::sandbox::phone::{nonce, now_secs, signed_query};
use wxlogin::wechat::crypto::{AesKey, msg_signature, verify_msg_signature};
use wxlogin::wechat::xml::push_cdata;

use crate::helpers::{
    TestApp, assert_login, count, spawn_app, spawn_app_for, spawn_app_with, spawn_safe_app,
};

const B64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

// ---------------------------------------------------------------- safe mode

fn safe_key(app: &TestApp) -> AesKey {
    let key = app.fake.account().encoding_aes_key.as_ref().unwrap();
    AesKey::from_encoding_aes_key(key.expose()).unwrap()
}

/// A safe-mode query for `encrypt` from `openid`: correct signature and msg_signature.
fn encrypted_query(app: &TestApp, openid: &str, encrypt: &str) -> String {
    let token = app.fake.account().mp_token.expose();
    let (ts, nonce) = (now_secs(), nonce());
    format!(
        "{}&encrypt_type=aes&msg_signature={}",
        signed_query(token, ts, &nonce, openid),
        msg_signature(token, &ts.to_string(), &nonce, encrypt)
    )
}

/// A safe-mode POST of `encrypt` with a correct signature and msg_signature.
async fn post_encrypted(app: &TestApp, encrypt: &str) -> reqwest::Response {
    let query = encrypted_query(app, "oX", encrypt);
    let mut body =
        String::from("<xml><ToUserName><![CDATA[gh_sandbox000001]]></ToUserName><Encrypt>");
    push_cdata(&mut body, encrypt);
    body.push_str("</Encrypt></xml>");
    app.post_callback(&query, body).await
}

async fn encrypted_scan_and_subscribe_callbacks_reach_their_streams() {
    let app = spawn_safe_app(&[]).await;
    let (mut a, scene_a, _) = app.open_with_qr().await;
    let (mut b, scene_b, _) = app.open_with_qr().await;
    let delivery = app.scan(&scene_a, "oSafeFollower", false).await;
    assert_eq!((delivery.status, delivery.body.as_str()), (200, "success"));
    app.scan(&scene_b, "oSafeNew", true).await;
    assert_login(&a.next_json().await, "oSafeFollower", "SCAN");
    assert_login(&b.next_json().await, "oSafeNew", "subscribe");
}

#[tokio::test]
async fn every_bad_crypto_case_is_rejected_and_delivers_nothing() {
    let app = spawn_safe_app(&[]).await;
    let (mut stream, scene, _) = app.open_with_qr().await;
    let key = safe_key(&app);
    let appid = app.fake.account().appid.clone();
    let xml = app.scan_xml(&scene, "oEvil", now_secs());

    let wrong_appid = key.encrypt("wxSomeoneElse", &xml).unwrap();
    assert_eq!(post_encrypted(&app, &wrong_appid).await.status(), 400);

    let good = key.encrypt(&appid, &xml).unwrap();
    let mut raw = base64::engine::general_purpose::STANDARD
        .decode(&good)
        .unwrap();
    // Flipping a bit of the next-to-last block flips the same bit of the pad byte.
    let at = raw.len() - 17;
    raw[at] ^= 0x40;
    let bad_pad = base64::engine::general_purpose::STANDARD.encode(&raw);
    assert_eq!(post_encrypted(&app, &bad_pad).await.status(), 400);

    let truncated = &good[..good.len() - 4];
    assert_eq!(post_encrypted(&app, truncated).await.status(), 400);
    assert_eq!(
        post_encrypted(&app, "not base64 at all!").await.status(),
        400
    );

    // A wrong or missing msg_signature: 401, before any decryption.
    let token = app.fake.account().mp_token.expose();
    let (ts, n) = (now_secs(), nonce());
    let signed = signed_query(token, ts, &n, "oX");
    let body = format!("<xml><Encrypt><![CDATA[{good}]]></Encrypt></xml>");
    let wrong = format!("{signed}&encrypt_type=aes&msg_signature={}", "0".repeat(40));
    assert_eq!(app.post_callback(&wrong, body.clone()).await.status(), 401);
    let missing = format!("{signed}&encrypt_type=aes");
    assert_eq!(app.post_callback(&missing, body).await.status(), 401);

    assert!(
        stream
            .next_json_within(Duration::from_millis(300))
            .await
            .is_none()
    );
    assert_eq!(app.scans("delivered").await, 0);
    // The real user still gets in.
    app.scan(&scene, "oRealUser", false).await;
    assert_login(&stream.next_json().await, "oRealUser", "SCAN");
}

#[tokio::test]
async fn compatible_mode_with_plaintext_and_encrypt_works() {
    let app = spawn_safe_app(&[]).await;
    let (mut stream, scene, _) = app.open_with_qr().await;
    let key = safe_key(&app);
    let appid = app.fake.account().appid.clone();
    let xml = app.scan_xml(&scene, "oCompat", now_secs());
    let encrypt = key.encrypt(&appid, &xml).unwrap();
    let query = encrypted_query(&app, "oCompat", &encrypt);
    // Plaintext fields and <Encrypt> together; the encrypted copy is the one believed.
    let body = xml.replace(
        "</xml>",
        &format!("<Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"),
    );
    assert_eq!(app.post_callback(&query, body).await.status(), 200);
    assert_login(&stream.next_json().await, "oCompat", "SCAN");
}

#[tokio::test]
async fn a_message_under_the_previous_key_opens_and_is_answered_under_it() {
    let account = FakeAccount::random().with_safe_mode();
    let old_key = account
        .encoding_aes_key
        .as_ref()
        .unwrap()
        .expose()
        .to_owned();
    let new_key = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
    let app = spawn_app_for(
        account,
        &[
            ("ENCODING_AES_KEY", new_key),
            ("ENCODING_AES_KEY_PREVIOUS", old_key.as_str()),
            ("REPLY_TEXT", "已在网页登录 {time}"),
        ],
    )
    .await;
    let (mut stream, scene, _) = app.open_with_qr().await;
    let delivery = app.scan(&scene, "oRotated", false).await;
    assert_eq!(delivery.status, 200);
    assert_login(&stream.next_json().await, "oRotated", "SCAN");
    // The fake phone decrypted the reply with the old key: it was sealed with it.
    let reply = delivery
        .reply
        .expect("an encrypted reply the phone can open");
    assert!(reply.contains("已在网页登录"), "{reply}");
}

// ---------------------------------------------------------------- passive reply

fn field(xml: &str, name: &str) -> String {
    let parsed = quick_xml_field(xml, name);
    parsed.unwrap_or_else(|| panic!("no <{name}> in {xml}"))
}

/// Reads a top-level field of a reply (also the envelope's MsgSignature/TimeStamp/Nonce).
fn quick_xml_field(xml: &str, name: &str) -> Option<String> {
    let start = xml.find(&format!("<{name}>"))? + name.len() + 2;
    let end = xml[start..].find(&format!("</{name}>"))? + start;
    let inner = &xml[start..end];
    Some(
        inner
            .strip_prefix("<![CDATA[")
            .and_then(|s| s.strip_suffix("]]>"))
            .unwrap_or(inner)
            .to_owned(),
    )
}

async fn a_login_scan_gets_a_text_reply_that_wechat_accepts() {
    let app = spawn_app_with(&[("REPLY_TEXT", "已在网页登录（{time}）")]).await;
    let (mut stream, scene, _) = app.open_with_qr().await;
    let delivery = app.scan(&scene, "oReplyMe", false).await;
    assert_eq!(delivery.status, 200);
    let xml = delivery.reply.expect("a reply");
    let parsed = wxlogin::wechat::xml::parse(&xml).expect("well-formed XML");
    assert_eq!(parsed.to_user_name.as_deref(), Some("oReplyMe"));
    assert_eq!(parsed.from_user_name.as_deref(), Some("gh_sandbox000001"));
    assert_eq!(parsed.msg_type.as_deref(), Some("text"));
    let created: i64 = parsed.create_time.unwrap().parse().unwrap();
    assert!((now_secs() - created).abs() < 5);
    let content = field(&xml, "Content");
    assert!(
        content.starts_with("已在网页登录（") && !content.contains("{time}"),
        "{content}"
    );
    stream.next_json().await;

    // Not a login (no stream waits): plain success.
    let again = app.scan(&scene, "oLate", false).await;
    assert_eq!((again.body.as_str(), again.reply), ("success", None));
}

#[tokio::test]
async fn in_safe_mode_the_reply_is_encrypted_and_signed() {
    let app = spawn_safe_app(&[("REPLY_TEXT", "已在网页登录")]).await;
    let (_stream, scene, _) = app.open_with_qr().await;
    let delivery = app.scan(&scene, "oSafeReply", false).await;
    let body = &delivery.body;
    assert!(
        !body.contains("已在网页登录"),
        "the reply is not in the clear"
    );
    let encrypt = field(body, "Encrypt");
    let signature = field(body, "MsgSignature");
    let timestamp = field(body, "TimeStamp");
    let nonce = field(body, "Nonce");
    let token = app.fake.account().mp_token.expose();
    assert!(verify_msg_signature(
        token, &timestamp, &nonce, &encrypt, &signature
    ));
    let inner = safe_key(&app)
        .decrypt(&app.fake.account().appid, &encrypt)
        .unwrap();
    assert_eq!(field(&inner, "Content"), "已在网页登录");
    assert_eq!(field(&inner, "ToUserName"), "oSafeReply");
}

// ---------------------------------------------------------------- login tokens

/// A site backend verifying a login token without the server's JWT library: the raw EdDSA
/// check against the published JWKS.
async fn verify_like_a_site(app: &TestApp, token: &str) -> Result<Value, String> {
    let jwks: Value = app
        .get("/.well-known/jwks.json")
        .await
        .json()
        .await
        .unwrap();
    let (signing_input, signature) = token.rsplit_once('.').ok_or("not a JWT")?;
    let (header, payload) = signing_input.split_once('.').ok_or("not a JWT")?;
    let header: Value = serde_json::from_slice(&B64URL.decode(header).unwrap()).unwrap();
    assert_eq!(header["alg"], "EdDSA");
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .ok_or("unknown kid")?;
    let x: [u8; 32] = B64URL
        .decode(jwk["x"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let key = ed25519_dalek::VerifyingKey::from_bytes(&x).unwrap();
    let sig: [u8; 64] = B64URL
        .decode(signature)
        .map_err(|e| e.to_string())?
        .try_into()
        .map_err(|_| "bad signature length")?;
    key.verify_strict(
        signing_input.as_bytes(),
        &ed25519_dalek::Signature::from_bytes(&sig),
    )
    .map_err(|_| "forged".to_owned())?;
    let claims: Value = serde_json::from_slice(&B64URL.decode(payload).unwrap()).unwrap();
    if claims["exp"].as_u64().unwrap() < now_secs() as u64 {
        return Err("expired".into());
    }
    Ok(claims)
}

async fn login_token(app: &TestApp, openid: &str) -> String {
    let (mut stream, scene, _) = app.open_with_qr().await;
    app.scan(&scene, openid, false).await;
    let result = stream.next_json().await;
    result["login_token"].as_str().unwrap().to_owned()
}

async fn verify_at_server(app: &TestApp, body: Value, bearer: &str) -> reqwest::Response {
    app.client
        .post(format!("{}/login/verify", app.base))
        .bearer_auth(bearer)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn a_site_backend_verifies_the_login_token_with_the_published_key() {
    let app = spawn_app().await;
    let token = login_token(&app, "oVerified").await;
    let claims = verify_like_a_site(&app, &token).await.unwrap();
    assert_eq!(claims["sub"], "oVerified");
    assert_eq!(claims["iss"], "wxlogin");
    assert_eq!(claims["appid"], app.fake.account().appid);
    assert_eq!(claims["event"], "SCAN");
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        300
    );
    assert!(claims["jti"].as_str().unwrap().len() >= 16);

    // Forgery: the payload changed to another user, the signature kept.
    let parts: Vec<&str> = token.split('.').collect();
    let mut forged_claims = claims.clone();
    forged_claims["sub"] = "oAttacker".into();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        B64URL.encode(serde_json::to_vec(&forged_claims).unwrap()),
        parts[2]
    );
    assert_eq!(
        verify_like_a_site(&app, &forged).await.unwrap_err(),
        "forged"
    );
    let r = verify_at_server(&app, json!({"login_token": forged}), &app.api_token).await;
    assert_eq!(r.status(), 401);
}

async fn login_verify_accepts_a_token_once() {
    let app = spawn_app().await;
    let token = login_token(&app, "oOnce").await;
    let r = verify_at_server(&app, json!({"login_token": token}), "wrong-api-token").await;
    assert_eq!(r.status(), 401, "server to server only");
    let r = verify_at_server(&app, json!({"login_token": token}), &app.api_token).await;
    assert_eq!(r.status(), 200);
    let claims: Value = r.json().await.unwrap();
    assert_eq!(claims["sub"], "oOnce");
    let r = verify_at_server(&app, json!({"login_token": token}), &app.api_token).await;
    assert_eq!(r.status(), 409, "a replayed token");
    let r = verify_at_server(&app, json!({"nope": 1}), &app.api_token).await;
    assert_eq!(r.status(), 400);
}

/// HMAC-SHA256 of a JWT's signing input, base64url: the HS256 signature, computed raw.
fn hmac_b64(key: &[u8], input: &str) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(input.as_bytes());
    B64URL.encode(mac.finalize().into_bytes())
}

/// An HS256 JWT of `claims` under `key`, made the way anyone holding the key could.
fn hs256_under(key: &[u8], claims: &Value) -> String {
    let header = B64URL.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = B64URL.encode(serde_json::to_vec(claims).unwrap());
    let input = format!("{header}.{payload}");
    let sig = hmac_b64(key, &input);
    format!("{input}.{sig}")
}

/// An HS256 JWT of `claims`, made the way a site holding the shared secret could.
fn hs256(secret: &str, claims: &Value) -> String {
    hs256_under(secret.as_bytes(), claims)
}

/// The claims of a JWT, unchecked.
fn claims_of(token: &str) -> Value {
    serde_json::from_slice(&B64URL.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap()
}

async fn with_a_shared_secret_tokens_are_hs256_and_expiry_and_audience_are_enforced() {
    let secret = "a-shared-secret-of-at-least-32-chars!";
    let app = spawn_app_with(&[
        ("LOGIN_TOKEN_SECRET", secret),
        ("LOGIN_TOKEN_AUDIENCE", "shop"),
    ])
    .await;
    let token = login_token(&app, "oShared").await;
    // The site checks the HMAC itself (raw algorithm).
    let (input, sig) = token.rsplit_once('.').unwrap();
    let payload: Value =
        serde_json::from_slice(&B64URL.decode(input.split('.').nth(1).unwrap()).unwrap()).unwrap();
    assert_eq!(hmac_b64(secret.as_bytes(), input), sig);
    assert_eq!(payload["aud"], "shop");
    let jwks: Value = app
        .get("/.well-known/jwks.json")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"], json!([]), "the secret is not published");

    // Wrong audience.
    let r = verify_at_server(
        &app,
        json!({"login_token": token, "audience": "blog"}),
        &app.api_token,
    )
    .await;
    assert_eq!(r.status(), 401);
    // Expired (a token the site could mint with the shared secret, but past its exp).
    let mut expired = payload.clone();
    expired["exp"] = json!(now_secs() - 10);
    expired["jti"] = json!("expired-one");
    let r = verify_at_server(
        &app,
        json!({"login_token": hs256(secret, &expired)}),
        &app.api_token,
    )
    .await;
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("expired"));
    // The right audience: accepted once.
    let r = verify_at_server(
        &app,
        json!({"login_token": token, "audience": "shop"}),
        &app.api_token,
    )
    .await;
    assert_eq!(r.status(), 200);
}

/// The login token of a stream opened with a page token bound to `origin`.
async fn login_token_for_origin(app: &TestApp, origin: &str, openid: &str) -> String {
    let minted: Value = mint(app, json!({"origin": origin}))
        .await
        .json()
        .await
        .unwrap();
    let response = app
        .client
        .get(format!(
            "{}/sse?token={}",
            app.base,
            minted["token"].as_str().unwrap()
        ))
        .header("origin", origin)
        .send()
        .await
        .unwrap();
    let mut stream = crate::helpers::Stream::from_response(response);
    assert_eq!(stream.status, 200);
    let scene = stream.next_json().await["scene_id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.scan(&scene, openid, false).await;
    stream.next_json().await["login_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn a_token_for_an_origin_fails_verification_without_an_audience_and_passes_with_it() {
    let app = spawn_app().await;
    let origin = "https://shop.example.com";
    let token = login_token_for_origin(&app, origin, "oShopper").await;
    let r = verify_at_server(&app, json!({"login_token": token}), &app.api_token).await;
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("another audience"));
    let r = verify_at_server(
        &app,
        json!({"login_token": token, "audience": origin}),
        &app.api_token,
    )
    .await;
    assert_eq!(r.status(), 200);
    // A token of the default audience needs no audience.
    let plain = login_token(&app, "oPlain").await;
    let r = verify_at_server(&app, json!({"login_token": plain}), &app.api_token).await;
    assert_eq!(r.status(), 200);
}

async fn a_token_of_another_appid_or_issuer_under_the_shared_secret_is_refused() {
    let secret = "a-shared-secret-of-at-least-32-chars!";
    let app = spawn_app_with(&[("LOGIN_TOKEN_SECRET", secret)]).await;
    let genuine = claims_of(&login_token(&app, "oOther").await);
    let mut other_account = genuine.clone();
    other_account["appid"] = json!("wxanotheraccount01");
    let r = verify_at_server(
        &app,
        json!({"login_token": hs256(secret, &other_account)}),
        &app.api_token,
    )
    .await;
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("another appid"));
    let mut other_issuer = genuine.clone();
    other_issuer["iss"] = json!("not-wxlogin");
    let r = verify_at_server(
        &app,
        json!({"login_token": hs256(secret, &other_issuer)}),
        &app.api_token,
    )
    .await;
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("not issued by wxlogin"));
    // Neither refusal used the token's id up: the genuine one still verifies.
    let r = verify_at_server(
        &app,
        json!({"login_token": hs256(secret, &genuine)}),
        &app.api_token,
    )
    .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn in_memory_mode_a_token_issued_before_a_restart_fails_after_it() {
    let account = FakeAccount::random();
    let settings = [(
        "LOGIN_TOKEN_SECRET",
        "a-shared-secret-of-at-least-32-chars!",
    )];
    let before = spawn_app_for(account.clone(), &settings).await;
    let old = login_token(&before, "oRestarted").await;
    drop(before);

    let after = spawn_app_for(account, &settings).await;
    let r = verify_at_server(&after, json!({"login_token": old}), &after.api_token).await;
    assert_eq!(r.status(), 401);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("issued before this process started")
    );
    let fresh = login_token(&after, "oRestarted").await;
    let r = verify_at_server(&after, json!({"login_token": fresh}), &after.api_token).await;
    assert_eq!(r.status(), 200);
    let r = verify_at_server(&after, json!({"login_token": fresh}), &after.api_token).await;
    assert_eq!(r.status(), 409);
}

#[tokio::test]
async fn with_redis_a_token_of_a_stopped_instance_verifies_once_at_another() {
    let mut apps = crate::helpers::spawn_instances(1, &[]).await;
    let first = apps.remove(0);
    let token = login_token(&first, "oMoved").await;
    let second = crate::helpers::spawn_instances_on(&first, &[]).await;
    // The fake's callbacks keep going to the first instance; only the verification moves.
    drop(first);
    let r = verify_at_server(&second, json!({"login_token": token}), &second.api_token).await;
    assert_eq!(r.status(), 200);
    let r = verify_at_server(&second, json!({"login_token": token}), &second.api_token).await;
    assert_eq!(r.status(), 409);
}

// ---------------------------------------------------------------- page tokens

async fn mint(app: &TestApp, body: Value) -> reqwest::Response {
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

// ---------------------------------------------------------------- resume and polling

async fn a_scan_while_the_stream_was_gone_arrives_once_on_reconnect_with_the_same_qr() {
    let app = spawn_app_with(&[("POOL_SIZE", "0")]).await;
    let (stream, scene, id) = app.open_with_id().await;
    drop(stream);
    crate::helpers::wait_until(Duration::from_secs(5), || async {
        app.login.open_streams() == 0
    })
    .await;
    let made = count(&app.fake.counters().qr_created);

    let delivery = app.scan(&scene, "oWhileAway", false).await;
    assert_eq!(delivery.status, 200);
    assert_eq!(app.scans("parked").await, 1);

    let mut resumed = app.open_resuming(&id).await;
    let again = resumed.next_event().await;
    assert_eq!(again.id, id, "same QR, same stream");
    let result = resumed.next_event().await;
    let seen = format!("{}.1", id.strip_suffix(".0").unwrap());
    assert_eq!(result.id, seen);
    assert_login(
        &serde_json::from_str(&result.data).unwrap(),
        "oWhileAway",
        "SCAN",
    );
    assert!(resumed.ends_within(Duration::from_secs(2)).await);
    assert_eq!(
        count(&app.fake.counters().qr_created),
        made,
        "no new QR code was made"
    );

    // Reconnecting after having seen the result does not deliver it again: a new code.
    let mut after = app.open_resuming(&seen).await;
    let fresh = after.next_json().await;
    assert_ne!(fresh["scene_id"], scene.as_str());
    assert!(fresh.get("userId").is_none());
}

async fn a_reconnect_while_waiting_resumes_and_receives_the_scan() {
    let app = spawn_app_with(&[("POOL_SIZE", "0")]).await;
    let (stream, scene, id) = app.open_with_id().await;
    drop(stream);
    let made = count(&app.fake.counters().qr_created);
    // `?id=`: how the widget reopens its stream after a page reload.
    let mut resumed = app
        .open_with(&format!("token={}&id={id}", app.api_token))
        .await;
    assert_eq!(resumed.next_json().await["scene_id"], scene.as_str());
    app.scan(&scene, "oResumed", true).await;
    assert_login(&resumed.next_json().await, "oResumed", "subscribe");
    assert_eq!(count(&app.fake.counters().qr_created), made);
}

async fn status(app: &TestApp, scene: &str, id: &str) -> Value {
    let r = app
        .get(&format!(
            "/login/{scene}/status?token={}&id={id}",
            app.api_token
        ))
        .await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn polling_sees_pending_then_done_and_an_expired_scene_says_expired() {
    let app = spawn_app_with(&[("SSE_TIMEOUT_SECS", "2")]).await;
    let (stream, scene, id) = app.open_with_id().await;
    drop(stream);
    assert_eq!(status(&app, &scene, &id).await["status"], "pending");
    let r = app
        .get(&format!(
            "/login/{scene}/status?token=wrong-token-xxx&id={id}"
        ))
        .await;
    assert_eq!(r.status(), 401);
    let r = app
        .get(&format!("/login/{scene}/status?token={}", app.api_token))
        .await;
    assert_eq!(r.status(), 400, "the event id is required");

    app.scan(&scene, "oPoller", false).await;
    // The header works as well as `?id=`, and keeps the key out of access logs.
    let done: Value = app
        .client
        .get(format!(
            "{}/login/{scene}/status?token={}",
            app.base, app.api_token
        ))
        .header("last-event-id", &id)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(done["status"], "done");
    assert_login(&done, "oPoller", "SCAN");

    let (mut other, other_scene, other_id) = app.open_with_id().await;
    assert_eq!(other.next_json().await["event"], "timeout");
    assert_eq!(
        status(&app, &other_scene, &other_id).await["status"],
        "expired"
    );
    // Another stream's id does not open this scene.
    assert_eq!(status(&app, &scene, &other_id).await["status"], "expired");
    assert_eq!(
        status(&app, "AAAAAAAAAAAAAAAAAAAAAA", "x").await["status"],
        "expired"
    );
}

/// Somebody who learnt a scene (from an access log, a forwarded request, over a shoulder)
/// and holds a page token like every visitor.
async fn a_scene_and_a_page_token_open_no_result_and_leave_the_stream_alone() {
    let app = spawn_app().await;
    let (mut stream, scene, id) = app.open_with_id().await;
    let key = id.split('.').nth(1).unwrap().to_owned();
    let guessed = format!("{scene}.{}.0", "A".repeat(key.len()));
    let attempts = [
        format!("token={}&scene={scene}", app.api_token),
        format!("token={}&id={scene}.0", app.api_token),
        format!("token={}&id={guessed}", app.api_token),
    ];
    for query in &attempts {
        let mut other = app.open_with(query).await;
        let first = other.next_json().await;
        assert_ne!(
            first["scene_id"],
            scene.as_str(),
            "{query}: a new QR code, not the scene"
        );
    }
    for last_event_id in [format!("{scene}.0"), format!("{scene}.1"), guessed.clone()] {
        let mut other = app.open_resuming(&last_event_id).await;
        assert_ne!(other.next_json().await["scene_id"], scene.as_str());
    }
    for id in [format!("{scene}.0"), guessed.clone(), scene.clone()] {
        assert_eq!(status(&app, &scene, &id).await["status"], "expired");
    }
    // The real stream was not ended by any of that, and gets its scan.
    app.scan(&scene, "oRealUser", false).await;
    assert_login(&stream.next_json().await, "oRealUser", "SCAN");
    // Once scanned, the result is the real browser's only.
    for id in [format!("{scene}.0"), guessed] {
        assert_eq!(status(&app, &scene, &id).await["status"], "expired");
        let mut other = app.open_resuming(&id).await;
        assert!(other.next_json().await.get("userId").is_none());
    }
    assert_eq!(status(&app, &scene, &id).await["status"], "done");
}

crate::helpers::on_every_backend!(
    a_site_backend_verifies_the_login_token_with_the_published_key,
    encrypted_scan_and_subscribe_callbacks_reach_their_streams,
    a_login_scan_gets_a_text_reply_that_wechat_accepts,
    login_verify_accepts_a_token_once,
    with_a_shared_secret_tokens_are_hs256_and_expiry_and_audience_are_enforced,
    page_tokens_open_streams_from_their_origin_only,
    page_tokens_signed_under_a_key_computed_from_api_token_alone_are_refused,
    a_token_for_an_origin_fails_verification_without_an_audience_and_passes_with_it,
    a_token_of_another_appid_or_issuer_under_the_shared_secret_is_refused,
    a_scan_while_the_stream_was_gone_arrives_once_on_reconnect_with_the_same_qr,
    a_reconnect_while_waiting_resumes_and_receives_the_scan,
    polling_sees_pending_then_done_and_an_expired_scene_says_expired,
    a_scene_and_a_page_token_open_no_result_and_leave_the_stream_alone,
);
