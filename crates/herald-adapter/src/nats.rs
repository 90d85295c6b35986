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
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::fabric::backoff::{delay_for_attempt, set_link, Backoff, Outage};
use crate::fabric::supervise::Shared;
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
    /// The client is live from its creation (at start) until stopped.
    shared: Arc<Shared<Client>>,
    slow_consumer_events: Arc<AtomicU64>,
}

impl NatsTransport {
    /// Creates the client and its subscriptions in the background and
    /// returns at once; the link goes up on `spec.link` once connected with
    /// every subscription confirmed.
    pub fn start(config: NatsConfig, spec: TransportSpec) -> Arc<Self> {
        let url = config.servers.join(",");
        let shared = Arc::new(Shared::new(spec.link));
        let slow_consumer_events = Arc::new(AtomicU64::new(0));
        let transport = Arc::new(Self {
            url: url.clone(),
            prefix: spec.prefix.clone(),
            request_timeout: spec.request_timeout,
            shared: shared.clone(),
            slow_consumer_events: slow_consumer_events.clone(),
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
            slow_consumer_events,
        };
        spec.tasks.spawn(task.run());
        transport
    }

    /// Slow-consumer events reported by the client so far (each one is at
    /// least one message NATS dropped because a subscription was full).
    pub fn slow_consumer_events(&self) -> u64 {
        self.slow_consumer_events.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl Transport for NatsTransport {
    fn kind(&self) -> &'static str {
        "nats"
    }

    async fn publish(&self, subject: &Subject, payload: Bytes) -> Result<(), FabricError> {
        let Some(client) = self.shared.live().filter(|c| c.connection_state() == State::Connected) else {
            return Err(self.shared.down(&self.url));
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
    shared: Arc<Shared<Client>>,
    slow_consumer_events: Arc<AtomicU64>,
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
                _ = self.stop.cancelled() => return self.shared.stopped(),
                r = client.subscribe(subject.clone()) => r,
            };
            match subscribed {
                Ok(subscriber) => {
                    self.tasks.spawn(forward(subscriber, self.inbound.clone(), self.stop.clone()));
                }
                Err(e) => return self.fail_for_good(&mut outage, format!("cannot subscribe to {subject}: {e}")).await,
            }
        }
        *self.shared.live.write() = Some(client.clone());
        self.follow_events(&client, events, &mut outage).await;

        self.shared.stopped();
        // Hand over what was published before the stop (bounded).
        if client.connection_state() == State::Connected {
            let _ = tokio::time::timeout(self.timeout, client.flush()).await;
        }
    }

    /// A configuration error: stays down (loudly) until stopped.
    async fn fail_for_good(&self, outage: &mut Outage, reason: String) {
        self.shared.failed(outage, reason);
        self.stop.cancelled().await;
        self.shared.stopped();
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
                        self.shared.failed(outage, format!("no connection within {:?}", self.timeout));
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
                        self.shared.failed(outage, "disconnected".to_string());
                    }
                    Some(Event::SlowConsumer(sid)) => {
                        let total = self.slow_consumer_events.fetch_add(1, Ordering::Relaxed) + 1;
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
                            self.shared.failed(outage, reason);
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
    use crate::fabric::testkit::{self, app, subjects, Node};
    use herald_test_servers::{Nats, NatsServer};

    const WAIT: Duration = Duration::from_secs(10);

    fn node(url: &str, prefix: &str, node_id: &str) -> Node<NatsTransport> {
        Node::start(prefix, subjects(node_id), 1024, WAIT, |spec| {
            NatsTransport::start(NatsConfig { servers: vec![url.into()] }, spec)
        })
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
        testkit::nodes_with_the_same_prefix_see_each_other_and_no_other_prefix(&server.url(), node, |a| {
            assert_eq!(a.slow_consumer_events(), 0)
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn publish_is_down_until_the_server_exists_then_the_link_comes_up() {
        testkit::publish_is_down_until_the_server_exists_then_the_link_comes_up::<Nats, _>(node).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_restarted_server_is_resubscribed() {
        testkit::a_restarted_server_is_resubscribed::<Nats, _>(node).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_frozen_server_takes_the_link_down() {
        let mut server = NatsServer::start();
        let mut a = node(&server.url(), "herald", "a");
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
