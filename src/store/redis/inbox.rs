//! This instance's inbox: the pub/sub channel on which other instances hand results (and
//! "replaced" notices) to the streams held here.
//!
//! On one Redis it is a plain channel (`SUBSCRIBE`), on the primary of the moment. On a
//! Cluster it is a sharded channel (`SSUBSCRIBE`, Redis 7): its messages go to the one shard
//! that owns the channel's slot instead of being broadcast to every node. Either way, when the
//! subscription fails it is made again from scratch, and the streams held here check their
//! sessions ([`Inbox::reconnected`]) for what was sent meanwhile.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt as _;
use redis::{PushKind, RedisError};
use tokio_util::sync::CancellationToken;

use super::cluster::Cluster;
use super::{Backend, CONNECT_TIMEOUT, INBOX_PING, RESPONSE_TIMEOUT, RedisStore, parse_notice};
use crate::store::Inbox;

/// `step`, or an error saying `what` timed out after `limit`.
async fn within<T>(
    limit: Duration,
    what: &'static str,
    step: impl Future<Output = Result<T, RedisError>>,
) -> Result<T, RedisError> {
    tokio::time::timeout(limit, step)
        .await
        .map_err(|_| RedisError::from((redis::ErrorKind::Io, what)))?
}

/// Hands one message's payload to `inbox`.
fn hand_over(inbox: &Arc<dyn Inbox>, payload: Option<String>) {
    match payload.as_deref().and_then(parse_notice) {
        Some(notice) => inbox.notice(notice),
        None => tracing::warn!("ignoring a malformed message in the inbox"),
    }
}

impl RedisStore {
    /// Subscribes to this instance's inbox and hands its messages to `inbox` until the
    /// subscription fails or `cancel`. `Ok(true)` when cancelled.
    pub(super) async fn listen_once(
        &self,
        inbox: &Arc<dyn Inbox>,
        cancel: &CancellationToken,
    ) -> Result<bool, RedisError> {
        let ended = match &self.inner.backend {
            Backend::Primary(_) => self.listen_primary(inbox, cancel).await,
            Backend::Cluster(..) => self.listen_cluster(inbox, cancel).await,
        };
        self.inner.listening.store(false, Ordering::Relaxed);
        ended
    }

    /// The subscription is up: the streams check what they may have missed, then the
    /// instance is ready.
    async fn subscribed(&self, inbox: &Arc<dyn Inbox>) {
        inbox.reconnected().await;
        self.inner.listening.store(true, Ordering::Relaxed);
        tracing::info!("listening for deliveries from other instances");
    }

    async fn listen_primary(
        &self,
        inbox: &Arc<dyn Inbox>,
        cancel: &CancellationToken,
    ) -> Result<bool, RedisError> {
        let Backend::Primary(primary) = &self.inner.backend else {
            return Ok(false);
        };
        let mut changes = primary.changes();
        let client = changes.client().await?;
        let pubsub = within(
            CONNECT_TIMEOUT,
            "timed out connecting to Redis",
            client.get_async_pubsub(),
        )
        .await?;
        let (mut sink, mut messages) = pubsub.split();
        let subscribing = sink.subscribe(self.inbox());
        within(RESPONSE_TIMEOUT, "timed out subscribing", subscribing).await?;
        // Notices arriving meanwhile wait in the subscription.
        self.subscribed(inbox).await;
        let mut ping = tokio::time::interval(INBOX_PING);
        ping.tick().await;
        loop {
            tokio::select! {
                message = messages.next() => match message {
                    Some(message) => hand_over(inbox, message.get_payload().ok()),
                    None => return Ok(false),
                },
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(RESPONSE_TIMEOUT, sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        return Ok(false);
                    }
                }
                // A failover: subscribe on the new primary.
                () = changes.changed() => return Ok(false),
                () = cancel.cancelled() => return Ok(true),
            }
        }
    }

    /// On a Cluster: a connection of its own (RESP3, whose pushes carry the messages), subscribed
    /// to the sharded channel. The client would subscribe again by itself after some failures;
    /// it is dropped and made again instead at any sign of trouble (a dropped connection, the
    /// shard's unsubscribing it as its slot moves, a failed ping of the channel's node), so that
    /// the streams always check what they may have missed.
    async fn listen_cluster(
        &self,
        inbox: &Arc<dyn Inbox>,
        cancel: &CancellationToken,
    ) -> Result<bool, RedisError> {
        let Backend::Cluster(_, seeds) = &self.inner.backend else {
            return Ok(false);
        };
        let (sender, mut pushes) = tokio::sync::mpsc::unbounded_channel();
        let client = Cluster::subscriber(seeds, sender)?;
        let mut conn = within(
            RESPONSE_TIMEOUT * 2,
            "timed out connecting to the Redis Cluster",
            client.get_async_connection(),
        )
        .await?;
        let channel = self.inbox();
        within(
            RESPONSE_TIMEOUT,
            "timed out subscribing",
            conn.ssubscribe(&channel),
        )
        .await?;
        self.subscribed(inbox).await;
        let mut ping = tokio::time::interval(INBOX_PING);
        ping.tick().await;
        loop {
            tokio::select! {
                push = pushes.recv() => {
                    let Some(push) = push else { return Ok(false) };
                    match push.kind {
                        PushKind::SMessage => {
                            let payload = push
                                .data
                                .get(1)
                                .and_then(|v| redis::from_redis_value_ref::<String>(v).ok());
                            hand_over(inbox, payload);
                        }
                        PushKind::SUnsubscribe | PushKind::Disconnection => return Ok(false),
                        _ => {}
                    }
                }
                _ = ping.tick() => {
                    // The node that owns the channel's slot, where the subscription lives.
                    let route = redis::cluster_routing::SingleNodeRoutingInfo::SpecificNode(
                        redis::cluster_routing::Route::with_key(
                            &channel,
                            redis::cluster_routing::SlotAddr::Master,
                        ),
                    );
                    let pong = tokio::time::timeout(
                        RESPONSE_TIMEOUT,
                        conn.route_command(
                            redis::cmd("PING"),
                            redis::cluster_routing::RoutingInfo::SingleNode(route),
                        ),
                    )
                    .await;
                    if !matches!(pong, Ok(Ok(_))) {
                        return Ok(false);
                    }
                }
                () = cancel.cancelled() => return Ok(true),
            }
        }
    }
}
