//! Login by code: a stream shows a login code beside its QR code; the visitor sends it to the
//! account as a text message; the callback is matched to the stream that holds the code, as
//! checked and deduplicated as a scan, and answered in the chat.

use std::time::Duration;

use serde_json::Value;
use wxlogin::sandbox::phone::{self, Delivery, now_secs, reply_content};

use crate::helpers::{
    Stream, TestApp, assert_login, count, on_every_backend, spawn_app, spawn_app_for,
    spawn_app_with, spawn_safe_app,
};

on_every_backend!(
    a_stream_gets_a_qr_code_and_a_login_code_that_logs_it_in,
    the_scan_after_a_code_login_is_refused_and_its_sender_told_so,
    the_code_after_a_scan_login_is_refused_and_its_sender_told_so,
    a_retried_code_after_a_login_is_answered_in_the_streams_language,
    a_code_typed_with_spaces_dashes_full_width_digits_or_a_word_before_matches,
    a_wrong_code_is_answered_and_delivers_nothing,
    the_sixth_attempt_in_a_minute_is_not_matched_even_if_right,
    wechat_retrying_an_attempt_does_not_use_up_the_senders_allowance,
    a_retried_text_message_delivers_once_and_its_query_with_another_body_is_refused,
    a_resumed_stream_keeps_its_code,
    an_expired_code_is_answered_and_delivers_nothing,
    code_only_mode_starts_without_an_appsecret_and_calls_no_wechat_api,
);

/// The text of the passive reply, if wxlogin sent one.
fn said(delivery: &Delivery) -> Option<String> {
    delivery.reply.as_deref().and_then(reply_content)
}

/// Opens a stream; its first event and the login code in it.
async fn open_with_code(app: &TestApp) -> (Stream, Value, String) {
    with_code(app.open().await).await
}

/// [`open_with_code`], for a stream that asked for English (`lang=en`).
async fn open_english_with_code(app: &TestApp) -> (Stream, Value, String) {
    with_code(
        app.open_with(&format!("token={}&lang=en", app.api_token))
            .await,
    )
    .await
}

/// The stream, its first event and the login code in it.
async fn with_code(mut stream: Stream) -> (Stream, Value, String) {
    assert_eq!(stream.status, 200);
    let first = stream.next_json().await;
    let code = first["login_code"]
        .as_str()
        .expect("a login_code in the first event")
        .to_owned();
    (stream, first, code)
}

async fn send(app: &TestApp, openid: &str, content: &str) -> Delivery {
    app.phone
        .send_text(openid, content)
        .await
        .expect("the callback is answered")
}

async fn quiet(stream: &mut Stream) -> bool {
    stream
        .next_json_within(Duration::from_millis(300))
        .await
        .is_none()
}

async fn a_stream_gets_a_qr_code_and_a_login_code_that_logs_it_in() {
    let app = spawn_app().await;
    let (mut stream, first, code) = open_with_code(&app).await;
    assert!(first["qrcode_url"].as_str().unwrap().contains("showqrcode"));
    assert_eq!(code.len(), 6);
    assert!(code.bytes().all(|b| b.is_ascii_digit()), "{code}");

    let delivery = send(&app, "oCoder", &code).await;
    assert_eq!(delivery.status, 200);
    assert!(
        said(&delivery).unwrap().contains("登录成功"),
        "{delivery:?}"
    );
    let result = stream.next_json().await;
    assert_login(&result, "oCoder", "code");
    let claims = app.verified(&result).await;
    assert_eq!(claims["sub"], "oCoder");
    assert_eq!(claims["event"], "code");
    assert!(stream.ends_within(Duration::from_secs(2)).await);
    assert_eq!(app.scans("code").await, 1);

    // In English when the stream asked for it; REPLY_TEXT wins when set.
    let (mut en, _, code) = open_english_with_code(&app).await;
    let delivery = send(&app, "oEnglish", &code).await;
    assert!(
        said(&delivery).unwrap().contains("logged in"),
        "{delivery:?}"
    );
    assert_login(&en.next_json().await, "oEnglish", "code");
    let app = spawn_app_with(&[("REPLY_TEXT", "已在网页登录")]).await;
    let (mut stream, _, code) = open_with_code(&app).await;
    assert_eq!(
        said(&send(&app, "oReply", &code).await).as_deref(),
        Some("已在网页登录")
    );
    assert_login(&stream.next_json().await, "oReply", "code");
}

