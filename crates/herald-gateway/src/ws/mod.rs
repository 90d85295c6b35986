//! The WebSocket side of the gateway: the upgrade at `/app/{key}` and one
//! session (one task: the reader loop, which also drains what the kernel
//! refused to the flusher) per connection.

mod flush;
mod handshake;
mod session;
mod socket;
mod upgrade;
mod writer;

pub use flush::Flushers;
pub use handshake::FastHandshake;
pub use upgrade::route;
