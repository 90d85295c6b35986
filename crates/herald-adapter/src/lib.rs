//! Who is connected, who is subscribed where, and how a frame reaches them —
//! on one node or across a cluster.
//!
//! [`LocalAdapter`] holds this node's state: one [`Namespace`] per app.
//! [`ClusterAdapter`] wraps it for a cluster: it serializes each event once,
//! publishes it on a fabric ([`redis`], [`redis_cluster`], [`nats`]), and
//! every node hands the bytes to its local adapter for the fan-out. The
//! [`Adapter`] trait is all the gateway and the cleanup workers see.

mod adapter;
mod connection;
pub mod fabric;
mod frame;
mod lifecycle;
mod local;
pub mod nats;
mod prefetch;
pub mod redis;
pub mod redis_cluster;
mod replica;

pub use adapter::{Adapter, AdapterError, ChannelSummary, Subscription};
pub use connection::{Connection, Outlet, Pushed, SendOutcome, SignedIn};
pub use fabric::{ClusterAdapter, ClusterConfig};
pub use frame::{close_frame, Frame, NotUtf8};
pub use lifecycle::{Lifecycle, NoLifecycle};
pub use local::{
    send_counted, CacheSettings, CachedEvent, Departure, LocalAdapter, Namespace, NamespaceSpec, OverQuota,
    PresenceFull, SignInOutcome, SubscribeOutcome, UnsubscribeOutcome, UserDeparture, DEFAULT_CACHE_CHANNELS,
    DEFAULT_CACHE_TTL,
};
pub use prefetch::prefetch;
pub use replica::{Change, NodeAppState, NodeId, Replica, SingleNode};

/// Encodes serialized JSON as a WebSocket text frame, once; clone it per
/// recipient (a reference-count bump, not a copy).
pub fn text_frame(json: String) -> Frame {
    Frame::text(&json)
}