async fn the_scan_after_a_code_login_is_refused_and_its_sender_told_so() {
    let app = spawn_app_with(&[("REPLY_TEXT", "已在网页登录")]).await;
    let (mut stream, first, code) = open_with_code(&app).await;
    let scene = first["scene_id"].as_str().unwrap().to_owned();
    send(&app, "oFirst", &code).await;
    assert_login(&stream.next_json().await, "oFirst", "code");

    let late = app.scan(&scene, "oLate", false).await;
    assert_eq!(late.status, 200);
    assert!(said(&late).unwrap().contains("已在别处完成"), "{late:?}");
    assert!(stream.ends_within(Duration::from_secs(2)).await);
    assert_eq!(app.scans("undeliverable").await, 1);
    assert_eq!(app.scans("delivered").await, 0);

    // A stream that asked for English is told in English.
    let (mut en, first, code) = open_english_with_code(&app).await;
    let scene = first["scene_id"].as_str().unwrap();
    send(&app, "oFirstEn", &code).await;
    assert_login(&en.next_json().await, "oFirstEn", "code");
    let late = app.scan(scene, "oLateEn", false).await;
    assert!(
        said(&late).unwrap().contains("completed elsewhere"),
        "{late:?}"
    );
}

async fn the_code_after_a_scan_login_is_refused_and_its_sender_told_so() {
    let app = spawn_app_with(&[("REPLY_TEXT", "已在网页登录")]).await;
    let (mut stream, first, code) = open_with_code(&app).await;
    let scene = first["scene_id"].as_str().unwrap().to_owned();
    let xml = app.scan_xml(&scene, "oScanner", now_secs());
    let query = app.signed_query("oScanner");
    let won = app.post_callback(&query, xml.clone()).await;
    assert!(won.text().await.unwrap().contains("已在网页登录"));
    assert_login(&stream.next_json().await, "oScanner", "SCAN");

    let delivery = send(&app, "oLateCoder", &code).await;
    assert!(
        said(&delivery).unwrap().contains("已在别处完成"),
        "{delivery:?}"
    );
    assert!(stream.ends_within(Duration::from_secs(2)).await);
    assert_eq!(app.scans("code").await, 0);

    // WeChat retrying the winning scan, under its query or a new one, is answered as the
    // login was, not as a late one.
    for query in [query, app.signed_query("oScanner")] {
        let retry = app.post_callback(&query, xml.clone()).await;
        assert_eq!(retry.status(), 200);
        let body = retry.text().await.unwrap();
        assert!(body.contains("已在网页登录"), "{body}");
    }
    assert_eq!(app.scans("delivered").await, 1);

    // In English when the stream asked for it.
    let (mut en, first, code) = open_english_with_code(&app).await;
    let scene = first["scene_id"].as_str().unwrap();
    app.scan(scene, "oScannerEn", false).await;
    assert_login(&en.next_json().await, "oScannerEn", "SCAN");
    let delivery = send(&app, "oLateCoderEn", &code).await;
    assert!(
        said(&delivery).unwrap().contains("completed elsewhere"),
        "{delivery:?}"
    );
}

async fn a_code_typed_with_spaces_dashes_full_width_digits_or_a_word_before_matches() {
    let app = spawn_app().await;
    let full_width = |code: &str| -> String {
        code.chars()
            .map(|c| char::from_u32(u32::from(c) - u32::from('0') + u32::from('０')).unwrap())
            .collect()
    };
    let typings: [fn(&str) -> String; 4] = [
        |c| format!("{} {}", &c[..3], &c[3..]),
        |c| format!("{}-{}", &c[..3], &c[3..]),
        |c| format!("登录 {c}"),
        |c| format!("验证码：{} {}", &c[..3], &c[3..]),
    ];
    let typings = typings
        .into_iter()
        .map(|typed| Box::new(typed) as Box<dyn Fn(&str) -> String>)
        .chain([Box::new(full_width) as Box<dyn Fn(&str) -> String>]);
    for (n, typed) in typings.enumerate() {
        let (mut stream, _, code) = open_with_code(&app).await;
        let text = typed(&code);
        let openid = format!("oTyper{n}");
        let delivery = send(&app, &openid, &text).await;
        assert!(said(&delivery).unwrap().contains("登录成功"), "{text:?}");
        assert_login(&stream.next_json().await, &openid, "code");
    }
}

