//! Messages to every node of a cluster over Redis pub/sub.
//!
//! Pub/sub delivers only to subscribers connected at the moment of
//! publishing: a node whose subscription broke misses what was said
//! meanwhile. [`RedisPubSub::run`] therefore reconnects and resubscribes by
//! itself and reports each new subscription ([`Delivery::Subscribed`]) so
//! its caller can catch up on whatever it may have missed.

use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;

use super::{RedisConnection, backend};
use crate::store::StoreError;

/// How often a quiet subscription is checked with a ping.
pub const PUBSUB_PING_INTERVAL: Duration = Duration::from_secs(5);

/// How long connecting, subscribing or a ping may take.
const PUBSUB_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest wait between two attempts to subscribe again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What a subscription delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Subscribed (again): messages published before this may have been
    /// missed.
    Subscribed,
    /// A message.
    Message(String),
}

/// One pub/sub channel shared by the nodes of a cluster.
#[derive(Debug, Clone)]
pub struct RedisPubSub {
    redis: RedisConnection,
    channel: String,
}

impl RedisPubSub {
    /// The channel `name` (under the connection's prefix).
    pub fn new(redis: RedisConnection, name: &str) -> Self {
        let channel = redis.key("channel", name);
        RedisPubSub { redis, channel }
    }

    /// Sends `message` to every subscriber; returns how many received it.
    pub async fn publish(&self, message: &str) -> Result<u64, StoreError> {
        let mut conn = self.redis.manager.clone();
        let sealed =
            self.redis
                .seal
                .seal_message(&self.channel, message, crate::store::now_millis());
        redis::cmd("PUBLISH")
            .arg(&self.channel)
            .arg(sealed)
            .query_async(&mut conn)
            .await
            .map_err(backend)
    }

    /// Subscribes and hands every delivery to `out`, for as long as `out`
    /// is open: after a lost connection (Redis restarted, the network
    /// failed, a ping went unanswered) it subscribes again, waiting a little
    /// longer after each failure.
    pub async fn run(&self, out: mpsc::Sender<Delivery>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.subscribe_once(&out).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(channel = %self.channel, error = %e, "subscription lost; subscribing again");
                }
            }
            if out.is_closed() {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One subscription; `Ok` when `out` closed, `Err` when it broke.
    async fn subscribe_once(&self, out: &mpsc::Sender<Delivery>) -> Result<(), StoreError> {
        let timed_out = || StoreError::Backend("redis: pub/sub timed out".into());
        let pubsub = tokio::time::timeout(PUBSUB_TIMEOUT, self.redis.client.get_async_pubsub())
            .await
            .map_err(|_| timed_out())?
            .map_err(backend)?;
        let (mut sink, mut stream) = pubsub.split();
        tokio::time::timeout(PUBSUB_TIMEOUT, sink.subscribe(&self.channel))
            .await
            .map_err(|_| timed_out())?
            .map_err(backend)?;
        if out.send(Delivery::Subscribed).await.is_err() {
            return Ok(());
        }
        let mut ping = tokio::time::interval(PUBSUB_PING_INTERVAL);
        ping.tick().await;
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else {
                        return Err(StoreError::Backend("redis: pub/sub connection closed".into()));
                    };
                    let Ok(payload) = msg.get_payload::<String>() else {
                        tracing::warn!(channel = %self.channel, "ignoring a message that is not text");
                        continue;
                    };
                    let now = crate::store::now_millis();
                    let Some(message) = self.redis.seal.open_message(&self.channel, &payload, now) else {
                        tracing::warn!(channel = %self.channel, "ignoring a message not sealed with the cluster key, or too old");
                        continue;
                    };
                    if out.send(Delivery::Message(message.to_owned())).await.is_err() {
                        return Ok(());
                    }
                }
                _ = ping.tick() => {
                    tokio::time::timeout(PUBSUB_TIMEOUT, sink.ping::<String>())
                        .await
                        .map_err(|_| timed_out())?
                        .map_err(backend)?;
                }
                _ = out.closed() => return Ok(()),
            }
        }
    }
}
