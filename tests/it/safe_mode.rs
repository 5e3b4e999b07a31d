//! Safe mode (EncodingAESKey: encrypted callbacks, both keys of a rotation) and the passive reply
//! (`REPLY_TEXT`, encrypted and signed in safe mode).

use std::time::Duration;

use base64::Engine as _;
use wxlogin::sandbox::fake::FakeAccount;
use wxlogin::sandbox::phone::{nonce, now_secs, signed_query};
use wxlogin::wechat::crypto::{AesKey, msg_signature, verify_msg_signature};
use wxlogin::wechat::xml::push_cdata;

use crate::helpers::{TestApp, assert_login, spawn_app_for, spawn_app_with, spawn_safe_app};

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

    // Not a login (the session is over): told so, without the login's reply.
    let again = app.scan(&scene, "oLate", false).await;
    let xml = again.reply.expect("a reply");
    let content = field(&xml, "Content");
    assert!(content.contains("已在别处完成"), "{content}");
    assert_eq!(
        wxlogin::wechat::xml::parse(&xml)
            .unwrap()
            .to_user_name
            .as_deref(),
        Some("oLate")
    );
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

crate::helpers::on_every_backend!(
    encrypted_scan_and_subscribe_callbacks_reach_their_streams,
    a_login_scan_gets_a_text_reply_that_wechat_accepts,
);