async fn a_wrong_code_is_answered_and_delivers_nothing() {
    let app = spawn_app().await;
    let (mut stream, _, code) = open_with_code(&app).await;
    let wrong = format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000);
    let delivery = send(&app, "oGuesser", &wrong).await;
    assert!(said(&delivery).unwrap().contains("无效"), "{delivery:?}");
    assert!(quiet(&mut stream).await);
    assert_eq!(app.scans("code_unmatched").await, 1);
    // A message that is not a code attempt is not wxlogin's to answer.
    for text in ["hello", "order 12345", "1234567"] {
        assert_eq!(send(&app, "oChatter", text).await.body, "success", "{text}");
    }
    assert!(quiet(&mut stream).await);

    // With FORWARD_URL, a code-shaped message that matches nothing goes downstream.
    let (url, downstream) = crate::ops::spawn_downstream(Duration::ZERO).await;
    let app = spawn_app_with(&[("FORWARD_URL", url.as_str())]).await;
    let (mut stream, _, code) = open_with_code(&app).await;
    let unmatched = format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000);
    let delivery = send(&app, "oOrder", &unmatched).await;
    assert_eq!(delivery.body, "<xml><Reply>from downstream</Reply></xml>");
    assert_eq!(downstream.seen.lock().unwrap().len(), 1);
    send(&app, "oOrder", &code).await;
    assert_login(&stream.next_json().await, "oOrder", "code");
    assert_eq!(
        downstream.seen.lock().unwrap().len(),
        1,
        "a matched code stays with wxlogin"
    );
}

async fn the_sixth_attempt_in_a_minute_is_not_matched_even_if_right() {
    let app = spawn_app().await;
    let (mut stream, _, code) = open_with_code(&app).await;
    for n in 0..5 {
        let guess = format!("{:06}", (code.parse::<u32>().unwrap() + 1 + n) % 1_000_000);
        let delivery = send(&app, "oBrute", &guess).await;
        assert!(said(&delivery).unwrap().contains("无效"), "guess {n}");
    }
    let delivery = send(&app, "oBrute", &code).await;
    assert!(
        said(&delivery).unwrap().contains("次数过多"),
        "{delivery:?}"
    );
    assert!(quiet(&mut stream).await);
    assert_eq!(app.scans("code_limited").await, 1);
    // Another sender is not held back, and the code is still live.
    send(&app, "oHonest", &code).await;
    assert_login(&stream.next_json().await, "oHonest", "code");
}

async fn wechat_retrying_an_attempt_does_not_use_up_the_senders_allowance() {
    let app = spawn_app().await;
    let (mut stream, _, code) = open_with_code(&app).await;
    let gh = app.fake.account().gh_id.clone();
    let base = code.parse::<u32>().unwrap();
    for n in 0..5u32 {
        let guess = format!("{:06}", (base + 1 + n) % 1_000_000);
        let xml = phone::text_xml(&gh, "oRetried", now_secs(), &guess, 100 + u64::from(n));
        let query = app.signed_query("oRetried");
        let first = app.post_callback(&query, xml.clone()).await;
        assert_eq!(first.status(), 200);
        assert!(first.text().await.unwrap().contains("无效"), "guess {n}");
        // WeChat retries each: under the same query, then under a new one.
        for query in [query, app.signed_query("oRetried")] {
            let retry = app.post_callback(&query, xml.clone()).await;
            assert_eq!(retry.status(), 200);
            assert!(
                !retry.text().await.unwrap().contains("次数过多"),
                "retry of {n}"
            );
        }
    }
    assert!(quiet(&mut stream).await);
    assert_eq!(app.scans("code_limited").await, 0);

    // The sixth distinct attempt is over the allowance, right or not.
    let delivery = send(&app, "oRetried", &code).await;
    assert!(
        said(&delivery).unwrap().contains("次数过多"),
        "{delivery:?}"
    );
    assert!(quiet(&mut stream).await);
    assert_eq!(app.scans("code_limited").await, 1);
}

