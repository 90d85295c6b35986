//! One conformance suite for every adapter.
//!
//! Each scenario is a generic body over three adapter instances standing
//! for three nodes, run unchanged against the local adapter (the same
//! `Arc<LocalAdapter>` three times: a cluster of one node must behave
//! exactly like three), Redis, Redis Cluster (3 masters) and NATS, against
//! real server processes. Expected values are computed by hand in each
//! scenario, never with the code under test.
//!
//! Cross-node effects are asynchronous, so state is polled with
//! [`eventually`] and connection queues are read with a deadline. "Nothing
//! arrived" is only ever asserted after a positive control: a later frame
//! that travelled the same ordered path arrived first, or a
//! [`Nodes::sync_from`] barrier proved every node processed the changes in
//! question.
//!
//! Every test has its own adapter prefix and its own Redis or NATS server;
//! Redis Cluster takes seconds to start, so the tests running at the same
//! time share one (see [`shared_redis_cluster`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use herald_adapter::fabric::Transport;
use herald_adapter::nats::{NatsConfig, NatsTransport};
use herald_adapter::redis::{RedisConfig, RedisTransport};
use herald_adapter::redis_cluster::{RedisClusterConfig, RedisClusterTransport, PARTITIONS};
use herald_adapter::{
    Adapter, AdapterError, ClusterAdapter, ClusterConfig, Connection, Departure, Frame, Lifecycle, LocalAdapter,
    NamespaceSpec, SignInOutcome, SubscribeOutcome, Subscription, UnsubscribeOutcome,
};
use herald_metrics::Metrics;
use herald_protocol::presence::PresenceMember;
use herald_protocol::SocketId;
use herald_test_servers::{NatsServer, RedisCluster, RedisServer};
use serde_json::{json, Value};
use tokio::sync::mpsc::Receiver;

const APP: &str = "app";
/// Deadline of every poll and every awaited frame.
const WAIT: Duration = Duration::from_secs(5);
/// Deadline for the nodes to reach the fabric and see each other.
const STARTUP: Duration = Duration::from_secs(10);
/// Deadline of a whole scenario (a hang fails instead of blocking the run).
const SCENARIO_LIMIT: Duration = Duration::from_secs(40);
const HEARTBEAT: Duration = Duration::from_millis(100);
const NODE_TIMEOUT: Duration = Duration::from_secs(1);
const REQUEST_TIMEOUT: Duration = Duration::from_millis(500);

// ---------------------------------------------------------------------------
// Nodes
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fabric {
    Local,
    Redis,
    RedisCluster,
    Nats,
}

/// The server processes behind a fabric, killed on drop.
enum Server {
    None,
    Redis(RedisServer),
    /// Shared by the tests running at the same time (each with its own
    /// prefix): starting a Redis Cluster takes seconds.
    RedisCluster(Arc<RedisCluster>),
    Nats(NatsServer),
}

/// One Redis Cluster for every test that runs while another holds it; the
/// last holder's drop kills it (a static guard would never be dropped).
fn shared_redis_cluster() -> Arc<RedisCluster> {
    static SHARED: Mutex<Weak<RedisCluster>> = Mutex::new(Weak::new());
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(cluster) = shared.upgrade() {
        return cluster;
    }
    let cluster = Arc::new(RedisCluster::start(3));
    *shared = Arc::downgrade(&cluster);
    cluster
}

/// Webhook facts one node reported, in order.
#[derive(Default)]
struct Facts(Mutex<Vec<String>>);

