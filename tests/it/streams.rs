//! `/sse`: the first event, delivery of scans to their own stream, timeouts, single-use QR
//! codes, vanished clients.

use std::collections::HashSet;
use std::time::Duration;

use crate::helpers::{assert_login, count, spawn_app, spawn_app_with, wait_until};

async fn a_wrong_or_missing_token_gets_401_and_no_qr_code() {
    let app = spawn_app().await;
    app.wait_ready().await;
    let made = count(&app.fake.counters().qr_created);
    for query in ["token=wrong-token-xxxxxxxx", "", "token="] {
        let stream = app.open_with(query).await;
        assert_eq!(stream.status, 401, "{query:?}");
    }
    assert_eq!(app.login.open_streams(), 0);
    assert_eq!(count(&app.fake.counters().qr_created), made);
}

/// The id of a stream's last event, from its first one's.
fn last_id(first: &str) -> String {
    format!(
        "{}.1",
        first.strip_suffix(".0").expect("a first event's id")
    )
}

async fn the_first_event_carries_the_qr_code_with_sse_headers() {
    let app = spawn_app().await;
    let mut stream = app.open().await;
    assert_eq!(stream.status, 200);
    let h = &stream.headers;
    assert_eq!(h["content-type"], "text/event-stream");
    assert_eq!(h["cache-control"], "no-cache");
    assert_eq!(h["x-accel-buffering"], "no");
    assert_eq!(h["access-control-allow-origin"], "*");

    let event = stream.next_event().await;
    assert_eq!(event.event, "message", "default event type, for onmessage");
    let qr: serde_json::Value = serde_json::from_str(&event.data).unwrap();
    let scene = qr["scene_id"].as_str().unwrap();
    let id = wxlogin::login::event::EventId::parse(&event.id).expect("an id with the key");
    assert_eq!((id.scene.as_str(), id.seen_last), (scene, false));
    assert!(
        !event.data.contains(id.key.expose()),
        "the key is in the id only"
    );
    assert!(scene.len() >= 22, "at least 128 random bits");
    let info = app.fake.ticket_for_scene(scene).expect("made by WeChat");
    let url = qr["qrcode_url"].as_str().unwrap();
    let encoded = url
        .strip_prefix("https://mp.weixin.qq.com/cgi-bin/showqrcode?ticket=")
        .expect("WeChat's image address");
    assert!(
        !encoded.contains(['+', '/', '=']),
        "ticket not URL-encoded: {encoded}"
    );
    let decoded = percent_encoding::percent_decode_str(encoded)
        .decode_utf8()
        .unwrap();
    assert_eq!(decoded, info.ticket);
    let expire = qr["expire_seconds"].as_u64().unwrap();
    assert!((1700..=1800).contains(&expire), "{expire}");
    assert_eq!(qr["timeout_seconds"], 120);

    // The QR image is rendered here and decodes back to the ticket's url.
    let svg = app.get(qr["qrcode_svg"].as_str().unwrap()).await;
    assert_eq!(svg.status(), 200);
    assert_eq!(svg.headers()["content-type"], "image/svg+xml");
    assert!(svg.text().await.unwrap().contains("<svg"));
}

async fn a_scan_reaches_its_stream_which_then_ends() {
    let app = spawn_app().await;
    let (mut stream, scene, id) = app.open_with_id().await;
    let delivery = app.scan(&scene, "oFollower123", false).await;
    assert_eq!((delivery.status, delivery.body.as_str()), (200, "success"));
    let event = stream.next_event().await;
    assert_eq!(event.id, last_id(&id));
    let result: serde_json::Value = serde_json::from_str(&event.data).unwrap();
    assert_login(&result, "oFollower123", "SCAN");
    assert!(stream.ends_within(Duration::from_secs(2)).await);
    assert_eq!(app.login.open_streams(), 0);
}

async fn a_new_follower_scan_arrives_as_subscribe() {
    let app = spawn_app().await;
    let (mut stream, scene, _) = app.open_with_qr().await;
    app.scan(&scene, "oNewFollower", true).await;
    assert_login(&stream.next_json().await, "oNewFollower", "subscribe");
}

