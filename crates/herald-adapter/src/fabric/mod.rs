//! The cluster adapter: a [`LocalAdapter`] joined to its peers by a fabric
//! ([`Transport`]: Redis, Redis Cluster or NATS). Everything the three
//! fabrics share lives here, once:
//!
//! - **Delivery.** An event is serialized once into an [`envelope`],
//!   delivered to this node's subscribers at once, and published once on
//!   the app's subject. Every other node hands the frame bytes to its local
//!   fan-out; the origin ignores its own echo.
//! - **Replicated state.** Namespaces report node-level changes (first or
//!   last local subscriber of a channel, of a presence member, of a signed-in
//!   user) through [`Replica`]; a single publisher task numbers them and
//!   publishes them, with heartbeats, on the control subject. Peers apply
//!   them to their view, so presence lists, `member_added`/`member_removed`,
//!   watchlists and webhooks are the cluster's. A gap in the numbers, a new
//!   node or a reconnect triggers a snapshot.
//! - **Questions** whose answer is spread over the nodes (subscription
//!   counts, channel lists, a cache channel's last event) are a
//!   scatter-gather ([`survey`]) with a deadline.
//! - **Nodes** ([`nodes`]): unique ids per process start, heartbeats,
//!   expiry of silent nodes, and the election of each channel's announcer.

pub(crate) mod backoff;
mod envelope;
mod nodes;
pub(crate) mod supervise;
mod survey;
#[cfg(test)]
pub(crate) mod testkit;
mod transport;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use herald_metrics::NodeMetrics;
use herald_protocol::SocketId;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use envelope::{decode, encode, Answer, Body, DecodeError, Envelope, Question, VERSION};
pub use transport::{escape_token, partition_of, FabricError, Inbound, Subject, Transport, TransportSpec};

use crate::adapter::{Adapter, AdapterError, ChannelSummary, Subscription};
use crate::connection::{Connection, Frame};
use crate::local::UnsubscribeOutcome;
use crate::local::{Departure, LocalAdapter, Namespace, NamespaceSpec, SignInOutcome, SubscribeOutcome};
use crate::replica::{Change, NodeAppState, NodeId, Replica};
use nodes::Peers;
use survey::Survey;

/// Changes and control messages waiting for the publisher.
const OUTBOX: usize = 65_536;

/// How a cluster node behaves (see docs/configuration.md).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The node's name; its fabric id adds a random suffix per start.
    pub node_name: String,
    /// Namespace of every subject (`--adapter-prefix`).
    pub prefix: String,
    /// Deadline of every fabric call and cluster question.
    pub request_timeout: Duration,
    pub heartbeat_interval: Duration,
    /// Silence after which a peer is declared dead.
    pub node_timeout: Duration,
    /// Received messages that may wait for this node.
    pub inbound_queue: usize,
    /// Partitions of each app subject (the transport's `partitions()`).
    pub partitions: u16,
}

enum Outgoing {
    Change {
        app: Arc<str>,
        change: Change,
    },
    Heartbeat,
    Snapshot,
    /// Ask every node for a snapshot and send ours (start, reconnect).
    Hello,
    SyncRequest(NodeId),
    Direct {
        subject: Subject,
        bytes: Bytes,
    },
    Bye(oneshot::Sender<()>),
}

/// What the namespaces report to: the publisher queue and the peers.
struct Core {
    peers: Peers,
    outbox: mpsc::Sender<Outgoing>,
    /// A change could not be queued: peers must resync with this node.
    lost: AtomicBool,
    /// Until then this node is still learning the cluster: snapshots it
    /// applies fire no webhooks, and it is not ready.
    warm_until: Mutex<Option<Instant>>,
}

impl Core {
    fn me(&self) -> &NodeId {
        self.peers.me()
    }

    fn send(&self, msg: Outgoing) {
        if self.outbox.try_send(msg).is_err() {
            self.lost.store(true, Ordering::Release);
        }
    }

    fn warming(&self) -> bool {
        self.warm_until.lock().is_none_or(|until| Instant::now() < until)
    }
}

impl Replica for Core {
    fn changed(&self, app_id: &str, change: Change) {
        self.send(Outgoing::Change { app: app_id.into(), change });
    }