impl Facts {
    fn push(&self, fact: String) {
        self.0.lock().unwrap().push(fact);
    }

    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

impl Lifecycle for Facts {
    fn channel_occupied(&self, channel: &str) {
        self.push(format!("occupied {channel}"));
    }
    fn channel_vacated(&self, channel: &str) {
        self.push(format!("vacated {channel}"));
    }
    fn member_added(&self, channel: &str, user_id: &str) {
        self.push(format!("added {channel} {user_id}"));
    }
    fn member_removed(&self, channel: &str, user_id: &str) {
        self.push(format!("removed {channel} {user_id}"));
    }
}

/// The nodes of one test, and the server they share.
struct Nodes {
    fabric: Fabric,
    prefix: String,
    adapters: Vec<Arc<dyn Adapter>>,
    /// The same nodes as cluster adapters (empty for the local fabric).
    cluster: Vec<Arc<ClusterAdapter>>,
    /// Each node's webhook sink (for local, the same one three times).
    facts: Vec<Arc<Facts>>,
    sockets: AtomicU64,
    probes: AtomicU64,
    /// Last: dropped after the nodes.
    server: Server,
}

async fn start_nodes(fabric: Fabric, n: usize) -> Nodes {
    static TEST: AtomicU64 = AtomicU64::new(0);
    let prefix =
        format!("conf{}x{}x{:08x}", std::process::id(), TEST.fetch_add(1, Ordering::Relaxed), rand::random::<u32>());
    let server = match fabric {
        Fabric::Local => Server::None,
        Fabric::Redis => Server::Redis(tokio::task::spawn_blocking(RedisServer::start).await.unwrap()),
        Fabric::RedisCluster => Server::RedisCluster(tokio::task::spawn_blocking(shared_redis_cluster).await.unwrap()),
        Fabric::Nats => Server::Nats(tokio::task::spawn_blocking(NatsServer::start).await.unwrap()),
    };
    let mut nodes = Nodes {
        fabric,
        prefix,
        adapters: Vec::new(),
        cluster: Vec::new(),
        facts: Vec::new(),
        sockets: AtomicU64::new(0),
        probes: AtomicU64::new(0),
        server,
    };
    if fabric == Fabric::Local {
        let facts = Arc::new(Facts::default());
        let spec = NamespaceSpec {
            app_id: APP.into(),
            metrics: Metrics::new("local").app(APP),
            lifecycle: facts.clone(),
            cache: Default::default(),
        };
        let local: Arc<dyn Adapter> = Arc::new(LocalAdapter::new([spec]));
        nodes.adapters = vec![local; n];
        nodes.facts = vec![facts; n];
        return nodes;
    }
    for i in 0..n {
        let (node, facts) = nodes.start_cluster_node(&format!("n{i}"));
        nodes.adapters.push(node.clone());
        nodes.cluster.push(node);
        nodes.facts.push(facts);
    }
    all_joined(&nodes.cluster).await;
    nodes
}

/// Waits until every node is ready and sees all the others.
async fn all_joined(cluster: &[Arc<ClusterAdapter>]) {
    let n = cluster.len();
    poll(STARTUP, "every node ready and seeing the others", async || {
        let seen: Vec<(bool, usize)> = cluster.iter().map(|c| (c.is_ready(), c.cluster_size())).collect();
        if seen.iter().all(|&(ready, size)| ready && size == n) {
            Ok(())
        } else {
            Err(format!("(ready, cluster size) per node: {seen:?}, want size {n}"))
        }
    })
    .await
}

impl Nodes {
    fn is_cluster(&self) -> bool {
        self.fabric != Fabric::Local
    }

    /// `cluster` on a cluster fabric, `single` on the local adapter.
    fn pick<T>(&self, cluster: T, single: T) -> T {
        if self.is_cluster() {
            cluster
        } else {
            single
        }
    }

    /// Starts one more cluster node with this test's prefix (not yet joined).
    fn start_cluster_node(&self, name: &str) -> (Arc<ClusterAdapter>, Arc<Facts>) {
        let metrics = Metrics::new(name);
        let facts = Arc::new(Facts::default());
        let spec = NamespaceSpec {
            app_id: APP.into(),
            metrics: metrics.app(APP),
            lifecycle: facts.clone(),
            cache: Default::default(),
        };
        let config = |partitions| ClusterConfig {
            node_name: name.into(),
            prefix: self.prefix.clone(),
            request_timeout: REQUEST_TIMEOUT,
            heartbeat_interval: HEARTBEAT,
            node_timeout: NODE_TIMEOUT,
            inbound_queue: 4096,
            partitions,
        };
        let node = metrics.node().clone();
        let adapter = match &self.server {
            Server::Redis(server) => {
                let url = server.url();
                ClusterAdapter::start([spec], config(1), node, move |spec| {
                    RedisTransport::start(RedisConfig { url }, spec) as Arc<dyn Transport>
                })
            }
            Server::RedisCluster(cluster) => {
                let nodes = cluster.urls();
                ClusterAdapter::start([spec], config(PARTITIONS), node, move |spec| {
                    RedisClusterTransport::start(RedisClusterConfig { nodes }, spec) as Arc<dyn Transport>
                })
            }
            Server::Nats(server) => {
                let servers = vec![server.url()];
                ClusterAdapter::start([spec], config(1), node, move |spec| {
                    NatsTransport::start(NatsConfig { servers }, spec) as Arc<dyn Transport>
                })
            }
            Server::None => unreachable!("the local fabric has no cluster nodes"),
        };
        (Arc::new(adapter), facts)
    }

    /// A new connection on node `i`.
    fn client(&self, i: usize) -> Client {
        Client::on(self.adapters[i].clone(), i as u64 + 1, self.sockets.fetch_add(1, Ordering::Relaxed))
    }

    /// Every webhook fact of the cluster (each distinct sink once), except
    /// those of [`Nodes::sync_from`] probes.
    fn facts(&self) -> Vec<String> {
        let mut out: Vec<String> = self.distinct_sinks().iter().flat_map(|f| f.all()).collect();
        out.retain(|f| !f.contains(PROBE));
        out.sort();
        out
    }

    fn distinct_sinks(&self) -> Vec<Arc<Facts>> {
        let mut sinks: Vec<Arc<Facts>> = Vec::new();
        for f in &self.facts {
            if !sinks.iter().any(|s| Arc::ptr_eq(s, f)) {
                sinks.push(f.clone());
            }
        }
        sinks
    }

