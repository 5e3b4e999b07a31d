//! The session semantics of `login::scenes` (attach, detach, resume, parked results, one
//! resolution per scene and per event) against every store, and across instances on one Redis;
//! the shared QR stock under concurrent takes and refills.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use wxlogin::login::Outcome;
use wxlogin::login::code::{CodeLength, LoginCode};
use wxlogin::login::event::Lang;
use wxlogin::login::event::{LoginResult, StreamKey};
use wxlogin::login::policy::new_scene;
use wxlogin::login::pool::QrCode;
use wxlogin::login::scenes::{Face, Resumed, Scenes, Status};
use wxlogin::store::memory::MemoryStore;
use wxlogin::store::redis::RedisStore;
use wxlogin::store::{Bound, Found, Inbox, StockedQr, Store, unix_now_ms};
use wxlogin::wechat::callback::{Binding, ScanKind};
use wxlogin::wechat::ids::{OpenId, Scene, Ticket};
use wxlogin::wechat::secret::Secret;

use crate::common::redis_server::RedisServer;
use crate::helpers::{BACKEND, Backend, Servers};

const TTL: Duration = Duration::from_secs(600);
/// How long a result handed to its stream is kept for a reconnect, in these tests.
const KEEP: Duration = Duration::from_secs(2);

/// One instance's view of the store: its scenes, listening for notices until dropped.
struct Instance {
    scenes: Scenes,
    store: Arc<dyn Store>,
    _stop: tokio_util::sync::DropGuard,
}

fn redis_store(redis: &RedisServer, name: &str) -> Arc<dyn Store> {
    Arc::new(RedisStore::new(&Secret::new(redis.url()), "wxtest", name.into()).unwrap())
}

async fn instance(store: Arc<dyn Store>) -> Instance {
    let scenes = Scenes::new(Arc::clone(&store), KEEP);
    let cancel = CancellationToken::new();
    let inbox: Arc<dyn Inbox> = Arc::new(scenes.clone());
    tokio::spawn(store.listen(inbox, cancel.clone()));
    // Listening (Redis: subscribed) before the test goes on.
    crate::helpers::wait_until(Duration::from_secs(5), || async {
        store.ping().await.is_ok()
    })
    .await;
    Instance {
        scenes,
        store,
        _stop: cancel.drop_guard(),
    }
}

/// An instance on the test's backend (and the Redis processes it needs).
async fn on_backend() -> (Instance, Option<Servers>) {
    let backend = BACKEND.try_with(|b| *b).unwrap_or(Backend::Memory);
    match Servers::start(backend) {
        None => (instance(Arc::new(MemoryStore::new())).await, None),
        Some(servers) => {
            let store: Arc<dyn Store> = Arc::new(servers.store("wxtest", "one").await);
            (instance(store).await, Some(servers))
        }
    }
}

fn qr() -> QrCode {
    QrCode {
        scene: new_scene(),
        ticket: Ticket::new("t"),
        content: "http://weixin.qq.com/q/x".into(),
        expires_at: Instant::now() + Duration::from_secs(600),
    }
}

fn result(openid: &str) -> LoginResult {
    LoginResult {
        unionid: None,
        openid: OpenId::new(openid),
        kind: ScanKind::Scan.into(),
        login_token: None,
        resolved_at: Instant::now(),
    }
}

fn later(secs: u64) -> Instant {
    Instant::now() + Duration::from_secs(secs)
}

/// The binding of a callback of its own (a fresh signed query).
fn fresh() -> Binding {
    let now = i64::try_from(unix_now_ms() / 1000).unwrap();
    Binding::new(rand::random(), b"<xml/>", now, now)
}

/// The binding of a callback signed now, its signature all `sig` bytes, with `body`.
fn bound(sig: u8, body: &str) -> Binding {
    let now = i64::try_from(unix_now_ms() / 1000).unwrap();
    Binding::new([sig; 20], body.as_bytes(), now, now)
}

async fn resolve(scenes: &Scenes, scene: &Scene, openid: &str) -> Outcome {
    scenes
        .resolve(
            scene,
            &fresh(),
            &format!("{openid}:{}", new_scene()),
            TTL,
            |_| result(openid),
        )
        .await
        .unwrap()
}

