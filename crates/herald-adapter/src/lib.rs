//! Who is connected, who is subscribed where, and how a frame reaches them.
//!
//! [`LocalAdapter`] holds this node's state: one [`Namespace`] per app with its
//! sockets, channels, presence members, signed-in users and cache. The
//! [`Adapter`] trait is what the gateway talks to; the local adapter is one
//! implementation, and fabric adapters (Redis, Redis Cluster, NATS) serialize
//! once, publish, and delegate delivery on every node to the local adapter.

mod adapter;
mod connection;
pub mod fabric;
mod lifecycle;
mod local;
mod namespace;
pub mod nats;
pub mod redis;
pub mod redis_cluster;

pub use adapter::{Adapter, AdapterError, ChannelSummary};
pub use connection::{Connection, Frame, SendOutcome, SignedIn};
pub use lifecycle::{Lifecycle, NoLifecycle};
pub use local::LocalAdapter;
pub use namespace::{
    CachedEvent, Departure, Namespace, PresenceFull, SignInOutcome, SubscribeOutcome, UnsubscribeOutcome, UserDeparture,
};

/// Makes a text frame from serialized JSON; clone it per recipient (a
/// reference-count bump, not a copy).
pub fn text_frame(json: String) -> Frame {
    Frame::Text(json.into())
}
