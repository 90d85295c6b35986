//! Several `herald` processes on one real fabric, for the cluster tests:
//! the fabric server (a guard that kills it on drop), the nodes, and the
//! waits that cross-node effects need.

use std::time::{Duration, Instant};

use herald_test_servers::{NatsServer, RedisCluster, RedisServer};
use serde_json::Value;

use crate::{metric_value, Client, HeraldProcess};

/// A fabric server (kept alive by the guard) and the env that points a node at it.
pub enum Fabric {
    Redis(RedisServer),
    RedisCluster(RedisCluster),
    Nats(NatsServer),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Redis,
    RedisCluster,
    Nats,
}

impl Fabric {
    pub fn start(kind: Kind) -> Self {
        match kind {
            Kind::Redis => Fabric::Redis(RedisServer::start()),
            Kind::RedisCluster => Fabric::RedisCluster(RedisCluster::start(3)),
            Kind::Nats => Fabric::Nats(NatsServer::start()),
        }
    }

    pub fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            Fabric::Redis(r) => vec![("HERALD_ADAPTER", "redis".into()), ("HERALD_REDIS_URL", r.url())],
            Fabric::RedisCluster(c) => {
                vec![("HERALD_ADAPTER", "redis-cluster".into()), ("HERALD_REDIS_CLUSTER_NODES", c.urls().join(","))]
            }
            Fabric::Nats(n) => vec![("HERALD_ADAPTER", "nats".into()), ("HERALD_NATS_SERVERS", n.url())],
        }
    }
}

/// Nodes on one fabric, started and waited for until each sees all.
pub struct Cluster {
    pub nodes: Vec<HeraldProcess>,
    pub fabric: Fabric,
    pub prefix: String,
    env: Vec<(&'static str, String)>,
}

impl Cluster {
    pub async fn start(kind: Kind, n: usize, extra: &[(&'static str, &str)]) -> Self {
        crate::raise_fd_limit();
        let fabric = Fabric::start(kind);
        let prefix = format!("t{}", std::process::id());
        let mut env: Vec<(&str, String)> = fabric.env();
        env.push(("HERALD_ADAPTER_PREFIX", prefix.clone()));
        env.push(("HERALD_HEARTBEAT_INTERVAL_MS", "200".into()));
        env.push(("HERALD_NODE_TIMEOUT_MS", "2000".into()));
        env.push(("HERALD_REQUEST_TIMEOUT_MS", "1000".into()));
        for (k, v) in extra {
            env.push((k, v.to_string()));
        }
        let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let nodes: Vec<HeraldProcess> = (0..n).map(|_| HeraldProcess::start(&env_refs)).collect();
        let cluster = Self { nodes, fabric, prefix, env };
        for node in &cluster.nodes {
            eventually("node ready and seeing every node", || async {
                let ready = reqwest::get(format!("http://{}/ready", node.addr)).await.is_ok_and(|r| r.status() == 200);
                let seen = metric_value(&node.metrics().await, "herald_cluster_nodes", &[]);
                ready && seen == Some(n as f64)
            })
            .await;
        }
        cluster
    }

    /// Starts one more node on the same fabric and returns at once.
    pub fn add_node(&mut self) -> &HeraldProcess {
        let env_refs: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.nodes.push(HeraldProcess::start(&env_refs));
        self.nodes.last().unwrap()
    }

    pub fn node(&self, i: usize) -> &HeraldProcess {
        &self.nodes[i]
    }
}

/// Polls `check` until it holds, failing after 10 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next frame that is not a ping.
pub async fn next(client: &mut Client) -> Value {
    loop {
        let f = client.recv().await;
        if f["event"] != "pusher:ping" {
            return f;
        }
    }
}

/// Triggers an event through node `via` and checks the answer is 200.
pub async fn trigger(cluster: &Cluster, via: usize, channel: &str, name: &str, data: &str) {
    let (status, body) = cluster.node(via).rest().trigger(&[channel], name, data).await;
    assert_eq!(status, 200, "{body}");
}

/// Webhook events as sorted `"name channel user_id"` lines, to compare
/// with the facts a test expects (each exactly once).
pub fn webhook_facts(events: &[Value]) -> Vec<String> {
    let mut facts: Vec<String> = events
        .iter()
        .map(|e| {
            format!(
                "{} {} {}",
                e["name"].as_str().unwrap(),
                e["channel"].as_str().unwrap(),
                e["user_id"].as_str().unwrap_or("")
            )
        })
        .collect();
    facts.sort();
    facts
}

/// Instantiates `async fn scenario(kind: Kind)` bodies as one test per
/// fabric: `redis::scenario`, `redis_cluster::scenario`, `nats::scenario`.
#[macro_export]
macro_rules! on_every_fabric {
    ($($scenario:ident),* $(,)?) => {
        mod redis {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() { super::$scenario($crate::cluster::Kind::Redis).await }) *
        }
        mod redis_cluster {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() { super::$scenario($crate::cluster::Kind::RedisCluster).await }) *
        }
        mod nats {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() { super::$scenario($crate::cluster::Kind::Nats).await }) *
        }
    };
}