async fn a_scan_reaches_the_attached_stream_once() {
    let (one, _redis) = on_backend().await;
    let scenes = &one.scenes;
    let (view, mut attachment) = scenes.open(qr(), later(60), None).await.unwrap();
    let scene = view.qr.scene.clone();
    assert_eq!(resolve(scenes, &scene, "o1").await, Outcome::Delivered(()));
    assert_eq!(resolve(scenes, &scene, "o2").await, Outcome::Nobody);
    assert_eq!(
        (&mut attachment.result).await.unwrap().openid.as_str(),
        "o1"
    );
    assert_eq!(scenes.attached(), 0);
    // WeChat's retry of the event is recognised.
    let again = scenes
        .resolve(&scene, &fresh(), "o1:1", TTL, |_| result("o1"))
        .await;
    let retry = scenes
        .resolve(&scene, &fresh(), "o1:1", TTL, |_| result("o1"))
        .await;
    assert_eq!(again.unwrap(), Outcome::Nobody);
    assert_eq!(retry.unwrap(), Outcome::Duplicate { login: false });
}

async fn a_retried_login_is_a_duplicate_and_its_query_with_another_body_a_replay() {
    let (one, _redis) = on_backend().await;
    let scenes = &one.scenes;
    let (view, _attachment) = scenes.open(qr(), later(60), None).await.unwrap();
    let scene = view.qr.scene.clone();
    let first = scenes
        .resolve(&scene, &bound(0xaa, "x"), "o1:1", TTL, |_| result("o1"))
        .await;
    // WeChat's retry: the same event under a new query, or the same query and body.
    let again = scenes
        .resolve(&scene, &bound(0xbb, "x"), "o1:1", TTL, |_| result("o1"))
        .await;
    let same = scenes
        .resolve(&scene, &bound(0xaa, "x"), "o1:1", TTL, |_| result("o1"))
        .await;
    // A replay: the first query with another body.
    let replay = scenes
        .resolve(&scene, &bound(0xaa, "y"), "o2:1", TTL, |_| result("o2"))
        .await;
    assert_eq!(first.unwrap(), Outcome::Delivered(()));
    assert_eq!(again.unwrap(), Outcome::Duplicate { login: true });
    assert_eq!(same.unwrap(), Outcome::Duplicate { login: true });
    assert_eq!(replay.unwrap(), Outcome::Replayed);
}

/// `calls=N` of `command` in the server's `INFO commandstats`; 0 when it never ran.
fn calls(servers: &Servers, command: &str) -> Option<u64> {
    let Servers::Redis(redis) = servers else {
        return None;
    };
    let stats = redis.cli(&["INFO", "commandstats"]);
    let line = stats
        .lines()
        .find(|l| l.starts_with(&format!("cmdstat_{command}:")));
    Some(line.map_or(0, |l| {
        l.split(['=', ','])
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap()
    }))
}

async fn a_scan_without_a_session_binds_its_query_in_the_same_step() {
    let (one, servers) = on_backend().await;
    let store = &one.store;
    let nobody = new_scene();
    let callback = bound(0xcc, "x");
    let first = store.session_or_bind(&nobody, &callback).await.unwrap();
    if let Some(servers) = &servers {
        servers_reset(servers);
    }
    let retry = store.session_or_bind(&nobody, &callback).await.unwrap();
    let replay = store
        .session_or_bind(&nobody, &bound(0xcc, "y"))
        .await
        .unwrap();
    assert_eq!(first, Found::Bound(Bound::First));
    assert_eq!(retry, Found::Bound(Bound::Retry { login: false }));
    assert_eq!(replay, Found::Bound(Bound::Conflict));
    // One Redis: one script each, no read of the session of its own.
    if let Some(servers) = &servers
        && let Some(scripts) = calls(servers, "evalsha")
    {
        assert_eq!((scripts, calls(servers, "hmget")), (2, Some(0)));
    }

    // A scene with a session: read as `session` reads it, the binding left to its resolve.
    let (view, _attachment) = one.scenes.open(qr(), later(60), None).await.unwrap();
    let scene = view.qr.scene.clone();
    let callback = bound(0xdd, "x");
    let found = store.session_or_bind(&scene, &callback).await.unwrap();
    let session = store.session(&scene).await.unwrap().unwrap();
    assert_eq!(found, Found::Session(session));
    assert_eq!(store.bind(&callback).await.unwrap(), Bound::First);
    assert_eq!(
        resolve(&one.scenes, &scene, "o1").await,
        Outcome::Delivered(())
    );
}

