//! The Redis fabric: nodes exchange messages through one Redis server's
//! pub/sub (`PUBLISH` / `SUBSCRIBE`), for deployments that already run Redis
//! and do not need more than one server's worth of pub/sub.
//!
//! Subject names use `:` as separator ([`Subject::name`] with `':'`), every
//! app in a single channel (there is one partition):
//!
//! | subject               | channel                      |
//! |-----------------------|------------------------------|
//! | `App { app_id, .. }`  | `{prefix}:app:{escaped app}` |
//! | `Control`             | `{prefix}:ctl`               |
//! | `Node(id)`            | `{prefix}:node:{escaped id}` |
//!
//! Two RESP3 connections are kept: one publishes, one only holds the
//! subscriptions and receives (so a burst of inbound messages never delays a
//! publish reply). A background task connects both, subscribes every subject
//! and waits for every confirmation before it reports the link up; it checks
//! both with a `PING` every second. When either connection drops or stops
//! answering it reports the link down, drops both and starts over with
//! backoff (100 ms doubling to 2 s), which also re-subscribes everything after
//! a server restart. Messages published while the link is down are lost:
//! Redis pub/sub is at-most-once.

use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::{
    AsyncConnectionConfig, Client, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, RedisError, Value,
};
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::fabric::backoff::{set_link, sleep_unless_stopped, Backoff, Outage};
use crate::fabric::{FabricError, Inbound, Subject, Transport, TransportSpec};

/// How often both connections are checked with a `PING` while the link is up.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// Channels per `SUBSCRIBE` command.
const SUBSCRIBE_CHUNK: usize = 256;

/// Where the Redis fabric is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`
    pub url: String,
}

/// The Redis pub/sub fabric. See the module documentation.
pub struct RedisTransport {
    url: String,
    prefix: String,
    request_timeout: Duration,
    shared: Arc<Shared>,
}

/// What the background task and `publish` share.
struct Shared {
    link: watch::Sender<bool>,
    /// The publishing connection while the link is up.
    live: RwLock<Option<Live>>,
    /// Why the link is down (for [`FabricError::Down`]).
    reason: Mutex<String>,
}

#[derive(Clone)]
struct Live {
    publisher: MultiplexedConnection,
    /// Wakes the background task when a publish finds the connection broken.
    broken: Arc<Notify>,
}

