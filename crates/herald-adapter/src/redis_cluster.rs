//! The Redis Cluster fabric: nodes exchange messages through the cluster's
//! **sharded** pub/sub (`SPUBLISH` / `SSUBSCRIBE`, Redis ≥ 7), so that
//! pub/sub traffic grows with the number of shards. (Classic `PUBLISH` is
//! broadcast over the cluster bus to every shard, so one busy channel loads
//! every node of the cluster.)
//!
//! A sharded channel lives on the shard that owns its hash slot, so one app's
//! events are split into [`PARTITIONS`] (16) partitions
//! ([`crate::fabric::partition_of`] picks one per Pusher channel), each with
//! its own hash tag. Names use `:` as separator:
//!
//! | subject                      | sharded channel                                 |
//! |------------------------------|-------------------------------------------------|
//! | `App { app_id, partition }`  | `{prefix}:app:{escaped app}:{TAG[partition]}`   |
//! | `Control`                    | `{prefix}:ctl`                                  |
//! | `Node(id)`                   | `{prefix}:node:{escaped id}`                    |
//!
//! where `{TAG[p]}` is the hash tag (braces included) from [`PARTITION_TAGS`]:
//! `{p0-0}`, `{p1-3}`, `{p2-11}`, ... The tag of partition `p` is `p<p>-<k>`
//! with the smallest `k ≥ 0` whose slot, `CRC16(tag) mod 16384`, lies in
//! `[1024·p, 1024·(p+1))`: partition `p` of every app hashes to the `p`-th
//! sixteenth of the slot space, so with slots split evenly into contiguous
//! ranges (as `redis-cli --cluster create` does) the 16 partitions spread
//! evenly over up to 16 shards (3 masters: 5 / 5 / 6). Control and node
//! subjects have no tag: each hashes (whole name) to a slot of its own. In
//! the prefix, `{` and `}` are percent-encoded (`%7B`, `%7D`) so that it can
//! never hide the partition's hash tag.
//!
//! Two cluster connections (redis-rs cluster client, RESP3) are kept: one
//! publishes, one holds the subscriptions and receives. The client routes
//! each `SSUBSCRIBE` (one per slot) and `SPUBLISH` to the master that owns the
//! slot and follows `MOVED`. A background task connects both, subscribes every
//! subject and waits for every confirmation before it reports the link up;
//! every second it `PING`s every master through both. When a node connection
//! drops, a master stops answering, or the server drops a subscription (its
//! slot moved), the link goes down, both connections are dropped and rebuilt
//! from the seed nodes with backoff (100 ms doubling to 2 s): the new
//! connections read the current slot map and subscribe again. Messages
//! published while the link is down are lost (pub/sub is at-most-once).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ::redis::cluster::ClusterClientBuilder;
use ::redis::cluster_async::ClusterConnection;
use ::redis::{ProtocolVersion, PushKind, RedisError};
use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::fabric::supervise::{supervise, Connector, Shared};
use crate::fabric::{FabricError, Inbound, Subject, Transport, TransportSpec};
use crate::redis::{forward_messages, notify_on_disconnection, publish, Connected, Live};

/// Partitions per app subject.
pub const PARTITIONS: u16 = 16;

/// The hash tag of each partition (see the module documentation for the
/// rule that picked them).
pub const PARTITION_TAGS: [&str; PARTITIONS as usize] = [
    "p0-0", "p1-3", "p2-11", "p3-12", "p4-41", "p5-42", "p6-61", "p7-62", "p8-11", "p9-12", "p10-12", "p11-11",
    "p12-20", "p13-23", "p14-2", "p15-1",
];

/// Hash slots of a Redis Cluster.
const SLOTS: u16 = 16384;

/// The sharded channel of `subject` under `prefix` (see the module docs).
pub fn channel_name(prefix: &str, subject: &Subject) -> String {
    let prefix = prefix.replace('{', "%7B").replace('}', "%7D");
    let name = subject.name(&prefix, ':');
    match subject {
        Subject::App { partition, .. } => {
            format!("{name}:{{{}}}", PARTITION_TAGS[usize::from(*partition % PARTITIONS)])
        }
        Subject::Control | Subject::Node(_) => name,
    }
}

/// The hash slot of a key or channel name: CRC16 (XMODEM) of its hash tag
/// (the part between the first `{` and the next `}`, if not empty) or of the
/// whole name, modulo 16384.
pub fn slot_of(name: &[u8]) -> u16 {
    let key = match name.iter().position(|&b| b == b'{') {
        Some(open) => match name[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &name[open + 1..open + 1 + len],
            _ => name,
        },
        None => name,
    };
    crc16_xmodem(key) % SLOTS
}

