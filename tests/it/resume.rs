//! Resuming a dropped stream and polling: a result reaches only the stream that holds its key.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{TestApp, assert_login, count, spawn_app, spawn_app_with};

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
    a_scan_while_the_stream_was_gone_arrives_once_on_reconnect_with_the_same_qr,
    a_reconnect_while_waiting_resumes_and_receives_the_scan,
    polling_sees_pending_then_done_and_an_expired_scene_says_expired,
    a_scene_and_a_page_token_open_no_result_and_leave_the_stream_alone,
);