    fn announces(&self, channel: &str) -> bool {
        self.peers.announces(channel)
    }
}

struct Inner {
    local: LocalAdapter,
    core: Arc<Core>,
    transport: Arc<dyn Transport>,
    link: watch::Receiver<bool>,
    survey: Survey,
    inbound: Inbound,
    config: ClusterConfig,
    metrics: NodeMetrics,
}

/// A node of a Herald cluster.
pub struct ClusterAdapter {
    inner: Arc<Inner>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl ClusterAdapter {
    /// Builds the namespaces, starts the transport (`connect` is given the
    /// subjects to subscribe) and the node's tasks. Returns at once: the
    /// fabric is reached in the background, and until then the node is not
    /// ready and publishes fail.
    pub fn start(
        specs: impl IntoIterator<Item = NamespaceSpec>,
        config: ClusterConfig,
        metrics: NodeMetrics,
        connect: impl FnOnce(TransportSpec) -> Arc<dyn Transport>,
    ) -> Self {
        let me: NodeId = format!("{}-{:08x}", config.node_name, rand::random::<u32>()).into();
        let (outbox, outbox_rx) = mpsc::channel(OUTBOX);
        let core = Arc::new(Core {
            peers: Peers::new(me.clone()),
            outbox,
            lost: AtomicBool::new(false),
            warm_until: Mutex::new(None),
        });
        let local = LocalAdapter::with_replica(specs, core.clone());
        let mut subjects = vec![Subject::Control, Subject::Node(me.clone())];
        for ns in local.namespaces() {
            for partition in 0..config.partitions.max(1) {
                subjects.push(Subject::App { app_id: ns.app_id.clone(), partition });
            }
        }
        let (inbound, inbound_rx) = Inbound::new(config.inbound_queue);
        let (link_tx, link) = watch::channel(false);
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let transport = connect(TransportSpec {
            prefix: config.prefix.clone(),
            subjects,
            inbound: inbound.clone(),
            link: link_tx,
            request_timeout: config.request_timeout,
            stop: stop.clone(),
            tasks: tasks.clone(),
        });
        metrics.cluster_nodes.set(1.0);
        metrics.fabric_up.set(0.0);
        tracing::info!(node = %me, fabric = transport.kind(), "cluster node starting");
        let inner =
            Arc::new(Inner { local, core, transport, link, survey: Survey::default(), inbound, config, metrics });
        tasks.spawn(receive(inner.clone(), inbound_rx, stop.clone()));
        tasks.spawn(publish(inner.clone(), outbox_rx, stop.clone()));
        tasks.spawn(tick(inner.clone(), stop.clone()));
        Self { inner, stop, tasks }
    }

    /// This node's id on the fabric.
    pub fn node_id(&self) -> &NodeId {
        self.inner.core.me()
    }

    /// The local half (this node's state).
    pub fn local(&self) -> &LocalAdapter {
        &self.inner.local
    }

    /// Live nodes as this node sees them, itself included.
    pub fn cluster_size(&self) -> usize {
        self.inner.core.peers.count()
    }
}

impl Inner {
    fn me(&self) -> &NodeId {
        self.core.me()
    }

    fn link_up(&self) -> bool {
        *self.link.borrow()
    }

    fn down(&self) -> AdapterError {
        AdapterError::Fabric(FabricError::Down {
            url: self.transport.kind().to_string(),
            reason: "not connected".into(),
        })
    }

    /// Publishes an event envelope for `channel`.
    async fn publish_event(
        &self,
        app_id: &str,
        channel: &str,
        frame: &Frame,
        except: Option<SocketId>,
        cache: bool,
    ) -> Result<(), AdapterError> {
        if !self.link_up() {
            return Err(self.down());
        }
        let body = Body::Event {
            app: app_id.to_string(),
            channel: channel.to_string(),
            except: except.map(|s| s.to_string()),
            origin: Some(self.me().to_string()),
            cache,
        };
        let payload = frame.payload();
        let bytes = encode(body, Some(payload));
        let partition = partition_of(channel, self.config.partitions);
        let subject = Subject::App { app_id: app_id.into(), partition };
        self.out(self.transport.publish(&subject, bytes).await)
    }