/// CRC-16/XMODEM: polynomial 0x1021, initial value 0, no reflection.
fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// Where the Redis Cluster fabric is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisClusterConfig {
    /// Seed node URLs (`redis://host:port`); the rest of the cluster is
    /// discovered from them.
    pub nodes: Vec<String>,
}

/// The Redis Cluster sharded pub/sub fabric. See the module documentation.
pub struct RedisClusterTransport {
    url: String,
    prefix: String,
    request_timeout: Duration,
    shared: Arc<Shared<Live<ClusterConnection>>>,
}

impl RedisClusterTransport {
    /// Starts connecting in the background and returns at once; the link
    /// goes up on `spec.link` once every master answers and every subject is
    /// subscribed on the master that owns it.
    pub fn start(config: RedisClusterConfig, spec: TransportSpec) -> Arc<Self> {
        let url = config.nodes.join(",");
        let shared = Arc::new(Shared::new(spec.link));
        let transport = Arc::new(Self {
            url: url.clone(),
            prefix: spec.prefix.clone(),
            request_timeout: spec.request_timeout,
            shared: shared.clone(),
        });
        let mut by_slot: BTreeMap<u16, Vec<String>> = BTreeMap::new();
        for subject in &spec.subjects {
            let name = channel_name(&spec.prefix, subject);
            let channels = by_slot.entry(slot_of(name.as_bytes())).or_default();
            if !channels.contains(&name) {
                channels.push(name);
            }
        }
        let task = Supervisor {
            url,
            nodes: config.nodes,
            by_slot: by_slot.into_values().collect(),
            inbound: spec.inbound,
            timeout: spec.request_timeout,
            stop: spec.stop,
            shared,
        };
        spec.tasks.spawn(task.run());
        transport
    }
}

#[async_trait]
impl Transport for RedisClusterTransport {
    fn kind(&self) -> &'static str {
        "redis-cluster"
    }

    fn partitions(&self) -> u16 {
        PARTITIONS
    }

    async fn publish(&self, subject: &Subject, payload: Bytes) -> Result<(), FabricError> {
        let mut cmd = ::redis::cmd("SPUBLISH");
        cmd.arg(channel_name(&self.prefix, subject)).arg(payload.as_ref());
        publish(&self.shared, &self.url, self.request_timeout, cmd, connection_broken).await
    }
}

fn connection_broken(e: &RedisError) -> bool {
    crate::redis::connection_broken(e) || e.is_cluster_error()
}

struct Supervisor {
    url: String,
    nodes: Vec<String>,
    /// The subscribed channels, grouped by hash slot (one `SSUBSCRIBE` each:
    /// a sharded subscribe may not span slots).
    by_slot: Vec<Vec<String>>,
    inbound: Inbound,
    timeout: Duration,
    stop: CancellationToken,
    shared: Arc<Shared<Live<ClusterConnection>>>,
}

impl Supervisor {
    async fn run(self) {
        supervise("redis-cluster", self.url.clone(), self.timeout, &self.stop, &self.shared, &self).await;
    }

    fn builder(&self) -> ClusterClientBuilder {
        ClusterClientBuilder::new(self.nodes.clone())
            .use_protocol(ProtocolVersion::RESP3)
            .connection_timeout(self.timeout)
            .response_timeout(self.timeout)
    }
}

impl Connector for Supervisor {
    type Conns = Connected<ClusterConnection>;
    type Live = Live<ClusterConnection>;
    type Error = RedisError;

    async fn connect(&self) -> Result<Self::Conns, RedisError> {
        let broken = Arc::new(Notify::new());
        let on_push = notify_on_disconnection(&broken);
        let mut publisher = self.builder().push_sender(on_push).build()?.get_async_connection().await?;
        // The server unsubscribes when a slot moves or a node is reset.
        let on_push = forward_messages(&broken, &self.inbound, PushKind::SMessage, PushKind::SUnsubscribe);
        let mut subscriber = self.builder().push_sender(on_push).build()?.get_async_connection().await?;

        // Every master must answer: a channel of any slot may be published.
        ::redis::cmd("PING").exec_async(&mut publisher).await?;
        ::redis::cmd("PING").exec_async(&mut subscriber).await?;
        for channels in &self.by_slot {
            // Routed to the slot's master; returns once every channel is confirmed.
            subscriber.ssubscribe(channels).await?;
        }
        Ok(Connected { publisher, subscriber, broken })
    }

