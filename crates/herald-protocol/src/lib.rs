//! The Pusher Channels protocol (v7) as pure data and functions.
//!
//! This crate is what every other Herald crate agrees on: what a channel name
//! means, what a socket id looks like, how frames are shaped on the wire and
//! how signatures are computed and checked. It does no I/O, so everything here
//! is unit-tested in isolation.

pub mod channel;
pub mod codes;
pub mod message;
pub mod presence;
pub mod rest_auth;
pub mod sign;
pub mod socket_id;

pub use channel::{ChannelKind, ChannelName, ChannelNameError};
pub use codes::ErrorCode;
pub use socket_id::SocketId;