    fn out(&self, result: Result<(), FabricError>) -> Result<(), AdapterError> {
        match result {
            Ok(()) => {
                self.metrics.fabric_messages_out.increment(1);
                Ok(())
            }
            Err(e) => {
                self.metrics.fabric_errors.increment(1);
                Err(e.into())
            }
        }
    }

    /// Asks every live peer `question`; returns the answers that came in
    /// before the deadline.
    async fn ask(&self, app_id: &str, question: Question) -> Result<Vec<(Answer, Bytes)>, AdapterError> {
        let peers = self.core.peers.live();
        if peers.is_empty() {
            return Ok(Vec::new());
        }
        if !self.link_up() {
            return Err(self.down());
        }
        let asked = self.survey.register(peers);
        let id = asked.id;
        let bytes = encode(Body::Req { n: self.me().to_string(), id, app: app_id.to_string(), q: question }, None);
        if let Err(e) = self.out(self.transport.publish(&Subject::Control, bytes).await) {
            self.survey.take(id);
            return Err(e);
        }
        let gathered = self.survey.gather(asked, self.config.request_timeout).await;
        if !gathered.missing.is_empty() {
            self.metrics.fabric_partial_answers.increment(1);
            tracing::warn!(
                missing = ?gathered.missing,
                timeout_ms = self.config.request_timeout.as_millis() as u64,
                "cluster question answered without every node"
            );
        }
        Ok(gathered.answers)
    }

    /// Handles one message from the fabric. Never waits on the fabric:
    /// replies go to the publisher's queue; an event's fan-out only gives
    /// the worker back between chunks of recipients.
    async fn handle(&self, message: Bytes) {
        self.metrics.fabric_messages_in.increment(1);
        let (body, payload) = match decode(&message) {
            Ok(decoded) => decoded,
            Err(e) => {
                self.metrics.fabric_errors.increment(1);
                tracing::debug!(error = %e, "undecodable fabric message dropped");
                return;
            }
        };
        let me = &**self.me();
        if body.sender().is_some_and(|n| self.core.peers.departed(n)) {
            return;
        }
        match body {
            Body::Event { app, channel, except, origin, cache } => {
                if origin.as_deref() == Some(me) {
                    return;
                }
                let Some(ns) = self.local.namespace(&app) else { return };
                let Ok(frame) = Frame::from_payload(&payload) else {
                    self.metrics.fabric_errors.increment(1);
                    return;
                };
                if frame.is_empty() {
                    // An event envelope without its frame: nothing to deliver.
                    self.metrics.fabric_errors.increment(1);
                    tracing::debug!(app, channel, "event envelope without a frame dropped");
                    return;
                }
                let except = except.and_then(|s| s.parse().ok());
                ns.fan_out(&channel, &frame, except, cache).await;
            }
            Body::Change { n, seq, app, change } if n != me => {
                let node: NodeId = n.into();
                if self.core.peers.on_change(&node, seq) {
                    self.resync(node.clone());
                }
                if let Some(ns) = self.local.namespace(&app) {
                    ns.apply_remote(&node, &change, false);
                }
            }
            Body::Hb { n, seq, conns } if n != me => {
                let node: NodeId = n.into();
                if self.core.peers.on_heartbeat(&node, seq, conns) {
                    self.resync(node);
                }
            }
            Body::Sync { n, to } if n != me => {
                let node: NodeId = n.into();
                if self.core.peers.on_message(&node) {
                    self.resync(node);
                }
                if to.as_deref().is_none_or(|to| to == me) {
                    self.core.send(Outgoing::Snapshot);
                }
            }
            Body::Snap { n, seq, apps } if n != me => {
                let node: NodeId = n.into();
                let conns = apps.iter().map(|(app, state)| (app.clone(), state.connections)).collect();
                self.core.peers.on_snapshot(&node, seq, conns);
                let quiet = self.core.warming();
                let empty = NodeAppState::default();
                for ns in self.local.namespaces() {
                    ns.replace_remote(&node, apps.get(&*ns.app_id).unwrap_or(&empty), quiet);
                }
            }
            Body::Bye { n } if n != me => {
                let node: NodeId = n.into();
                if self.core.peers.remove(&node) {
                    tracing::info!(node = %node, "node left the cluster");
                    self.forget(&node);
                }
            }
            Body::Req { n, id, app, q } if n != me => {
                let node: NodeId = n.into();
                if self.core.peers.on_message(&node) {
                    self.resync(node.clone());
                }
                // A node that does not serve the app still answers (nothing),
                // so the asker need not wait for its deadline.
                let (answer, payload) = answer(self.local.namespace(&app).map(|ns| &**ns), q);
                let reply = encode(Body::Rep { n: me.to_string(), id, a: answer }, payload.as_deref());
                self.core.send(Outgoing::Direct { subject: Subject::Node(node), bytes: reply });
            }
            Body::Rep { n, id, a } => self.survey.answer(id, &NodeId::from(n), a, payload),
            Body::Term { n, app, user } if n != me => {
                let _ = self.local.terminate_local(&app, &user);
            }
            _ => {}
        }
    }

