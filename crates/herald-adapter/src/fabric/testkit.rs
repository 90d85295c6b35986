//! Test scaffolding shared by the transport test modules: a node's end of a
//! transport ([`Node`]) and the test bodies every single-server transport
//! (Redis, NATS) must pass.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_test_servers::{free_port, Server, ServerKind};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::fabric::backoff::capture;
use crate::fabric::{FabricError, Inbound, Subject, Transport, TransportSpec};

/// One node's transport, with what it receives and its link.
pub(crate) struct Node<T> {
    pub(crate) transport: Arc<T>,
    pub(crate) inbound: mpsc::Receiver<Bytes>,
    pub(crate) link: watch::Receiver<bool>,
    stop: CancellationToken,
    tasks: TaskTracker,
    /// How long to wait for a link change or a message.
    wait: Duration,
}

impl<T: Transport> Node<T> {
    /// Starts a transport with `start` on `subjects` under `prefix`
    /// (`capacity` inbound messages, 1 s request timeout).
    pub(crate) fn start(
        prefix: &str,
        subjects: Vec<Subject>,
        capacity: usize,
        wait: Duration,
        start: impl FnOnce(TransportSpec) -> Arc<T>,
    ) -> Node<T> {
        let (inbound, rx) = Inbound::new(capacity);
        let (link, link_rx) = watch::channel(false);
        let (stop, tasks) = (CancellationToken::new(), TaskTracker::new());
        let spec = TransportSpec {
            prefix: prefix.into(),
            subjects,
            inbound,
            link,
            request_timeout: Duration::from_secs(1),
            stop: stop.clone(),
            tasks: tasks.clone(),
        };
        let transport = start(spec);
        Node { transport, inbound: rx, link: link_rx, stop, tasks, wait }
    }

    pub(crate) async fn link_is(&mut self, up: bool) {
        let wait = self.wait;
        tokio::time::timeout(wait, self.link.wait_for(|l| *l == up))
            .await
            .unwrap_or_else(|_| panic!("link did not become {up} within {wait:?}"))
            .unwrap();
    }

    pub(crate) async fn recv(&mut self) -> Bytes {
        tokio::time::timeout(self.wait, self.inbound.recv()).await.expect("no message within the deadline").unwrap()
    }

    /// Receives `n` messages, in any order.
    pub(crate) async fn recv_set(&mut self, n: usize) -> BTreeSet<Bytes> {
        let mut got = BTreeSet::new();
        for _ in 0..n {
            got.insert(self.recv().await);
        }
        got
    }

    pub(crate) async fn shutdown(self) {
        self.stop.cancel();
        self.tasks.close();
        tokio::time::timeout(self.wait, self.tasks.wait()).await.expect("tasks did not stop");
        assert!(!*self.link.borrow());
    }
}

/// An app subject of partition 0.
pub(crate) fn app(id: &str) -> Subject {
    Subject::App { app_id: id.into(), partition: 0 }
}

/// What a node of a single-partition transport subscribes.
pub(crate) fn subjects(node_id: &str) -> Vec<Subject> {
    vec![app("my-app"), Subject::Control, Subject::Node(node_id.into())]
}

/// Starts a node: `(url, prefix, node id)`.
pub(crate) type Start<T> = fn(&str, &str, &str) -> Node<T>;

/// Nodes with the same prefix exchange app, control and node subjects; a
/// node of another prefix sees none of it. `check` runs on the publishing
/// node before shutdown.
pub(crate) async fn nodes_with_the_same_prefix_see_each_other_and_no_other_prefix<T: Transport>(
    url: &str,
    start: Start<T>,
    check: impl FnOnce(&T),
) {
    let mut a = start(url, "herald", "a");
    let mut b = start(url, "herald", "b");
    let mut other = start(url, "other", "a");
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
    check(&a.transport);

    for n in [a, b, other] {
        n.shutdown().await;
    }
}

/// A publish fails at once while no server listens, with one error logged
/// for the whole outage; the link comes up once the server starts, and a
/// second outage logs one more error.
pub(crate) async fn publish_is_down_until_the_server_exists_then_the_link_comes_up<
    K: ServerKind + 'static,
    T: Transport,
>(
    start: Start<T>,
) {
    let logs = capture::logs();
    let port = free_port();
    let url = format!("{}://127.0.0.1:{port}", K::SCHEME);
    let mut a = start(&url, "herald", "a");
    let started = Instant::now();
    let err = a.transport.publish(&Subject::Control, Bytes::from("x")).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(100), "a publish while down must fail at once");
    assert!(matches!(&err, FabricError::Down { url, .. } if url.contains(&port.to_string())), "{err:?}");
    // Several failed attempts within 1.6 s (and the 1 s request timeout):
    // one error for the whole outage.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert!(!*a.link.borrow());
    assert_eq!(logs.count(tracing::Level::ERROR, &[&url]), 1);

    let mut server = tokio::task::spawn_blocking(move || Server::<K>::start_on(port)).await.unwrap();
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

/// After a server restart both nodes come back within 5 s and exchange
/// messages again; publishes in between fail as down.
pub(crate) async fn a_restarted_server_is_resubscribed<K: ServerKind, T: Transport>(start: Start<T>) {
    let mut server = Server::<K>::start();
    let mut a = start(&server.url(), "herald", "a");
    let mut b = start(&server.url(), "herald", "b");
    a.link_is(true).await;
    b.link_is(true).await;

    server.stop();
    a.link_is(false).await;
    b.link_is(false).await;
    assert!(matches!(a.transport.publish(&Subject::Control, Bytes::from("lost")).await, Err(FabricError::Down { .. })));
    server.restart();
    let back = Instant::now();
    a.link_is(true).await;
    b.link_is(true).await;
    assert!(back.elapsed() < Duration::from_secs(5), "took {:?} to come back", back.elapsed());
    a.transport.publish(&app("my-app"), Bytes::from("again")).await.unwrap();
    assert_eq!(b.recv().await, "again");
    a.shutdown().await;
    b.shutdown().await;
}