/// Zeroes the command counts of a plain Redis.
fn servers_reset(servers: &Servers) {
    if let Servers::Redis(redis) = servers {
        redis.cli(&["CONFIG", "RESETSTAT"]);
    }
}

async fn the_result_is_built_with_the_sessions_audience_only_when_resolving() {
    let (one, _redis) = on_backend().await;
    let scenes = &one.scenes;
    let (view, _attachment) = scenes
        .open(qr(), later(60), Some("https://a.example".into()))
        .await
        .unwrap();
    let mut seen = None;
    scenes
        .resolve(&view.qr.scene, &bound(0xaa, "x"), "o1:1", TTL, |aud| {
            seen = aud.map(str::to_owned);
            result("o1")
        })
        .await
        .unwrap();
    assert_eq!(seen.as_deref(), Some("https://a.example"));
    let mut called = false;
    scenes
        .resolve(&new_scene(), &bound(0xbb, "x"), "o2:1", TTL, |_| {
            called = true;
            result("o2")
        })
        .await
        .unwrap();
    assert!(!called);
}

async fn a_scan_while_the_stream_is_away_is_parked_and_handed_over_on_resume() {
    let (one, _redis) = on_backend().await;
    let scenes = &one.scenes;
    let (view, attachment) = scenes.open(qr(), later(60), None).await.unwrap();
    let scene = view.qr.scene.clone();
    drop(attachment);
    assert_eq!(scenes.attached(), 0);
    // The store learns of the detachment on its own time (a task, with Redis).
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(resolve(scenes, &scene, "o1").await, Outcome::Parked);
    assert!(
        matches!(scenes.status(&scene, &view.key).await.unwrap(), Status::Done(r) if r.openid.as_str() == "o1")
    );
    match scenes.resume(&scene, &view.key, false).await.unwrap() {
        Some(Resumed::Result(v, r)) => {
            assert_eq!(r.openid.as_str(), "o1");
            assert_eq!(v.qr.content, view.qr.content, "the same QR code");
        }
        _ => panic!("no parked result"),
    }
    // A client that saw the result does not get it again.
    assert!(
        scenes
            .resume(&scene, &view.key, true)
            .await
            .unwrap()
            .is_none()
    );
}

/// A fresh QR code with `code` beside it, as a stream with login codes shows them.
fn face_with(code: &LoginCode) -> Face {
    Face {
        qr: qr(),
        code: Some(code.clone()),
        lang: Lang::Zh,
    }
}

async fn a_resolved_sessions_login_code_lapses_with_its_kept_result() {
    let (one, _redis) = on_backend().await;
    let (scenes, store) = (&one.scenes, &one.store);
    for parked in [false, true] {
        let code = LoginCode::random(CodeLength::DEFAULT);
        let face = face_with(&code);
        let scene = face.qr.scene.clone();
        assert!(
            store
                .code_reserve(code.as_str(), &scene, TTL)
                .await
                .unwrap()
        );
        let (_, attachment) = scenes.open_face(face, later(60), None).await.unwrap();
        let attachment = if parked {
            drop(attachment);
            // The store learns of the detachment on its own time (a task, with Redis).
            tokio::time::sleep(Duration::from_millis(50)).await;
            None
        } else {
            Some(attachment)
        };
        let resolved = resolve(scenes, &scene, "o1").await;
        assert_eq!(
            resolved,
            if parked {
                Outcome::Parked
            } else {
                Outcome::Delivered(())
            }
        );
        if let Some(mut attachment) = attachment {
            (&mut attachment.result).await.unwrap();
        }
        // While the result is kept, the code still names its session (a late sender is told
        // the login is over); after, it is free, not held to the end of the wait (600 s).
        assert_eq!(
            store.code_lookup(code.as_str()).await.unwrap(),
            Some(scene.clone())
        );
        tokio::time::sleep(KEEP + Duration::from_millis(300)).await;
        store.purge_expired();
        assert_eq!(
            store.code_lookup(code.as_str()).await.unwrap(),
            None,
            "parked: {parked}"
        );
        assert!(
            store
                .code_reserve(code.as_str(), &new_scene(), TTL)
                .await
                .unwrap()
        );
    }
    // A code that names another session is left alone.
    let code = LoginCode::random(CodeLength::DEFAULT);
    let other = new_scene();
    assert!(
        store
            .code_reserve(code.as_str(), &other, TTL)
            .await
            .unwrap()
    );
    let face = face_with(&code);
    let scene = face.qr.scene.clone();
    let _attached = scenes.open_face(face, later(60), None).await.unwrap();
    assert_eq!(resolve(scenes, &scene, "o2").await, Outcome::Delivered(()));
    tokio::time::sleep(KEEP + Duration::from_millis(300)).await;
    assert_eq!(store.code_lookup(code.as_str()).await.unwrap(), Some(other));
}

