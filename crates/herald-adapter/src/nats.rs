//! The NATS fabric: nodes exchange messages as core NATS publishes, for
//! deployments that run NATS (a NATS cluster spreads the subjects itself, so
//! there is one partition).
//!
//! Subject names use `.` as separator ([`Subject::name`] with `'.'`); every
//! part is escaped so that it is one token without `.`, `*` or `>`:
//!
//! | subject               | NATS subject                 |
//! |-----------------------|------------------------------|
//! | `App { app_id, .. }`  | `{prefix}.app.{escaped app}` |
//! | `Control`             | `{prefix}.ctl`               |
//! | `Node(id)`            | `{prefix}.node.{escaped id}` |
//!
//! One async-nats client, created with `retry_on_initial_connect` and
//! unlimited reconnects (delays 100 ms doubling to 2 s), holds one
//! subscription per subject; async-nats re-sends them after every
//! reconnect. The link follows the client's connection events: down on
//! `Disconnected`, up after `Connected` once a flush (PING/PONG, which the
//! server answers after it processed every SUB sent before) confirms the
//! subscriptions. The client pings the server every 2 s, so a frozen server
//! is noticed within a few seconds.
//!
//! A publish is refused at once while the link is down (async-nats would
//! otherwise queue it, up to its command channel's 2048 entries, for
//! whenever it reconnects) and is bounded by the request timeout.
//! Subscriptions buffer up to 65536 messages each; beyond that NATS drops
//! messages and reports a slow consumer, which is counted and logged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::{Client, ConnectOptions, Event, Subscriber};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::fabric::backoff::{delay_for_attempt, set_link, Backoff, Outage};
use crate::fabric::{FabricError, Inbound, Subject, Transport, TransportSpec};

/// Messages buffered per subscription before NATS drops (slow consumer).
pub const SUBSCRIPTION_CAPACITY: usize = 65_536;
/// How often the client pings the server; after 2 unanswered pings it
/// reconnects.
const PING_INTERVAL: Duration = Duration::from_secs(2);
/// At most one slow-consumer log line per this interval.
const SLOW_CONSUMER_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Where the NATS fabric is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatsConfig {
    /// Server URLs (`nats://host:port`); more are discovered from the cluster.
    pub servers: Vec<String>,
}

/// The NATS fabric. See the module documentation.
pub struct NatsTransport {
    url: String,
    prefix: String,
    request_timeout: Duration,
    shared: Arc<Shared>,
}

struct Shared {
    link: watch::Sender<bool>,
    /// The client, once created (at start) and until stopped.
    client: RwLock<Option<Client>>,
    reason: Mutex<String>,
    slow_consumer_events: AtomicU64,
}

impl NatsTransport {
    /// Creates the client and its subscriptions in the background and
    /// returns at once; the link goes up on `spec.link` once connected with
    /// every subscription confirmed.
    pub fn start(config: NatsConfig, spec: TransportSpec) -> Arc<Self> {
        let url = config.servers.join(",");
        let shared = Arc::new(Shared {
            link: spec.link,
            client: RwLock::new(None),
            reason: Mutex::new("not connected yet".into()),
            slow_consumer_events: AtomicU64::new(0),
        });
        let transport = Arc::new(Self {
            url: url.clone(),
            prefix: spec.prefix.clone(),
            request_timeout: spec.request_timeout,
            shared: shared.clone(),
        });
        let subjects = spec.subjects.iter().map(|s| s.name(&spec.prefix, '.')).collect();
        let task = Supervisor {
            url,
            servers: config.servers,
            subjects,
            inbound: spec.inbound,
            timeout: spec.request_timeout,
            stop: spec.stop,
            tasks: spec.tasks.clone(),
            shared,
        };
        spec.tasks.spawn(task.run());
        transport
    }

    fn down(&self) -> FabricError {
        FabricError::Down { url: self.url.clone(), reason: self.shared.reason.lock().clone() }
    }

