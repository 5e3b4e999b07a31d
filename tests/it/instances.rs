//! Several instances of wxlogin on one redis-server: a callback on one instance
//! reaches the stream held by another, once; the shared stock never hands one code to two
//! streams; one access token for all; a killed instance's browser resumes on another; a
//! restarted Redis is survived without a restart of wxlogin.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use wxlogin::sandbox::fake::{FakeAccount, FakeWechat};
use wxlogin::sandbox::phone::now_secs;

use crate::common::redis_server::RedisServer;
use crate::helpers::{Stream, assert_login, count, instance_vars, spawn_instances, wait_until};

/// The callback body of `openid` scanning `scene`, created at `create_time`.
#[tokio::test]
async fn a_callback_on_instance_b_reaches_the_stream_on_instance_a_once() {
    let apps = spawn_instances(2, &[]).await;
    let (a, b) = (&apps[0], &apps[1]);
    a.wait_ready().await;
    b.wait_ready().await;
    let (mut on_a, scene, _) = a.open_with_qr().await;
    let (mut other_on_b, _, _) = b.open_with_qr().await;

    // WeChat's callback lands on B; its retries land on B and on A.
    let body = a.scan_xml(&scene, "oCrossInstance", now_secs());
    for target in [b, b, a] {
        let r = target
            .post_callback(&target.signed_query("oCrossInstance"), body.clone())
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "success");
    }

    let result = on_a.next_event().await;
    assert_last_of(&result.id, &scene);
    assert_login(
        &serde_json::from_str(&result.data).unwrap(),
        "oCrossInstance",
        "SCAN",
    );
    assert!(
        on_a.ends_within(Duration::from_secs(2)).await,
        "one result, then the end"
    );
    assert!(
        other_on_b
            .next_json_within(Duration::from_millis(300))
            .await
            .is_none(),
        "B's own stream got nothing"
    );
    assert_eq!(b.scans("delivered").await, 1);
    assert_eq!(a.scans("duplicate").await + b.scans("duplicate").await, 2);
    assert_eq!(a.scans("delivered").await, 0);
    wait_until(Duration::from_secs(2), || async {
        a.login.open_streams() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_streams_over_two_instances_get_distinct_codes_and_share_one_token() {
    let apps = spawn_instances(2, &[("POOL_SIZE", "10")]).await;
    let opened =
        futures_util::future::join_all((0..1000).map(|i| apps[i % 2].open_with_qr())).await;
    let scenes: HashSet<&str> = opened.iter().map(|(_, s, _)| s.as_str()).collect();
    let tickets: HashSet<&str> = opened
        .iter()
        .map(|(_, _, qr)| qr["qrcode_url"].as_str().unwrap())
        .collect();
    assert_eq!(scenes.len(), 1000, "one code per stream");
    assert_eq!(tickets.len(), 1000);
    assert_eq!(
        apps[0].login.open_streams() + apps[1].login.open_streams(),
        1000
    );
    let fake = apps[0].fake.counters();
    assert_eq!(
        count(&fake.tokens_issued),
        1,
        "one token refresh for both instances"
    );

    // The shared stock refills to its target, not to a multiple of it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let redis = apps[0].redis.as_ref().unwrap().lock().unwrap();
    let appid = &apps[0].fake.account().appid;
    let stock: usize = redis
        .cli(&["LLEN", &format!("wxlogin:{appid}:{{stock}}:codes")])
        .trim()
        .parse()
        .unwrap();
    assert!(stock <= 10, "stock {stock}");
    let made = count(&fake.qr_created) as usize;
    assert!(made <= 1000 + 10, "made {made}");
}

/// A `wxlogin serve` process; SIGKILLed when dropped.
struct Instance {
    child: Child,
    base: String,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn spawn_binary(
    fake: &FakeWechat,
    fake_addr: std::net::SocketAddr,
    redis: &RedisServer,
) -> Instance {
    let port = crate::common::free_port();
    let bind = format!("127.0.0.1:{port}");
    let vars = instance_vars(fake, fake_addr, Some(redis), &[("BIND", &bind)]);
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_wxlogin"))
        .arg("serve")
        .current_dir(dir.path())
        .env_clear()
        .envs(&vars)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("wxlogin runs");
    let instance = Instance {
        child,
        base: format!("http://{bind}"),
    };
    let client = reqwest::Client::new();
    wait_until(Duration::from_secs(10), || async {
        client
            .get(format!("{}/readyz", instance.base))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    instance
}

/// Asserts that `id` is the id of the last event of a stream on `scene`.
fn assert_last_of(id: &str, scene: &str) {
    let parsed = wxlogin::login::event::EventId::parse(id).expect("an event id");
    assert_eq!(
        (parsed.scene.as_str(), parsed.seen_last),
        (scene, true),
        "{id}"
    );
}

async fn open_stream(client: &reqwest::Client, base: &str, last_event_id: Option<&str>) -> Stream {
    let mut request = client.get(format!("{base}/sse?token={}", crate::helpers::API_TOKEN));
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    Stream::from_response(request.send().await.unwrap())
}

#[tokio::test]
async fn after_instance_a_is_killed_its_browsers_resume_on_b_and_get_their_scans() {
    let cancel = tokio_util::sync::CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let fake = FakeWechat::new(FakeAccount::random());
    let fake_addr = wxlogin::sandbox::spawn_fake(&fake, cancel.clone())
        .await
        .unwrap();
    let redis = RedisServer::start();
    let mut a = spawn_binary(&fake, fake_addr, &redis).await;
    let b = spawn_binary(&fake, fake_addr, &redis).await;
    let phone = wxlogin::sandbox::phone::Phone::new(fake.clone());
    phone.set_callback(format!("{}/wechat_event", b.base));
    let client = reqwest::Client::new();

    // Two browsers see their QR codes on A; then A dies.
    let mut first = open_stream(&client, &a.base, None).await;
    let event_1 = first.next_event().await;
    let qr_1: Value = serde_json::from_str(&event_1.data).unwrap();
    let mut second = open_stream(&client, &a.base, None).await;
    let event_2 = second.next_event().await;
    let qr_2: Value = serde_json::from_str(&event_2.data).unwrap();
    let scene_1 = qr_1["scene_id"].as_str().unwrap().to_owned();
    let scene_2 = qr_2["scene_id"].as_str().unwrap().to_owned();
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    drop((first, second));

    // The first browser reconnects to B, then its user scans.
    let mut resumed = open_stream(&client, &b.base, Some(&event_1.id)).await;
    let again = resumed.next_json().await;
    assert_eq!(again["scene_id"], scene_1.as_str(), "the same QR code");
    assert_eq!(again["qrcode_url"], qr_1["qrcode_url"]);
    let scene = wxlogin::wechat::ids::Scene::parse(&scene_1).unwrap();
    let delivery = phone
        .scan(
            &wxlogin::sandbox::phone::ScanTarget::Scene(scene),
            "oFirst",
            false,
        )
        .await
        .unwrap();
    assert_eq!(delivery.status, 200);
    let result = resumed.next_event().await;
    assert_last_of(&result.id, &scene_1);
    assert_login(
        &serde_json::from_str(&result.data).unwrap(),
        "oFirst",
        "SCAN",
    );
    assert!(resumed.ends_within(Duration::from_secs(2)).await);

    // The second user scans while no instance holds the stream; the browser reconnects.
    let scene = wxlogin::wechat::ids::Scene::parse(&scene_2).unwrap();
    let delivery = phone
        .scan(
            &wxlogin::sandbox::phone::ScanTarget::Scene(scene),
            "oSecond",
            true,
        )
        .await
        .unwrap();
    assert_eq!(delivery.status, 200);
    let mut late = open_stream(&client, &b.base, Some(&event_2.id)).await;
    assert_eq!(late.next_json().await["scene_id"], scene_2.as_str());
    let result = late.next_event().await;
    assert_last_of(&result.id, &scene_2);
    assert_login(
        &serde_json::from_str(&result.data).unwrap(),
        "oSecond",
        "subscribe",
    );
    assert!(late.ends_within(Duration::from_secs(2)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_is_survived_without_duplicates_and_readiness_follows_it() {
    let apps = spawn_instances(2, &[("POOL_SIZE", "2")]).await;
    let (a, b) = (&apps[0], &apps[1]);
    a.wait_ready().await;
    b.wait_ready().await;
    let (mut stream, scene, _) = a.open_with_qr().await;
    let body = a.scan_xml(&scene, "oThroughOutage", now_secs());
    let redis = apps[0].redis.clone().unwrap();

    redis.lock().unwrap().kill();
    // Readiness goes down; new streams and callbacks are refused so that they are retried.
    wait_until(Duration::from_secs(5), || async {
        a.get("/readyz").await.status() == 503 && b.get("/readyz").await.status() == 503
    })
    .await;
    let refused = b.open().await;
    assert_eq!(refused.status, 503);
    assert!(refused.headers.contains_key("retry-after"));
    let r = b
        .post_callback(&b.signed_query("oThroughOutage"), body.clone())
        .await;
    assert!(
        r.status().is_server_error(),
        "WeChat must retry: {}",
        r.status()
    );

    // Redis comes back empty; both instances recover by themselves.
    redis.lock().unwrap().restart();
    wait_until(Duration::from_secs(10), || async {
        a.get("/readyz").await.status() == 200 && b.get("/readyz").await.status() == 200
    })
    .await;

    // WeChat's retries now go through: delivered once, to A's stream, which was kept.
    for target in [b, a, b] {
        let r = target
            .post_callback(&target.signed_query("oThroughOutage"), body.clone())
            .await;
        assert_eq!(r.status(), 200);
    }
    let result = stream.next_event().await;
    assert_last_of(&result.id, &scene);
    assert_login(
        &serde_json::from_str(&result.data).unwrap(),
        "oThroughOutage",
        "SCAN",
    );
    assert!(
        stream.ends_within(Duration::from_secs(2)).await,
        "no second result"
    );
    let delivered = a.scans("delivered").await + b.scans("delivered").await;
    assert_eq!(delivered, 1);

    // And new logins work on both.
    for (app, openid) in [(a, "oAfterA"), (b, "oAfterB")] {
        let (mut s, scene, _) = app.open_with_qr().await;
        let r = app
            .post_callback(
                &app.signed_query(openid),
                app.scan_xml(&scene, openid, now_secs()),
            )
            .await;
        assert_eq!(r.status(), 200);
        assert_login(&s.next_json().await, openid, "SCAN");
    }
}

/// Counts what Redis sees per login with `MONITOR`: the commands instances send (round
/// trips) and the commands their scripts run inside Redis. `cargo test --test it
/// redis_operations -- --nocapture` prints the figures (README, "Several instances").
/// QR codes only; login codes on (the default) add their reservation (their lapse at login is
/// inside the resolving script).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_operations_per_login_are_few() {
    let qr = redis_operations_per_login("qr").await;
    assert!(qr <= 10.0, "{qr}");
    let both = redis_operations_per_login("qr,code").await;
    assert!(both <= qr + 1.5, "{both} against {qr}");
}

/// Round trips per login with `modes`, and the breakdown printed.
async fn redis_operations_per_login(modes: &str) -> f64 {
    use std::io::{BufRead, BufReader};
    const LOGINS: usize = 20;
    let apps = spawn_instances(2, &[("POOL_SIZE", "10"), ("LOGIN_MODES", modes)]).await;
    let (a, b) = (&apps[0], &apps[1]);
    a.wait_ready().await;
    b.wait_ready().await;
    let port = {
        let redis = a.redis.as_ref().unwrap().lock().unwrap();
        redis.url().rsplit(':').next().unwrap().to_owned()
    };
    let mut monitor = Command::new("redis-cli")
        .args(["-p", &port, "monitor"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = monitor.stdout.take().unwrap();
    let lines = std::thread::spawn(move || {
        BufReader::new(out)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    for i in 0..LOGINS {
        // The stream on A, WeChat's callback on B, the site's backend verifies on B.
        let (mut stream, scene, _) = a.open_with_qr().await;
        let openid = format!("oCounted{i:03}");
        let r = b
            .post_callback(
                &b.signed_query(&openid),
                a.scan_xml(&scene, &openid, now_secs()),
            )
            .await;
        assert_eq!(r.status(), 200);
        let result = stream.next_json().await;
        let verified = b
            .client
            .post(format!("{}/login/verify", b.base))
            .bearer_auth(&b.api_token)
            .json(&serde_json::json!({"login_token": result["login_token"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(verified.status(), 200);
    }
    // Let the refills of the stock the logins took finish.
    tokio::time::sleep(Duration::from_millis(500)).await;
    monitor.kill().unwrap();
    monitor.wait().unwrap();
    let lines = lines.join().unwrap();

    let command = |line: &str| {
        line.split('"')
            .nth(1)
            .unwrap_or_default()
            .to_ascii_uppercase()
    };
    let mut sent = std::collections::BTreeMap::<String, usize>::new();
    let mut scripted = std::collections::BTreeMap::<String, usize>::new();
    for line in lines.iter().filter(|l| l.contains('"')) {
        let map = if line.contains(" lua]") {
            &mut scripted
        } else {
            &mut sent
        };
        *map.entry(command(line)).or_default() += 1;
    }
    let per_login = |m: &std::collections::BTreeMap<String, usize>| {
        m.values().sum::<usize>() as f64 / LOGINS as f64
    };
    println!(
        "Redis commands over {LOGINS} logins (LOGIN_MODES={modes}; QR, scan on the other instance, verify):"
    );
    println!("  sent by instances: {sent:?}");
    println!("  run by scripts:    {scripted:?}");
    println!(
        "  per login: {:.1} round trips, {:.1} commands run inside scripts",
        per_login(&sent),
        per_login(&scripted)
    );
    per_login(&sent)
}

#[tokio::test]
async fn an_instance_started_while_redis_is_down_becomes_ready_when_it_comes_up() {
    let apps = spawn_instances(1, &[("POOL_SIZE", "1")]).await;
    let app = &apps[0];
    app.wait_ready().await;
    let redis = app.redis.clone().unwrap();
    redis.lock().unwrap().kill();
    // A second instance starts now, with Redis down: it starts, and says it is not ready.
    let late = crate::helpers::spawn_instances_on(app, &[("POOL_SIZE", "1")]).await;
    let ready = late.get("/readyz").await;
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["store"]["ok"], false);
    assert_eq!(late.open().await.status, 503);
    redis.lock().unwrap().restart();
    late.wait_ready().await;
    let (mut stream, scene, _) = late.open_with_qr().await;
    let r = late
        .post_callback(
            &late.signed_query("oLate"),
            late.scan_xml(&scene, "oLate", now_secs()),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_login(&stream.next_json().await, "oLate", "SCAN");
}
