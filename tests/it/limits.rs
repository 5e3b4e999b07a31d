//! What one client, or anyone, may take: streams per client (an IPv6 client is its /64), open
//! streams per client and in all (`MAX_STREAMS`, exact under concurrent opens), and the daily
//! budget of QR codes, which keeps WeChat's quota for the account from being spent by strangers.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{
    Stream, TestApp, count, spawn_app_with, spawn_instances, spawn_instances_on, wait_until,
};

/// Opens `/sse` on `base` as a client behind a proxy that forwards for `xff`.
async fn open_as(app: &TestApp, base: &str, xff: &str) -> Stream {
    let response = app
        .client
        .get(format!("{base}/sse?token={}", app.api_token))
        .header("x-forwarded-for", xff)
        .send()
        .await
        .unwrap();
    Stream::from_response(response)
}

/// A refusal: its status, `Retry-After` in seconds, and the body's message.
async fn refusal(app: &TestApp, base: &str, xff: Option<&str>) -> (u16, u64, String) {
    let mut request = app
        .client
        .get(format!("{base}/sse?token={}", app.api_token));
    if let Some(xff) = xff {
        request = request.header("x-forwarded-for", xff);
    }
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap())
        .unwrap_or(0);
    let body: Value = r.json().await.unwrap_or_default();
    (
        status,
        retry,
        body["message"].as_str().unwrap_or("").to_owned(),
    )
}

