//! The WeChat client against the fake with faults: token errors, busy, quota.

use std::time::Duration;

use wxlogin::sandbox::fake::Fault;

use crate::helpers::{count, spawn_app_with, wait_until};

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