    /// A barrier: returns once every node has processed every change node
    /// `i` made before the call. (A node's changes reach each peer in
    /// order, so a probe member joining from `i` and seen everywhere proves
    /// it.) No-op on the local adapter, where changes are synchronous.
    async fn sync_from(&self, i: usize) {
        if !self.is_cluster() {
            return;
        }
        let channel = format!("presence-{PROBE}-{}", self.probes.fetch_add(1, Ordering::Relaxed));
        let probe = self.client(i);
        probe.subscribe(&channel, Some("probe")).await;
        for (j, node) in self.adapters.iter().enumerate() {
            poll(WAIT, &format!("node {j} sees the probe from node {i}"), async || {
                let members = ids(node.members(APP, &channel).await.unwrap());
                if members == ["probe"] {
                    Ok(())
                } else {
                    Err(format!("{members:?}"))
                }
            })
            .await;
        }
        probe.leave().await;
        for (j, node) in self.adapters.iter().enumerate() {
            poll(WAIT, &format!("node {j} forgets the probe from node {i}"), async || {
                let members = ids(node.members(APP, &channel).await.unwrap());
                if members.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{members:?}"))
                }
            })
            .await;
        }
    }

    /// Waits until every node answers `expected` to `ask`.
    async fn agree<T: PartialEq + std::fmt::Debug>(
        &self,
        what: &str,
        expected: T,
        ask: impl AsyncFn(&dyn Adapter) -> T,
    ) {
        for (i, node) in self.adapters.iter().enumerate() {
            poll(WAIT, &format!("node {i}: {what}"), async || {
                let seen = ask(&**node).await;
                if seen == expected {
                    Ok(())
                } else {
                    Err(format!("{seen:?}, want {expected:?}"))
                }
            })
            .await;
        }
    }

    async fn shutdown(&self) {
        for node in &self.adapters {
            node.shutdown().await;
        }
    }
}

/// The name part of barrier probe channels.
const PROBE: &str = "sync-probe";

/// Polls `check` every 20 ms until it returns `Ok` or `deadline` passes.
async fn poll<T>(deadline: Duration, what: &str, mut check: impl AsyncFnMut() -> Result<T, String>) -> T {
    let until = Instant::now() + deadline;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= until => panic!("{what}: not so within {deadline:?}; last seen: {last}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// [`poll`] with the usual 5 s deadline.
async fn eventually(what: &str, check: impl AsyncFnMut() -> Result<(), String>) {
    poll(WAIT, what, check).await
}

// ---------------------------------------------------------------------------
// Connections and frames
// ---------------------------------------------------------------------------

/// One connection of one node, with the receiving end of its queue.
struct Client {
    adapter: Arc<dyn Adapter>,
    conn: Arc<Connection>,
    rx: Receiver<Frame>,
}

impl Client {
    fn on(adapter: Arc<dyn Adapter>, major: u64, minor: u64) -> Client {
        let (conn, rx) = Connection::new(SocketId { major, minor }, 64);
        adapter.add_connection(APP, conn.clone(), 0).unwrap();
        Client { adapter, conn, rx }
    }

    fn id(&self) -> SocketId {
        self.conn.socket_id
    }

    /// The next frame, within [`WAIT`].
    async fn next(&mut self) -> Value {
        let id = self.id();
        match tokio::time::timeout(WAIT, self.rx.recv()).await {
            Ok(Some(frame)) => parse(frame),
            Ok(None) => panic!("socket {id}: queue closed"),
            Err(_) => panic!("socket {id}: no frame within {WAIT:?}"),
        }
    }

    /// The next frame, which must be `event` (on `channel`); returns its data.
    async fn expect(&mut self, event: &str, channel: Option<&str>) -> Value {
        let frame = self.next().await;
        assert_eq!(frame["event"], event, "socket {}: {frame}", self.id());
        assert_eq!(frame.get("channel").and_then(Value::as_str), channel, "socket {}: {frame}", self.id());
        data(&frame)
    }

    /// Whatever is queued right now (only meaningful after a positive control).
    fn queued(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Ok(frame) = self.rx.try_recv() {
            out.push(parse(frame));
        }
        out
    }

    async fn subscribe(&self, channel: &str, user: Option<&str>) -> SubscribeOutcome {
        self.adapter.subscribe(APP, &self.conn, subscription(channel, user)).await.unwrap()
    }

    /// Subscribes and takes the `subscription_succeeded`; returns the
    /// outcome and the frame's data.
    async fn join(&mut self, channel: &str, user: Option<&str>) -> (SubscribeOutcome, Value) {
        let outcome = self.subscribe(channel, user).await;
        let data = self.expect("pusher_internal:subscription_succeeded", Some(channel)).await;
        (outcome, data)
    }

    async fn unsubscribe(&self, channel: &str) -> UnsubscribeOutcome {
        self.adapter.unsubscribe(APP, &self.conn, channel).await.unwrap().expect("was subscribed")
    }

    async fn sign_in(&self, user_id: &str, watchlist: &[&str]) -> SignInOutcome {
        let watchlist: Vec<String> = watchlist.iter().map(|w| w.to_string()).collect();
        self.adapter.sign_in(APP, &self.conn, user_id, &watchlist).await.unwrap()
    }

    /// The connection goes away (`remove_connections`).
    async fn leave(&self) -> Departure {
        self.adapter.remove_connections(APP, std::slice::from_ref(&self.conn)).await.unwrap().pop().unwrap()
    }
}

fn subscription(channel: &str, user: Option<&str>) -> Subscription {
    Subscription {
        channel: channel.into(),
        member: user.map(|id| PresenceMember { user_id: id.into(), user_info: info(id) }),
        max_members: 100,
        is_cache: channel.starts_with("cache-"),
    }
}

fn info(user_id: &str) -> Value {
    json!({ "name": format!("user {user_id}") })
}

fn parse(frame: Frame) -> Value {
    serde_json::from_str(frame.as_str()).unwrap_or_else(|e| panic!("{e}: {}", frame.as_str()))
}

/// A frame's `data`, parsed when it is a JSON string.
fn data(frame: &Value) -> Value {
    match &frame["data"] {
        Value::String(s) => serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone())),
        other => other.clone(),
    }
}

