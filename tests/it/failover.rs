//! Redis Sentinel: the primary is killed (SIGKILL) while streams wait on two instances; the
//! sentinels promote the replica, wxlogin follows by itself, and every stream gets its login.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde_json::Value;

use wxlogin::store::redis::RedisStore;
use wxlogin::store::{Store as _, StoreError};
use wxlogin::wechat::secret::Secret;

use crate::common::sentinel::SentinelSet;
use crate::helpers::{
    BACKEND, Backend, TestApp, assert_login, sentinel_settings, spawn_app,
    spawn_sentinel_instances, wait_until,
};

/// Streams waiting when the primary dies.
const STREAMS: usize = 200;
/// Streams whose browser went away and whose scan came before the failover: their results were
/// written before it, and the browsers' return after it gets each once.
const AWAY: usize = 20;
/// The pause between WeChat's attempts at one callback (WeChat waits 5 s; shorter here to keep
/// the suite quick: what is counted is whether a retry was needed, not how long it took).
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// The pause between two scans: the 200 callbacks come over 4 s, during the failover and after.
const SCAN_EVERY: Duration = Duration::from_millis(20);
/// Attempts before a login counts as lost.
const ATTEMPTS: u32 = 40;

/// What `/readyz` of an instance did while the test ran: down at some point, then up again.
#[derive(Default)]
struct Readiness {
    went_down: AtomicBool,
    came_back: AtomicBool,
}

