//! The WeChat client against the fake with faults: token errors, busy, quota, numbers out of
//! range, odd bodies.

use std::sync::Arc;
use std::time::Duration;

use wxlogin::sandbox::fake::Fault;

use crate::helpers::{BACKEND, Backend, TestApp, assert_login, count, spawn_app_with, wait_until};

async fn a_rejected_token_leads_to_one_refresh_and_a_successful_retry() {
    // No stock: every stream makes its code on demand.
    let app = spawn_app_with(&[("POOL_SIZE", "0")]).await;
    let (_s1, _, _) = app.open_with_qr().await;
    let c = app.fake.counters();
    assert_eq!(count(&c.tokens_issued), 1);

    // WeChat says 40001 once. A plain fetch hands back the same token, so one forced
    // refresh follows; then the call is retried once and succeeds.
    app.fake.fail_qr(Fault::Errcode(40001), 1);
    let before = count(&c.qr_requests);
    let (_s2, _, _) = app.open_with_qr().await;
    assert_eq!(count(&c.tokens_issued), 2, "exactly one refresh");
    assert_eq!(count(&c.forced_refreshes), 1);
    assert_eq!(count(&c.qr_requests) - before, 2, "one retry");

    // Another program revokes the token (as /cgi-bin/token would): a plain fetch is enough.
    app.fake.revoke_token();
    let (_s3, _, _) = app.open_with_qr().await;
    assert_eq!(count(&c.tokens_issued), 3);
    assert_eq!(count(&c.forced_refreshes), 1, "no forced refresh needed");
}

async fn concurrent_streams_share_one_token_fetch() {
    let app = spawn_app_with(&[("POOL_SIZE", "0")]).await;
    let streams = futures_util::future::join_all((0..30).map(|_| app.open_with_qr())).await;
    assert_eq!(streams.len(), 30);
    assert_eq!(count(&app.fake.counters().token_requests), 1);
}

/// `faults` calls of qrcode/create fail with `errcode`; the service answers 503 with
/// Retry-After meanwhile and recovers by itself.
async fn outage_then_recovery(errcode: i64, faults: usize) {
    let app = spawn_app_with(&[("POOL_SIZE", "0")]).await;
    let (_ok, _, _) = app.open_with_qr().await;
    app.fake.fail_qr(Fault::Errcode(errcode), faults);
    let mut saw_503 = 0;
    let mut readyz_down = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut stream = app.open().await;
        if stream.status == 200 {
            assert!(stream.next_json().await["scene_id"].is_string());
            break;
        }
        assert_eq!(stream.status, 503);
        let retry_after: u64 = stream.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=300).contains(&retry_after));
        saw_503 += 1;
        readyz_down |= app.get("/readyz").await.status() == 503;
        assert!(tokio::time::Instant::now() < deadline, "no recovery");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(saw_503 > 0, "the outage was visible as 503");
    assert!(readyz_down, "readiness went down during the outage");
    wait_until(Duration::from_secs(5), || async {
        app.get("/readyz").await.status() == 200
    })
    .await;
}

async fn busy_wechat_gives_503_with_retry_after_then_recovers() {
    // The client retries -1 three times per call: six faults fail two calls.
    outage_then_recovery(-1, 6).await;
}

#[tokio::test]
async fn quota_exhaustion_gives_503_with_retry_after_then_recovers() {
    outage_then_recovery(45009, 2).await;
}

#[tokio::test]
async fn a_wrong_secret_is_reported_as_a_configuration_error() {
    let app = spawn_app_with(&[("POOL_SIZE", "1"), ("SECRET_KEY", "wrong-secret")]).await;
    let stream = app.open().await;
    assert_eq!(stream.status, 503);
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["pool"]["config_error"], true);
    let reason = body["pool"]["last_error"].as_str().unwrap();
    assert!(
        reason.contains("40125") && reason.contains("SECRET_KEY"),
        "{reason}"
    );
    assert!(!reason.contains("wrong-secret"));
}

#[tokio::test]
async fn a_slow_wechat_is_cut_off_by_the_call_timeout() {
    let app = spawn_app_with(&[("POOL_SIZE", "0"), ("WECHAT_TIMEOUT_MS", "300")]).await;
    let (_s, _, _) = app.open_with_qr().await;
    app.fake.fail_qr(Fault::Delay(Duration::from_secs(3)), 1);
    let started = tokio::time::Instant::now();
    let stream = app.open().await;
    assert_eq!(stream.status, 503);
    assert!(started.elapsed() < Duration::from_secs(2));
}

async fn an_idle_service_does_not_make_codes_beyond_its_stock() {
    let app = spawn_app_with(&[("POOL_SIZE", "3")]).await;
    app.wait_ready().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(&app.fake.counters().qr_created), 3);
    let (_s, _, _) = app.open_with_qr().await;
    wait_until(Duration::from_secs(3), || async {
        count(&app.fake.counters().qr_created) == 4
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        count(&app.fake.counters().qr_created),
        4,
        "one made per one taken"
    );
}

crate::helpers::on_every_backend!(
    a_rejected_token_leads_to_one_refresh_and_a_successful_retry,
    concurrent_streams_share_one_token_fetch,
    busy_wechat_gives_503_with_retry_after_then_recovers,
    an_idle_service_does_not_make_codes_beyond_its_stock,
);

// ---------------------------------------------------------------- answers out of range

/// Logs in `n` times through codes made on demand.
async fn log_in(app: &TestApp, n: usize) {
    for i in 0..n {
        let (mut stream, scene, _) = app.open_with_qr().await;
        let openid = format!("oRange{i}");
        assert_eq!(app.scan(&scene, &openid, false).await.body, "success");
        assert_login(&stream.next_json().await, &openid, "SCAN");
    }
}