impl RedisTransport {
    /// Starts connecting in the background and returns at once; the link
    /// goes up on `spec.link` once both connections work and every subject
    /// is subscribed.
    pub fn start(config: RedisConfig, spec: TransportSpec) -> Arc<Self> {
        let shared = Arc::new(Shared {
            link: spec.link,
            live: RwLock::new(None),
            reason: Mutex::new("not connected yet".into()),
        });
        let transport = Arc::new(Self {
            url: config.url.clone(),
            prefix: spec.prefix.clone(),
            request_timeout: spec.request_timeout,
            shared: shared.clone(),
        });
        let channels: Vec<String> = spec.subjects.iter().map(|s| s.name(&spec.prefix, ':')).collect();
        let task = Supervisor {
            url: config.url,
            channels,
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
impl Transport for RedisTransport {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn publish(&self, subject: &Subject, payload: Bytes) -> Result<(), FabricError> {
        let live = if *self.shared.link.borrow() { self.shared.live.read().clone() } else { None };
        let Some(Live { mut publisher, broken }) = live else {
            return Err(self.down());
        };
        let mut cmd = ::redis::cmd("PUBLISH");
        cmd.arg(subject.name(&self.prefix, ':')).arg(payload.as_ref());
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
    e.is_unrecoverable_error() || e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal()
}

/// The background task: connect, subscribe, watch, start over.
struct Supervisor {
    url: String,
    channels: Vec<String>,
    inbound: Inbound,
    timeout: Duration,
    stop: CancellationToken,
    shared: Arc<Shared>,
}

/// One generation of connections.
struct Connected {
    publisher: MultiplexedConnection,
    subscriber: MultiplexedConnection,
    broken: Arc<Notify>,
}

impl Supervisor {
    async fn run(self) {
        let mut backoff = Backoff::new();
        let mut outage = Outage::new("redis", self.url.clone());
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

    async fn connect(&self) -> Result<Connected, RedisError> {
        let info = self.url.as_str().into_connection_info()?;
        let settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
        let client = Client::open(info.set_redis_settings(settings))?;
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
        let mut publisher =
            client.get_multiplexed_async_connection_with_config(&self.config().set_push_sender(on_push)).await?;

        let on_push = {
            let (broken, inbound) = (broken.clone(), self.inbound.clone());
            move |push: PushInfo| {
                match push.kind {
                    PushKind::Message => {
                        // [channel, payload]
                        if let Some(Value::BulkString(payload)) = push.data.into_iter().nth(1) {
                            inbound.push(Bytes::from(payload));
                        }
                    }
                    // Nobody unsubscribes this connection but the server.
                    PushKind::Disconnection | PushKind::Unsubscribe => broken.notify_one(),
                    _ => {}
                }
                Ok::<(), ()>(())
            }
        };
        let mut subscriber =
            client.get_multiplexed_async_connection_with_config(&self.config().set_push_sender(on_push)).await?;
        for chunk in self.channels.chunks(SUBSCRIBE_CHUNK) {
            // Returns once the server confirmed every channel of the chunk.
            subscriber.subscribe(chunk).await?;
        }
        ::redis::cmd("PING").exec_async(&mut publisher).await?;
        Ok(Connected { publisher, subscriber, broken })
    }

    fn config(&self) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new().set_connection_timeout(Some(self.timeout)).set_response_timeout(Some(self.timeout))
    }

    /// Waits until a connection breaks (`Some(reason)`) or the transport
    /// stops (`None`).
    async fn watch(&self, conns: &mut Connected) -> Option<String> {
        let mut tick = tokio::time::interval(HEALTH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return None,
                _ = conns.broken.notified() => return Some("connection lost".into()),
                _ = tick.tick() => {
                    let check = async {
                        ::redis::cmd("PING").exec_async(&mut conns.publisher).await?;
                        ::redis::cmd("PING").exec_async(&mut conns.subscriber).await
                    };
                    match tokio::time::timeout(self.timeout, check).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Some(e.to_string()),
                        Err(_) => return Some(format!("no answer to PING within {:?}", self.timeout)),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_test_servers::{free_port, RedisServer};
    use tokio::sync::mpsc;
    use tokio_util::task::TaskTracker;

    pub(crate) const WAIT: Duration = Duration::from_secs(10);

    struct Node {
        transport: Arc<RedisTransport>,
        inbound: mpsc::Receiver<Bytes>,
        link: watch::Receiver<bool>,
        stop: CancellationToken,
        tasks: TaskTracker,
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
            let transport = RedisTransport::start(RedisConfig { url: url.into() }, spec);
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

    fn app(id: &str) -> Subject {
        Subject::App { app_id: id.into(), partition: 0 }
    }

    #[test]
    fn channel_names_use_colons() {
        assert_eq!(app("my.app").name("herald", ':'), "herald:app:my%2Eapp");
        assert_eq!(Subject::Control.name("herald", ':'), "herald:ctl");
        assert_eq!(Subject::Node("n1".into()).name("herald", ':'), "herald:node:n1");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn nodes_with_the_same_prefix_see_each_other_and_no_other_prefix() {
        let server = RedisServer::start();
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
        // Node subjects reach that node only.
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

        for n in [a, b, other] {
            n.shutdown().await;
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn publish_is_down_until_the_server_exists_then_the_link_comes_up() {
        let logs = crate::fabric::backoff::capture::logs();
        let port = free_port();
        let url = format!("redis://127.0.0.1:{port}");
        let mut a = Node::start(&url, "herald", "a");
        let started = std::time::Instant::now();
        let err = a.transport.publish(&Subject::Control, Bytes::from("x")).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_millis(100), "a publish while down must fail at once");
        assert!(matches!(&err, FabricError::Down { url, .. } if url.contains(&port.to_string())), "{err:?}");
        // Attempts at 0, 0.1, 0.3, 0.7 and 1.5 s: one error for the whole outage.
        tokio::time::sleep(Duration::from_millis(1600)).await;
        assert!(!*a.link.borrow());
        assert_eq!(logs.count(tracing::Level::ERROR, &[&url]), 1);

        let mut server = tokio::task::spawn_blocking(move || RedisServer::start_on(port)).await.unwrap();
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
        let mut server = RedisServer::start();
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
    async fn a_frozen_server_takes_the_link_down_and_publishes_time_out() {
        let mut server = RedisServer::start();
        let mut a = Node::start(&server.url(), "herald", "a");
        a.link_is(true).await;
        server.pause();
        // Either the publish hits the 1 s deadline or the health check already took the link down.
        let started = std::time::Instant::now();
        let err = a.transport.publish(&Subject::Control, Bytes::from("x")).await.unwrap_err();
        assert!(matches!(err, FabricError::Timeout(_) | FabricError::Down { .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_millis(1500));
        a.link_is(false).await;
        server.resume();
        a.link_is(true).await;
        a.transport.publish(&Subject::Control, Bytes::from("thawed")).await.unwrap();
        // The frozen publish may have been delivered after the thaw too.
        let mut got = a.recv().await;
        if got == "x" {
            got = a.recv().await;
        }
        assert_eq!(got, "thawed");
        a.shutdown().await;
    }
}