async fn a_delivered_result_is_kept_for_the_resume_window_and_a_parked_one_longer() {
    let (one, _redis) = on_backend().await;
    let scenes = &one.scenes;
    let (delivered, mut attachment) = scenes.open(qr(), later(60), None).await.unwrap();
    let (parked, away) = scenes.open(qr(), later(60), None).await.unwrap();
    drop(away);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (delivered, delivered_key) = (delivered.qr.scene, delivered.key);
    let (parked, parked_key) = (parked.qr.scene, parked.key);
    assert_eq!(
        resolve(scenes, &delivered, "o1").await,
        Outcome::Delivered(())
    );
    assert_eq!(resolve(scenes, &parked, "o2").await, Outcome::Parked);
    assert!((&mut attachment.result).await.is_ok());
    // Within the window, a stream whose browser missed the push gets the result again.
    assert!(matches!(
        scenes.status(&delivered, &delivered_key).await.unwrap(),
        Status::Done(_)
    ));
    assert!(matches!(
        scenes.resume(&delivered, &delivered_key, false).await.unwrap(),
        Some(Resumed::Result(_, r)) if r.openid.as_str() == "o1"
    ));
    tokio::time::sleep(KEEP + Duration::from_millis(200)).await;
    one.store.purge_expired();
    // After it, the delivered session is gone (memory stays bounded by logins in flight);
    // the parked result waits for its stream until the QR code expires.
    assert!(matches!(
        scenes.status(&delivered, &delivered_key).await.unwrap(),
        Status::Expired
    ));
    assert!(
        scenes
            .resume(&delivered, &delivered_key, false)
            .await
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        scenes.resume(&parked, &parked_key, false).await.unwrap(),
        Some(Resumed::Result(_, r)) if r.openid.as_str() == "o2"
    ));
    if let Some(live) = one.store.live_sessions() {
        assert_eq!(live, 1, "only the parked session is left");
    }
}

async fn a_resumed_stream_replaces_the_old_one_and_receives_the_scan() {
    let (one, _redis) = on_backend().await;
    let scenes = &one.scenes;
    let (view, mut old) = scenes.open(qr(), later(60), None).await.unwrap();
    let scene = view.qr.scene.clone();
    let Some(Resumed::Waiting(_, mut new)) = scenes.resume(&scene, &view.key, false).await.unwrap()
    else {
        panic!("not resumed")
    };
    assert_eq!(scenes.attached(), 1);
    assert!((&mut old.result).await.is_err(), "the replaced stream ends");
    assert_eq!(resolve(scenes, &scene, "o1").await, Outcome::Delivered(()));
    assert_eq!((&mut new.result).await.unwrap().openid.as_str(), "o1");
}

async fn a_closed_or_overdue_scene_resolves_nothing() {
    let (one, _redis) = on_backend().await;
    let scenes = &one.scenes;
    let (view, attachment) = scenes.open(qr(), later(60), None).await.unwrap();
    let scene = view.qr.scene.clone();
    assert!(attachment.close().await.is_none(), "no scan came");
    assert_eq!(scenes.attached(), 0);
    if let Some(live) = scenes.live() {
        assert_eq!(live, 0, "a closed session is removed");
    }
    assert_eq!(resolve(scenes, &scene, "late").await, Outcome::Nobody);
    assert!(matches!(
        scenes.status(&scene, &view.key).await.unwrap(),
        Status::Expired
    ));

    let (view, _attachment) = scenes.open(qr(), Instant::now(), None).await.unwrap();
    let scene = view.qr.scene.clone();
    assert_eq!(resolve(scenes, &scene, "late").await, Outcome::Nobody);
    assert!(
        scenes
            .resume(&scene, &view.key, false)
            .await
            .unwrap()
            .is_none()
    );
    assert!(scenes.content(&scene).await.unwrap().is_none());
}