async fn a_token_life_of_zero_negative_or_2_pow_62_is_clamped_and_logins_work() {
    for reported in [0, -7200, 1_i64 << 62] {
        // No stock: no token is fetched before the fake is told what to report.
        let app = spawn_app_with(&[("POOL_SIZE", "0")]).await;
        app.fake.report_token_life(Some(reported));
        log_in(&app, 4).await;
        // Taken at face value, 0 would fetch a token for every code, and 2^62 s would
        // overflow the clock: clamped, the first token serves every login.
        assert_eq!(
            count(&app.fake.counters().token_requests),
            1,
            "expires_in {reported}"
        );
        assert_eq!(
            app.get("/readyz").await.status(),
            200,
            "expires_in {reported}"
        );
    }
}

#[tokio::test]
async fn a_qr_code_said_to_live_too_short_is_not_handed_out() {
    // The stream waits 120 s: a code that lives 0 or 30 s is of no use to it.
    for reported in [0, 30, -5] {
        let app = spawn_app_with(&[("POOL_SIZE", "0")]).await;
        app.fake.report_qr_life(Some(reported));
        let stream = app.open().await;
        assert_eq!(stream.status, 503, "expire_seconds {reported}");
        let body = app.get("/readyz").await.text().await.unwrap();
        assert!(body.contains("too short"), "{body}");
    }
}

#[tokio::test]
async fn a_qr_code_said_to_live_for_ages_lives_as_long_as_asked() {
    let app = spawn_app_with(&[("POOL_SIZE", "0"), ("QR_TTL_SECS", "600")]).await;
    app.fake.report_qr_life(Some(1 << 62));
    let (_stream, _, qr) = app.open_with_qr().await;
    let life = qr["expire_seconds"].as_u64().unwrap();
    assert!((590..=600).contains(&life), "{qr}");
    log_in(&app, 1).await;
}

/// Opens streams until one gets a code; panics after 15 s. How many were refused.
async fn open_until_served(app: &TestApp) -> usize {
    let mut refused = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let mut stream = app.open().await;
        if stream.status == 200 {
            assert!(stream.next_json().await["scene_id"].is_string());
            return refused;
        }
        assert_eq!(stream.status, 503);
        refused += 1;
        assert!(tokio::time::Instant::now() < deadline, "no recovery");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn an_oversized_or_malformed_wechat_reply_is_an_error_and_the_service_recovers() {
    let huge: Arc<str> = format!(r#"{{"errcode":0,"pad":"{}"}}"#, "x".repeat(8 << 20)).into();
    // Token replies on one app, QR replies on another (each failure doubles the backoff).
    let tokens = spawn_app_with(&[("POOL_SIZE", "0")]).await;
    tokens.fake.fail_token(Fault::Body(huge.clone()), 1);
    tokens
        .fake
        .fail_token(Fault::Body(r#"{"access_token":"#.into()), 1);
    let codes = spawn_app_with(&[("POOL_SIZE", "0")]).await;
    codes.fake.fail_qr(Fault::Body(huge), 1);
    codes
        .fake
        .fail_qr(Fault::Body("<html>bad gateway</html>".into()), 1);
    let (a, b) = tokio::join!(open_until_served(&tokens), open_until_served(&codes));
    assert!(a >= 2 && b >= 2, "each odd reply failed a stream: {a}, {b}");
    assert_eq!(count(&tokens.fake.counters().token_requests), 3);
    assert_eq!(count(&codes.fake.counters().qr_requests), 3);
    log_in(&tokens, 1).await;
    log_in(&codes, 1).await;
}

/// WeChat's errmsg for 40164 names the caller's IP: the server's egress address.
const WHITELIST_REFUSAL: &str = r#"{"errcode":40164,"errmsg":"invalid ip 203.0.113.7 ipv6 ::ffff:203.0.113.7, not in whitelist rid: 6651a3f1-2c3d4e5f"}"#;

#[tokio::test]
async fn readyz_names_the_errcode_but_not_wechats_errmsg() {
    let app = spawn_app_with(&[("POOL_SIZE", "0")]).await;
    app.fake
        .fail_token(Fault::Body(WHITELIST_REFUSAL.into()), 1);
    assert_eq!(app.open().await.status, 503);
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 503);
    let body = ready.text().await.unwrap();
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let reason = json["pool"]["last_error"].as_str().unwrap();
    assert!(
        reason.contains("40164") && reason.contains("whitelist"),
        "{reason}"
    );
    assert_eq!(json["pool"]["config_error"], true);
    for leak in ["203.0.113.7", "invalid ip", "rid:", "6651a3f1"] {
        assert!(!body.contains(leak), "{leak} in {body}");
    }
}

#[tokio::test]
async fn a_stopped_redis_is_reported_by_readyz_without_its_error_text() {
    let app = BACKEND
        .scope(Backend::Redis, spawn_app_with(&[("POOL_SIZE", "1")]))
        .await;
    app.wait_ready().await;
    let redis = app.redis.clone().unwrap();
    let port = redis
        .lock()
        .unwrap()
        .url()
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    redis.lock().unwrap().kill();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let body = loop {
        let r = app.get("/readyz").await;
        if r.status() == 503 {
            break r.text().await.unwrap();
        }
        assert!(tokio::time::Instant::now() < deadline, "still ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["store"]["ok"], false, "{body}");
    assert!(
        json["store"]["error"].as_str().unwrap().contains("Redis"),
        "{body}"
    );
    for raw in [
        "os error",
        "refused",
        "Connection",
        "broken pipe",
        "Io",
        port.as_str(),
    ] {
        assert!(!body.contains(raw), "{raw} in {body}");
    }
}

crate::helpers::on_every_backend!(
    a_token_life_of_zero_negative_or_2_pow_62_is_clamped_and_logins_work,
);