async fn a_retried_text_message_delivers_once_and_its_query_with_another_body_is_refused() {
    let app = spawn_app().await;
    let (mut stream, _, code) = open_with_code(&app).await;
    let gh = app.fake.account().gh_id.clone();
    let xml = phone::text_xml(&gh, "oRetry", now_secs(), &code, 42);
    let query = app.signed_query("oRetry");
    let first = app.post_callback(&query, xml.clone()).await;
    assert_eq!(first.status(), 200);
    assert!(first.text().await.unwrap().contains("登录成功"));
    assert_login(&stream.next_json().await, "oRetry", "code");
    // WeChat retrying: the same query and body, then the same message under a new query.
    let again = app.post_callback(&query, xml.clone()).await;
    assert_eq!(again.status(), 200);
    let renewed = app.post_callback(&app.signed_query("oRetry"), xml).await;
    assert_eq!(renewed.status(), 200);
    assert!(!renewed.text().await.unwrap().contains("无效"));
    assert!(stream.ends_within(Duration::from_secs(2)).await);
    assert_eq!(app.scans("code").await, 1);

    // A message's signed query used again with another body (the code of another stream).
    let (mut victim, _, code) = open_with_code(&app).await;
    let query = app.signed_query("oTexter");
    let hello = phone::text_xml(&gh, "oTexter", now_secs(), "hello", 43);
    assert_eq!(app.post_callback(&query, hello).await.status(), 200);
    let forged = phone::text_xml(&gh, "oAttacker", now_secs(), &code, 44);
    assert_eq!(app.post_callback(&query, forged).await.status(), 401);
    assert!(quiet(&mut victim).await);
    // A bad signature delivers nothing either.
    let bad = query.replace("signature=", "signature=0");
    let forged = phone::text_xml(&gh, "oAttacker", now_secs(), &code, 45);
    assert_eq!(app.post_callback(&bad, forged).await.status(), 401);
    assert!(quiet(&mut victim).await);
}

async fn a_retried_code_after_a_login_is_answered_in_the_streams_language() {
    let app = spawn_app().await;
    let (mut en, _, code) = open_english_with_code(&app).await;
    let gh = app.fake.account().gh_id.clone();
    let xml = phone::text_xml(&gh, "oRetryEn", now_secs(), &code, 77);
    let query = app.signed_query("oRetryEn");
    let first = app.post_callback(&query, xml.clone()).await;
    assert!(first.text().await.unwrap().contains("logged in"));
    assert_login(&en.next_json().await, "oRetryEn", "code");

    // WeChat retrying, under the same query and under a new one: the same English answer.
    for query in [query, app.signed_query("oRetryEn")] {
        let retry = app.post_callback(&query, xml.clone()).await;
        assert_eq!(retry.status(), 200);
        let body = retry.text().await.unwrap();
        assert!(body.contains("logged in"), "{body}");
        assert!(!body.contains("登录"), "{body}");
    }
    assert!(en.ends_within(Duration::from_secs(2)).await);
    assert_eq!(app.scans("code").await, 1);
}

async fn a_resumed_stream_keeps_its_code() {
    let app = spawn_app().await;
    let mut stream = app.open().await;
    let event = stream.next_event().await;
    let first: Value = serde_json::from_str(&event.data).unwrap();
    drop(stream);
    let mut resumed = app.open_resuming(&event.id).await;
    let again = resumed.next_json().await;
    assert_eq!(again["scene_id"], first["scene_id"]);
    assert_eq!(again["login_code"], first["login_code"]);
    send(&app, "oResumer", first["login_code"].as_str().unwrap()).await;
    assert_login(&resumed.next_json().await, "oResumer", "code");
}

async fn code_only_mode_starts_without_an_appsecret_and_calls_no_wechat_api() {
    let account = wxlogin::sandbox::fake::FakeAccount::random();
    let app = spawn_app_for(
        account,
        &[
            ("LOGIN_MODES", "code"),
            ("SECRET_KEY", ""),
            ("ACCOUNT_QRCODE_URL", "https://example.com/follow.jpg"),
        ],
    )
    .await;
    app.wait_ready().await;
    let (mut stream, first, code) = open_with_code(&app).await;
    assert!(first.get("qrcode_url").is_none(), "{first}");
    assert!(first.get("qrcode_svg").is_none(), "{first}");
    assert_eq!(
        first["account_qrcode_url"],
        "https://example.com/follow.jpg"
    );
    let scene = first["scene_id"].as_str().unwrap();
    assert_eq!(app.get(&format!("/qrcode/{scene}.svg")).await.status(), 404);
    send(&app, "oNoQr", &code).await;
    assert_login(&stream.next_json().await, "oNoQr", "code");
    // A stream that waits in vain is told its code expired.
    let app_short = spawn_app_with(&[("LOGIN_MODES", "code"), ("SSE_TIMEOUT_SECS", "1")]).await;
    let (mut short, _, _) = open_with_code(&app_short).await;
    let timeout = short.next_json().await;
    assert_eq!(timeout["event"], "timeout");
    assert!(
        timeout["message"].as_str().unwrap().contains("验证码"),
        "{timeout}"
    );
    // A text that is not a code is not answered; the fake WeChat saw no call at all.
    assert_eq!(send(&app, "oNoQr", "hello").await.body, "success");
    let calls = app.fake.counters();
    assert_eq!(count(&calls.token_requests) + count(&calls.qr_requests), 0);
}

