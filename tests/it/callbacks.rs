//! `/wechat_event`: the URL check and the checks on pushed events.

use std::time::Duration;

use wxlogin::sandbox::phone::{nonce, now_secs, signed_query};
use wxlogin::wechat::signature::signature;

use crate::helpers::spawn_app;

async fn the_url_check_answers_echostr_only_when_signed() {
    let app = spawn_app().await;
    let token = app.fake.account().mp_token.expose().to_owned();
    let sig = signature(&token, "1714037059", "486452656");
    let ok = app
        .get(&format!(
            "/wechat_event?signature={sig}&timestamp=1714037059&nonce=486452656&echostr=hello123"
        ))
        .await;
    assert_eq!(ok.status(), 200);
    assert!(
        ok.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(ok.text().await.unwrap(), "hello123");

    for query in [
        "signature=0000000000000000000000000000000000000000&timestamp=1714037059&nonce=486452656&echostr=x",
        "timestamp=1714037059&nonce=486452656&echostr=x",
        "",
    ] {
        let bad = app.get(&format!("/wechat_event?{query}")).await;
        assert_eq!(bad.status(), 400, "{query}");
    }
}

async fn unsigned_wrongly_signed_and_stale_callbacks_deliver_nothing() {
    let app = spawn_app().await;
    let (mut stream, scene, _) = app.open_with_qr().await;
    let body = app.scan_xml(&scene, "oAttacker", now_secs());
    let token = app.fake.account().mp_token.expose().to_owned();

    let unsigned = app.post_callback("openid=oAttacker", body.clone()).await;
    assert_eq!(unsigned.status(), 401);

    let wrong = signed_query("not-the-token", now_secs(), &nonce(), "oAttacker");
    assert_eq!(app.post_callback(&wrong, body.clone()).await.status(), 401);

    let stale_ts = now_secs() - 400;
    let stale = signed_query(&token, stale_ts, &nonce(), "oAttacker");
    let response = app.post_callback(&stale, body.clone()).await;
    assert_eq!(response.status(), 401);
    assert!(response.text().await.unwrap().contains("5 minutes"));

    let future = signed_query(&token, now_secs() + 400, &nonce(), "oAttacker");
    assert_eq!(app.post_callback(&future, body.clone()).await.status(), 401);

    // Absurd timestamps (found by fuzzing: once an overflow) are just stale.
    for absurd in [i64::MIN, i64::MIN + now_secs(), i64::MAX] {
        let q = signed_query(&token, absurd, &nonce(), "oAttacker");
        assert_eq!(
            app.post_callback(&q, body.clone()).await.status(),
            401,
            "{absurd}"
        );
    }

    assert!(
        stream
            .next_json_within(Duration::from_millis(300))
            .await
            .is_none(),
        "nothing delivered"
    );
    assert_eq!(app.scans("delivered").await, 0);
    // The stream still works for the real user.
    app.scan(&scene, "oRealUser", false).await;
    assert_eq!(stream.next_json().await["userId"], "oRealUser");
}

async fn wechat_retries_and_replays_of_one_event_are_delivered_once() {
    let app = spawn_app().await;
    let (mut first, scene_1, _) = app.open_with_qr().await;
    let (mut second, scene_2, _) = app.open_with_qr().await;
    let created = now_secs();
    let body = app.scan_xml(&scene_1, "oUserOne", created);
    let query = app.signed_query("oUserOne");
    for _ in 0..3 {
        let r = app.post_callback(&query, body.clone()).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "success");
    }
    assert_eq!(first.next_json().await["userId"], "oUserOne");
    assert!(first.ends_within(Duration::from_secs(2)).await);
    assert_eq!(app.scans("duplicate").await, 2);

    // The same event (openid + CreateTime) pointed at another stream is a replay.
    let replay = app.scan_xml(&scene_2, "oUserOne", created);
    let r = app
        .post_callback(&app.signed_query("oUserOne"), replay)
        .await;
    assert_eq!(r.status(), 200);
    assert!(
        second
            .next_json_within(Duration::from_millis(300))
            .await
            .is_none()
    );
}

async fn hostile_and_malformed_bodies_get_4xx_and_the_service_keeps_serving() {
    let app = spawn_app().await;
    let (mut stream, scene, _) = app.open_with_qr().await;
    let q = || app.signed_query("oX");

    let xxe = r#"<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><xml><MsgType>event</MsgType><Event>SCAN</Event><EventKey>&xxe;</EventKey></xml>"#;
    let r = app.post_callback(&q(), xxe).await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("DTD"));

    let entity = "<xml><MsgType>event</MsgType><EventKey>&xxe;</EventKey></xml>";
    assert_eq!(app.post_callback(&q(), entity).await.status(), 400);

    let big = vec![b'a'; 10 * 1024 * 1024];
    let r = app.post_callback(&q(), big).await;
    assert_eq!(r.status(), 413);

    for malformed in [
        "<xml><Event>SCAN</Evnt></xml>",
        "not xml at all",
        "",
        "<a></a>",
    ] {
        let r = app.post_callback(&q(), malformed).await;
        assert_eq!(r.status(), 400, "{malformed:?}");
    }
    let not_utf8: Vec<u8> = b"<xml><FromUserName>\xff\xfe</FromUserName></xml>".to_vec();
    let r = app.post_callback(&q(), not_utf8).await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("UTF-8"));

    // Bad query values are 4xx too, not crashes.
    let r = app
        .post_callback("signature=x&timestamp=notanumber&nonce=1", "<xml/>")
        .await;
    assert!(r.status().is_client_error());

    // Still serving: health, and a login.
    assert_eq!(app.get("/healthz").await.status(), 200);
    app.scan(&scene, "oStillWorks", false).await;
    assert_eq!(stream.next_json().await["userId"], "oStillWorks");
}

async fn messages_and_other_events_are_answered_success_and_ignored() {
    let app = spawn_app().await;
    let (mut stream, scene, _) = app.open_with_qr().await;
    let now = now_secs();
    let bodies = [
        format!(
            "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[oA]]></FromUserName><CreateTime>{now}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[{scene}]]></Content><MsgId>1</MsgId></xml>"
        ),
        format!(
            "<xml><ToUserName>gh_1</ToUserName><FromUserName>oB</FromUserName><CreateTime>{now}</CreateTime><MsgType>event</MsgType><Event>subscribe</Event><EventKey></EventKey></xml>"
        ),
        format!(
            "<xml><ToUserName>gh_1</ToUserName><FromUserName>oC</FromUserName><CreateTime>{now}</CreateTime><MsgType>event</MsgType><Event>CLICK</Event><EventKey>{scene}</EventKey></xml>"
        ),
        format!(
            "<xml><ToUserName>gh_1</ToUserName><FromUserName>oD</FromUserName><CreateTime>{now}</CreateTime><MsgType>event</MsgType><Event>subscribe</Event><EventKey>{scene}</EventKey></xml>"
        ),
    ];
    for body in bodies {
        let r = app.post_callback(&app.signed_query("oA"), body).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "success");
    }
    assert!(
        stream
            .next_json_within(Duration::from_millis(300))
            .await
            .is_none()
    );
}

crate::helpers::on_every_backend!(
    the_url_check_answers_echostr_only_when_signed,
    unsigned_wrongly_signed_and_stale_callbacks_deliver_nothing,
    wechat_retries_and_replays_of_one_event_are_delivered_once,
    hostile_and_malformed_bodies_get_4xx_and_the_service_keeps_serving,
    messages_and_other_events_are_answered_success_and_ignored,
);
