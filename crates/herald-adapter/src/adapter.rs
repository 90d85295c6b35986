//! The one interface between the gateway (and the cleanup workers) and the
//! cluster: every state change of a connection and every question whose
//! answer may span several nodes.
//!
//! Two implementations: [`LocalAdapter`](crate::LocalAdapter) for a single
//! node, and [`ClusterAdapter`](crate::ClusterAdapter), which wraps a local
//! adapter, serializes each event once, publishes it on a fabric (Redis,
//! Redis Cluster or NATS), replicates node-level changes and answers
//! questions by scatter-gather with a deadline. The gateway cannot tell them
//! apart, so the single-node path and the cluster path are the same code.

use std::sync::Arc;

use async_trait::async_trait;
use herald_protocol::presence::PresenceMember;
use herald_protocol::SocketId;
use serde_json::Value;

use crate::connection::{Connection, Frame};
use crate::fabric::FabricError;
use crate::local::{Departure, OverQuota, PresenceFull, SignInOutcome, SubscribeOutcome, UnsubscribeOutcome};

/// Why an adapter operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("unknown app {0}")]
    UnknownApp(String),
    #[error(transparent)]
    PresenceFull(#[from] PresenceFull),
    #[error(transparent)]
    OverQuota(#[from] OverQuota),
    /// The fabric was unreachable; nothing was done.
    #[error(transparent)]
    Fabric(#[from] FabricError),
    /// Delivered to this node's subscribers, but the publish to the other
    /// nodes failed.
    #[error("delivered on this node only: {0}")]
    NotPublished(FabricError),
}

impl AdapterError {
    /// The fabric is down or did not answer: the operation may be retried
    /// on another node (HTTP 503), as opposed to a bad request.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, AdapterError::Fabric(_) | AdapterError::NotPublished(_))
    }
}

/// An occupied channel as the REST API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSummary {
    pub name: String,
    pub subscription_count: usize,
    pub user_count: usize,
}

/// A subscription request that passed authentication.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub channel: String,
    /// Presence channels: who joins.
    pub member: Option<PresenceMember>,
    /// Most distinct presence members the channel may hold.
    pub max_members: usize,
    /// A cache channel: replay its last event (or `cache_miss`).
    pub is_cache: bool,
}

#[async_trait]
pub trait Adapter: Send + Sync + 'static {
    /// `local`, `redis`, `redis-cluster` or `nats`.
    fn kind(&self) -> &'static str;

    /// Whether this node can serve (its fabric, if any, is reachable).
    fn is_ready(&self) -> bool {
        true
    }

    /// Registers a new connection of this node, unless the app already has
    /// `max_connections` open (0: no limit). The check and the insert are
    /// one step under the node's socket lock, so a burst of simultaneous
    /// connects cannot overshoot the quota here (peers' connections count
    /// as of their last heartbeat).
    fn add_connection(&self, app_id: &str, conn: Arc<Connection>, max_connections: usize) -> Result<(), AdapterError>;

    /// Open connections of the app across the cluster (peers' counts as of
    /// their last heartbeat).
    fn connection_count(&self, app_id: &str) -> Result<usize, AdapterError>;

    /// Removes departed connections of this node and everything they held,
    /// in one batch; presence and watchlist consequences are announced
    /// cluster-wide. Returns one departure per connection, in order.
    async fn remove_connections(&self, app_id: &str, conns: &[Arc<Connection>])
        -> Result<Vec<Departure>, AdapterError>;

    /// Subscribes a connection of this node. Its `subscription_succeeded`
    /// (with the cluster's presence members) and a cache channel's replay
    /// or `cache_miss` are queued to it before any later broadcast.
    async fn subscribe(
        &self,
        app_id: &str,
        conn: &Arc<Connection>,
        request: Subscription,
    ) -> Result<SubscribeOutcome, AdapterError>;

    /// Unsubscribes; `None` when the connection was not subscribed.
    async fn unsubscribe(
        &self,
        app_id: &str,
        conn: &Arc<Connection>,
        channel: &str,
    ) -> Result<Option<UnsubscribeOutcome>, AdapterError>;

    /// Records a sign-in (a second one replaces the first); watchers across
    /// the cluster learn the user came online.
    async fn sign_in(
        &self,
        app_id: &str,
        conn: &Arc<Connection>,
        user_id: &str,
        watchlist: &[String],
    ) -> Result<SignInOutcome, AdapterError>;

    /// Delivers `frame` to every subscriber of `channel` on every node,
    /// except `except`; `remember` stores it as a cache channel's last
    /// event on every node. Returns the number of local deliveries. Fails
    /// (after delivering locally) when the fabric could not take it.
    async fn broadcast(
        &self,
        app_id: &str,
        channel: &str,
        frame: Frame,
        except: Option<SocketId>,
        remember: bool,
    ) -> Result<usize, AdapterError>;

    /// Delivers `frame` to this node's subscribers of `channel` only: what
    /// is left when the fabric is unreachable (client events between local
    /// clients keep flowing). Returns the number of deliveries.
    async fn broadcast_local(
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

    /// Leaves the cluster (telling the peers at once) and stops every task
    /// the adapter owns.
    async fn shutdown(&self) {}
}