    fn resync(&self, node: NodeId) {
        self.metrics.fabric_resyncs.increment(1);
        self.core.send(Outgoing::SyncRequest(node));
    }

    /// A node is gone: everything it held leaves the cluster's view.
    fn forget(&self, node: &NodeId) {
        let empty = NodeAppState::default();
        for ns in self.local.namespaces() {
            ns.replace_remote(node, &empty, false);
        }
        self.metrics.cluster_nodes.set(self.core.peers.count() as f64);
    }

    fn snapshot(&self) -> HashMap<String, NodeAppState> {
        self.local.namespaces().map(|ns| (ns.app_id.to_string(), ns.node_state())).collect()
    }

    fn connections(&self) -> HashMap<String, usize> {
        self.local.namespaces().map(|ns| (ns.app_id.to_string(), ns.connection_count())).collect()
    }
}

/// This node's answer to a question (`None`: it does not serve the app).
fn answer(ns: Option<&Namespace>, question: Question) -> (Answer, Option<Vec<u8>>) {
    let Some(ns) = ns else {
        return match question {
            Question::Count { .. } => (Answer::Count { count: 0 }, None),
            Question::Channels => (Answer::Channels { channels: Vec::new() }, None),
            Question::Cache { .. } => (Answer::Cache { found: false, age_ms: 0 }, None),
        };
    };
    match question {
        Question::Count { channel } => (Answer::Count { count: ns.subscription_count(&channel) }, None),
        Question::Channels => (Answer::Channels { channels: ns.local_channels() }, None),
        Question::Cache { channel } => match ns.cached(&channel) {
            Some(event) => {
                let age_ms = event.stored.elapsed().as_millis() as u64;
                (Answer::Cache { found: true, age_ms }, Some(event.frame.payload().to_vec()))
            }
            None => (Answer::Cache { found: false, age_ms: 0 }, None),
        },
    }
}

/// Drains the inbound queue.
async fn receive(inner: Arc<Inner>, mut queue: mpsc::Receiver<Bytes>, stop: CancellationToken) {
    loop {
        tokio::select! {
            message = queue.recv() => match message {
                Some(message) => inner.handle(message).await,
                None => break,
            },
            _ = stop.cancelled() => break,
        }
    }
}

/// The one task that publishes control messages, in order, numbering
/// changes as it goes, until the goodbye.
async fn publish(inner: Arc<Inner>, mut queue: mpsc::Receiver<Outgoing>, stop: CancellationToken) {
    let mut seq: u64 = 0;
    let n = inner.me().to_string();
    loop {
        let msg = tokio::select! {
            msg = queue.recv() => msg,
            _ = stop.cancelled() => None,
        };
        let Some(msg) = msg else { break };
        if inner.core.lost.swap(false, Ordering::AcqRel) {
            // A change was dropped before it was numbered: skip a number so
            // every peer notices and asks for a snapshot.
            seq += 1;
        }
        let mut ack = None;
        let messages: Vec<(Subject, Bytes)> = match msg {
            Outgoing::Change { app, change } => {
                seq += 1;
                vec![(Subject::Control, encode(Body::Change { n: n.clone(), seq, app: app.to_string(), change }, None))]
            }
            Outgoing::Heartbeat => {
                let conns = inner.connections();
                vec![(Subject::Control, encode(Body::Hb { n: n.clone(), seq, conns }, None))]
            }
            Outgoing::Snapshot => {
                vec![(Subject::Control, encode(Body::Snap { n: n.clone(), seq, apps: inner.snapshot() }, None))]
            }
            Outgoing::Hello => vec![
                (Subject::Control, encode(Body::Sync { n: n.clone(), to: None }, None)),
                (Subject::Control, encode(Body::Snap { n: n.clone(), seq, apps: inner.snapshot() }, None)),
            ],
            Outgoing::SyncRequest(node) => {
                vec![(Subject::Control, encode(Body::Sync { n: n.clone(), to: Some(node.to_string()) }, None))]
            }
            Outgoing::Direct { subject, bytes } => vec![(subject, bytes)],
            Outgoing::Bye(done) => {
                ack = Some(done);
                vec![(Subject::Control, encode(Body::Bye { n: n.clone() }, None))]
            }
        };
        for (subject, bytes) in messages {
            if let Err(e) = inner.out(inner.transport.publish(&subject, bytes).await) {
                tracing::debug!(error = %e, "fabric publish failed");
            }
        }
        if let Some(ack) = ack {
            let _ = ack.send(());
            // The goodbye is the node's last word: a heartbeat or change
            // queued meanwhile would make the peers take it for alive again
            // until the node timeout.
            break;
        }
    }
}

/// Heartbeats, expiry of silent peers, and the reaction to the link going
/// up (announce ourselves, ask for everyone's state) or down.
async fn tick(inner: Arc<Inner>, stop: CancellationToken) {
    let mut heartbeat = tokio::time::interval(inner.config.heartbeat_interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut link = inner.link.clone();
    let mut dropped_seen = 0;
    let warm = inner.config.heartbeat_interval.min(Duration::from_millis(500));
    let mut last_tick = Instant::now();
    loop {
        tokio::select! {
            _ = heartbeat.tick() => {
                // This node itself stood still (SIGSTOP, a stalled host):
                // the silence it saw is its own, not the peers' — give them
                // a fresh timeout instead of declaring them all dead.
                let since = last_tick.elapsed();
                last_tick = Instant::now();
                if since > inner.config.node_timeout / 2 {
                    tracing::warn!(stalled_ms = since.as_millis() as u64, "this node was stalled; peers get a fresh timeout");
                    inner.core.peers.touch_all();
                }
                // Cut off from the fabric we hear nobody: that is no news
                // about the peers, so none is declared dead meanwhile.
                if *link.borrow() {
                    inner.core.send(Outgoing::Heartbeat);
                    for dead in inner.core.peers.expire(inner.config.node_timeout) {
                        tracing::warn!(node = %dead, timeout_ms = inner.config.node_timeout.as_millis() as u64,
                            "node declared dead: no heartbeat within the node timeout");
                        inner.forget(&dead);
                    }
                }
                inner.metrics.cluster_nodes.set(inner.core.peers.count() as f64);
                let dropped = inner.inbound.dropped();
                if dropped > dropped_seen {
                    inner.metrics.fabric_inbound_dropped.increment(dropped - dropped_seen);
                    tracing::warn!(dropped = dropped - dropped_seen, "fabric inbound queue overflowed");
                    dropped_seen = dropped;
                }
            }
            changed = link.changed() => {
                if changed.is_err() {
                    break;
                }
                let up = *link.borrow_and_update();
                inner.metrics.fabric_up.set(if up { 1.0 } else { 0.0 });
                if up {
                    *inner.core.warm_until.lock() = Some(Instant::now() + warm);
                    inner.core.peers.touch_all();
                    inner.core.send(Outgoing::Hello);
                } else {
                    tracing::warn!(fabric = inner.transport.kind(), "cluster fabric lost: not ready, peers' state frozen until it is back");
                }
            }
            _ = stop.cancelled() => break,
        }
    }
}

#[async_trait]
impl Adapter for ClusterAdapter {
    fn kind(&self) -> &'static str {
        self.inner.transport.kind()
    }

    fn is_ready(&self) -> bool {
        self.inner.link_up() && !self.inner.core.warming()
    }

    fn add_connection(&self, app_id: &str, conn: Arc<Connection>, max_connections: usize) -> Result<(), AdapterError> {
        // The peers' counts are read first: the peers mutex is never taken
        // under a namespace lock it does not need.
        let elsewhere = if max_connections > 0 { self.inner.core.peers.connections(app_id) } else { 0 };
        Ok(self.inner.local.ns(app_id)?.add_connection(conn, max_connections, elsewhere)?)
    }

    fn connection_count(&self, app_id: &str) -> Result<usize, AdapterError> {
        Ok(self.inner.local.connection_count(app_id)? + self.inner.core.peers.connections(app_id))
    }

    async fn remove_connections(
        &self,
        app_id: &str,
        conns: &[Arc<Connection>],
    ) -> Result<Vec<Departure>, AdapterError> {
        self.inner.local.remove_connections(app_id, conns).await
    }

    async fn subscribe(
        &self,
        app_id: &str,
        conn: &Arc<Connection>,
        request: Subscription,
    ) -> Result<SubscribeOutcome, AdapterError> {
        let ns = self.inner.local.ns(app_id)?;
        let subscribed_at = std::time::Instant::now();
        let mut outcome = ns.subscribe(conn, &request, true)?;
        if outcome.cache_miss {
            outcome.cache_miss = !self.replay_from_peers(ns, conn, &request.channel, subscribed_at).await;
        }
        Ok(outcome)
    }

    async fn unsubscribe(
        &self,
        app_id: &str,
        conn: &Arc<Connection>,
        channel: &str,
    ) -> Result<Option<UnsubscribeOutcome>, AdapterError> {
        self.inner.local.unsubscribe(app_id, conn, channel).await
    }

    async fn sign_in(
        &self,
        app_id: &str,
        conn: &Arc<Connection>,
        user_id: &str,
        watchlist: &[String],
    ) -> Result<SignInOutcome, AdapterError> {
        self.inner.local.sign_in(app_id, conn, user_id, watchlist).await
    }

    async fn broadcast(
        &self,
        app_id: &str,
        channel: &str,
        frame: Frame,
        except: Option<SocketId>,
        remember: bool,
    ) -> Result<usize, AdapterError> {
        // Refuse while cut off, before delivering anything: the caller gets
        // an error for an event that reached nobody, and may retry.
        if !self.inner.link_up() {
            return Err(self.inner.down());
        }
        let delivered = self.inner.local.broadcast(app_id, channel, frame.clone(), except, remember).await?;
        match self.inner.publish_event(app_id, channel, &frame, except, remember).await {
            Ok(()) => Ok(delivered),
            Err(AdapterError::Fabric(e)) => Err(AdapterError::NotPublished(e)),
            Err(e) => Err(e),
        }
    }

    async fn broadcast_local(
        &self,
        app_id: &str,
        channel: &str,
        frame: Frame,
        except: Option<SocketId>,
    ) -> Result<usize, AdapterError> {
        self.inner.local.broadcast_local(app_id, channel, frame, except).await
    }

    async fn subscription_count(&self, app_id: &str, channel: &str) -> Result<usize, AdapterError> {
        let mut count = self.inner.local.subscription_count(app_id, channel).await?;
        for (answer, _) in self.inner.ask(app_id, Question::Count { channel: channel.to_string() }).await? {
            if let Answer::Count { count: theirs } = answer {
                count += theirs;
            }
        }
        Ok(count)
    }

    async fn members(&self, app_id: &str, channel: &str) -> Result<Vec<(String, Value)>, AdapterError> {
        self.inner.local.members(app_id, channel).await
    }

    async fn channels(&self, app_id: &str) -> Result<Vec<ChannelSummary>, AdapterError> {
        let ns = self.inner.local.ns(app_id)?;
        let mut counts: HashMap<String, usize> = ns.local_channels().into_iter().collect();
        for (answer, _) in self.inner.ask(app_id, Question::Channels).await? {
            if let Answer::Channels { channels } = answer {
                for (name, n) in channels {
                    *counts.entry(name).or_default() += n;
                }
            }
        }
        Ok(ns.summarize(counts))
    }

    async fn terminate_user_connections(&self, app_id: &str, user_id: &str) -> Result<usize, AdapterError> {
        let closed = self.inner.local.terminate_local(app_id, user_id)?;
        if !self.inner.link_up() {
            return Err(self.inner.down());
        }
        let body = Body::Term { n: self.inner.me().to_string(), app: app_id.to_string(), user: user_id.to_string() };
        self.inner.out(self.inner.transport.publish(&Subject::Control, encode(body, None)).await)?;
        Ok(closed)
    }

    async fn shutdown(&self) {
        let (done, acked) = oneshot::channel();
        self.inner.core.send(Outgoing::Bye(done));
        let _ = tokio::time::timeout(self.inner.config.request_timeout, acked).await;
        self.stop.cancel();
        self.tasks.close();
        if tokio::time::timeout(self.inner.config.request_timeout, self.tasks.wait()).await.is_err() {
            tracing::warn!("cluster tasks did not stop in time");
        }
    }
}

impl ClusterAdapter {
    /// A cache channel missed here: take the youngest last event a peer has
    /// (or one another subscriber's replay stored meanwhile), unless a live
    /// event reached this subscriber since it subscribed. Returns whether
    /// the subscriber got an event (else it gets `cache_miss`).
    async fn replay_from_peers(
        &self,
        ns: &Namespace,
        conn: &Arc<Connection>,
        channel: &str,
        subscribed_at: std::time::Instant,
    ) -> bool {
        let answers = self.inner.ask(&ns.app_id, Question::Cache { channel: channel.to_string() }).await;
        let youngest = answers
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(answer, payload)| match answer {
                Answer::Cache { found: true, age_ms } => Some((age_ms, payload)),
                _ => None,
            })
            .filter(|(_, payload)| !payload.is_empty())
            .min_by_key(|(age, _)| *age);
        let answer = youngest.and_then(|(age, p)| Some((Frame::from_payload(&p).ok()?, Duration::from_millis(age))));
        ns.finish_replay(conn, channel, answer, subscribed_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_metrics::Metrics;

    /// A fabric that records what the node publishes; its link is up.
    struct Recording {
        published: Mutex<Vec<Body>>,
        _link: watch::Sender<bool>,
    }

    #[async_trait]
    impl Transport for Recording {
        fn kind(&self) -> &'static str {
            "recording"
        }

        async fn publish(&self, _subject: &Subject, payload: Bytes) -> Result<(), FabricError> {
            let (body, _) = decode(&payload).expect("the node's own envelopes decode");
            self.published.lock().push(body);
            Ok(())
        }
    }