    /// Slow-consumer events reported by the client so far (each one is at
    /// least one message NATS dropped because a subscription was full).
    pub fn slow_consumer_events(&self) -> u64 {
        self.shared.slow_consumer_events.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl Transport for NatsTransport {
    fn kind(&self) -> &'static str {
        "nats"
    }

    async fn publish(&self, subject: &Subject, payload: Bytes) -> Result<(), FabricError> {
        let client = if *self.shared.link.borrow() { self.shared.client.read().clone() } else { None };
        let Some(client) = client.filter(|c| c.connection_state() == State::Connected) else {
            return Err(self.down());
        };
        match tokio::time::timeout(self.request_timeout, client.publish(subject.name(&self.prefix, '.'), payload)).await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(FabricError::Failed(e.to_string())),
            Err(_) => Err(FabricError::Timeout(self.request_timeout)),
        }
    }
}

struct Supervisor {
    url: String,
    servers: Vec<String>,
    subjects: Vec<String>,
    inbound: Inbound,
    timeout: Duration,
    stop: CancellationToken,
    tasks: TaskTracker,
    shared: Arc<Shared>,
}

impl Supervisor {
    async fn run(self) {
        let mut outage = Outage::new("nats", self.url.clone());
        // Connection events are rare; a bounded queue with backpressure on the
        // client's event task (never dropping a Disconnected).
        let (events_tx, events) = mpsc::channel(64);
        let options = ConnectOptions::new()
            .retry_on_initial_connect()
            .max_reconnects(None)
            // `attempt` counts from 1: try at once, then wait 100 ms, 200 ms, ...
            .reconnect_delay_callback(|attempt| match attempt {
                0 | 1 => Duration::ZERO,
                n => delay_for_attempt((n - 2).min(64) as u32),
            })
            .connection_timeout(self.timeout)
            .ping_interval(PING_INTERVAL)
            .subscription_capacity(SUBSCRIPTION_CAPACITY)
            .event_callback(move |event| {
                let events_tx = events_tx.clone();
                async move {
                    let _ = events_tx.send(event).await;
                }
            });
        // With retry_on_initial_connect this returns at once; it fails only
        // on unusable server URLs.
        let client = match options.connect(self.servers.as_slice()).await {
            Ok(client) => client,
            Err(e) => return self.fail_for_good(&mut outage, format!("invalid NATS server list: {e}")).await,
        };
        for subject in &self.subjects {
            // Waits only if the client's command queue is full (not connected yet).
            let subscribed = tokio::select! {
                _ = self.stop.cancelled() => return self.stopped(),
                r = client.subscribe(subject.clone()) => r,
            };
            match subscribed {
                Ok(subscriber) => {
                    self.tasks.spawn(forward(subscriber, self.inbound.clone(), self.stop.clone()));
                }
                Err(e) => return self.fail_for_good(&mut outage, format!("cannot subscribe to {subject}: {e}")).await,
            }
        }
        *self.shared.client.write() = Some(client.clone());
        self.follow_events(&client, events, &mut outage).await;

        self.stopped();
        // Hand over what was published before the stop (bounded).
        if client.connection_state() == State::Connected {
            let _ = tokio::time::timeout(self.timeout, client.flush()).await;
        }
    }

    /// A configuration error: stays down (loudly) until stopped.
    async fn fail_for_good(&self, outage: &mut Outage, reason: String) {
        *self.shared.reason.lock() = reason.clone();
        outage.failed(&reason);
        self.stop.cancelled().await;
        self.stopped();
    }

    fn stopped(&self) {
        set_link(&self.shared.link, false);
        *self.shared.reason.lock() = "transport stopped".into();
        self.shared.client.write().take();
    }