    fn live(conns: &Self::Conns) -> Self::Live {
        conns.live()
    }

    /// `PING` goes to every master.
    async fn watch(&self, conns: &mut Self::Conns) -> Option<String> {
        let lost = "a node connection was lost or a subscription dropped";
        conns.watch(&self.stop, self.timeout, lost, "a master did not answer PING").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fabric::testkit::Node;
    use herald_test_servers::{free_cluster_ports, RedisCluster};

    const WAIT: Duration = Duration::from_secs(15);

    fn app(id: &str, partition: u16) -> Subject {
        Subject::App { app_id: id.into(), partition }
    }

    fn subjects(node_id: &str) -> Vec<Subject> {
        let mut s: Vec<Subject> = (0..PARTITIONS).map(|p| app("my-app", p)).collect();
        s.extend([Subject::Control, Subject::Node(node_id.into())]);
        s
    }

    fn node(nodes: Vec<String>, prefix: &str, node_id: &str) -> Node<RedisClusterTransport> {
        Node::start(prefix, subjects(node_id), 4096, WAIT, |spec| {
            RedisClusterTransport::start(RedisClusterConfig { nodes }, spec)
        })
    }

    fn partition_payloads() -> std::collections::BTreeSet<Bytes> {
        (0..PARTITIONS).map(|p| Bytes::from(format!("p{p}"))).collect()
    }

    async fn publish_all_partitions(node: &Node<RedisClusterTransport>) {
        for p in 0..PARTITIONS {
            node.transport.publish(&app("my-app", p), Bytes::from(format!("p{p}"))).await.unwrap();
        }
    }

    #[test]
    fn crc16_and_slots_match_redis() {
        assert_eq!(crc16_xmodem(b"123456789"), 0x31c3);
        // Values from CLUSTER KEYSLOT.
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        assert_eq!(slot_of(b"foo{}{bar}"), crc16_xmodem(b"foo{}{bar}") % SLOTS);
        assert_eq!(slot_of(b"foo{{bar}}zap"), crc16_xmodem(b"{bar") % SLOTS);
    }

    #[test]
    fn partition_tags_follow_the_documented_rule() {
        for (p, tag) in PARTITION_TAGS.iter().enumerate() {
            let first = (0..)
                .map(|k| format!("p{p}-{k}"))
                .find(|t| usize::from(crc16_xmodem(t.as_bytes()) % SLOTS / 1024) == p)
                .unwrap();
            assert_eq!(*tag, first);
        }
        // Three masters with even contiguous ranges each get 5 or 6 partitions.
        let mut per_shard = [0; 3];
        for p in 0..PARTITIONS {
            let slot = slot_of(channel_name("herald", &app("my-app", p)).as_bytes());
            per_shard[usize::from(slot) * 3 / usize::from(SLOTS)] += 1;
        }
        assert_eq!(per_shard, [5, 5, 6]);
    }

    #[test]
    fn channel_names() {
        assert_eq!(channel_name("herald", &app("my-app", 3)), "herald:app:my-app:{p3-12}");
        assert_eq!(channel_name("herald", &app("my.app", 0)), "herald:app:my%2Eapp:{p0-0}");
        assert_eq!(channel_name("herald", &Subject::Control), "herald:ctl");
        assert_eq!(channel_name("herald", &Subject::Node("n-1".into())), "herald:node:n-1");
        assert_eq!(channel_name("h{x}", &app("a", 1)), "h%7Bx%7D:app:a:{p1-3}");
        // Every app's partition p shares the slot of its tag, whatever the prefix.
        assert_eq!(slot_of(channel_name("h{x}", &app("a", 1)).as_bytes()), slot_of(b"p1-3"));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn all_partitions_and_subjects_flow_between_same_prefix_nodes_only() {
        let cluster = RedisCluster::start(3);
        let mut a = node(cluster.urls(), "herald", "a");
        let mut b = node(vec![cluster.urls()[1].clone()], "herald", "b");
        let mut other = node(cluster.urls(), "other", "a");
        a.link_is(true).await;
        b.link_is(true).await;
        other.link_is(true).await;

        // The client's routing agrees with our slots.
        let mut conn = a.transport.shared.live.read().clone().unwrap().publisher;
        for subject in subjects("a") {
            let name = channel_name("herald", &subject);
            let slot: u16 = ::redis::cmd("CLUSTER").arg("KEYSLOT").arg(&name).query_async(&mut conn).await.unwrap();
            assert_eq!(slot, slot_of(name.as_bytes()), "{name}");
        }

        // Each master serves the partitions of its slot range (5 / 5 / 6).
        let mut per_node = Vec::new();
        for url in cluster.urls() {
            let mut node = ::redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
            let channels: Vec<String> =
                ::redis::cmd("PUBSUB").arg("SHARDCHANNELS").arg("herald:app:*").query_async(&mut node).await.unwrap();
            per_node.push(channels.len());
        }
        assert_eq!(per_node, [5, 5, 6]);

        publish_all_partitions(&a).await;
        assert_eq!(b.recv_set(16).await, partition_payloads());
        assert_eq!(a.recv_set(16).await, partition_payloads());

        a.transport.publish(&Subject::Control, Bytes::from("ctl")).await.unwrap();
        assert_eq!(b.recv().await, "ctl");
        assert_eq!(a.recv().await, "ctl");
        a.transport.publish(&Subject::Node("b".into()), Bytes::from("to-b")).await.unwrap();
        assert_eq!(b.recv().await, "to-b");

        // Positive control: `other` gets its own prefix only.
        a.transport.publish(&Subject::Control, Bytes::from("herald-only")).await.unwrap();
        other.transport.publish(&Subject::Control, Bytes::from("other-only")).await.unwrap();
        assert_eq!(other.recv().await, "other-only");
        assert_eq!(b.recv().await, "herald-only");
        assert_eq!(a.recv().await, "herald-only");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(other.inbound.try_recv().is_err(), "a different prefix leaked through");
        assert!(a.inbound.try_recv().is_err(), "Node(b) leaked to a");
        assert!(b.inbound.try_recv().is_err());

        for n in [a, b, other] {
            n.shutdown().await;
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn publish_is_down_until_the_cluster_exists_then_the_link_comes_up() {
        let ports = free_cluster_ports(3);
        let mut a = node(vec![format!("redis://127.0.0.1:{}", ports[0])], "herald", "a");
        let started = std::time::Instant::now();
        let err = a.transport.publish(&Subject::Control, Bytes::from("x")).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_millis(100));
        assert!(matches!(&err, FabricError::Down { url, .. } if url.contains(&ports[0].to_string())), "{err:?}");

        let _cluster = tokio::task::spawn_blocking(move || RedisCluster::start_on(&ports)).await.unwrap();
        a.link_is(true).await;
        publish_all_partitions(&a).await;
        assert_eq!(a.recv_set(16).await, partition_payloads());
        a.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_killed_and_restarted_master_is_resubscribed() {
        let logs = crate::fabric::backoff::capture::logs();
        let mut cluster = RedisCluster::start(3);
        let url = cluster.urls().join(",");
        let mut a = node(cluster.urls(), "herald", "a");
        let mut b = node(cluster.urls(), "herald", "b");
        a.link_is(true).await;
        b.link_is(true).await;

        cluster.kill_node(1);
        a.link_is(false).await;
        b.link_is(false).await;
        assert!(matches!(
            a.transport.publish(&app("my-app", 0), Bytes::from("lost")).await,
            Err(FabricError::Down { .. })
        ));
        // Several reconnect attempts while the master is dead: one error per transport.
        tokio::time::sleep(Duration::from_millis(1600)).await;
        assert_eq!(logs.count(tracing::Level::ERROR, &[&url]), 2);
        let _cluster = tokio::task::spawn_blocking(move || {
            cluster.restart_node(1);
            cluster
        })
        .await
        .unwrap();
        let back = std::time::Instant::now();
        a.link_is(true).await;
        b.link_is(true).await;
        assert!(back.elapsed() < Duration::from_secs(5), "took {:?} to come back", back.elapsed());
        assert_eq!(logs.count(tracing::Level::INFO, &[&url, "reachable again"]), 2);
        assert_eq!(logs.count(tracing::Level::ERROR, &[&url]), 2);

        publish_all_partitions(&a).await;
        assert_eq!(b.recv_set(16).await, partition_payloads());
        a.transport.publish(&Subject::Control, Bytes::from("ctl")).await.unwrap();
        a.transport.publish(&Subject::Node("b".into()), Bytes::from("to-b")).await.unwrap();
        assert_eq!(b.recv_set(2).await, [Bytes::from("ctl"), Bytes::from("to-b")].into_iter().collect());
        a.shutdown().await;
        b.shutdown().await;
    }
}
