//! A signed callback query is good for one body: WeChat's plain `signature` covers the token,
//! timestamp and nonce, not the body, and such queries leave wxlogin (access logs, proxies,
//! `FORWARD_URL`). The same query and body again is WeChat retrying; another body is a replay.

use std::time::Duration;

use wxlogin::sandbox::phone::now_secs;

use crate::helpers::{TestApp, assert_login, spawn_app, spawn_app_with, spawn_safe_app};

/// A text message from `openid`: not a login, so forwarded or answered `success`.
fn text_message(openid: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[gh_sandbox000001]]></ToUserName><FromUserName><![CDATA[{openid}]]></FromUserName><CreateTime>{}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hello]]></Content><MsgId>7</MsgId></xml>",
        now_secs()
    )
}

async fn quiet(stream: &mut crate::helpers::Stream) -> bool {
    stream
        .next_json_within(Duration::from_millis(300))
        .await
        .is_none()
}

async fn a_signed_query_reused_with_another_body_is_refused_and_delivers_nothing() {
    let app = spawn_app().await;
    let (mut victim, scene, _) = app.open_with_qr().await;
    // A message's signed query, as an access log or the account's other backend sees it.
    let query = app.signed_query("oTexter");
    let r = app.post_callback(&query, text_message("oTexter")).await;
    assert_eq!(
        (r.status().as_u16(), r.text().await.unwrap().as_str()),
        (200, "success")
    );
    // The same query with a scan of the waiting code, as somebody else.
    let forged = app.scan_xml(&scene, "oAttacker", now_secs());
    let r = app.post_callback(&query, forged).await;
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("another body"));
    assert!(quiet(&mut victim).await);

    // A login scan's query is bound too: its retry is fine, another scan under it is not.
    let (mut other, other_scene, _) = app.open_with_qr().await;
    let query = app.signed_query("oUser");
    let body = app.scan_xml(&scene, "oUser", now_secs());
    assert_eq!(app.post_callback(&query, body).await.status(), 200);
    assert_login(&victim.next_json().await, "oUser", "SCAN");
    let forged = app.scan_xml(&other_scene, "oAttacker", now_secs());
    assert_eq!(app.post_callback(&query, forged).await.status(), 401);
    assert!(quiet(&mut other).await);
    assert_eq!(
        app.metric(r#"wxlogin_callbacks_rejected_total{reason="replayed"}"#)
            .await,
        2
    );
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(
            "wxlogin_callbacks_rejected_total{reason=\"replayed\",account=\"default\"} 2"
        ),
        "{metrics}"
    );
    // The real user of the other code still gets in.
    app.scan(&other_scene, "oOtherUser", false).await;
    assert_login(&other.next_json().await, "oOtherUser", "SCAN");
}