    async fn follow_events(&self, client: &Client, mut events: mpsc::Receiver<Event>, outage: &mut Outage) {
        let mut backoff = Backoff::new();
        // When to (re)confirm the subscriptions with a flush.
        let mut confirm_at: Option<tokio::time::Instant> = None;
        // The first connection may never come: say so once after the timeout.
        let first_deadline = tokio::time::sleep(self.timeout);
        tokio::pin!(first_deadline);
        let mut first_wait_over = false;
        let mut slow_logged = Instant::now() - SLOW_CONSUMER_LOG_INTERVAL;
        let mut slow_since_log = 0u64;
        loop {
            let confirm = async {
                match confirm_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = &mut first_deadline, if !first_wait_over => {
                    first_wait_over = true;
                    if !*self.shared.link.borrow() {
                        let reason = format!("no connection within {:?}", self.timeout);
                        *self.shared.reason.lock() = reason.clone();
                        outage.failed(&reason);
                    }
                }
                event = events.recv() => match event {
                    Some(Event::Connected) => {
                        first_wait_over = true;
                        confirm_at = Some(tokio::time::Instant::now());
                    }
                    Some(Event::Disconnected) | Some(Event::Closed) => {
                        set_link(&self.shared.link, false);
                        confirm_at = None;
                        let reason = "disconnected".to_string();
                        *self.shared.reason.lock() = reason.clone();
                        outage.failed(&reason);
                    }
                    Some(Event::SlowConsumer(sid)) => {
                        let total = self.shared.slow_consumer_events.fetch_add(1, Ordering::Relaxed) + 1;
                        slow_since_log += 1;
                        if slow_logged.elapsed() >= SLOW_CONSUMER_LOG_INTERVAL {
                            tracing::warn!(
                                fabric = "nats", url = %self.url, sid, events = slow_since_log, total,
                                "NATS subscription full (slow consumer): messages dropped"
                            );
                            slow_logged = Instant::now();
                            slow_since_log = 0;
                        }
                    }
                    Some(other) => tracing::warn!(fabric = "nats", url = %self.url, "NATS client event: {other}"),
                    None => return,
                },
                _ = confirm => {
                    match tokio::time::timeout(self.timeout, client.flush()).await {
                        Ok(Ok(())) if client.connection_state() == State::Connected => {
                            confirm_at = None;
                            backoff.reset();
                            outage.recovered();
                            set_link(&self.shared.link, true);
                        }
                        result => {
                            let reason = match result {
                                Ok(Ok(())) => "connection lost while confirming subscriptions".to_string(),
                                Ok(Err(e)) => format!("flush failed: {e}"),
                                Err(_) => format!("no answer to flush within {:?}", self.timeout),
                            };
                            *self.shared.reason.lock() = reason.clone();
                            outage.failed(&reason);
                            confirm_at = Some(tokio::time::Instant::now() + backoff.next_delay());
                        }
                    }
                }
            }
        }
    }
}

