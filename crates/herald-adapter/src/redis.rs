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

use ::redis::aio::{ConnectionLike, MultiplexedConnection};
use ::redis::{
    AsyncConnectionConfig, Client, Cmd, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, RedisError, Value,
};
use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::fabric::supervise::{supervise, Connector, Shared};
use crate::fabric::{FabricError, Inbound, Subject, Transport, TransportSpec};

/// How often both connections (every master, in a cluster) are checked with
/// a `PING` while the link is up.
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
    shared: Arc<Shared<Live<MultiplexedConnection>>>,
}

/// The publishing connection while the link is up (both Redis transports).
#[derive(Clone)]
pub(crate) struct Live<C> {
    pub(crate) publisher: C,
    /// Wakes the background task when a publish finds the connection broken.
    pub(crate) broken: Arc<Notify>,
}

impl RedisTransport {
    /// Starts connecting in the background and returns at once; the link
    /// goes up on `spec.link` once both connections work and every subject
    /// is subscribed.
    pub fn start(config: RedisConfig, spec: TransportSpec) -> Arc<Self> {
        let shared = Arc::new(Shared::new(spec.link));
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
}

#[async_trait]
impl Transport for RedisTransport {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn publish(&self, subject: &Subject, payload: Bytes) -> Result<(), FabricError> {
        let mut cmd = ::redis::cmd("PUBLISH");
        cmd.arg(subject.name(&self.prefix, ':')).arg(payload.as_ref());
        publish(&self.shared, &self.url, self.request_timeout, cmd, connection_broken).await
    }
}

/// Runs a publish command `cmd` on the live publishing connection within
/// `timeout` (both Redis transports). An error for which `broken` holds
/// wakes the background task to reconnect.
pub(crate) async fn publish<C: ConnectionLike + Clone + Send>(
    shared: &Shared<Live<C>>,
    url: &str,
    timeout: Duration,
    cmd: Cmd,
    broken: fn(&RedisError) -> bool,
) -> Result<(), FabricError> {
    let Some(Live { mut publisher, broken: wake }) = shared.live() else {
        return Err(shared.down(url));
    };
    match tokio::time::timeout(timeout, cmd.query_async::<i64>(&mut publisher)).await {
        Ok(Ok(_receivers)) => Ok(()),
        Ok(Err(e)) if e.is_timeout() => Err(FabricError::Timeout(timeout)),
        Ok(Err(e)) if broken(&e) => {
            wake.notify_one();
            Err(FabricError::Down { url: url.to_owned(), reason: e.to_string() })
        }
        Ok(Err(e)) => Err(FabricError::Failed(e.to_string())),
        Err(_) => Err(FabricError::Timeout(timeout)),
    }
}

pub(crate) fn connection_broken(e: &RedisError) -> bool {
    e.is_unrecoverable_error() || e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal()
}

/// The push handler of a publishing connection: wakes `broken` when the
/// connection drops.
pub(crate) fn notify_on_disconnection(broken: &Arc<Notify>) -> impl Fn(PushInfo) -> Result<(), ()> + Send + Sync {
    let broken = broken.clone();
    move |push: PushInfo| {
        if push.kind == PushKind::Disconnection {
            broken.notify_one();
        }
        Ok(())
    }
}

/// The push handler of a subscribing connection: hands every `message`
/// payload to `inbound`, wakes `broken` when the connection drops or the
/// server `unsubscribe`s it (nobody else unsubscribes it).
pub(crate) fn forward_messages(
    broken: &Arc<Notify>,
    inbound: &Inbound,
    message: PushKind,
    unsubscribe: PushKind,
) -> impl Fn(PushInfo) -> Result<(), ()> + Send + Sync {
    let (broken, inbound) = (broken.clone(), inbound.clone());
    move |push: PushInfo| {
        if push.kind == message {
            // [channel, payload]
            if let Some(Value::BulkString(payload)) = push.data.into_iter().nth(1) {
                inbound.push(Bytes::from(payload));
            }
        } else if push.kind == PushKind::Disconnection || push.kind == unsubscribe {
            broken.notify_one();
        }
        Ok(())
    }
}

/// One generation of connections (both Redis transports).
pub(crate) struct Connected<C> {
    pub(crate) publisher: C,
    pub(crate) subscriber: C,
    pub(crate) broken: Arc<Notify>,
}

impl<C: ConnectionLike + Clone + Send> Connected<C> {
    pub(crate) fn live(&self) -> Live<C> {
        Live { publisher: self.publisher.clone(), broken: self.broken.clone() }
    }

