//! The narrow interface a fabric (Redis, Redis Cluster, NATS) implements:
//! publish opaque bytes to a [`Subject`], and push every message of the
//! node's subjects into a bounded inbound queue. Everything else the cluster
//! needs (the envelope, replicated state, scatter-gather, node bookkeeping)
//! is built once on top of this in [`crate::fabric`].
//!
//! A transport starts without waiting for its server: it connects (and
//! reconnects) in the background with backoff, says loudly which URL it
//! cannot reach, reports up/down on a `watch` channel, and refuses publishes
//! while down instead of queueing them without bound.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Where a fabric message goes. Each transport maps it to a name of its own
/// under the adapter prefix (see docs/fabric.md for the exact names).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Subject {
    /// Events of one app. `partition` is below [`Transport::partitions`]
    /// (always 0 except on Redis Cluster, where partitions spread an app's
    /// traffic over the shards).
    App { app_id: Arc<str>, partition: u16 },
    /// Node announcements, heartbeats, replicated state and cluster questions.
    Control,
    /// Replies addressed to one node (its fabric id).
    Node(Arc<str>),
}

impl Subject {
    /// The subject's name with `sep` between its parts, before any
    /// transport-specific escaping: `herald:app:my-app`, `herald.ctl`, ...
    /// Names are escaped so that `sep` and wildcards never appear inside a
    /// part (see [`escape_token`]).
    pub fn name(&self, prefix: &str, sep: char) -> String {
        match self {
            Subject::App { app_id, .. } => format!("{prefix}{sep}app{sep}{}", escape_token(app_id)),
            Subject::Control => format!("{prefix}{sep}ctl"),
            Subject::Node(id) => format!("{prefix}{sep}node{sep}{}", escape_token(id)),
        }
    }
}

/// Keeps `[A-Za-z0-9_-]` and percent-encodes every other byte, so an app id
/// or node id is always one token of a NATS subject or Redis channel name.
pub fn escape_token(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The partition of an app subject that carries `channel`'s events:
/// FNV-1a (32-bit) of the channel name, modulo `partitions`. Documented in
/// docs/fabric.md so that backends publishing straight into Redis Cluster
/// pick the same one.
pub fn partition_of(channel: &str, partitions: u16) -> u16 {
    if partitions <= 1 {
        return 0;
    }
    let mut hash: u32 = 0x811c_9dc5;
    for b in channel.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (hash % u32::from(partitions)) as u16
}

/// Why a fabric operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FabricError {
    /// Not connected (yet, or any more).
    #[error("cluster fabric {url} is unreachable: {reason}")]
    Down { url: String, reason: String },
    /// The server refused or dropped the operation.
    #[error("cluster fabric error: {0}")]
    Failed(String),
    /// The operation did not finish within its deadline.
    #[error("cluster fabric did not answer within {0:?}")]
    Timeout(Duration),
}

/// The node's inbound queue: transports push every received payload here
/// without waiting. A full queue drops the message and counts it, so the
/// subscription reader never blocks on a slow consumer.
#[derive(Clone)]
pub struct Inbound {
    queue: mpsc::Sender<Bytes>,
    dropped: Arc<AtomicU64>,
}

impl Inbound {
    /// A bounded queue of `capacity` messages and its receiving end.
    pub fn new(capacity: usize) -> (Self, mpsc::Receiver<Bytes>) {
        let (queue, rx) = mpsc::channel(capacity.max(1));
        (Self { queue, dropped: Arc::new(AtomicU64::new(0)) }, rx)
    }

    /// Hands one received message to the node. Never waits.
    pub fn push(&self, payload: Bytes) {
        if self.queue.try_send(payload).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Messages dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// What every transport is started with.
pub struct TransportSpec {
    /// Namespace for every subject name (`--adapter-prefix`).
    pub prefix: String,
    /// Subscribed for the node's lifetime, and again after every reconnect.
    pub subjects: Vec<Subject>,
    /// Where received payloads go.
    pub inbound: Inbound,
    /// `true` while the transport can both publish and receive on every
    /// subject; the transport sends every change.
    pub link: watch::Sender<bool>,
    /// Deadline for one publish (and for connecting, per attempt).
    pub request_timeout: Duration,
    /// Cancelled at shutdown: every task the transport spawns stops.
    pub stop: CancellationToken,
    /// Every task the transport spawns is spawned here.
    pub tasks: TaskTracker,
}

/// A fabric that moves bytes between nodes.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// `redis`, `redis-cluster` or `nats` (for logs and metrics).
    fn kind(&self) -> &'static str;

    /// How many partitions an app's subject is split into.
    fn partitions(&self) -> u16 {
        1
    }

    /// Publishes `payload` once, within the request timeout. Fails at once
    /// while the fabric is down.
    async fn publish(&self, subject: &Subject, payload: Bytes) -> Result<(), FabricError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_names_escape_their_parts() {
        let s = Subject::App { app_id: "my.app *1".into(), partition: 0 };
        assert_eq!(s.name("herald", '.'), "herald.app.my%2Eapp%20%2A1");
        assert_eq!(Subject::Control.name("h", ':'), "h:ctl");
        assert_eq!(Subject::Node("n-1".into()).name("h", ':'), "h:node:n-1");
    }

    #[test]
    fn partitions_follow_fnv1a() {
        assert_eq!(partition_of("anything", 1), 0);
        // FNV-1a 32 of "a" is 0xe40c292c.
        assert_eq!(partition_of("a", 16), (0xe40c_292c_u32 % 16) as u16);
    }

    #[test]
    fn inbound_drops_and_counts_when_full() {
        let (inbound, mut rx) = Inbound::new(1);
        inbound.push(Bytes::from_static(b"a"));
        inbound.push(Bytes::from_static(b"b"));
        assert_eq!(inbound.dropped(), 1);
        assert_eq!(rx.try_recv().unwrap(), Bytes::from_static(b"a"));
    }
}
