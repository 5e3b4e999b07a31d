//! The store's login codes and attempts at them, against every store: a live code names one
//! scene until its life ends or its stream releases it, and is unique across the instances sharing a store; attempts are
//! counted per sender in a window.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use wxlogin::login::code::{CodeLength, LoginCode};
use wxlogin::login::policy::new_scene;
use wxlogin::store::memory::MemoryStore;
use wxlogin::store::redis::RedisStore;
use wxlogin::store::{Store, StoreError};
use wxlogin::wechat::ids::Scene;
use wxlogin::wechat::secret::Secret;

use crate::common::redis_server::RedisServer;
use crate::helpers::{BACKEND, Backend, Servers, on_every_backend};

/// A code's life in tests that do not wait for it to end.
const WAIT: Duration = Duration::from_secs(60);
/// A life short enough to wait for.
const SHORT: Duration = Duration::from_millis(200);

/// Two instances' views of the test's store: two clients of its Redis (with its processes,
/// kept until the test ends), or two handles on one memory store.
async fn two_instances() -> (Arc<dyn Store>, Arc<dyn Store>, Option<Servers>) {
    let backend = BACKEND.try_with(|b| *b).unwrap_or(Backend::Memory);
    match Servers::start(backend) {
        None => {
            let store = MemoryStore::new();
            (Arc::new(store.clone()), Arc::new(store), None)
        }
        Some(servers) => {
            let one: Arc<dyn Store> = Arc::new(servers.store("wxtest", "one").await);
            let two: Arc<dyn Store> = Arc::new(servers.store("wxtest", "two").await);
            (one, two, Some(servers))
        }
    }
}

fn code() -> String {
    LoginCode::random(CodeLength::DEFAULT).as_str().to_owned()
}

/// Sleeps past `life`, then purges (the memory store's periodic task).
async fn outlive(store: &dyn Store, life: Duration) {
    tokio::time::sleep(life + Duration::from_millis(50)).await;
    store.purge_expired();
}

async fn a_reserved_code_names_its_scene_and_cannot_be_reserved_again_while_live() {
    let (store, _, _redis) = two_instances().await;
    let (code, scene, other) = (code(), new_scene(), new_scene());
    assert_eq!(store.code_lookup(&code).await.unwrap(), None);

    assert!(store.code_reserve(&code, &scene, WAIT).await.unwrap());
    assert!(!store.code_reserve(&code, &other, WAIT).await.unwrap());

    assert_eq!(store.code_lookup(&code).await.unwrap(), Some(scene.clone()));
    // Looking up leaves the code in place.
    assert_eq!(store.code_lookup(&code).await.unwrap(), Some(scene));
}

async fn a_code_is_gone_after_its_life_and_can_be_reserved_again() {
    let (store, _, _redis) = two_instances().await;
    let (code, scene, next) = (code(), new_scene(), new_scene());
    assert!(store.code_reserve(&code, &scene, SHORT).await.unwrap());

    outlive(&*store, SHORT).await;

    assert_eq!(store.code_lookup(&code).await.unwrap(), None);
    assert!(store.code_reserve(&code, &next, WAIT).await.unwrap());
    assert_eq!(store.code_lookup(&code).await.unwrap(), Some(next));
}

async fn a_code_is_released_only_by_the_scene_it_names() {
    let (store, _, _redis) = two_instances().await;
    let (code, scene, stranger) = (code(), new_scene(), new_scene());
    assert!(store.code_reserve(&code, &scene, WAIT).await.unwrap());

    assert!(!store.code_release(&code, &stranger).await.unwrap());
    assert_eq!(store.code_lookup(&code).await.unwrap(), Some(scene.clone()));

    assert!(store.code_release(&code, &scene).await.unwrap());
    assert_eq!(store.code_lookup(&code).await.unwrap(), None);
    assert!(!store.code_release(&code, &scene).await.unwrap());
}

async fn a_stream_that_ended_late_does_not_release_the_code_of_the_next_one() {
    let (store, _, _redis) = two_instances().await;
    let (code, ended, next) = (code(), new_scene(), new_scene());
    assert!(store.code_reserve(&code, &ended, SHORT).await.unwrap());
    outlive(&*store, SHORT).await;
    assert!(store.code_reserve(&code, &next, WAIT).await.unwrap());

    assert!(!store.code_release(&code, &ended).await.unwrap());

    assert_eq!(store.code_lookup(&code).await.unwrap(), Some(next));
}

async fn attempts_are_counted_per_sender_and_start_again_after_the_window() {
    let (one, two, _redis) = two_instances().await;
    let window = Duration::from_secs(1);

    for n in 1..=5 {
        // Instances count together.
        let store = if n % 2 == 0 { &one } else { &two };
        assert_eq!(
            store
                .code_attempt("o1", &format!("m{n}"), window)
                .await
                .unwrap(),
            n
        );
    }
    assert_eq!(one.code_attempt("o2", "m20", window).await.unwrap(), 1);
    assert_eq!(one.code_attempt("o1", "m6", window).await.unwrap(), 6);

    outlive(&*one, window).await;

    assert_eq!(two.code_attempt("o1", "m7", window).await.unwrap(), 1);
    assert_eq!(one.code_attempt("o1", "m8", window).await.unwrap(), 2);
    assert_eq!(one.code_attempt("o2", "m21", window).await.unwrap(), 1);
}