    /// `PING`s both connections every second until one breaks
    /// (`Some(lost)` when woken, `Some("{silent} within {timeout}")` when a
    /// `PING` is not answered in time) or `stop` is cancelled (`None`).
    pub(crate) async fn watch(
        &mut self,
        stop: &CancellationToken,
        timeout: Duration,
        lost: &str,
        silent: &str,
    ) -> Option<String> {
        let mut tick = tokio::time::interval(HEALTH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = self.broken.notified() => return Some(lost.into()),
                _ = tick.tick() => {
                    let check = async {
                        ::redis::cmd("PING").exec_async(&mut self.publisher).await?;
                        ::redis::cmd("PING").exec_async(&mut self.subscriber).await
                    };
                    match tokio::time::timeout(timeout, check).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Some(e.to_string()),
                        Err(_) => return Some(format!("{silent} within {timeout:?}")),
                    }
                }
            }
        }
    }
}

/// The background task: connect, subscribe, watch, start over.
struct Supervisor {
    url: String,
    channels: Vec<String>,
    inbound: Inbound,
    timeout: Duration,
    stop: CancellationToken,
    shared: Arc<Shared<Live<MultiplexedConnection>>>,
}

impl Supervisor {
    async fn run(self) {
        supervise("redis", self.url.clone(), self.timeout, &self.stop, &self.shared, &self).await;
    }

    fn config(&self) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new().set_connection_timeout(Some(self.timeout)).set_response_timeout(Some(self.timeout))
    }
}

impl Connector for Supervisor {
    type Conns = Connected<MultiplexedConnection>;
    type Live = Live<MultiplexedConnection>;
    type Error = RedisError;

    async fn connect(&self) -> Result<Self::Conns, RedisError> {
        let info = self.url.as_str().into_connection_info()?;
        let settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
        let client = Client::open(info.set_redis_settings(settings))?;
        let broken = Arc::new(Notify::new());

        let on_push = notify_on_disconnection(&broken);
        let mut publisher =
            client.get_multiplexed_async_connection_with_config(&self.config().set_push_sender(on_push)).await?;
        let on_push = forward_messages(&broken, &self.inbound, PushKind::Message, PushKind::Unsubscribe);
        let mut subscriber =
            client.get_multiplexed_async_connection_with_config(&self.config().set_push_sender(on_push)).await?;
        for chunk in self.channels.chunks(SUBSCRIBE_CHUNK) {
            // Returns once the server confirmed every channel of the chunk.
            subscriber.subscribe(chunk).await?;
        }
        ::redis::cmd("PING").exec_async(&mut publisher).await?;
        Ok(Connected { publisher, subscriber, broken })
    }

    fn live(conns: &Self::Conns) -> Self::Live {
        conns.live()
    }

    async fn watch(&self, conns: &mut Self::Conns) -> Option<String> {
        conns.watch(&self.stop, self.timeout, "connection lost", "no answer to PING").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fabric::testkit::{self, app, subjects, Node};
    use herald_test_servers::{Redis, RedisServer};

    const WAIT: Duration = Duration::from_secs(10);

    fn node(url: &str, prefix: &str, node_id: &str) -> Node<RedisTransport> {
        Node::start(prefix, subjects(node_id), 1024, WAIT, |spec| {
            RedisTransport::start(RedisConfig { url: url.into() }, spec)
        })
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
        testkit::nodes_with_the_same_prefix_see_each_other_and_no_other_prefix(&server.url(), node, |_| {}).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn publish_is_down_until_the_server_exists_then_the_link_comes_up() {
        // Attempts at 0, 0.1, 0.3, 0.7 and 1.5 s.
        testkit::publish_is_down_until_the_server_exists_then_the_link_comes_up::<Redis, _>(node).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_restarted_server_is_resubscribed() {
        testkit::a_restarted_server_is_resubscribed::<Redis, _>(node).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_frozen_server_takes_the_link_down_and_publishes_time_out() {
        let mut server = RedisServer::start();
        let mut a = node(&server.url(), "herald", "a");
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