/// The value of a sample in Prometheus text, `None` when absent.
/// A sample of the default account.
fn sample(text: &str, name: &str) -> Option<f64> {
    let series = crate::helpers::of_account(name, "default");
    text.lines()
        .find_map(|l| l.strip_prefix(&series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn streams_from_addresses_of_one_ipv6_network_share_one_allowance() {
    let app = spawn_app_with(&[
        ("SSE_PER_IP_PER_MIN", "2"),
        ("TRUSTED_PROXIES", "127.0.0.1"),
    ])
    .await;
    let base = app.base.clone();
    assert_eq!(open_as(&app, &base, "2001:db8:1:2::1").await.status, 200);
    assert_eq!(open_as(&app, &base, "2001:db8:1:2::ffff").await.status, 200);
    let (status, retry, message) = refusal(&app, &base, Some("2001:db8:1:2::1")).await;
    assert_eq!(status, 429, "{message}");
    assert!((1..=60).contains(&retry), "{retry}");
    assert!(message.contains("new streams"), "{message}");
    // The next /64 is another client.
    assert_eq!(open_as(&app, &base, "2001:db8:1:3::1").await.status, 200);
}

#[tokio::test]
async fn the_ipv6_prefix_setting_decides_which_addresses_are_one_client() {
    let app = spawn_app_with(&[
        ("SSE_PER_IP_PER_MIN", "1"),
        ("TRUSTED_PROXIES", "127.0.0.1"),
        ("SSE_IPV6_PREFIX", "128"),
    ])
    .await;
    let base = app.base.clone();
    assert_eq!(open_as(&app, &base, "2001:db8:1:2::1").await.status, 200);
    assert_eq!(open_as(&app, &base, "2001:db8:1:2::2").await.status, 200);
    assert_eq!(open_as(&app, &base, "2001:db8:1:2::1").await.status, 429);
}

#[tokio::test]
async fn a_dual_stack_listener_honours_an_ipv4_trusted_proxy() {
    let app = spawn_app_with(&[
        ("BIND", "[::]:0"),
        ("SSE_PER_IP_PER_MIN", "2"),
        ("TRUSTED_PROXIES", "127.0.0.1"),
    ])
    .await;
    // Over IPv4 to the IPv6 listener: the peer shows as ::ffff:127.0.0.1.
    let port = app.base.rsplit(':').next().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    for xff in [
        "198.51.100.1",
        "198.51.100.1",
        "198.51.100.2",
        "198.51.100.2",
    ] {
        // Were the proxy not recognised, all four would count against the proxy itself.
        assert_eq!(open_as(&app, &base, xff).await.status, 200, "{xff}");
    }
    let (status, retry, _) = refusal(&app, &base, Some("198.51.100.1")).await;
    assert_eq!(status, 429);
    assert!(retry >= 1);
}

#[tokio::test]
async fn a_client_holding_its_open_streams_gets_429_until_one_ends() {
    let app = spawn_app_with(&[("SSE_PER_IP_OPEN", "2"), ("TRUSTED_PROXIES", "127.0.0.1")]).await;
    let base = app.base.clone();
    let mut held = Vec::new();
    for _ in 0..2 {
        let stream = open_as(&app, &base, "198.51.100.7").await;
        assert_eq!(stream.status, 200);
        held.push(stream);
    }
    let (status, retry, message) = refusal(&app, &base, Some("198.51.100.7")).await;
    assert_eq!(status, 429);
    assert!(retry >= 1);
    assert!(message.contains("open streams"), "{message}");
    // Another client is not held back.
    let other = open_as(&app, &base, "198.51.100.8").await;
    assert_eq!(other.status, 200);
    // A stream that ends gives its place back.
    held.pop();
    // Its body is dropped when the server notices the client went away (a keep-alive fails).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let again = open_as(&app, &base, "198.51.100.7").await;
        if again.status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the place was not given back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn fifty_concurrent_opens_against_max_streams_10_hold_at_most_10() {
    // No stock: each stream waits on WeChat for its code, the widest window for an overshoot.
    let app = spawn_app_with(&[("MAX_STREAMS", "10"), ("POOL_SIZE", "0")]).await;
    let opened = futures_util::future::join_all((0..50).map(|_| app.open())).await;
    let (held, refused): (Vec<Stream>, Vec<Stream>) =
        opened.into_iter().partition(|s| s.status == 200);
    assert_eq!(held.len(), 10);
    assert!(refused.iter().all(|s| s.status == 503));
    assert!(
        refused
            .iter()
            .all(|s| s.headers.contains_key("retry-after"))
    );
    assert_eq!(
        count(&app.fake.counters().qr_created),
        10,
        "no code for a refused stream"
    );
    assert_eq!(app.login.open_streams(), 10);

    drop(held);
    wait_until(Duration::from_secs(5), || async {
        app.login.open_streams() == 0
    })
    .await;
    wait_until(Duration::from_secs(5), || async {
        let again = futures_util::future::join_all((0..10).map(|_| app.open())).await;
        again.iter().all(|s| s.status == 200)
    })
    .await;
}

async fn past_the_daily_budget_new_streams_get_503_and_a_resumed_stream_still_works() {
    let app = spawn_app_with(&[("QR_DAILY_BUDGET", "3"), ("POOL_SIZE", "0")]).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(app.open_with_id().await);
    }
    let asked = count(&app.fake.counters().qr_requests);

    let base = app.base.clone();
    let (status, retry, message) = refusal(&app, &base, None).await;
    assert_eq!(status, 503);
    assert!((1..=3600).contains(&retry), "{retry}");
    assert!(message.contains("daily QR code budget"), "{message}");
    assert_eq!(
        count(&app.fake.counters().qr_requests),
        asked,
        "WeChat is not asked past the budget"
    );

    let ready = app.get("/readyz").await;
    // Still ready: resumed streams and callbacks for the codes out are served.
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["pool"]["budget_exhausted"], true, "{body}");
    assert_eq!(body["pool"]["made_today"], 3, "{body}");
    assert_eq!(body["pool"]["budget"], 3, "{body}");
    let why = body["pool"]["last_error"].as_str().unwrap();
    assert!(why.contains("budget"), "{why}");

    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert_eq!(sample(&metrics, "wxlogin_qr_made_today"), Some(3.0));
    assert_eq!(sample(&metrics, "wxlogin_qr_daily_budget"), Some(3.0));
    assert_eq!(sample(&metrics, "wxlogin_qr_budget_exhausted"), Some(1.0));
    assert_eq!(
        sample(
            &metrics,
            r#"wxlogin_streams_refused_total{reason="budget_spent"}"#
        ),
        Some(1.0)
    );

    // A browser reconnecting to its session needs no new code.
    let (first, scene, id) = held.remove(0);
    drop(first);
    let mut resumed = app.open_resuming(&id).await;
    assert_eq!(resumed.status, 200);
    assert_eq!(resumed.next_json().await["scene_id"], scene.as_str());
    app.scan(&scene, "oAfterTheBudget", false).await;
    crate::helpers::assert_login(&resumed.next_json().await, "oAfterTheBudget", "SCAN");
}

async fn codes_in_stock_are_handed_out_after_the_budget_is_spent() {
    let app = spawn_app_with(&[("QR_DAILY_BUDGET", "3"), ("POOL_SIZE", "3")]).await;
    wait_until(Duration::from_secs(10), || async {
        let body: Value = app.get("/readyz").await.json().await.unwrap();
        body["pool"]["stock"] == 3
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(app.open_with_id().await);
    }
    let (status, retry, message) = refusal(&app, &app.base.clone(), None).await;
    assert_eq!(
        (status, message.contains("budget")),
        (503, true),
        "{message}"
    );
    assert!(retry >= 1);
    assert_eq!(count(&app.fake.counters().qr_requests), 3);
}

#[tokio::test]
async fn instances_share_one_daily_budget() {
    let apps = spawn_instances(2, &[("QR_DAILY_BUDGET", "3"), ("POOL_SIZE", "0")]).await;
    let (a, b) = (&apps[0], &apps[1]);
    let _held = [
        a.open_with_qr().await,
        a.open_with_qr().await,
        b.open_with_qr().await,
    ];
    for app in [a, b] {
        let (status, _, message) = refusal(app, &app.base.clone(), None).await;
        assert_eq!(status, 503, "{message}");
        assert!(message.contains("budget"), "{message}");
    }
    // An instance that starts later knows at once: the count is in the store.
    let c = spawn_instances_on(a, &[("QR_DAILY_BUDGET", "3"), ("POOL_SIZE", "0")]).await;
    let body: Value = c.get("/readyz").await.json().await.unwrap();
    assert_eq!(body["pool"]["made_today"], 3, "{body}");
    assert_eq!(body["pool"]["budget_exhausted"], true, "{body}");
    assert_eq!(count(&a.fake.counters().qr_requests), 3);
}

crate::helpers::on_every_backend!(
    fifty_concurrent_opens_against_max_streams_10_hold_at_most_10,
    past_the_daily_budget_new_streams_get_503_and_a_resumed_stream_still_works,
    codes_in_stock_are_handed_out_after_the_budget_is_spent,
);
