//! What every remote adapter shares: the transport interface, the wire
//! envelope, replicated state, scatter-gather and node bookkeeping.

pub(crate) mod backoff;
mod transport;

pub use transport::{escape_token, partition_of, FabricError, Inbound, Subject, Transport, TransportSpec};