/// Polls `/readyz` every 50 ms until `stop`.
async fn watch_readiness(app: &TestApp, seen: &Readiness, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let ready = app.get("/readyz").await.status() == 200;
        if !ready {
            seen.went_down.store(true, Ordering::Relaxed);
        } else if seen.went_down.load(Ordering::Relaxed) {
            seen.came_back.store(true, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Opens a stream every 100 ms until one opens after a refusal: when it opened again (503
/// with `Retry-After` meanwhile), or `None`.
async fn open_through_the_outage(app: &TestApp) -> Option<Instant> {
    let mut refused = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let stream = app.open().await;
        match stream.status.as_u16() {
            503 => {
                assert!(
                    stream.headers.contains_key("retry-after"),
                    "503 without Retry-After"
                );
                refused = true;
            }
            200 if refused => return Some(Instant::now()),
            200 => {}
            other => panic!("a new stream during the failover got {other}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Sends WeChat's callback for `scene` as WeChat does: the same event again after every
/// answer 5xx. The attempts it took.
async fn scan_like_wechat(app: &TestApp, scene: &str, openid: &str) -> u32 {
    let xml = app.scan_xml(scene, openid, wxlogin::sandbox::phone::now_secs());
    for attempt in 1..=ATTEMPTS {
        let response = app
            .post_callback(&app.signed_query(openid), xml.clone())
            .await;
        if response.status().is_success() {
            return attempt;
        }
        assert!(response.status().is_server_error(), "{}", response.status());
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    panic!("the callback for {openid} was refused {ATTEMPTS} times");
}

/// The login of a stream: read on, or (if the stream ended) resumed by its last event id as
/// EventSource does.
async fn login_of(app: &TestApp, mut stream: crate::helpers::Stream, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        while let Some(event) = stream.next_json_within(Duration::from_secs(30)).await {
            if event.get("userId").is_some() {
                assert!(
                    stream.ends_within(Duration::from_secs(5)).await,
                    "the stream ends after its result"
                );
                return event;
            }
        }
        assert!(Instant::now() < deadline, "no login for the stream of {id}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        stream = app.open_resuming(id).await;
    }
}

async fn two_hundred_streams_on_two_instances_get_their_scans_after_a_failover() {
    let apps = spawn_sentinel_instances(2, &[("POOL_SIZE", "20")]).await;
    let set = Arc::clone(apps[0].sentinel.as_ref().expect("on Sentinel"));
    set.wait_ready_for_failover();
    for app in &apps {
        app.wait_ready().await;
    }
    let mut waiting = Vec::new();
    for i in 0..STREAMS {
        let app = &apps[i % 2];
        let (stream, scene, id) = app.open_with_id().await;
        waiting.push((i, scene, id, stream));
    }
    let mut away = Vec::new();
    for i in 0..AWAY {
        let (stream, scene, id) = apps[i % 2].open_with_id().await;
        drop(stream);
        away.push((i, scene, id));
    }
    for app in &apps {
        wait_until(Duration::from_secs(10), || async {
            app.login.open_streams() == STREAMS / 2
        })
        .await;
    }
    for (i, scene, _) in &away {
        let openid = format!("oAway{i}");
        assert_eq!(scan_like_wechat(&apps[i % 2], scene, &openid).await, 1);
    }
    // The sessions reached the replica (asynchronous replication, on loopback: at once; the
    // results waited for it).
    tokio::time::sleep(Duration::from_millis(200)).await;

    let stop = AtomicBool::new(false);
    let readiness = [Readiness::default(), Readiness::default()];
    let retried = AtomicU32::new(0);
    let killed_at = Instant::now();
    let old = set.kill_primary();
    let watching = futures_util::future::join(
        watch_readiness(&apps[0], &readiness[0], &stop),
        watch_readiness(&apps[1], &readiness[1], &stop),
    );
    let scanning = async {
        // Callbacks spread over the failover and after it, to both instances.
        let logins = futures_util::stream::iter(waiting)
            .map(|(i, scene, id, stream)| {
                let (apps, retried) = (&apps, &retried);
                async move {
                    tokio::time::sleep(SCAN_EVERY * i as u32).await;
                    let openid = format!("oFailover{i}");
                    let app = &apps[i % 2];
                    let attempts = scan_like_wechat(&apps[(i / 2) % 2], &scene, &openid).await;
                    if attempts > 1 {
                        retried.fetch_add(1, Ordering::Relaxed);
                    }
                    let result = login_of(app, stream, &id).await;
                    assert_login(&result, &openid, "SCAN");
                }
            })
            .buffer_unordered(STREAMS)
            .collect::<Vec<()>>();
        // The browsers that went away come back during the failover, as EventSource does.
        let returns = futures_util::future::join_all(away.iter().map(|(i, _, id)| {
            let app = &apps[i % 2];
            async move {
                let back = login_of(app, app.open_resuming(id).await, id).await;
                assert_login(&back, &format!("oAway{i}"), "SCAN");
            }
        }));
        let (outage, logins, _) =
            futures_util::future::join3(open_through_the_outage(&apps[1]), logins, returns).await;
        stop.store(true, Ordering::Relaxed);
        (outage, logins.len())
    };
    let (_, (outage, logins)) = futures_util::future::join(watching, scanning).await;
    assert_eq!(logins, STREAMS);
    let reopened = outage.expect("new streams got 503 during the failover, then opened again");
    let now = set.primary_port().expect("a primary");
    assert_ne!(now, old, "the sentinels promoted the replica");
    for (n, seen) in readiness.iter().enumerate() {
        assert!(
            seen.went_down.load(Ordering::Relaxed),
            "instance {n}: /readyz went down"
        );
        assert!(
            seen.came_back.load(Ordering::Relaxed),
            "instance {n}: /readyz came back"
        );
    }
    // Every stream ended with its one result (login_of): WeChat's retries logged nobody in
    // twice.
    println!(
        "failover: new streams refused for {:.1} s after the kill; {} of {STREAMS} logins \
         (callbacks sent over {:.1} s from the kill) needed a WeChat retry (answered 5xx, sent \
         again); all {STREAMS} delivered once, the last {:.1} s after the kill",
        (reopened - killed_at).as_secs_f64(),
        retried.load(Ordering::Relaxed),
        (SCAN_EVERY * STREAMS as u32).as_secs_f64(),
        killed_at.elapsed().as_secs_f64()
    );
    wait_until(Duration::from_secs(5), || async {
        apps[0].get("/readyz").await.status() == 200
    })
    .await;
}

#[tokio::test]
async fn two_hundred_streams_on_two_instances_survive_a_sentinel_failover() {
    two_hundred_streams_on_two_instances_get_their_scans_after_a_failover().await;
}

/// A result that no replica acknowledged could be lost in a failover: WeChat is answered 503
/// and retries; the retry, acknowledged, is answered 200, and the stream got its login once.
#[tokio::test]
async fn a_result_no_replica_acknowledged_is_refused_to_wechat_and_its_retry_logs_in_once() {
    let app = BACKEND.scope(Backend::Sentinel, spawn_app()).await;
    let set = Arc::clone(app.sentinel.as_ref().expect("on Sentinel"));
    app.wait_ready().await;
    let (mut stream, scene, _) = app.open_with_qr().await;
    let xml = app.scan_xml(&scene, "oUnacked", wxlogin::sandbox::phone::now_secs());
    // The replica stops answering for a second: it acknowledges nothing meanwhile.
    let sleeper = {
        let set = Arc::clone(&set);
        std::thread::spawn(move || set.replica_cli(&["DEBUG", "SLEEP", "1"]))
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let first = app
        .post_callback(&app.signed_query("oUnacked"), xml.clone())
        .await;
    assert_eq!(first.status(), 503);
    sleeper.join().expect("redis-cli ran");
    let retry = app.post_callback(&app.signed_query("oUnacked"), xml).await;
    assert_eq!(retry.status(), 200);
    assert_login(&stream.next_json().await, "oUnacked", "SCAN");
    assert!(stream.ends_within(Duration::from_secs(2)).await);
}

/// A sentinel that hangs (stopped with SIGSTOP: it accepts connections and never answers),
/// first in `REDIS_SENTINELS`, does not keep wxlogin from the new primary: the others name it.
#[tokio::test]
async fn a_hung_sentinel_does_not_keep_wxlogin_from_the_new_primary() {
    let app = BACKEND.scope(Backend::Sentinel, spawn_app()).await;
    let set = Arc::clone(app.sentinel.as_ref().expect("on Sentinel"));
    set.wait_ready_for_failover();
    app.wait_ready().await;
    let (stream, scene, id) = app.open_with_id().await;
    set.pause_sentinel(0);
    let old = set.kill_primary();
    wait_until(Duration::from_secs(30), || async {
        set.primary_port().is_some_and(|p| p != old)
    })
    .await;
    scan_like_wechat(&app, &scene, "oPastAHang").await;
    assert_login(&login_of(&app, stream, &id).await, "oPastAHang", "SCAN");
    app.wait_ready().await;
}

/// `REDIS_PASSWORD` and `REDIS_DB` reach the primary the sentinels name: the store works there,
/// its keys in that database; without the password it is never served.
#[tokio::test]
async fn the_password_and_the_database_reach_the_primary_the_sentinels_name() {
    let set = SentinelSet::start_with_password(Some("s3cret-pw"));
    let mut settings = sentinel_settings(&set);
    settings.password = Some(Secret::new("s3cret-pw".to_owned()));
    settings.db = 3;
    let store = RedisStore::with_sentinel(&settings, "wxpw", "one".into()).unwrap();
    wait_until(Duration::from_secs(5), || async {
        matches!(store.ping().await, Ok(()) | Err(StoreError::InboxDown))
    })
    .await;
    assert!(
        store
            .claim_once("k1", Duration::from_secs(60))
            .await
            .unwrap()
    );
    assert_eq!(
        set.cli(&["-n", "3", "EXISTS", "wxlogin:wxpw:once:k1"])
            .trim(),
        "1"
    );
    assert_eq!(set.cli(&["-n", "0", "DBSIZE"]).trim(), "0");

    settings.password = None;
    let refused = RedisStore::with_sentinel(&settings, "wxpw", "two".into()).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(matches!(
        refused.ping().await,
        Err(StoreError::Unavailable(_))
    ));
}

/// `wxlogin check` finds the primary through the sentinels and pings it; with a wrong
/// `REDIS_PASSWORD` it fails, and the password is never printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wxlogin_check_pings_the_primary_the_sentinels_name() {
    let app = spawn_app().await;
    let set = SentinelSet::start_with_password(Some("s3cret-pw"));
    let account = app.fake.account();
    let run = |password: &str| {
        let vars: Vec<(&str, String)> = vec![
            ("API_TOKEN", "check-api-token-123".to_owned()),
            ("APPID", account.appid.clone()),
            ("SECRET_KEY", account.secret.expose().to_owned()),
            ("MP_TOKEN", "mp".to_owned()),
            ("WECHAT_API_BASE", app.fake_base.clone()),
            (
                "LOGIN_TOKEN_SECRET",
                "a-shared-secret-of-at-least-32-chars!".into(),
            ),
            ("REDIS_SENTINELS", set.sentinels()),
            ("REDIS_MASTER_NAME", "mymaster".into()),
            ("REDIS_PASSWORD", password.to_owned()),
        ];
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wxlogin"))
            .arg("check")
            .current_dir(dir.path())
            .env_clear()
            .envs(vars)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, text) = tokio::task::block_in_place(|| run("s3cret-pw"));
    assert!(ok, "{text}");
    assert!(text.contains("of REDIS_SENTINELS answers"), "{text}");
    assert!(!text.contains("s3cret-pw"), "{text}");
    let (ok, text) = tokio::task::block_in_place(|| run("wrong-pw"));
    assert!(!ok, "{text}");
    assert!(text.contains("FAIL Redis at"), "{text}");
    assert!(!text.contains("wrong-pw"), "{text}");
}
