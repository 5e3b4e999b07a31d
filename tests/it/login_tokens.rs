//! Login tokens a site backend can trust: verified with the published key or the shared secret,
//! only for this deployment and its audience, and once.

use base64::Engine as _;
use serde_json::{Value, json};
use wxlogin::sandbox::fake::FakeAccount;
use wxlogin::sandbox::phone::now_secs;

use crate::helpers::{TestApp, spawn_app, spawn_app_for, spawn_app_with};
use crate::page_tokens::mint;

const B64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A site backend verifying a login token without the server's JWT library: the raw EdDSA
/// check against the published JWKS.
pub(crate) async fn verify_like_a_site(app: &TestApp, token: &str) -> Result<Value, String> {
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

/// `POST /login/verify` with the deployment's own API token.
async fn verify(app: &TestApp, body: Value) -> reqwest::Response {
    verify_at_server(app, body, &app.api_token).await
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
    let r = verify(&app, json!({"login_token": forged})).await;
    assert_eq!(r.status(), 401);
}

async fn login_verify_accepts_a_token_once() {
    let app = spawn_app().await;
    let token = login_token(&app, "oOnce").await;
    let r = verify_at_server(&app, json!({"login_token": token}), "wrong-api-token").await;
    assert_eq!(r.status(), 401, "server to server only");
    let r = verify(&app, json!({"login_token": token})).await;
    assert_eq!(r.status(), 200);
    let claims: Value = r.json().await.unwrap();
    assert_eq!(claims["sub"], "oOnce");
    let r = verify(&app, json!({"login_token": token})).await;
    assert_eq!(r.status(), 409, "a replayed token");
    let r = verify(&app, json!({"nope": 1})).await;
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
pub(crate) fn hs256_under(key: &[u8], claims: &Value) -> String {
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
pub(crate) fn claims_of(token: &str) -> Value {
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
    let r = verify(&app, json!({"login_token": token, "audience": "blog"})).await;
    assert_eq!(r.status(), 401);
    // Expired (a token the site could mint with the shared secret, but past its exp).
    let mut expired = payload.clone();
    expired["exp"] = json!(now_secs() - 10);
    expired["jti"] = json!("expired-one");
    let r = verify(&app, json!({"login_token": hs256(secret, &expired)})).await;
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("expired"));
    // The right audience: accepted once.
    let r = verify(&app, json!({"login_token": token, "audience": "shop"})).await;
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
    let r = verify(&app, json!({"login_token": token})).await;
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("another audience"));
    let r = verify(&app, json!({"login_token": token, "audience": origin})).await;
    assert_eq!(r.status(), 200);
    // A token of the default audience needs no audience.
    let plain = login_token(&app, "oPlain").await;
    let r = verify(&app, json!({"login_token": plain})).await;
    assert_eq!(r.status(), 200);
}

async fn a_token_of_another_appid_or_issuer_under_the_shared_secret_is_refused() {
    let secret = "a-shared-secret-of-at-least-32-chars!";
    let app = spawn_app_with(&[("LOGIN_TOKEN_SECRET", secret)]).await;
    let genuine = claims_of(&login_token(&app, "oOther").await);
    let mut other_account = genuine.clone();
    other_account["appid"] = json!("wxanotheraccount01");
    let r = verify(&app, json!({"login_token": hs256(secret, &other_account)})).await;
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("another appid"));
    let mut other_issuer = genuine.clone();
    other_issuer["iss"] = json!("not-wxlogin");
    let r = verify(&app, json!({"login_token": hs256(secret, &other_issuer)})).await;
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("not issued by wxlogin"));
    // Neither refusal used the token's id up: the genuine one still verifies.
    let r = verify(&app, json!({"login_token": hs256(secret, &genuine)})).await;
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
    let r = verify(&after, json!({"login_token": old})).await;
    assert_eq!(r.status(), 401);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("issued before this process started")
    );
    let fresh = login_token(&after, "oRestarted").await;
    let r = verify(&after, json!({"login_token": fresh})).await;
    assert_eq!(r.status(), 200);
    let r = verify(&after, json!({"login_token": fresh})).await;
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
    let r = verify(&second, json!({"login_token": token})).await;
    assert_eq!(r.status(), 200);
    let r = verify(&second, json!({"login_token": token})).await;
    assert_eq!(r.status(), 409);
}

crate::helpers::on_every_backend!(
    a_site_backend_verifies_the_login_token_with_the_published_key,
    login_verify_accepts_a_token_once,
    with_a_shared_secret_tokens_are_hs256_and_expiry_and_audience_are_enforced,
    a_token_for_an_origin_fails_verification_without_an_audience_and_passes_with_it,
    a_token_of_another_appid_or_issuer_under_the_shared_secret_is_refused,
);
