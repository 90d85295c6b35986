//! The WebSocket side of the gateway: the upgrade at `/app/{key}` and one
//! session (a reader task plus a writer task) per connection.

mod flush;
mod session;
mod socket;
mod upgrade;
mod writer;

pub use flush::Flushers;
pub use upgrade::route;