    #[tokio::test]
    async fn nothing_is_published_after_the_goodbye() {
        let metrics = Metrics::new("n");
        let config = ClusterConfig {
            node_name: "n".into(),
            prefix: "p".into(),
            request_timeout: Duration::from_secs(1),
            heartbeat_interval: Duration::from_secs(3600),
            node_timeout: Duration::from_secs(3600),
            inbound_queue: 16,
            partitions: 1,
        };
        let recording: Arc<Mutex<Option<Arc<Recording>>>> = Arc::default();
        let slot = recording.clone();
        let node = ClusterAdapter::start(Vec::<NamespaceSpec>::new(), config, metrics.node().clone(), move |spec| {
            spec.link.send_replace(true);
            let transport = Arc::new(Recording { published: Mutex::default(), _link: spec.link });
            *slot.lock() = Some(transport.clone());
            transport as Arc<dyn Transport>
        });
        let recording = recording.lock().clone().unwrap();
        // A heartbeat queued right behind the goodbye (the tick task may do
        // that while `shutdown` waits for the goodbye to go out).
        let (done, acked) = oneshot::channel();
        node.inner.core.send(Outgoing::Bye(done));
        node.inner.core.send(Outgoing::Heartbeat);
        acked.await.unwrap();
        // Positive control: the publisher stops at the goodbye (its queue
        // closes), so everything it was going to publish is recorded.
        let stopped = tokio::time::timeout(Duration::from_secs(1), async {
            while !node.inner.core.outbox.is_closed() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .is_ok();
        let published = recording.published.lock().clone();
        let after: Vec<&Body> = published.iter().skip_while(|b| !matches!(b, Body::Bye { .. })).skip(1).collect();
        assert!(after.is_empty(), "published after the goodbye (peers take the node for alive again): {after:?}");
        assert!(stopped, "the publisher kept running after the goodbye");
        node.shutdown().await;
    }
}
