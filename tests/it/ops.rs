//! Operations: metrics, limits, graceful shutdown, `wxlogin check`, OpenAPI, forwarding.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::routing::post;
use serde_json::Value;
use wxlogin::sandbox::fake::Fault;
use wxlogin::sandbox::phone::now_secs;

use crate::helpers::{TestApp, spawn_app, spawn_app_with};

/// The value of a sample line in the Prometheus text, 0 when absent.
/// A sample of the default account.
fn sample(text: &str, name_and_labels: &str) -> f64 {
    let series = crate::helpers::of_account(name_and_labels, "default");
    text.lines()
        .find_map(|l| l.strip_prefix(&series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn scrape(app: &TestApp) -> String {
    let r = app.get("/metrics").await;
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

#[tokio::test]
async fn metrics_move_as_a_login_happens() {
    let app = spawn_app().await;
    app.wait_ready().await;
    let before = scrape(&app).await;
    let (mut stream, scene, _) = app.open_with_qr().await;
    let during = scrape(&app).await;
    assert_eq!(sample(&during, "wxlogin_open_streams"), 1.0);
    app.scan(&scene, "oMetered", false).await;
    stream.next_json().await;
    // A retry of nothing, a forged callback.
    let r = app
        .post_callback("signature=x&timestamp=1&nonce=1", "<xml/>")
        .await;
    assert_eq!(r.status(), 401);
    let after = scrape(&app).await;

    let delta = |name: &str| sample(&after, name) - sample(&before, name);
    assert_eq!(delta(r#"wxlogin_streams_total{outcome="new"}"#), 1.0);
    assert_eq!(delta(r#"wxlogin_scans_total{outcome="delivered"}"#), 1.0);
    assert_eq!(
        delta(r#"wxlogin_callbacks_rejected_total{reason="bad_signature"}"#),
        1.0
    );
    assert!(delta("wxlogin_qr_made_total") >= 1.0, "the pool refilled");
    assert!(
        sample(
            &after,
            r#"wxlogin_wechat_api_calls_total{api="qrcode_create",result="ok"}"#
        ) >= 5.0
    );
    assert_eq!(
        sample(
            &after,
            r#"wxlogin_wechat_api_calls_total{api="stable_token",result="ok"}"#
        ),
        1.0
    );
    assert_eq!(delta("wxlogin_callback_duration_seconds_count"), 2.0);
    assert_eq!(delta("wxlogin_scan_to_push_seconds_count"), 1.0);
    assert!(after.contains("wxlogin_qr_stock{account=\"default\"} "));
    assert_eq!(sample(&after, "wxlogin_open_streams"), 0.0);
}

#[tokio::test]
async fn metrics_can_be_protected_by_a_token() {
    let app = spawn_app_with(&[("METRICS_TOKEN", "scrape-secret")]).await;
    assert_eq!(app.get("/metrics").await.status(), 401);
    let r = app
        .client
        .get(format!("{}/metrics", app.base))
        .bearer_auth("scrape-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

async fn open_from(app: &TestApp, xff: Option<&str>) -> (reqwest::StatusCode, Option<String>) {
    let mut request = app
        .client
        .get(format!("{}/sse?token={}", app.base, app.api_token));
    if let Some(xff) = xff {
        request = request.header("x-forwarded-for", xff);
    }
    let r = request.send().await.unwrap();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (r.status(), retry)
}

#[tokio::test]
async fn the_twenty_first_stream_from_one_ip_within_the_minute_gets_429() {
    let app = spawn_app_with(&[("SSE_PER_IP_PER_MIN", "20"), ("POOL_SIZE", "25")]).await;
    for i in 0..20 {
        // X-Forwarded-For from an untrusted peer is ignored: it changes nothing.
        let xff = format!("198.51.100.{i}");
        assert_eq!(open_from(&app, Some(&xff)).await.0, 200, "stream {i}");
    }
    let (status, retry) = open_from(&app, Some("203.0.113.1")).await;
    assert_eq!(status, 429);
    let retry: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_client_ip_has_its_own_allowance() {
    let app = spawn_app_with(&[
        ("SSE_PER_IP_PER_MIN", "2"),
        ("TRUSTED_PROXIES", "127.0.0.1"),
    ])
    .await;
    for _ in 0..2 {
        assert_eq!(open_from(&app, Some("198.51.100.1")).await.0, 200);
    }
    assert_eq!(open_from(&app, Some("198.51.100.1")).await.0, 429);
    assert_eq!(open_from(&app, Some("198.51.100.2")).await.0, 200);
    // A client cannot hide behind a spoofed entry left of the real one.
    assert_eq!(open_from(&app, Some("10.9.9.9, 198.51.100.1")).await.0, 429);
}

#[tokio::test]
async fn max_streams_reached_gives_503() {
    let app = spawn_app_with(&[("MAX_STREAMS", "3")]).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(app.open_with_qr().await);
    }
    let (status, retry) = open_from(&app, None).await;
    assert_eq!(status, 503);
    assert!(retry.is_some());
    drop(held);
    crate::helpers::wait_until(Duration::from_secs(5), || async {
        app.login.open_streams() == 0
    })
    .await;
    assert_eq!(open_from(&app, None).await.0, 200);
}

#[tokio::test]
async fn openapi_lists_every_endpoint_and_docs_are_served() {
    let app = spawn_app().await;
    let spec: Value = app.get("/openapi.json").await.json().await.unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/sse",
        "/wechat_event",
        "/qrcode/{file}",
        "/login/{scene}/status",
        "/login/verify",
        "/tokens",
        "/.well-known/jwks.json",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/docs",
        "/wxlogin.js",
        "/oauth/authorize",
        "/oauth/callback",
        "/oauth/result",
        "/wechat/{account}/access_token",
        "/wechat/{account}/access_token/refresh",
    ] {
        assert!(spec["paths"].get(path).is_some(), "{path} missing");
    }
    let docs = app.get("/docs").await;
    assert_eq!(docs.status(), 200);
    let html = docs.text().await.unwrap();
    assert!(html.contains("/openapi.json"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "nothing fetched from elsewhere"
    );
}

// ---------------------------------------------------------------- forwarding

/// A forwarded request as the downstream saw it: query string and body.
pub(crate) type Seen = (Option<String>, Bytes);

#[derive(Clone, Default)]
pub(crate) struct Downstream {
    pub(crate) seen: Arc<Mutex<Vec<Seen>>>,
    delay: Duration,
}

async fn downstream_handler(
    State(d): State<Downstream>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> ([(&'static str, &'static str); 1], &'static str) {
    d.seen.lock().unwrap().push((query, body));
    tokio::time::sleep(d.delay).await;
    (
        [("content-type", "application/xml")],
        "<xml><Reply>from downstream</Reply></xml>",
    )
}

/// A `FORWARD_URL` on a free loopback port that records what it is sent and answers after
/// `delay`.
pub(crate) async fn spawn_downstream(delay: Duration) -> (String, Downstream) {
    let d = Downstream {
        delay,
        ..Downstream::default()
    };
    let router = axum::Router::new()
        .route("/wx", post(downstream_handler))
        .with_state(d.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{addr}/wx"), d)
}

#[tokio::test]
async fn other_callbacks_are_forwarded_byte_for_byte_and_login_scans_are_not() {
    let (url, downstream) = spawn_downstream(Duration::ZERO).await;
    let app = spawn_app_with(&[("FORWARD_URL", url.as_str())]).await;
    let text = format!(
        "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[oTexter]]></FromUserName><CreateTime>{}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[你好]]></Content><MsgId>42</MsgId></xml>",
        now_secs()
    );
    let query = app.signed_query("oTexter");
    let r = app.post_callback(&query, text.clone()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.text().await.unwrap(),
        "<xml><Reply>from downstream</Reply></xml>"
    );
    {
        let seen = downstream.seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].0.as_deref(), Some(query.as_str()), "same query");
        assert_eq!(seen[0].1, Bytes::from(text), "same body");
    }
    // A login scan is ours: not forwarded.
    let (mut stream, scene, _) = app.open_with_qr().await;
    let delivery = app.scan(&scene, "oLogin", false).await;
    assert_eq!(delivery.body, "success");
    stream.next_json().await;
    // A scan of a QR code that is not ours is forwarded.
    let other = format!(
        "<xml><ToUserName>gh_1</ToUserName><FromUserName>oOther</FromUserName><CreateTime>{}</CreateTime><MsgType>event</MsgType><Event>SCAN</Event><EventKey>123123</EventKey></xml>",
        now_secs()
    );
    app.post_callback(&app.signed_query("oOther"), other).await;
    assert_eq!(downstream.seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_hanging_downstream_gives_success_within_five_seconds() {
    let (url, _downstream) = spawn_downstream(Duration::from_secs(30)).await;
    let app = spawn_app_with(&[("FORWARD_URL", url.as_str())]).await;
    let text = format!(
        "<xml><FromUserName>oX</FromUserName><CreateTime>{}</CreateTime><MsgType>text</MsgType><Content>hi</Content></xml>",
        now_secs()
    );
    let started = std::time::Instant::now();
    let r = app.post_callback(&app.signed_query("oX"), text).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "success");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// Serves `router` on a free loopback port; its base URL.
async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

/// Posts a signed text message (not a login scan, so it is forwarded); WeChat's answer.
async fn forward_a_message(app: &TestApp, openid: &str) -> String {
    let text = format!(
        "<xml><FromUserName>{openid}</FromUserName><CreateTime>{}</CreateTime><MsgType>text</MsgType><Content>hi</Content></xml>",
        now_secs()
    );
    let r = app.post_callback(&app.signed_query(openid), text).await;
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

#[tokio::test]
async fn a_redirecting_forward_url_is_not_followed() {
    // Where a redirect would take the signed callback: it must never be reached.
    let (elsewhere, elsewhere_seen) = spawn_downstream(Duration::ZERO).await;
    let answers = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let redirector = axum::Router::new().route(
        "/wx",
        post({
            let answers = Arc::clone(&answers);
            move || async move {
                // 307 would re-send the same POST body; 302 a GET.
                let n = answers.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let status = if n.is_multiple_of(2) { 307 } else { 302 };
                (
                    axum::http::StatusCode::from_u16(status).unwrap(),
                    [("location", elsewhere.clone())],
                    "moved",
                )
            }
        }),
    );
    let url = format!("{}/wx", serve(redirector).await);
    let app = spawn_app_with(&[("FORWARD_URL", url.as_str())]).await;
    assert_eq!(forward_a_message(&app, "oRedirect1").await, "success");
    assert_eq!(forward_a_message(&app, "oRedirect2").await, "success");
    assert_eq!(answers.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert!(elsewhere_seen.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn an_8_mib_downstream_answer_is_not_relayed() {
    const EIGHT_MIB: usize = 8 << 20;
    let downstream = axum::Router::new()
        // With a Content-Length: refused before reading.
        .route("/sized", post(|| async { "x".repeat(EIGHT_MIB) }))
        // Chunked, without one: refused once 64 KiB have come.
        .route(
            "/chunked",
            post(|| async {
                let chunks = (0..EIGHT_MIB / 65_536)
                    .map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 65_536])));
                axum::body::Body::from_stream(futures_util::stream::iter(chunks))
            }),
        )
        // Just under the limit: relayed.
        .route("/fits", post(|| async { "y".repeat(60 * 1024) }));
    let base = serve(downstream).await;
    for (path, relayed) in [("/sized", false), ("/chunked", false), ("/fits", true)] {
        let url = format!("{base}{path}");
        let app = spawn_app_with(&[("FORWARD_URL", url.as_str())]).await;
        let answer = forward_a_message(&app, "oBig").await;
        if relayed {
            assert_eq!(answer.len(), 60 * 1024, "{path}");
        } else {
            assert_eq!(answer, "success", "{path}");
        }
    }
}

// ---------------------------------------------------------------- wxlogin check

fn check(vars: &HashMap<&str, String>) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wxlogin"))
        .arg("check")
        .current_dir(dir.path())
        .env_clear()
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn check_passes_against_the_fake_and_names_a_wrong_secret() {
    let app = spawn_app().await;
    let account = app.fake.account();
    let mut vars: HashMap<&str, String> = HashMap::from([
        ("API_TOKEN", "check-api-token-123".to_owned()),
        ("APPID", account.appid.clone()),
        ("SECRET_KEY", account.secret.expose().to_owned()),
        ("MP_TOKEN", "mp".to_owned()),
        ("WECHAT_API_BASE", app.fake_base.clone()),
    ]);
    let (ok, text) = tokio::task::spawn_blocking({
        let vars = vars.clone();
        move || check(&vars)
    })
    .await
    .unwrap();
    assert!(ok, "{text}");
    assert!(
        text.contains("access token") && text.contains("QR code created"),
        "{text}"
    );

    // Login codes only: no appsecret, and WeChat's API is not called.
    let mut code_only = vars.clone();
    code_only.remove("SECRET_KEY");
    code_only.insert("LOGIN_MODES", "code".to_owned());
    code_only.insert("WECHAT_API_BASE", "http://127.0.0.1:1".to_owned());
    let (ok, text) = tokio::task::spawn_blocking(move || check(&code_only))
        .await
        .unwrap();
    assert!(ok, "{text}");
    assert!(text.contains("LOGIN_MODES=code"), "{text}");

    // Redis configured but unreachable (nothing listens on port 1): a clear line, no password.
    let mut with_redis = vars.clone();
    with_redis.insert("REDIS_URL", "redis://:hunter2pass@127.0.0.1:1/0".into());
    with_redis.insert(
        "LOGIN_TOKEN_SECRET",
        "a-shared-secret-of-at-least-32-chars!".into(),
    );
    let (ok, text) = tokio::task::spawn_blocking(move || check(&with_redis))
        .await
        .unwrap();
    assert!(!ok, "{text}");
    assert!(text.contains("FAIL Redis at"), "{text}");
    assert!(!text.contains("hunter2pass"), "{text}");

    // The Unix socket forms carry the password in the query.
    for url in [
        "unix:///nonexistent/redis.sock?db=3&pass=hunter2pass",
        "redis+unix:///nonexistent/redis.sock?user=alice&pass=hunter2pass&db=3",
    ] {
        let mut with_socket = vars.clone();
        with_socket.insert("REDIS_URL", url.into());
        with_socket.insert(
            "LOGIN_TOKEN_SECRET",
            "a-shared-secret-of-at-least-32-chars!".into(),
        );
        let (ok, text) = tokio::task::spawn_blocking(move || check(&with_socket))
            .await
            .unwrap();
        assert!(!ok, "{text}");
        assert!(text.contains("FAIL Redis at"), "{text}");
        assert!(
            text.contains("/nonexistent/redis.sock") && text.contains("db=3"),
            "{text}"
        );
        assert!(
            !text.contains("hunter2pass") && !text.contains("alice"),
            "{text}"
        );
    }

    // WeChat's own words are for the operator running the check (unlike /readyz).
    app.fake.fail_token(
        Fault::Body(
            r#"{"errcode":40164,"errmsg":"invalid ip 203.0.113.7, not in whitelist"}"#.into(),
        ),
        1,
    );
    let (ok, text) = tokio::task::spawn_blocking({
        let vars = vars.clone();
        move || check(&vars)
    })
    .await
    .unwrap();
    assert!(!ok);
    assert!(
        text.contains("40164") && text.contains("203.0.113.7") && text.contains("whitelist"),
        "{text}"
    );

    vars.insert("SECRET_KEY", "wrong-secret-value".into());
    let (ok, text) = tokio::task::spawn_blocking(move || check(&vars))
        .await
        .unwrap();
    assert!(!ok);
    assert!(text.contains("FAIL") && text.contains("40125"), "{text}");
    assert!(text.contains("SECRET_KEY"), "{text}");
    assert!(
        !text.contains("wrong-secret-value"),
        "the secret is never printed"
    );
}

// ---------------------------------------------------------------- graceful shutdown

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn sigterm_tells_every_stream_to_reconnect_finishes_callbacks_and_exits_cleanly() {
    use futures_util::StreamExt as _;

    let cancel = tokio_util::sync::CancellationToken::new();
    let fake =
        wxlogin::sandbox::fake::FakeWechat::new(wxlogin::sandbox::fake::FakeAccount::random());
    let fake_addr = wxlogin::sandbox::spawn_fake(&fake, cancel.clone())
        .await
        .unwrap();
    let (downstream_url, downstream) = spawn_downstream(Duration::from_millis(1500)).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let account = fake.account();
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_wxlogin"))
        .arg("serve")
        .current_dir(dir.path())
        .env_clear()
        .envs([
            ("API_TOKEN", "shutdown-test-token"),
            ("APPID", account.appid.as_str()),
            ("SECRET_KEY", account.secret.expose()),
            ("MP_TOKEN", account.mp_token.expose()),
            ("BIND", &format!("127.0.0.1:{port}")),
            ("WECHAT_API_BASE", &format!("http://{fake_addr}")),
            ("FORWARD_URL", downstream_url.as_str()),
            ("SSE_PER_IP_PER_MIN", "0"),
            ("SHUTDOWN_GRACE_SECS", "5"),
            ("RUST_LOG", "warn"),
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut child = Killed(child);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    // A separate process: poll until it answers.
    crate::helpers::wait_until(Duration::from_secs(20), || async {
        client.get(format!("{base}/healthz")).send().await.is_ok()
    })
    .await;

    let streams = futures_util::future::join_all((0..100).map(|_| async {
        let r = client
            .get(format!("{base}/sse?token=shutdown-test-token"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let mut events = eventsource_stream::Eventsource::eventsource(r.bytes_stream());
        let first = events.next().await.unwrap().unwrap();
        assert!(first.data.contains("scene_id"));
        events
    }))
    .await;

    // A callback in flight: its forward takes 1.5 s.
    let text = format!(
        "<xml><FromUserName>oInFlight</FromUserName><CreateTime>{}</CreateTime><MsgType>text</MsgType><Content>hi</Content></xml>",
        now_secs()
    );
    let query = wxlogin::sandbox::phone::signed_query(
        account.mp_token.expose(),
        now_secs(),
        &wxlogin::sandbox::phone::nonce(),
        "oInFlight",
    );
    let in_flight = tokio::spawn({
        let client = client.clone();
        let url = format!("{base}/wechat_event?{query}");
        async move {
            client
                .post(url)
                .body(text)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    });
    crate::helpers::wait_until(Duration::from_secs(5), || async {
        !downstream.seen.lock().unwrap().is_empty()
    })
    .await;

    let started = std::time::Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    let shutdowns =
        futures_util::future::join_all(streams.into_iter().map(|mut events| async move {
            let event = tokio::time::timeout(Duration::from_secs(5), events.next())
                .await
                .expect("an event before the grace ends")
                .expect("the stream still open")
                .expect("a well-formed event");
            (event.event, event.retry)
        }))
        .await;
    for (event, retry) in shutdowns {
        assert_eq!(event, "shutdown");
        assert_eq!(retry, Some(Duration::from_secs(1)));
    }
    assert_eq!(
        in_flight.await.unwrap(),
        "<xml><Reply>from downstream</Reply></xml>",
        "the callback in flight completed"
    );
    let status = tokio::task::spawn_blocking(move || child.0.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    cancel.cancel();
}