/// A client event as the REST API would broadcast it.
fn event(channel: &str, n: u32) -> String {
    json!({ "event": "e", "channel": channel, "data": json!({ "n": n }).to_string() }).to_string()
}

async fn broadcast(node: &dyn Adapter, channel: &str, frame: &str, except: Option<&Client>, remember: bool) -> usize {
    let frame = herald_adapter::text_frame(frame.to_string());
    node.broadcast(APP, channel, frame, except.map(Client::id), remember).await.unwrap()
}

/// Sorted user ids of a member list.
fn ids(members: Vec<(String, Value)>) -> Vec<String> {
    let mut ids: Vec<String> = members.into_iter().map(|(id, _)| id).collect();
    ids.sort();
    ids
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn watch_event(name: &str, user: &str) -> Value {
    json!({ "events": [{ "name": name, "user_ids": [user] }] })
}

/// name → (subscription_count, user_count) of every occupied channel.
async fn channel_table(node: &dyn Adapter) -> BTreeMap<String, (usize, usize)> {
    node.channels(APP)
        .await
        .unwrap()
        .into_iter()
        .filter(|c| !c.name.contains(PROBE))
        .map(|c| (c.name, (c.subscription_count, c.user_count)))
        .collect()
}

// ---------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------

/// Scenario 1: A broadcast reaches every subscriber on every node exactly once,
/// `except` excludes exactly one socket, the origin ignores its own echo.
async fn delivery_reaches_every_node_once(nodes: &Nodes) {
    let ch = "deliver";
    let mut s0 = nodes.client(0);
    let mut s1 = nodes.client(1);
    let mut s2a = nodes.client(2);
    let mut s2b = nodes.client(2);
    for c in [&mut s0, &mut s1, &mut s2a, &mut s2b] {
        c.join(ch, None).await;
    }

    // From node 0: its one local subscriber (all four on the local adapter).
    let e1 = event(ch, 1);
    assert_eq!(broadcast(&*nodes.adapters[0], ch, &e1, None, false).await, nodes.pick(1, 4));
    for c in [&mut s0, &mut s1, &mut s2a, &mut s2b] {
        assert_eq!(c.next().await, e1.parse::<Value>().unwrap(), "socket {}", c.id());
    }
    // From node 2, after e1 reached nodes 1 and 2 through the fabric: an
    // echo of e1 on node 0 would be queued to s0 before e2.
    let e2 = event(ch, 2);
    assert_eq!(broadcast(&*nodes.adapters[2], ch, &e2, None, false).await, nodes.pick(2, 4));
    for c in [&mut s0, &mut s1, &mut s2a, &mut s2b] {
        assert_eq!(c.next().await, e2.parse::<Value>().unwrap(), "socket {}", c.id());
    }
    // Except one socket of node 2 (node 0 delivers to its own one).
    let e3 = event(ch, 3);
    assert_eq!(broadcast(&*nodes.adapters[0], ch, &e3, Some(&s2a), false).await, nodes.pick(1, 3));
    for c in [&mut s0, &mut s1, &mut s2b] {
        assert_eq!(c.next().await, e3.parse::<Value>().unwrap(), "socket {}", c.id());
    }
    // Positive control: e4 from node 1 is the next frame of s2a (so e3
    // skipped it) and of s0 (so e3 was not echoed).
    let e4 = event(ch, 4);
    assert_eq!(broadcast(&*nodes.adapters[1], ch, &e4, None, false).await, nodes.pick(1, 4));
    for c in [&mut s0, &mut s1, &mut s2a, &mut s2b] {
        assert_eq!(c.next().await, e4.parse::<Value>().unwrap(), "socket {}", c.id());
    }
    for c in [&mut s0, &mut s2a, &mut s2b] {
        assert_eq!(c.queued(), Vec::<Value>::new(), "socket {}", c.id());
    }
}

/// Scenario 2: Presence members, `member_added` / `member_removed` and user counts
/// are the cluster's, whichever node holds each socket.
async fn presence_is_cluster_wide(nodes: &Nodes) {
    let ch = "presence-x";
    // Watchers on node 1 (where u's second socket will be) and node 2
    // (which hears of u from nodes 0 and 1).
    let mut w1 = nodes.client(1);
    let (outcome, data) = w1.join(ch, Some("watch1")).await;
    assert!(outcome.member_added && outcome.channel_occupied, "{outcome:?}");
    assert_eq!(data["presence"]["count"], 1);
    nodes.agree("members", strings(&["watch1"]), async |n| ids(n.members(APP, ch).await.unwrap())).await;
    let mut w2 = nodes.client(2);
    assert_eq!(w2.join(ch, Some("watch2")).await.1["presence"]["count"], 2);
    assert_eq!(w1.expect("pusher_internal:member_added", Some(ch)).await["user_id"], "watch2");

    let u0 = nodes.client(0);
    assert!(u0.subscribe(ch, Some("u")).await.member_added);
    for w in [&mut w1, &mut w2] {
        let added = w.expect("pusher_internal:member_added", Some(ch)).await;
        assert_eq!(added, json!({ "user_id": "u", "user_info": info("u") }));
    }
    // Node 1 has seen u (it told w1), so u's second socket there adds no member.
    let u1 = nodes.client(1);
    let outcome = u1.subscribe(ch, Some("u")).await;
    assert!(!outcome.member_added && !outcome.channel_occupied, "{outcome:?}");
    // Once node 2 has processed node 1's changes, v joins there: the next
    // frame of both watchers is v's, so u was added only once.
    nodes.sync_from(1).await;
    let v = nodes.client(2);
    assert!(v.subscribe(ch, Some("v")).await.member_added);
    for w in [&mut w1, &mut w2] {
        assert_eq!(w.expect("pusher_internal:member_added", Some(ch)).await["user_id"], "v");
    }
    let want = strings(&["u", "v", "watch1", "watch2"]);
    nodes.agree("members", want, async |n| ids(n.members(APP, ch).await.unwrap())).await;

    let mut late = nodes.client(2);
    let (_, data) = late.join(ch, Some("late")).await;
    let mut listed: Vec<String> =
        data["presence"]["ids"].as_array().unwrap().iter().map(|i| i.as_str().unwrap().to_string()).collect();
    listed.sort();
    assert_eq!(listed, strings(&["late", "u", "v", "watch1", "watch2"]), "{data}");
    assert_eq!(data["presence"]["count"], 5);
    assert_eq!(data["presence"]["hash"]["u"], info("u"));
    for w in [&mut w1, &mut w2] {
        assert_eq!(w.expect("pusher_internal:member_added", Some(ch)).await["user_id"], "late");
    }
    // 6 sockets (w1, w2, u ×2, v, late), 5 users.
    nodes.agree("presence-x in channels()", Some((6, 5)), async |n| channel_table(n).await.get(ch).copied()).await;

    // u's node-0 socket leaves: u is still there on node 1.
    let departure = u0.leave().await;
    assert_eq!(departure.channels.len(), 1);
    assert_eq!(departure.channels[0].1.member_removed, None);
    // Positive control: z joins from node 0 after u0 left; every watcher
    // sees z next, so no member_removed for u came before it.
    let z = nodes.client(0);
    z.subscribe(ch, Some("z")).await;
    for w in [&mut w1, &mut w2, &mut late] {
        assert_eq!(w.expect("pusher_internal:member_added", Some(ch)).await["user_id"], "z");
    }
    // u's last socket leaves: exactly one member_removed, on every node.
    assert_eq!(u1.unsubscribe(ch).await.member_removed.as_deref(), Some("u"));
    for w in [&mut w1, &mut w2, &mut late] {
        assert_eq!(w.expect("pusher_internal:member_removed", Some(ch)).await, json!({ "user_id": "u" }));
    }
    // Positive control from the same node: z2's join is next, not a
    // second removal of u.
    let z2 = nodes.client(1);
    z2.subscribe(ch, Some("z2")).await;
    for w in [&mut w1, &mut w2, &mut late] {
        assert_eq!(w.expect("pusher_internal:member_added", Some(ch)).await["user_id"], "z2");
    }
    let want = strings(&["late", "v", "watch1", "watch2", "z", "z2"]);
    nodes.agree("members", want, async |n| ids(n.members(APP, ch).await.unwrap())).await;
    // 6 sockets (w1, w2, v, late, z, z2), 6 users.
    nodes.agree("presence-x in channels()", Some((6, 6)), async |n| channel_table(n).await.get(ch).copied()).await;
    for w in [&mut w1, &mut w2, &mut late] {
        assert_eq!(w.queued(), Vec::<Value>::new(), "socket {}", w.id());
    }
}

/// Scenario 3: Subscription counts and channel lists are the cluster's totals, and
/// a channel vacated everywhere leaves every list.
async fn counts_and_channel_lists_are_cluster_totals(nodes: &Nodes) {
    // Who subscribes where (node, channel, user):
    //   a:          node 0 ×1, node 1 ×2                 → 3 sockets
    //   b:          nodes 0, 1, 2                         → 3 sockets
    //   presence-p: p1 on node 0, p1 on node 2, p2 on 1   → 3 sockets, 2 users
    //   solo:       node 2                                → 1 socket
    let plan: [(usize, &str, Option<&str>); 10] = [
        (0, "a", None),
        (1, "a", None),
        (1, "a", None),
        (0, "b", None),
        (1, "b", None),
        (2, "b", None),
        (0, "presence-p", Some("p1")),
        (2, "presence-p", Some("p1")),
        (1, "presence-p", Some("p2")),
        (2, "solo", None),
    ];
    let mut clients = Vec::new();
    for (node, channel, user) in plan {
        let c = nodes.client(node);
        c.subscribe(channel, user).await;
        clients.push(c);
    }
    let table = |rows: &[(&str, usize, usize)]| -> BTreeMap<String, (usize, usize)> {
        rows.iter().map(|(name, subs, users)| (name.to_string(), (*subs, *users))).collect()
    };
    let expected = table(&[("a", 3, 0), ("b", 3, 0), ("presence-p", 3, 2), ("solo", 1, 0)]);
    nodes.agree("channels()", expected, async |n| channel_table(n).await).await;
    for (channel, count) in [("a", 3), ("b", 3), ("presence-p", 3), ("solo", 1), ("none", 0)] {
        nodes
            .agree(&format!("subscription_count({channel})"), count, async |n| {
                n.subscription_count(APP, channel).await.unwrap()
            })
            .await;
    }

    // b is vacated on every node; one a socket of node 1 and p1's node-0
    // socket go away (p1 stays on node 2).
    for c in &clients[3..6] {
        c.unsubscribe("b").await;
    }
    clients[2].leave().await;
    clients[6].leave().await;
    let expected = table(&[("a", 2, 0), ("presence-p", 2, 2), ("solo", 1, 0)]);
    nodes.agree("channels()", expected, async |n| channel_table(n).await).await;
    for (channel, count) in [("a", 2), ("b", 0), ("presence-p", 2), ("solo", 1)] {
        nodes
            .agree(&format!("subscription_count({channel})"), count, async |n| {
                n.subscription_count(APP, channel).await.unwrap()
            })
            .await;
    }
}

/// Scenario 4: Each webhook fact is reported once by the cluster, whichever node
/// holds the sockets: occupied / vacated per channel, added / removed per
/// user. Many channel names, so that several nodes are announcers.
async fn webhook_facts_fire_once_per_fact(nodes: &Nodes) {
    const PLAIN: usize = 12;
    const PRESENCE: usize = 6;
    let plain: Vec<String> = (0..PLAIN).map(|k| format!("hook-{k}")).collect();
    let presence: Vec<String> = (0..PRESENCE).map(|k| format!("presence-hook-{k}")).collect();
    let sync_all = async || {
        for i in 0..3 {
            nodes.sync_from(i).await;
        }
    };
    let mut want: Vec<String> = Vec::new();
    let settle = async |want: &Vec<String>| {
        let mut want = want.clone();
        want.sort();
        eventually("webhook facts", async || {
            let facts = nodes.facts();
            if facts == want {
                Ok(())
            } else {
                Err(format!("{facts:?}\nwant {want:?}"))
            }
        })
        .await;
        // Every node has processed every change: nothing more may come.
        sync_all().await;
        assert_eq!(nodes.facts(), want, "facts after every node caught up");
    };

    // First sockets: plain channel k on node k % 3; presence channel k
    // holds user a on nodes k % 3 and (k + 1) % 3, and user b on (k + 2) % 3.
    let mut plain_clients: Vec<Vec<Client>> = Vec::new();
    for (k, ch) in plain.iter().enumerate() {
        let c = nodes.client(k % 3);
        c.subscribe(ch, None).await;
        plain_clients.push(vec![c]);
        want.push(format!("occupied {ch}"));
    }
    let mut presence_clients: Vec<Vec<Client>> = Vec::new();
    for (k, ch) in presence.iter().enumerate() {
        let c = nodes.client(k % 3);
        c.subscribe(ch, Some("a")).await;
        presence_clients.push(vec![c]);
        want.push(format!("occupied {ch}"));
        want.push(format!("added {ch} a"));
    }
    settle(&want).await;

    // Second and third sockets on the other nodes: nothing new for plain
    // channels; user b is new, a's second socket is not.
    for (k, ch) in plain.iter().enumerate() {
        for node in [(k + 1) % 3, (k + 2) % 3] {
            let c = nodes.client(node);
            c.subscribe(ch, None).await;
            plain_clients[k].push(c);
        }
    }
    for (k, ch) in presence.iter().enumerate() {
        for (node, user) in [((k + 1) % 3, "a"), ((k + 2) % 3, "b")] {
            let c = nodes.client(node);
            c.subscribe(ch, Some(user)).await;
            presence_clients[k].push(c);
        }
        want.push(format!("added {ch} b"));
    }
    settle(&want).await;
    if nodes.is_cluster() {
        let announcers = nodes.facts.iter().filter(|f| f.all().iter().any(|f| f.contains("hook-"))).count();
        assert!(announcers >= 2, "{PLAIN} + {PRESENCE} channels all announced by one node");
    }

    // The first socket of each channel leaves (a's first one): no fact.
    for clients in plain_clients.iter().chain(&presence_clients) {
        clients[0].leave().await;
    }
    settle(&want).await;

    // The second (a's last one): a is removed, every channel stays occupied.
    for clients in plain_clients.iter().chain(&presence_clients) {
        clients[1].leave().await;
    }
    for ch in &presence {
        want.push(format!("removed {ch} a"));
    }
    settle(&want).await;

    // The last ones, each on a node other than the channel's first.
    for clients in plain_clients.iter().chain(&presence_clients) {
        clients[2].leave().await;
    }
    for ch in &plain {
        want.push(format!("vacated {ch}"));
    }
    for ch in &presence {
        want.push(format!("removed {ch} b"));
        want.push(format!("vacated {ch}"));
    }
    settle(&want).await;
}

/// Scenario 5: Watchlists follow the cluster's view of a user, and terminating a
/// user closes its connections on every node.
async fn watchlists_and_termination_span_nodes(nodes: &Nodes) {
    let mut watcher = nodes.client(2);
    let outcome = watcher.sign_in("w", &["u", "x", "y"]).await;
    assert!(outcome.came_online && outcome.online_watched.is_empty(), "{outcome:?}");

    let u0 = nodes.client(0);
    assert!(u0.sign_in("u", &[]).await.came_online);
    assert_eq!(watcher.expect("pusher_internal:watchlist_events", None).await, watch_event("online", "u"));
    nodes.sync_from(0).await;
    let u1 = nodes.client(1);
    assert!(!u1.sign_in("u", &[]).await.came_online, "node 1 knows u is online on node 0");
    // Positive control: x signs in on node 1 after u did; the watcher's
    // next event is x's, so u's second sign-in told it nothing.
    nodes.client(1).sign_in("x", &[]).await;
    assert_eq!(watcher.expect("pusher_internal:watchlist_events", None).await, watch_event("online", "x"));
    nodes.sync_from(1).await;
    let late_watcher = nodes.client(0);
    assert_eq!(late_watcher.sign_in("w2", &["nobody", "x", "u"]).await.online_watched, strings(&["x", "u"]));

    // u's node-0 connection goes: u is still online on node 1.
    assert!(!u0.leave().await.user.unwrap().went_offline);
    nodes.client(0).sign_in("y", &[]).await;
    assert_eq!(watcher.expect("pusher_internal:watchlist_events", None).await, watch_event("online", "y"));
    nodes.sync_from(0).await;
    // u signs in again as u on its last connection (node 1): no watcher
    // hears anything (no offline/online flicker). Positive control: v signs
    // in on node 1 after it, and a watcher of u and v hears v's online next.
    let mut watcher2 = nodes.client(2);
    watcher2.sign_in("w3", &["u", "v"]).await;
    assert!(!u1.sign_in("u", &["x"]).await.came_online);
    nodes.client(1).sign_in("v", &[]).await;
    assert_eq!(watcher2.expect("pusher_internal:watchlist_events", None).await, watch_event("online", "v"));
    // Its last connection goes: offline, once.
    let departure = u1.leave().await.user.unwrap();
    assert_eq!((&*departure.user_id, departure.went_offline), ("u", true));
    assert_eq!(watcher.expect("pusher_internal:watchlist_events", None).await, watch_event("offline", "u"));

    // Termination from node 2 reaches t's connections on nodes 0 and 1.
    let t0 = nodes.client(0);
    let t1 = nodes.client(1);
    let bystander = nodes.client(0);
    t0.sign_in("t", &[]).await;
    t1.sign_in("t", &[]).await;
    bystander.sign_in("b", &[]).await;
    let closed = nodes.adapters[2].terminate_user_connections(APP, "t").await.unwrap();
    assert_eq!(closed, nodes.pick(0, 2), "connections closed on the asking node");
    for (name, c) in [("t0", &t0), ("t1", &t1)] {
        eventually(&format!("{name} closed with 4009"), async || match c.conn.close_requested() {
            Some(code) if code.as_u16() == 4009 => Ok(()),
            other => Err(format!("{other:?}")),
        })
        .await;
    }
    // t0's node handled the termination, which left b alone.
    assert_eq!(bystander.conn.close_requested(), None);
    assert_eq!(watcher.queued(), Vec::<Value>::new());
}

/// Scenario 6: A cache channel's last event is replayed to a later subscriber on
/// any node, even one started after the event and after its origin left.
async fn cache_channels_replay_from_any_node(nodes: &Nodes) {
    let ch = "cache-x";
    let last = event(ch, 7);
    assert_eq!(broadcast(&*nodes.adapters[0], ch, &last, None, true).await, 0, "nobody subscribed yet");
    let last: Value = last.parse().unwrap();

    let mut c = nodes.client(2);
    let (outcome, _) = c.join(ch, None).await;
    assert!(!outcome.cache_miss, "{outcome:?}");
    assert_eq!(c.next().await, last);

    let mut miss = nodes.client(1);
    let (outcome, _) = miss.join("cache-none", None).await;
    assert!(outcome.cache_miss, "{outcome:?}");
    assert_eq!(miss.next().await, json!({ "event": "pusher:cache_miss", "channel": "cache-none", "data": "{}" }));

    if !nodes.is_cluster() {
        return;
    }
    // The origin (node 0) and node 2 (which may have fetched the event from
    // node 0 when c subscribed) leave: only node 1 remains, which got the
    // event from the fabric alone. A node started now asks it.
    nodes.adapters[0].shutdown().await;
    nodes.adapters[2].shutdown().await;
    let (fourth, _) = nodes.start_cluster_node("n3");
    all_joined(&[nodes.cluster[1].clone(), fourth.clone()]).await;
    let mut c = Client::on(fourth.clone(), 4, 0);
    let (outcome, _) = c.join(ch, None).await;
    assert!(!outcome.cache_miss, "{outcome:?}");
    assert_eq!(c.next().await, last);
    let mut miss = Client::on(fourth.clone(), 4, 1);
    assert!(miss.join("cache-none", None).await.0.cache_miss);
    assert_eq!(miss.expect("pusher:cache_miss", Some("cache-none")).await, json!({}));
    fourth.shutdown().await;
}

/// Scenario 7: A node that shuts down says goodbye: its members leave every view at
/// once, not after the node timeout.
async fn goodbye_removes_a_nodes_members_at_once(nodes: &Nodes) {
    let ch = "presence-y";
    let mut watcher = nodes.client(0);
    watcher.join(ch, Some("w0")).await;
    let gone = nodes.client(1);
    gone.subscribe(ch, Some("gone")).await;
    assert_eq!(watcher.expect("pusher_internal:member_added", Some(ch)).await["user_id"], "gone");
    nodes.agree("members", strings(&["gone", "w0"]), async |n| ids(n.members(APP, ch).await.unwrap())).await;

    let started = Instant::now();
    nodes.adapters[1].shutdown().await;
    assert_eq!(watcher.expect("pusher_internal:member_removed", Some(ch)).await, json!({ "user_id": "gone" }));
    let took = started.elapsed();
    assert!(took < NODE_TIMEOUT / 2, "member_removed after {took:?}: the goodbye was not heard");
    for i in [0, 2] {
        let node = &nodes.adapters[i];
        eventually(&format!("node {i} forgets gone"), async || {
            let members = ids(node.members(APP, ch).await.unwrap());
            if members == ["w0"] {
                Ok(())
            } else {
                Err(format!("{members:?}"))
            }
        })
        .await;
        let cluster = &nodes.cluster[i];
        eventually(&format!("node {i} sees 2 nodes"), async || match cluster.cluster_size() {
            2 => Ok(()),
            n => Err(n.to_string()),
        })
        .await;
    }
}

/// Scenario 8: Connection counts are the cluster's (peers' as of their heartbeats).
async fn connection_counts_are_cluster_totals(nodes: &Nodes) {
    // node 0: 2, node 1: 1, node 2: 3.
    let clients: Vec<Client> = [0, 0, 1, 2, 2, 2].into_iter().map(|i| nodes.client(i)).collect();
    nodes.agree("connection_count", 6, async |n| n.connection_count(APP).unwrap()).await;
    // Both of node 0's and one of node 2's go: 1 + 2 left.
    for c in [&clients[0], &clients[1], &clients[3]] {
        c.leave().await;
    }
    nodes.agree("connection_count", 3, async |n| n.connection_count(APP).unwrap()).await;
    // The quota counts every node's connections: with 3 open and a quota
    // of 4, node 1 admits one more, and then no node admits another.
    let quota = 4;
    let (extra, _rx) = Connection::new(SocketId { major: 99, minor: 0 }, 8);
    nodes.adapters[1].add_connection(APP, extra, quota).unwrap();
    nodes.agree("connection_count", 4, async |n| n.connection_count(APP).unwrap()).await;
    for (i, node) in nodes.adapters.iter().enumerate() {
        let (conn, _rx) = Connection::new(SocketId { major: 99, minor: i as u64 + 1 }, 8);
        let refused = node.add_connection(APP, conn, quota);
        assert!(matches!(refused, Err(AdapterError::OverQuota(_))), "node {i} admitted a 5th connection: {refused:?}");
    }
    nodes.agree("connection_count", 4, async |n| n.connection_count(APP).unwrap()).await;
}

// ---------------------------------------------------------------------------
// Instantiation: one test per (fabric, scenario)
// ---------------------------------------------------------------------------

macro_rules! conformance {
    ($fabric:ident: $kind:expr => [$($scenario:ident),* $(,)?]) => {
        mod $fabric {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let nodes = start_nodes($kind, 3).await;
                    tokio::time::timeout(SCENARIO_LIMIT, super::$scenario(&nodes))
                        .await
                        .unwrap_or_else(|_| panic!("scenario did not finish within {SCENARIO_LIMIT:?}"));
                    nodes.shutdown().await;
                }
            )*
        }
    };
}

macro_rules! cluster_conformance {
    ($fabric:ident: $kind:expr) => {
        conformance!($fabric: $kind => [
            delivery_reaches_every_node_once,
            presence_is_cluster_wide,
            counts_and_channel_lists_are_cluster_totals,
            webhook_facts_fire_once_per_fact,
            watchlists_and_termination_span_nodes,
            cache_channels_replay_from_any_node,
            goodbye_removes_a_nodes_members_at_once,
            connection_counts_are_cluster_totals,
        ]);
    };
}

conformance!(local: Fabric::Local => [
    delivery_reaches_every_node_once,
    presence_is_cluster_wide,
    counts_and_channel_lists_are_cluster_totals,
    webhook_facts_fire_once_per_fact,
    watchlists_and_termination_span_nodes,
    cache_channels_replay_from_any_node,
    connection_counts_are_cluster_totals,
]);
cluster_conformance!(redis: Fabric::Redis);
cluster_conformance!(redis_cluster: Fabric::RedisCluster);
cluster_conformance!(nats: Fabric::Nats);
