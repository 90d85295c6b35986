//! Picks the adapter the config asks for: the local adapter on its own, or
//! a cluster adapter over Redis, Redis Cluster or NATS. Every fabric starts
//! in the background; one that cannot be reached is logged (naming its URL)
//! and keeps `/ready` at 503 until it is reached — Herald never quietly runs
//! as a single node.

use std::sync::Arc;

use herald_adapter::fabric::Transport;
use herald_adapter::nats::{NatsConfig, NatsTransport};
use herald_adapter::redis::{RedisConfig, RedisTransport};
use herald_adapter::redis_cluster::{RedisClusterConfig, RedisClusterTransport, PARTITIONS};
use herald_adapter::{Adapter, CacheSettings, ClusterAdapter, ClusterConfig, LocalAdapter, NamespaceSpec};
use herald_metrics::Metrics;

use crate::config::{AdapterKind, Config};

/// The adapter for `config`, its namespaces built from `specs`.
/// Every app's cache-channel store is bounded as `config` says.
pub fn build_adapter(config: &Config, mut specs: Vec<NamespaceSpec>, metrics: &Metrics) -> Arc<dyn Adapter> {
    let cache = CacheSettings { max_channels: config.cache_channels, ttl: config.cache_ttl };
    for spec in &mut specs {
        spec.cache = cache;
    }
    let cluster = |partitions: u16| ClusterConfig {
        node_name: config.node_id.clone(),
        prefix: config.adapter_prefix.clone(),
        request_timeout: config.request_timeout,
        heartbeat_interval: config.heartbeat_interval,
        node_timeout: config.node_timeout,
        inbound_queue: config.fabric_queue,
        partitions,
    };
    let node = metrics.node().clone();
    match config.adapter {
        AdapterKind::Local => Arc::new(LocalAdapter::new(specs)),
        AdapterKind::Redis => {
            let url = config.redis_url.clone();
            Arc::new(ClusterAdapter::start(specs, cluster(1), node, move |spec| {
                RedisTransport::start(RedisConfig { url }, spec) as Arc<dyn Transport>
            }))
        }
        AdapterKind::RedisCluster => {
            let nodes = config.redis_cluster_nodes.clone();
            Arc::new(ClusterAdapter::start(specs, cluster(PARTITIONS), node, move |spec| {
                RedisClusterTransport::start(RedisClusterConfig { nodes }, spec) as Arc<dyn Transport>
            }))
        }
        AdapterKind::Nats => {
            let servers = config.nats_servers.clone();
            Arc::new(ClusterAdapter::start(specs, cluster(1), node, move |spec| {
                NatsTransport::start(NatsConfig { servers }, spec) as Arc<dyn Transport>
            }))
        }
    }
}