async fn the_same_query_and_body_three_times_is_one_login_and_three_identical_answers() {
    let app = spawn_app_with(&[("REPLY_TEXT", "已在网页登录")]).await;
    let (mut stream, scene, _) = app.open_with_qr().await;
    let query = app.signed_query("oRetried");
    let body = app.scan_xml(&scene, "oRetried", now_secs());
    for attempt in 0..3 {
        let r = app.post_callback(&query, body.clone()).await;
        assert_eq!(r.status(), 200, "attempt {attempt}");
        // Each is answered as the first one was: with the login's reply.
        assert!(
            r.text().await.unwrap().contains("已在网页登录"),
            "attempt {attempt}"
        );
    }
    assert_login(&stream.next_json().await, "oRetried", "SCAN");
    assert!(stream.ends_within(Duration::from_secs(2)).await);
    assert_eq!(app.scans("delivered").await, 1);
    assert_eq!(app.scans("duplicate").await, 2);
    // A message retried is answered success each time, and is not a replay.
    let query = app.signed_query("oTexter");
    let text = text_message("oTexter");
    for _ in 0..3 {
        let r = app.post_callback(&query, text.clone()).await;
        assert_eq!(
            (r.status().as_u16(), r.text().await.unwrap().as_str()),
            (200, "success")
        );
    }
    assert_eq!(
        app.metric(r#"wxlogin_callbacks_rejected_total{reason="replayed"}"#)
            .await,
        0
    );
}

async fn a_forwarded_query_replayed_with_a_login_body_delivers_nothing() {
    let (url, downstream) = crate::ops::spawn_downstream(Duration::ZERO).await;
    let app = spawn_app_with(&[("FORWARD_URL", url.as_str())]).await;
    let (mut stream, scene, _) = app.open_with_qr().await;
    // The account's other backend receives the message with its signed query.
    let query = app.signed_query("oTexter");
    let text = text_message("oTexter");
    assert_eq!(app.post_callback(&query, text.clone()).await.status(), 200);
    // WeChat's retry is forwarded again, as WeChat would have sent it there.
    assert_eq!(app.post_callback(&query, text).await.status(), 200);
    assert_eq!(downstream.seen.lock().unwrap().len(), 2);
    // Whoever holds that query (the backend, its logs) replays it with a login body.
    let forged = app.scan_xml(&scene, "oBackend", now_secs());
    assert_eq!(app.post_callback(&query, forged).await.status(), 401);
    assert!(quiet(&mut stream).await);
    // Nor with another message: a replay is not forwarded.
    let r = app.post_callback(&query, text_message("oElse")).await;
    assert_eq!(r.status(), 401);
    assert_eq!(downstream.seen.lock().unwrap().len(), 2);
}

async fn with_encoding_aes_key_a_plaintext_signed_scan_delivers_nothing() {
    let app = spawn_safe_app(&[]).await;
    let (mut stream, scene, _) = app.open_with_qr().await;
    let body = app.scan_xml(&scene, "oPlain", now_secs());
    let r = app.post_callback(&app.signed_query("oPlain"), body).await;
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("encrypted"));
    // Not even with encrypt_type=aes and no msg_signature.
    let body = app.scan_xml(&scene, "oPlain", now_secs());
    let query = format!("{}&encrypt_type=aes", app.signed_query("oPlain"));
    assert_eq!(app.post_callback(&query, body).await.status(), 401);
    assert!(quiet(&mut stream).await);
    // WeChat's own, encrypted, gets in.
    app.scan(&scene, "oEncrypted", false).await;
    assert_login(&stream.next_json().await, "oEncrypted", "SCAN");
}

/// In memory the bindings die with the process: what was signed before it started might have
/// been bound already, so it is refused. Redis keeps them: there it is served.
async fn a_callback_signed_before_the_start_is_refused_where_bindings_were_lost() {
    let app = spawn_app().await;
    let token = app.fake.account().mp_token.expose().to_owned();
    let query = wxlogin::sandbox::phone::signed_query(&token, now_secs() - 30, "n0nce", "oOld");
    let r = app.post_callback(&query, text_message("oOld")).await;
    let in_memory = crate::helpers::BACKEND
        .try_with(|b| *b == crate::helpers::Backend::Memory)
        .unwrap_or(true);
    let expected = if in_memory { 401 } else { 200 };
    assert_eq!(r.status().as_u16(), expected);
}

crate::helpers::on_every_backend!(
    a_callback_signed_before_the_start_is_refused_where_bindings_were_lost,
    a_signed_query_reused_with_another_body_is_refused_and_delivers_nothing,
    the_same_query_and_body_three_times_is_one_login_and_three_identical_answers,
    a_forwarded_query_replayed_with_a_login_body_delivers_nothing,
    with_encoding_aes_key_a_plaintext_signed_scan_delivers_nothing,
);

/// Instances share the bindings: a query seen by one is bound on all.
#[tokio::test]
async fn a_query_bound_on_one_instance_is_refused_with_another_body_on_another() {
    let apps = crate::helpers::spawn_instances(2, &[]).await;
    let (a, b): (&TestApp, &TestApp) = (&apps[0], &apps[1]);
    let (mut stream, scene, _) = a.open_with_qr().await;
    let query = a.signed_query("oTexter");
    assert_eq!(
        a.post_callback(&query, text_message("oTexter"))
            .await
            .status(),
        200
    );
    let forged = b.scan_xml(&scene, "oAttacker", now_secs());
    assert_eq!(b.post_callback(&query, forged).await.status(), 401);
    assert!(quiet(&mut stream).await);
}