#[tokio::test]
async fn the_qr_and_code_stream_does_not_show_the_accounts_follow_qr() {
    let app = spawn_app_with(&[("ACCOUNT_QRCODE_URL", "https://example.com/follow.jpg")]).await;
    let (_stream, first, _) = open_with_code(&app).await;
    assert!(first.get("account_qrcode_url").is_none(), "{first}");
    // QR codes only: no login code, and a code-shaped text is the account's business.
    let app = spawn_app_with(&[("LOGIN_MODES", "qr")]).await;
    let (_stream, _, first) = app.open_with_qr().await;
    assert!(first.get("login_code").is_none(), "{first}");
    assert_eq!(send(&app, "oPlain", "123456").await.body, "success");
}

async fn an_expired_code_is_answered_and_delivers_nothing() {
    let app = spawn_app_with(&[("SSE_TIMEOUT_SECS", "1")]).await;
    let (mut stream, _, code) = open_with_code(&app).await;
    assert_eq!(stream.next_json().await["event"], "timeout");
    let delivery = send(&app, "oLate", &code).await;
    assert!(said(&delivery).unwrap().contains("无效"), "{delivery:?}");
    assert_eq!(app.scans("code").await, 0);
}

#[tokio::test]
async fn a_code_sent_to_another_instance_reaches_the_stream() {
    let apps = crate::helpers::spawn_instances(2, &[]).await;
    let (mut stream, _, code) = open_with_code(&apps[0]).await;
    apps[0]
        .phone
        .set_callback(format!("{}/wechat_event", apps[1].base));
    let delivery = send(&apps[1], "oElsewhere", &code).await;
    assert!(
        said(&delivery).unwrap().contains("登录成功"),
        "{delivery:?}"
    );
    assert_login(&stream.next_json().await, "oElsewhere", "code");
}

#[tokio::test]
async fn codes_live_at_once_on_two_instances_are_all_distinct() {
    let apps = crate::helpers::spawn_instances(2, &[("POOL_SIZE", "0")]).await;
    let mut streams = Vec::new();
    let mut codes = std::collections::HashSet::new();
    for n in 0..200 {
        let (stream, _, code) = open_with_code(&apps[n % 2]).await;
        assert!(codes.insert(code), "a code live on two streams");
        streams.push(stream);
    }
}

/// The bar: 10,000 streams waiting at once over two instances on one Redis, every
/// code live on one of them only. Each stream is opened by the login flow's own first step
/// (`LoginService::start`: draw a code, reserve it, open the session), as the stream route
/// does, without 10,000 sockets. Drawn from 10^6, about 50 draws hit a code live already and
/// are drawn again: a draw the flow did not retry would fail its stream's start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_streams_over_two_instances_on_redis_hold_distinct_codes() {
    use futures_util::StreamExt as _;
    use wxlogin::login::event::Lang;

    let apps = crate::helpers::spawn_instances(2, &[("LOGIN_MODES", "code")]).await;
    let started = std::time::Instant::now();
    let opened: Vec<_> = futures_util::stream::iter(0..10_000)
        .map(|n| {
            let login = apps[n % 2].login.clone();
            async move {
                let (view, attachment) = login.start(None, Lang::Zh).await.expect("opened");
                let code = view.code.expect("a login code").as_str().to_owned();
                (n % 2, code, attachment)
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;

    let codes: std::collections::HashSet<&str> =
        opened.iter().map(|(_, code, _)| code.as_str()).collect();
    assert_eq!(codes.len(), 10_000, "a code is live on two streams");
    // Each instance finds the other's codes naming the other's sessions.
    let crossed =
        futures_util::stream::iter(&opened)
            .map(|(by, code, attachment)| {
                let other = apps[1 - by].login.store();
                async move {
                    other.code_lookup(code).await.unwrap().as_ref() == Some(attachment.scene())
                }
            })
            .buffer_unordered(64);
    assert!(crossed.all(|ok| async move { ok }).await);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn safe_mode_codes_are_answered_encrypted() {
    let app = spawn_safe_app(&[]).await;
    let (mut stream, _, code) = open_with_code(&app).await;
    let delivery = send(&app, "oSafe", &code).await;
    assert!(delivery.body.contains("<Encrypt>"), "{delivery:?}");
    assert!(said(&delivery).unwrap().contains("登录成功"));
    assert_login(&stream.next_json().await, "oSafe", "code");
}
