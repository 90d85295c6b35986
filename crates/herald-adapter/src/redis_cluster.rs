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
use ::redis::{ProtocolVersion, PushInfo, PushKind, RedisError, Value};
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::fabric::backoff::{set_link, sleep_unless_stopped, Backoff, Outage};
use crate::fabric::{FabricError, Inbound, Subject, Transport, TransportSpec};

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
/// How often every master is checked with a `PING` while the link is up.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

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
    shared: Arc<Shared>,
}

struct Shared {
    link: watch::Sender<bool>,
    live: RwLock<Option<Live>>,
    reason: Mutex<String>,
}

#[derive(Clone)]
struct Live {
    publisher: ClusterConnection,
    broken: Arc<Notify>,
}

impl RedisClusterTransport {
    /// Starts connecting in the background and returns at once; the link
    /// goes up on `spec.link` once every master answers and every subject is
    /// subscribed on the master that owns it.
    pub fn start(config: RedisClusterConfig, spec: TransportSpec) -> Arc<Self> {
        let url = config.nodes.join(",");
        let shared = Arc::new(Shared {
            link: spec.link,
            live: RwLock::new(None),
            reason: Mutex::new("not connected yet".into()),
        });
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

    fn down(&self) -> FabricError {
        FabricError::Down { url: self.url.clone(), reason: self.shared.reason.lock().clone() }
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
        let live = if *self.shared.link.borrow() { self.shared.live.read().clone() } else { None };
        let Some(Live { mut publisher, broken }) = live else {
            return Err(self.down());
        };
        let mut cmd = ::redis::cmd("SPUBLISH");
        cmd.arg(channel_name(&self.prefix, subject)).arg(payload.as_ref());
        match tokio::time::timeout(self.request_timeout, cmd.query_async::<i64>(&mut publisher)).await {
            Ok(Ok(_receivers)) => Ok(()),
            Ok(Err(e)) if e.is_timeout() => Err(FabricError::Timeout(self.request_timeout)),
            Ok(Err(e)) if connection_broken(&e) => {
                broken.notify_one();
                Err(FabricError::Down { url: self.url.clone(), reason: e.to_string() })
            }
            Ok(Err(e)) => Err(FabricError::Failed(e.to_string())),
            Err(_) => Err(FabricError::Timeout(self.request_timeout)),
        }
    }
}

fn connection_broken(e: &RedisError) -> bool {
    e.is_unrecoverable_error()
        || e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_cluster_error()
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
    shared: Arc<Shared>,
}

struct Connected {
    publisher: ClusterConnection,
    subscriber: ClusterConnection,
    broken: Arc<Notify>,
}

impl Supervisor {
    async fn run(self) {
        let mut backoff = Backoff::new();
        let mut outage = Outage::new("redis-cluster", self.url.clone());
        while !self.stop.is_cancelled() {
            let attempt = tokio::select! {
                _ = self.stop.cancelled() => break,
                r = tokio::time::timeout(self.timeout, self.connect()) => r,
            };
            let reason = match attempt {
                Ok(Ok(mut conns)) => {
                    *self.shared.live.write() =
                        Some(Live { publisher: conns.publisher.clone(), broken: conns.broken.clone() });
                    outage.recovered();
                    set_link(&self.shared.link, true);
                    backoff.reset();
                    let reason = self.watch(&mut conns).await;
                    set_link(&self.shared.link, false);
                    *self.shared.live.write() = None;
                    match reason {
                        Some(reason) => reason,
                        None => break,
                    }
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {:?}", self.timeout),
            };
            *self.shared.reason.lock() = reason.clone();
            outage.failed(&reason);
            if !sleep_unless_stopped(backoff.next_delay(), &self.stop).await {
                break;
            }
        }
        set_link(&self.shared.link, false);
        *self.shared.live.write() = None;
        *self.shared.reason.lock() = "transport stopped".into();
    }

    fn builder(&self) -> ClusterClientBuilder {
        ClusterClientBuilder::new(self.nodes.clone())
            .use_protocol(ProtocolVersion::RESP3)
            .connection_timeout(self.timeout)
            .response_timeout(self.timeout)
    }

    async fn connect(&self) -> Result<Connected, RedisError> {
        let broken = Arc::new(Notify::new());
        let on_push = {
            let broken = broken.clone();
            move |push: PushInfo| {
                if push.kind == PushKind::Disconnection {
                    broken.notify_one();
                }
                Ok::<(), ()>(())
            }
        };
        let mut publisher = self.builder().push_sender(on_push).build()?.get_async_connection().await?;

        let on_push = {
            let (broken, inbound) = (broken.clone(), self.inbound.clone());
            move |push: PushInfo| {
                match push.kind {
                    PushKind::SMessage => {
                        // [channel, payload]
                        if let Some(Value::BulkString(payload)) = push.data.into_iter().nth(1) {
                            inbound.push(Bytes::from(payload));
                        }
                    }
                    // Nobody unsubscribes but the server, when a slot moves
                    // or a node is reset.
                    PushKind::Disconnection | PushKind::SUnsubscribe => broken.notify_one(),
                    _ => {}
                }
                Ok::<(), ()>(())
            }
        };
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

    async fn watch(&self, conns: &mut Connected) -> Option<String> {
        let mut tick = tokio::time::interval(HEALTH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return None,
                _ = conns.broken.notified() => return Some("a node connection was lost or a subscription dropped".into()),
                _ = tick.tick() => {
                    // PING goes to every master.
                    let check = async {
                        ::redis::cmd("PING").exec_async(&mut conns.publisher).await?;
                        ::redis::cmd("PING").exec_async(&mut conns.subscriber).await
                    };
                    match tokio::time::timeout(self.timeout, check).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Some(e.to_string()),
                        Err(_) => return Some(format!("a master did not answer PING within {:?}", self.timeout)),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_test_servers::{free_cluster_ports, RedisCluster};
    use tokio::sync::mpsc;
    use tokio_util::task::TaskTracker;

    const WAIT: Duration = Duration::from_secs(15);

    struct Node {
        transport: Arc<RedisClusterTransport>,
        inbound: mpsc::Receiver<Bytes>,
        link: watch::Receiver<bool>,
        stop: CancellationToken,
        tasks: TaskTracker,
    }

    fn app(id: &str, partition: u16) -> Subject {
        Subject::App { app_id: id.into(), partition }
    }

    fn subjects(node_id: &str) -> Vec<Subject> {
        let mut s: Vec<Subject> = (0..PARTITIONS).map(|p| app("my-app", p)).collect();
        s.extend([Subject::Control, Subject::Node(node_id.into())]);
        s
    }

    impl Node {
        fn start(nodes: Vec<String>, prefix: &str, node_id: &str) -> Node {
            let (inbound, rx) = Inbound::new(4096);
            let (link, link_rx) = watch::channel(false);
            let (stop, tasks) = (CancellationToken::new(), TaskTracker::new());
            let spec = TransportSpec {
                prefix: prefix.into(),
                subjects: subjects(node_id),
                inbound,
                link,
                request_timeout: Duration::from_secs(1),
                stop: stop.clone(),
                tasks: tasks.clone(),
            };
            let transport = RedisClusterTransport::start(RedisClusterConfig { nodes }, spec);
            Node { transport, inbound: rx, link: link_rx, stop, tasks }
        }

        async fn link_is(&mut self, up: bool) {
            tokio::time::timeout(WAIT, self.link.wait_for(|l| *l == up))
                .await
                .unwrap_or_else(|_| panic!("link did not become {up} within {WAIT:?}"))
                .unwrap();
        }

        async fn recv(&mut self) -> Bytes {
            tokio::time::timeout(WAIT, self.inbound.recv()).await.expect("no message within the deadline").unwrap()
        }

        /// Receives `n` messages, in any order.
        async fn recv_set(&mut self, n: usize) -> std::collections::BTreeSet<Bytes> {
            let mut got = std::collections::BTreeSet::new();
            for _ in 0..n {
                got.insert(self.recv().await);
            }
            got
        }

        async fn shutdown(self) {
            self.stop.cancel();
            self.tasks.close();
            tokio::time::timeout(WAIT, self.tasks.wait()).await.expect("tasks did not stop");
            assert!(!*self.link.borrow());
        }
    }

    fn partition_payloads() -> std::collections::BTreeSet<Bytes> {
        (0..PARTITIONS).map(|p| Bytes::from(format!("p{p}"))).collect()
    }

    async fn publish_all_partitions(node: &Node) {
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
        let mut a = Node::start(cluster.urls(), "herald", "a");
        let mut b = Node::start(vec![cluster.urls()[1].clone()], "herald", "b");
        let mut other = Node::start(cluster.urls(), "other", "a");
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
        let mut a = Node::start(vec![format!("redis://127.0.0.1:{}", ports[0])], "herald", "a");
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
        let mut a = Node::start(cluster.urls(), "herald", "a");
        let mut b = Node::start(cluster.urls(), "herald", "b");
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