async fn a_retried_message_is_counted_once_whichever_instance_sees_it() {
    let (one, two, _redis) = two_instances().await;
    let window = Duration::from_secs(60);

    for n in 1..=5 {
        let message = format!("m{n}");
        assert_eq!(one.code_attempt("o1", &message, window).await.unwrap(), n);
        // WeChat retries each message twice, to either instance: each gets its first count.
        assert_eq!(two.code_attempt("o1", &message, window).await.unwrap(), n);
        assert_eq!(one.code_attempt("o1", &message, window).await.unwrap(), n);
    }

    assert_eq!(two.code_attempt("o1", "m6", window).await.unwrap(), 6);
    assert_eq!(one.code_attempt("o1", "m3", window).await.unwrap(), 3);
}

async fn ten_thousand_codes_reserved_from_two_instances_are_distinct() {
    let (one, two, _redis) = two_instances().await;
    let draws: Vec<String> = (0..10_000).map(|_| code()).collect();
    let distinct: HashSet<&String> = draws.iter().collect();
    // Drawn from 10^6, about 50 of 10,000 repeat a code drawn before.
    assert!(distinct.len() < draws.len());

    let reserve = |(i, code): (usize, &String)| {
        let store = Arc::clone(if i % 2 == 0 { &one } else { &two });
        let code = code.clone();
        async move {
            let scene = new_scene();
            let won = store.code_reserve(&code, &scene, WAIT).await.unwrap();
            (i % 2, code, scene, won)
        }
    };
    let tries: Vec<(usize, String, Scene, bool)> =
        futures_util::stream::iter(draws.iter().enumerate())
            .map(reserve)
            .buffer_unordered(64)
            .collect()
            .await;

    let won: Vec<&(usize, String, Scene, bool)> = tries.iter().filter(|t| t.3).collect();
    let codes_won: HashSet<&String> = won.iter().map(|t| &t.1).collect();
    assert_eq!(codes_won.len(), won.len(), "a code was reserved twice");
    assert_eq!(won.len(), distinct.len(), "a fresh code was refused");

    let cross = futures_util::stream::iter(won)
        .map(|(by, code, scene, _)| {
            let (mine, other) = if *by == 0 { (&one, &two) } else { (&two, &one) };
            let (mine, other) = (Arc::clone(mine), Arc::clone(other));
            async move {
                let refused = !other.code_reserve(code, &new_scene(), WAIT).await.unwrap();
                let seen = other.code_lookup(code).await.unwrap();
                let kept = mine.code_lookup(code).await.unwrap();
                refused && seen.as_ref() == Some(scene) && kept.as_ref() == Some(scene)
            }
        })
        .buffer_unordered(64);
    assert!(cross.all(|ok| async move { ok }).await);
}

#[tokio::test]
async fn in_redis_codes_and_attempts_live_under_the_prefix_with_a_ttl_and_garbage_is_an_error() {
    let redis = RedisServer::start();
    let store = RedisStore::new(&Secret::new(redis.url()), "wxtest", "one".into()).unwrap();
    let mut raw = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let pttl = |key: &'static str| {
        let mut raw = raw.clone();
        async move {
            let ms: i64 = redis::cmd("PTTL")
                .arg(key)
                .query_async(&mut raw)
                .await
                .unwrap();
            ms
        }
    };
    let scene = new_scene();
    assert!(store.code_reserve("123456", &scene, WAIT).await.unwrap());
    assert_eq!(
        store
            .code_attempt("oSender", "m1", Duration::from_secs(2))
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.code_attempt("oSender", "m2", WAIT).await.unwrap(), 2);

    let code_ttl = pttl("wxlogin:wxtest:code:123456").await;
    assert!(code_ttl > 0 && code_ttl <= 60_000, "{code_ttl}");
    // The window is the first attempt's: a later attempt does not stretch it.
    let window_ttl = pttl("wxlogin:wxtest:attempts:oSender").await;
    assert!(window_ttl > 0 && window_ttl <= 2_000, "{window_ttl}");

    let _: () = redis::cmd("SET")
        .arg("wxlogin:wxtest:code:654321")
        .arg("not a scene!")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(matches!(
        store.code_lookup("654321").await,
        Err(StoreError::Corrupt { .. })
    ));
}

on_every_backend!(
    a_reserved_code_names_its_scene_and_cannot_be_reserved_again_while_live,
    a_code_is_gone_after_its_life_and_can_be_reserved_again,
    a_code_is_released_only_by_the_scene_it_names,
    a_stream_that_ended_late_does_not_release_the_code_of_the_next_one,
    attempts_are_counted_per_sender_and_start_again_after_the_window,
    a_retried_message_is_counted_once_whichever_instance_sees_it,
    ten_thousand_codes_reserved_from_two_instances_are_distinct,
);