async fn a_wrong_key_resumes_nothing_and_leaves_the_stream_waiting() {
    let (one, _redis) = on_backend().await;
    let scenes = &one.scenes;
    let (view, mut attachment) = scenes.open(qr(), later(60), None).await.unwrap();
    let scene = view.qr.scene.clone();
    let guess = StreamKey::random();
    assert!(
        scenes
            .resume(&scene, &guess, false)
            .await
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        scenes.status(&scene, &guess).await.unwrap(),
        Status::Expired
    ));
    // The real stream was not replaced: it still holds the scene and gets the scan.
    assert_eq!(
        resolve(scenes, &scene, "oReal").await,
        Outcome::Delivered(())
    );
    assert_eq!(
        (&mut attachment.result).await.unwrap().openid.as_str(),
        "oReal"
    );
    // Nor can the result be read with the wrong key once it is there.
    assert!(
        scenes
            .resume(&scene, &guess, false)
            .await
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        scenes.status(&scene, &view.key).await.unwrap(),
        Status::Done(_)
    ));
}

async fn a_scan_that_resolved_the_session_as_its_wait_ended_goes_to_the_stream() {
    let (one, _redis) = on_backend().await;
    let scenes = &one.scenes;
    let (view, attachment) = scenes.open(qr(), later(60), None).await.unwrap();
    let scene = view.qr.scene.clone();
    assert_eq!(
        resolve(scenes, &scene, "oLast").await,
        Outcome::Delivered(())
    );
    // The stream's deadline fires before it read its channel: instead of a timeout it sends
    // the result.
    let last = attachment.close().await;
    assert_eq!(last.unwrap().openid.as_str(), "oLast");
}

async fn a_result_whose_stream_just_went_is_kept_until_the_qr_code_expires() {
    let (one, _redis) = on_backend().await;
    let scenes = &one.scenes;
    let (view, mut attachment) = scenes.open(qr(), later(60), None).await.unwrap();
    let scene = view.qr.scene.clone();
    // The browser's stream is gone but has not detached yet: the store still names it.
    attachment.result.close();
    assert_eq!(resolve(scenes, &scene, "oAway").await, Outcome::Parked);
    drop(attachment);
    tokio::time::sleep(KEEP + Duration::from_millis(200)).await;
    one.store.purge_expired();
    // Past the resume window of a delivered result, it is still there for the browser.
    assert!(matches!(
        scenes.resume(&scene, &view.key, false).await.unwrap(),
        Some(Resumed::Result(_, r)) if r.openid.as_str() == "oAway"
    ));
}

