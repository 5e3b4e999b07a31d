//! Redis Sentinel: the primary is killed (SIGKILL) while streams wait on two instances; the
//! sentinels promote the replica, wxlogin follows by itself, and every stream gets its login.

use std::sync::Arc;
use std::time::Duration;

use wxlogin::store::redis::RedisStore;
use wxlogin::store::{Store as _, StoreError};
use wxlogin::wechat::secret::Secret;

use crate::common::sentinel::SentinelSet;
use crate::helpers::{
    BACKEND, Backend, assert_login, login_of, scan_like_wechat, sentinel_settings, spawn_app,
    spawn_sentinel_instances, streams_through_a_failover, wait_until,
};

#[tokio::test]
async fn two_hundred_streams_on_two_instances_survive_a_sentinel_failover() {
    let apps = spawn_sentinel_instances(2, &[("POOL_SIZE", "20")]).await;
    let set = Arc::clone(apps[0].sentinel.as_ref().expect("on Sentinel"));
    set.wait_ready_for_failover();
    for app in &apps {
        app.wait_ready().await;
    }
    let mut old = None;
    let run = streams_through_a_failover(&apps, || old = Some(set.kill_primary())).await;
    let now = set.primary_port().expect("a primary");
    assert_ne!(Some(now), old, "the sentinels promoted the replica");
    assert!(
        run.reopened.is_some(),
        "new streams got 503 during the failover, then opened again"
    );
    for (n, seen) in run.readiness.iter().enumerate() {
        assert!(seen.went_down(), "instance {n}: /readyz went down");
        assert!(seen.came_back(), "instance {n}: /readyz came back");
    }
    run.print("failover");
    wait_until(Duration::from_secs(5), || async {
        apps[0].get("/readyz").await.status() == 200
    })
    .await;
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