async fn two_hundred_concurrent_streams_get_distinct_codes_and_only_their_own_user() {
    let app = spawn_app_with(&[("POOL_SIZE", "10")]).await;
    let opened = futures_util::future::join_all((0..200).map(|_| app.open_with_qr())).await;
    let scenes: HashSet<&str> = opened.iter().map(|(_, s, _)| s.as_str()).collect();
    let tickets: HashSet<String> = opened
        .iter()
        .map(|(_, _, qr)| qr["qrcode_url"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(scenes.len(), 200);
    assert_eq!(tickets.len(), 200);
    assert_eq!(app.login.open_streams(), 200);

    let results = futures_util::future::join_all(opened.into_iter().enumerate().map(
        |(i, (mut stream, scene, _))| {
            let app = &app;
            async move {
                let openid = format!("oUser{i:04}");
                app.scan(&scene, &openid, i % 2 == 0).await;
                let result = stream.next_json().await;
                (openid, i, result)
            }
        },
    ))
    .await;
    for (openid, i, result) in results {
        assert_eq!(result["userId"], openid);
        assert_eq!(
            result["event"],
            if i % 2 == 0 { "subscribe" } else { "SCAN" }
        );
    }
    wait_until(Duration::from_secs(5), || async {
        app.login.open_streams() == 0
    })
    .await;
}

async fn a_stream_without_a_scan_ends_with_the_timeout_event() {
    let app = spawn_app_with(&[("SSE_TIMEOUT_SECS", "1")]).await;
    let (mut stream, _, id) = app.open_with_id().await;
    let event = stream.next_event().await;
    assert_eq!(event.id, last_id(&id));
    let timeout: serde_json::Value = serde_json::from_str(&event.data).unwrap();
    assert_eq!(timeout["event"], "timeout");
    assert!(timeout["message"].as_str().unwrap().contains("二维码"));
    assert!(stream.ends_within(Duration::from_secs(2)).await);

    let mut english = app
        .open_with(&format!("token={}&lang=en", app.api_token))
        .await;
    english.next_json().await;
    let timeout = english.next_json().await;
    assert!(timeout["message"].as_str().unwrap().contains("expired"));
}

async fn a_late_scan_of_an_ended_stream_logs_in_nobody() {
    // The FastAPI service recycled scene ids: A's late scan logged B in. Here it cannot.
    let app = spawn_app_with(&[("SSE_TIMEOUT_SECS", "1"), ("POOL_SIZE", "1")]).await;
    let (mut a, scene_a, _) = app.open_with_qr().await;
    assert_eq!(a.next_json().await["event"], "timeout");
    assert!(a.ends_within(Duration::from_secs(2)).await);

    let (mut b, scene_b, _) = app.open_with_qr().await;
    assert_ne!(scene_a, scene_b, "a code is never handed out twice");
    let delivery = app.scan(&scene_a, "oLateUserA", false).await;
    assert_eq!((delivery.status, delivery.body.as_str()), (200, "success"));
    assert_eq!(
        app.scans("undeliverable").await,
        1,
        "the late scan was delivered to nobody"
    );
    let next = b.next_json_within(Duration::from_millis(1500)).await;
    assert_eq!(next.map(|v| v["event"].clone()), Some("timeout".into()));
}

#[tokio::test]
async fn keep_alive_comments_flow_while_waiting() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(format!("{}/sse?token={}", app.base, app.api_token))
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    use futures_util::StreamExt;
    while !seen.contains("\n:") && tokio::time::Instant::now() < deadline {
        if let Ok(Some(Ok(chunk))) = tokio::time::timeout(Duration::from_secs(3), body.next()).await
        {
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
    assert!(
        seen.lines().any(|l| l.starts_with(':')),
        "no keep-alive comment in {seen:?}"
    );
}

async fn fifty_clients_that_vanish_mid_stream_leave_nothing_behind() {
    let app = spawn_app_with(&[("SSE_TIMEOUT_SECS", "2")]).await;
    let opened = futures_util::future::join_all((0..50).map(|_| app.open_with_qr())).await;
    assert_eq!(app.login.open_streams(), 50);
    let scenes: Vec<String> = opened.iter().map(|(_, s, _)| s.clone()).collect();
    drop(opened);
    // Keep-alives every second reveal the closed sockets: the streams are gone at once...
    wait_until(Duration::from_secs(5), || async {
        app.login.open_streams() == 0
    })
    .await;
    // ...and their sessions, kept for a reconnect, end with their wait.
    wait_until(Duration::from_secs(6), || async {
        app.login.live_scenes().unwrap_or_default() == 0
            && app
                .get(&format!("/qrcode/{}.svg", scenes[49]))
                .await
                .status()
                == 404
    })
    .await;
    for scene in &scenes {
        assert_eq!(app.get(&format!("/qrcode/{scene}.svg")).await.status(), 404);
    }
    let ready: serde_json::Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(ready["open_streams"], 0);
    if app.redis.is_none() && app.sentinel.is_none() && app.cluster.is_none() {
        assert_eq!(ready["live_scenes"], 0);
    }
    // Their scans now reach nobody.
    let delivery = app.scan(&scenes[0], "oGone", false).await;
    assert_eq!(delivery.status, 200);
    assert_eq!(app.scans("delivered").await, 0);
    assert_eq!(app.scans("parked").await, 0);
    assert_eq!(app.scans("undeliverable").await, 1);
}

async fn the_qr_image_of_an_unknown_scene_is_404() {
    let app = spawn_app().await;
    for path in [
        "/qrcode/AAAAAAAAAAAAAAAAAAAAAA.svg",
        "/qrcode/not a scene.svg",
        "/qrcode/x",
    ] {
        assert_eq!(app.get(path).await.status(), 404, "{path}");
    }
}

async fn health_and_readiness_answer() {
    let app = spawn_app().await;
    let health = app.get("/healthz").await;
    assert_eq!(health.status(), 200);
    app.wait_ready().await;
    let ready: serde_json::Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["pool"]["stock"], 5);
}

crate::helpers::on_every_backend!(
    a_wrong_or_missing_token_gets_401_and_no_qr_code,
    the_first_event_carries_the_qr_code_with_sse_headers,
    a_scan_reaches_its_stream_which_then_ends,
    a_new_follower_scan_arrives_as_subscribe,
    two_hundred_concurrent_streams_get_distinct_codes_and_only_their_own_user,
    a_stream_without_a_scan_ends_with_the_timeout_event,
    a_late_scan_of_an_ended_stream_logs_in_nobody,
    fifty_clients_that_vanish_mid_stream_leave_nothing_behind,
    the_qr_image_of_an_unknown_scene_is_404,
    health_and_readiness_answer,
);

/// How each stream of the race ended, and whether WeChat was told its scan logged somebody in.
#[derive(Debug, PartialEq, Eq)]
enum Raced {
    /// The scan was accepted (the login's reply) and the stream got its result.
    Delivered,
    /// The scan came too late (`success`) and the stream got its timeout.
    TimedOut,
}

/// Scans sent as each stream's wait ends, a few hundred times: an accepted scan always
/// reaches its stream, a refused one never does, and no stream gets two ends.
async fn a_scan_racing_the_timeout_is_delivered_or_refused_never_lost_or_doubled() {
    const STREAMS: usize = 100;
    const ROUNDS: usize = 3;
    let app = spawn_app_with(&[
        ("SSE_TIMEOUT_SECS", "1"),
        ("REPLY_TEXT", "已登录"),
        ("POOL_SIZE", "20"),
    ])
    .await;
    let app = &app;
    let mut outcomes = Vec::new();
    for round in 0..ROUNDS {
        let races = (0..STREAMS).map(|i| async move {
            let (mut stream, scene, _) = app.open_with_qr().await;
            // The wait ends about 1 s after the first event; scans are sent from 300 ms before
            // to 300 ms after, spread over the streams (a loaded machine delays their arrival).
            let offset = (i * 600 / STREAMS) as u64;
            tokio::time::sleep(Duration::from_millis(700 + offset)).await;
            let openid = format!("oRace{round}x{i}");
            let delivery = app.scan(&scene, &openid, false).await;
            assert_eq!(delivery.status, 200);
            // A login gets REPLY_TEXT; a scan too late is told so in another reply.
            let accepted = delivery
                .reply
                .as_deref()
                .and_then(wxlogin::sandbox::phone::reply_content)
                .is_some_and(|said| said == "已登录");
            let last = stream.next_json().await;
            let got_result = last.get("userId").is_some();
            if got_result {
                assert_eq!(last["userId"], openid.as_str());
            } else {
                assert_eq!(last["event"], "timeout", "{last}");
            }
            assert!(
                stream.ends_within(Duration::from_secs(3)).await,
                "one end only"
            );
            match (accepted, got_result) {
                (true, true) => Raced::Delivered,
                (false, false) => Raced::TimedOut,
                other => panic!("scan accepted / result delivered: {other:?}"),
            }
        });
        outcomes.extend(futures_util::future::join_all(races).await);
    }
    let delivered = outcomes.iter().filter(|o| **o == Raced::Delivered).count();
    // Both sides of the race were run into, or the test proves little.
    assert!(
        delivered > 0 && delivered < outcomes.len(),
        "{delivered} of {} delivered",
        outcomes.len()
    );
    assert_eq!(
        app.scans("delivered").await + app.scans("parked").await,
        delivered as u64
    );
}

crate::helpers::on_every_backend!(
    a_scan_racing_the_timeout_is_delivered_or_refused_never_lost_or_doubled
);