/// Hands every message of one subscription to the node's inbound queue.
async fn forward(mut subscriber: Subscriber, inbound: Inbound, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            message = subscriber.next() => match message {
                Some(message) => inbound.push(message.payload),
                None => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_test_servers::{free_port, NatsServer};

    const WAIT: Duration = Duration::from_secs(10);

    struct Node {
        transport: Arc<NatsTransport>,
        inbound: mpsc::Receiver<Bytes>,
        link: watch::Receiver<bool>,
        stop: CancellationToken,
        tasks: TaskTracker,
    }

    fn app(id: &str) -> Subject {
        Subject::App { app_id: id.into(), partition: 0 }
    }

    impl Node {
        fn start(url: &str, prefix: &str, node_id: &str) -> Node {
            let (inbound, rx) = Inbound::new(1024);
            let (link, link_rx) = watch::channel(false);
            let (stop, tasks) = (CancellationToken::new(), TaskTracker::new());
            let spec = TransportSpec {
                prefix: prefix.into(),
                subjects: vec![app("my-app"), Subject::Control, Subject::Node(node_id.into())],
                inbound,
                link,
                request_timeout: Duration::from_secs(1),
                stop: stop.clone(),
                tasks: tasks.clone(),
            };
            let transport = NatsTransport::start(NatsConfig { servers: vec![url.into()] }, spec);
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

        async fn shutdown(self) {
            self.stop.cancel();
            self.tasks.close();
            tokio::time::timeout(WAIT, self.tasks.wait()).await.expect("tasks did not stop");
            assert!(!*self.link.borrow());
        }
    }

    #[test]
    fn subject_names_use_dots() {
        assert_eq!(app("my.app").name("herald", '.'), "herald.app.my%2Eapp");
        assert_eq!(Subject::Control.name("herald", '.'), "herald.ctl");
        assert_eq!(Subject::Node("n>1".into()).name("herald", '.'), "herald.node.n%3E1");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn nodes_with_the_same_prefix_see_each_other_and_no_other_prefix() {
        let server = NatsServer::start();
        let mut a = Node::start(&server.url(), "herald", "a");
        let mut b = Node::start(&server.url(), "herald", "b");
        let mut other = Node::start(&server.url(), "other", "a");
        a.link_is(true).await;
        b.link_is(true).await;
        other.link_is(true).await;

        for (subject, payload, to_a) in
            [(app("my-app"), "app", true), (Subject::Control, "ctl", true), (Subject::Node("b".into()), "node", false)]
        {
            a.transport.publish(&subject, Bytes::from(payload)).await.unwrap();
            assert_eq!(b.recv().await, payload);
            if to_a {
                assert_eq!(a.recv().await, payload, "a node also receives its own app and control publishes");
            }
        }
        b.transport.publish(&Subject::Node("a".into()), Bytes::from("to-a")).await.unwrap();
        assert_eq!(a.recv().await, "to-a");

        // Positive control: `other` receives its own prefix, and only that.
        a.transport.publish(&Subject::Control, Bytes::from("herald-only")).await.unwrap();
        other.transport.publish(&Subject::Control, Bytes::from("other-only")).await.unwrap();
        assert_eq!(other.recv().await, "other-only");
        assert_eq!(b.recv().await, "herald-only");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(other.inbound.try_recv().is_err(), "a different prefix leaked through");
        assert!(b.inbound.try_recv().is_err());
        assert_eq!(a.transport.slow_consumer_events(), 0);

        for n in [a, b, other] {
            n.shutdown().await;
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn publish_is_down_until_the_server_exists_then_the_link_comes_up() {
        let logs = crate::fabric::backoff::capture::logs();
        let port = free_port();
        let url = format!("nats://127.0.0.1:{port}");
        let mut a = Node::start(&url, "herald", "a");
        let started = std::time::Instant::now();
        let err = a.transport.publish(&Subject::Control, Bytes::from("x")).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_millis(100), "a publish while down must fail at once");
        assert!(matches!(&err, FabricError::Down { url, .. } if url.contains(&port.to_string())), "{err:?}");
        // The request timeout (1 s) passes with several failed attempts: one error.
        tokio::time::sleep(Duration::from_millis(1600)).await;
        assert!(!*a.link.borrow());
        assert_eq!(logs.count(tracing::Level::ERROR, &[&url]), 1);

        let mut server = tokio::task::spawn_blocking(move || NatsServer::start_on(port)).await.unwrap();
        a.link_is(true).await;
        assert_eq!(logs.count(tracing::Level::INFO, &[&url, "reachable again"]), 1);
        a.transport.publish(&Subject::Control, Bytes::from("hello")).await.unwrap();
        assert_eq!(a.recv().await, "hello");

        // A second outage: one more error.
        server.stop();
        a.link_is(false).await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(logs.count(tracing::Level::ERROR, &[&url]), 2);
        a.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_restarted_server_is_resubscribed() {
        let mut server = NatsServer::start();
        let mut a = Node::start(&server.url(), "herald", "a");
        let mut b = Node::start(&server.url(), "herald", "b");
        a.link_is(true).await;
        b.link_is(true).await;

        server.stop();
        a.link_is(false).await;
        b.link_is(false).await;
        assert!(matches!(
            a.transport.publish(&Subject::Control, Bytes::from("lost")).await,
            Err(FabricError::Down { .. })
        ));
        server.restart();
        let back = std::time::Instant::now();
        a.link_is(true).await;
        b.link_is(true).await;
        assert!(back.elapsed() < Duration::from_secs(5), "took {:?} to come back", back.elapsed());
        a.transport.publish(&app("my-app"), Bytes::from("again")).await.unwrap();
        assert_eq!(b.recv().await, "again");
        a.shutdown().await;
        b.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_frozen_server_takes_the_link_down() {
        let mut server = NatsServer::start();
        let mut a = Node::start(&server.url(), "herald", "a");
        a.link_is(true).await;
        server.pause();
        a.link_is(false).await;
        assert!(matches!(
            a.transport.publish(&Subject::Control, Bytes::from("x")).await,
            Err(FabricError::Down { .. })
        ));
        server.resume();
        a.link_is(true).await;
        a.transport.publish(&Subject::Control, Bytes::from("thawed")).await.unwrap();
        assert_eq!(a.recv().await, "thawed");
        a.shutdown().await;
    }
}
