//! The interface between the gateway and the cluster: delivery plus every
//! question whose answer may span several nodes.
//!
//! A fabric adapter (Redis, Redis Cluster, NATS) implements it by serializing
//! once, publishing to the fabric, and delegating delivery on each node to
//! [`LocalAdapter`](crate::LocalAdapter); cross-node questions become a
//! scatter-gather with a deadline. The single-node implementation is
//! `LocalAdapter` itself.

use async_trait::async_trait;
use herald_protocol::SocketId;
use serde_json::Value;

use crate::connection::Frame;
use crate::local::LocalAdapter;

/// Why a cluster-wide operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("unknown app {0}")]
    UnknownApp(String),
    #[error("cluster fabric error: {0}")]
    Fabric(String),
    #[error("cluster fabric did not answer within the deadline")]
    Timeout,
}

/// An occupied channel as the REST API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSummary {
    pub name: String,
    pub subscription_count: usize,
    pub user_count: usize,
}

#[async_trait]
pub trait Adapter: Send + Sync + 'static {
    /// This node's state, for everything that is local by nature
    /// (subscribing a socket of this node, its sign-in, its departure).
    fn local(&self) -> &LocalAdapter;

    /// Delivers `frame` to every subscriber of `channel`, on every node,
    /// except `except`. Returns the number of local deliveries.
    async fn broadcast(
        &self,
        app_id: &str,
        channel: &str,
        frame: Frame,
        except: Option<SocketId>,
    ) -> Result<usize, AdapterError>;

    /// Sockets subscribed to `channel` across the cluster.
    async fn subscription_count(&self, app_id: &str, channel: &str) -> Result<usize, AdapterError>;

    /// Distinct presence members of `channel` across the cluster.
    async fn members(&self, app_id: &str, channel: &str) -> Result<Vec<(String, Value)>, AdapterError>;

    /// Occupied channels across the cluster.
    async fn channels(&self, app_id: &str) -> Result<Vec<ChannelSummary>, AdapterError>;

    /// Closes every connection signed in as `user_id`, on every node, with
    /// 4009. Returns how many local connections were closed.
    async fn terminate_user_connections(&self, app_id: &str, user_id: &str) -> Result<usize, AdapterError>;
}