async fn the_stock_hands_each_code_out_once_and_stays_within_its_target() {
    let (one, _redis) = on_backend().await;
    let store = &one.store;
    let names: Vec<String> = (0..30).map(|_| new_scene().as_str().to_owned()).collect();
    let granted = store
        .stock_reserve(&names, 20, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(granted, 20, "room for 20");
    for name in &names[..10] {
        let qr = StockedQr {
            scene: name.clone(),
            expires_ms: wxlogin::store::unix_now_ms() + 600_000,
            payload: format!("code-{name}"),
        };
        store.stock_put(&qr).await.unwrap();
    }
    for name in &names[10..20] {
        store.stock_release(name).await.unwrap();
    }
    assert_eq!(store.stock_len().await.unwrap(), 10);
    let more = store
        .stock_reserve(&names[20..], 15, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(more, 5, "10 in stock + 5 reserved = the target of 15");
    let taken = futures_util::future::join_all((0..12).map(|_| store.stock_take(0))).await;
    let taken: Vec<String> = taken
        .into_iter()
        .flatten()
        .flatten()
        .map(|q| q.payload)
        .collect();
    assert_eq!(taken.len(), 10);
    assert_eq!(taken.iter().collect::<HashSet<_>>().len(), 10);
}

crate::helpers::on_every_backend!(
    a_scan_reaches_the_attached_stream_once,
    a_retried_login_is_a_duplicate_and_its_query_with_another_body_a_replay,
    a_scan_without_a_session_binds_its_query_in_the_same_step,
    the_result_is_built_with_the_sessions_audience_only_when_resolving,
    a_scan_while_the_stream_is_away_is_parked_and_handed_over_on_resume,
    a_delivered_result_is_kept_for_the_resume_window_and_a_parked_one_longer,
    a_resolved_sessions_login_code_lapses_with_its_kept_result,
    a_resumed_stream_replaces_the_old_one_and_receives_the_scan,
    a_closed_or_overdue_scene_resolves_nothing,
    a_wrong_key_resumes_nothing_and_leaves_the_stream_waiting,
    a_scan_that_resolved_the_session_as_its_wait_ended_goes_to_the_stream,
    a_result_whose_stream_just_went_is_kept_until_the_qr_code_expires,
    the_stock_hands_each_code_out_once_and_stays_within_its_target,
);

#[tokio::test]
async fn across_instances_a_resume_takes_the_session_over_and_the_scan_follows_it() {
    let redis = RedisServer::start();
    let a = instance(redis_store(&redis, "a")).await;
    let b = instance(redis_store(&redis, "b")).await;
    let c = instance(redis_store(&redis, "c")).await;
    let (view, mut on_a) = a.scenes.open(qr(), later(60), None).await.unwrap();
    let scene = view.qr.scene.clone();
    // The browser reconnects to B: A's stream is told to end.
    let Some(Resumed::Waiting(_, mut on_b)) =
        b.scenes.resume(&scene, &view.key, false).await.unwrap()
    else {
        panic!("not resumed on B")
    };
    let ended = tokio::time::timeout(Duration::from_secs(2), &mut on_a.result).await;
    assert!(matches!(ended, Ok(Err(_))), "A's stream ends");
    // WeChat's callback lands on C; the result goes to B's stream.
    assert_eq!(
        resolve(&c.scenes, &scene, "oMoved").await,
        Outcome::Delivered(())
    );
    let got = tokio::time::timeout(Duration::from_secs(2), &mut on_b.result).await;
    assert_eq!(got.unwrap().unwrap().openid.as_str(), "oMoved");
}

#[tokio::test]
async fn across_instances_a_stream_whose_wait_ends_as_another_instance_resolves_it_gets_the_result()
{
    let redis = RedisServer::start();
    // A's notices are not heard (its subscription is down): only the store knows.
    let a = Scenes::new(redis_store(&redis, "a"), KEEP);
    let b = instance(redis_store(&redis, "b")).await;
    let (view, attachment) = a.open(qr(), later(60), None).await.unwrap();
    let scene = view.qr.scene.clone();
    assert!(matches!(
        resolve(&b.scenes, &scene, "oCrossed").await,
        Outcome::Parked | Outcome::Delivered(())
    ));
    let last = attachment.close().await;
    assert_eq!(last.unwrap().openid.as_str(), "oCrossed");
}

#[tokio::test]
async fn an_instance_back_from_an_outage_never_reopens_a_resolved_session() {
    let redis = RedisServer::start();
    let a = Scenes::new(redis_store(&redis, "a"), Duration::from_millis(200));
    let b = instance(redis_store(&redis, "b")).await;
    let (view, _attachment) = a.open(qr(), later(60), None).await.unwrap();
    let scene = view.qr.scene.clone();
    // Something hears A's inbox, but not A (its connection is about to drop): B's result
    // counts as delivered, kept only for the short resume window, and A never gets it.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut eavesdrop = client.get_async_pubsub().await.unwrap();
    eavesdrop
        .subscribe("wxlogin:wxtest:inbox:{a}")
        .await
        .unwrap();
    assert_eq!(
        resolve(&b.scenes, &scene, "oFirst").await,
        Outcome::Delivered(())
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    // A comes back and checks its streams: the session is resolved, not lost.
    a.recover().await;
    assert_eq!(resolve(&b.scenes, &scene, "oSecond").await, Outcome::Nobody);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_instances_a_scene_resolves_once_under_concurrent_scans() {
    let redis = RedisServer::start();
    let a = instance(redis_store(&redis, "a")).await;
    let b = instance(redis_store(&redis, "b")).await;
    for round in 0..20 {
        let (view, _on_a) = a.scenes.open(qr(), later(60), None).await.unwrap();
        let scene = view.qr.scene.clone();
        // Two different events for the same scene, one on each instance, at once.
        let (key_x, key_y) = (format!("oX:{round}"), format!("oY:{round}"));
        let (bind_x, bind_y) = (fresh(), fresh());
        let (x, y) = tokio::join!(
            a.scenes
                .resolve(&scene, &bind_x, &key_x, TTL, |_| result("oX")),
            b.scenes
                .resolve(&scene, &bind_y, &key_y, TTL, |_| result("oY")),
        );
        let outcomes = [x.unwrap(), y.unwrap()];
        let winners = outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Delivered(()) | Outcome::Parked))
            .count();
        assert_eq!(winners, 1, "{outcomes:?}");
    }
}
