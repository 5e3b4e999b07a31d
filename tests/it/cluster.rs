//! Redis Cluster (`REDIS_CLUSTER_URLS`): many streams over two instances, each scan sent to
//! the instance that does not hold its stream, on three primaries; and a primary killed
//! (SIGKILL) while streams wait, its replica promoted, every stream still getting its login.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde_json::Value;

use crate::common::cluster::RedisCluster;
use crate::helpers::{
    Servers, Stream, TestApp, assert_login, spawn_cluster_instances, spawn_instances_sharing,
    streams_through_a_failover, wait_until,
};

/// Streams open at once over the two instances.
const STREAMS: usize = 1000;
/// Streams opened, or scans sent, at a time: many in flight, far fewer than the streams, so
/// that the machine is busy without a thousand connections racing each other.
const IN_FLIGHT: usize = 50;

fn openid(i: usize) -> String {
    format!("oCluster{i}")
}

/// Opens `STREAMS` streams, alternating instances: `(index, stream, scene, first event)`, in
/// index order.
async fn open_streams(apps: &[TestApp]) -> Vec<(usize, Stream, String, Value)> {
    let mut opened: Vec<_> = futures_util::stream::iter(0..STREAMS)
        .map(|i| async move {
            let (stream, scene, qr) = apps[i % 2].open_with_qr().await;
            (i, stream, scene, qr)
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    opened.sort_by_key(|(i, ..)| *i);
    opened
}

#[tokio::test]
async fn a_thousand_streams_on_a_cluster_get_distinct_codes_and_scans_sent_to_the_other_instance() {
    let apps = spawn_cluster_instances(2, &[("POOL_SIZE", "50")]).await;
    let cluster = Arc::clone(apps[0].cluster.as_ref().expect("on a cluster"));
    for app in &apps {
        app.wait_ready().await;
    }
    let started = Instant::now();

    let streams = open_streams(&apps).await;
    let opened_in = started.elapsed();
    let scenes: HashSet<&str> = streams.iter().map(|(_, _, s, _)| s.as_str()).collect();
    assert_eq!(scenes.len(), STREAMS, "every stream has its own scene");
    let urls: HashSet<&str> = streams
        .iter()
        .map(|(_, _, _, qr)| qr["qrcode_url"].as_str().expect("a qrcode_url"))
        .collect();
    assert_eq!(urls.len(), STREAMS, "every stream has its own code");
    let contents: HashSet<String> = scenes
        .iter()
        .map(|scene| {
            apps[0]
                .fake
                .ticket_for_scene(scene)
                .expect("the fake made the code")
                .url
        })
        .collect();
    assert_eq!(contents.len(), STREAMS, "every code says something else");
    for app in &apps {
        wait_until(Duration::from_secs(10), || async {
            app.login.open_streams() == STREAMS / 2
        })
        .await;
    }

    // The sessions are spread over the cluster: each primary holds keys naming some of them.
    let primaries = cluster.primary_ports();
    assert_eq!(primaries.len(), 3);
    let mut spread = Vec::new();
    for port in primaries {
        let naming = cluster
            .keys_on(port)
            .iter()
            .filter(|key| scenes.iter().any(|scene| key.contains(scene)))
            .count();
        spread.push(naming);
    }
    assert!(
        spread.iter().all(|n| *n > 0),
        "keys naming the streams' scenes, by primary: {spread:?}"
    );

    // Each scan goes to the instance that does not hold its stream: the result crosses over.
    let scanned_at = Instant::now();
    for holder in 0..2 {
        let other = &apps[1 - holder];
        other
            .phone
            .set_callback(format!("{}/wechat_event", other.base));
        futures_util::stream::iter(streams.iter().filter(|(i, ..)| i % 2 == holder))
            .map(|(i, _, scene, _)| async move {
                let delivery = other.scan(scene, &openid(*i), false).await;
                assert_eq!(delivery.status, 200, "{delivery:?}");
                assert_eq!(delivery.attempts, 1, "a healthy cluster answers at once");
            })
            .buffer_unordered(IN_FLIGHT)
            .collect::<Vec<()>>()
            .await;
    }
    let scanned_in = scanned_at.elapsed();

    // Every stream gets the login of the user who scanned its code, then ends: no second
    // result, none meant for another stream.
    futures_util::stream::iter(streams)
        .map(|(i, mut stream, _, _)| async move {
            let result = stream.next_json().await;
            assert_login(&result, &openid(i), "SCAN");
            assert!(
                stream.ends_within(Duration::from_secs(5)).await,
                "the stream of {i} ends after its one result"
            );
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<()>>()
        .await;
    let mut delivered = 0;
    for app in &apps {
        delivered += app.scans("delivered").await;
        assert_eq!(app.scans("duplicate").await, 0);
        assert_eq!(app.login.open_streams(), 0);
    }
    assert_eq!(delivered, STREAMS as u64, "each scan delivered once");
    println!(
        "cluster: {STREAMS} streams opened over two instances in {:.1} s, their scans sent to \
         the other instance in {:.1} s, all delivered once {:.1} s after the first open; \
         keys naming them by primary: {spread:?}",
        opened_in.as_secs_f64(),
        scanned_in.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test]
async fn two_hundred_streams_on_two_instances_survive_a_cluster_failover() {
    let cluster = RedisCluster::start_with_replicas();
    let apps =
        spawn_instances_sharing(Some(Servers::Cluster(cluster)), 2, &[("POOL_SIZE", "20")]).await;
    let cluster = Arc::clone(apps[0].cluster.as_ref().expect("on a cluster"));
    for app in &apps {
        app.wait_ready().await;
    }
    // The primary an instance's inbox is on (a shard channel): its loss cuts that instance off
    // from the results other instances send it, not only from the keys of that shard.
    let inbox = cluster
        .primary_ports()
        .into_iter()
        .flat_map(|port| cluster.shard_channels_on(port))
        .next()
        .expect("an instance listens on a shard channel");
    let mut killed = None;
    let run = streams_through_a_failover(&apps, || {
        killed = Some(cluster.kill_primary_of(&inbox));
    })
    .await;
    let killed = killed.expect("a primary was killed");
    let promoted = cluster.wait_promoted(&killed);
    assert_ne!(promoted, killed.port);
    // /readyz pings every primary: the loss of one shard takes it down on every instance.
    for (n, seen) in run.readiness.iter().enumerate() {
        assert!(seen.went_down(), "instance {n}: /readyz went down");
        assert!(seen.came_back(), "instance {n}: /readyz came back");
    }
    run.print("cluster failover");
    // A result told while its stream's inbox moved to the promoted primary reaches the stream
    // then, not when the stream's wait ends (the 30 s after which `login_of` resumes it).
    assert!(
        run.done_at - run.killed_at < Duration::from_secs(15),
        "the last login came {:?} after the kill",
        run.done_at - run.killed_at
    );
    for app in &apps {
        wait_until(Duration::from_secs(5), || async {
            app.get("/readyz").await.status() == 200
        })
        .await;
    }
}
