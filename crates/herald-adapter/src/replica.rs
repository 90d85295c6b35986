//! What a namespace tells the rest of the cluster, and whose job a
//! cluster-wide fact is.
//!
//! A namespace reports node-level transitions only — the first local socket
//! of a channel or of a presence member, the last one leaving, a user's
//! first and last signed-in connection here — so replication traffic grows
//! with joins and leaves, never with subscribers or messages. Changes are
//! idempotent "set" statements: applying one twice, or after a snapshot
//! that already contains it, changes nothing.
//!
//! The single-node adapter uses [`SingleNode`]: nothing to tell, and every
//! fact is this node's to announce. The cluster adapter queues changes for
//! its publisher and elects one announcer per channel among the live nodes.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A node's identity on the fabric: unique per process start.
pub type NodeId = Arc<str>;

/// One node-level transition of one app's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum Change {
    /// The node's first local subscriber of `channel`.
    Occupied { channel: String },
    /// The node's last local subscriber of `channel` left (and with it
    /// every member the node had there).
    Vacated { channel: String },
    /// A user's first local socket on presence `channel`.
    MemberJoined { channel: String, user_id: String, info: Value },
    /// A user's last local socket on presence `channel` left.
    MemberLeft { channel: String, user_id: String },
    /// A user's first signed-in connection on the node.
    UserOnline { user_id: String },
    /// A user's last signed-in connection on the node closed.
    UserOffline { user_id: String },
}

/// Everything one node holds of one app, as peers need it: a snapshot sent
/// when a node appears or a peer lost track of it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeAppState {
    /// Channels with at least one local subscriber.
    #[serde(default)]
    pub occupied: Vec<String>,
    /// Presence channels: user id → user info of local members.
    #[serde(default)]
    pub members: HashMap<String, HashMap<String, Value>>,
    /// Users with at least one signed-in local connection.
    #[serde(default)]
    pub online: Vec<String>,
    /// Open local connections (for cluster-wide connection quotas).
    #[serde(default)]
    pub connections: usize,
}

/// A namespace's link to the rest of the cluster.
pub trait Replica: Send + Sync + 'static {
    /// Records a node-level change for the peers. Called under the
    /// namespace's lock, so changes are recorded in the order they happened;
    /// must not block (enqueue and return).
    fn changed(&self, app_id: &str, change: Change);

    /// Whether this node announces (by webhook) cluster-wide facts about
    /// `channel`. Exactly one live node answers true for a given channel.
    fn announces(&self, channel: &str) -> bool;
}

/// A cluster of one.
pub struct SingleNode;

impl Replica for SingleNode {
    fn changed(&self, _app_id: &str, _change: Change) {}

    fn announces(&self, _channel: &str) -> bool {
        true
    }
}
