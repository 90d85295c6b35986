//! The registry of this node's connections and their departure: a
//! departing connection leaves every channel and its sign-in in one batch,
//! each lock taken once per batch.

use std::ops::Deref;
use std::sync::Arc;

use super::{Departure, Namespace};
use crate::connection::Connection;

/// The app already has its maximum of open connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the app is over its connection quota ({0})")]
pub struct OverQuota(pub usize);

impl Namespace {
    /// Registers `conn` unless the app holds `max` connections already
    /// (0: no limit), counting `elsewhere` on other nodes. Checked and
    /// inserted under one lock: simultaneous connects cannot all pass.
    pub fn add_connection(&self, conn: Arc<Connection>, max: usize, elsewhere: usize) -> Result<(), OverQuota> {
        let mut sockets = self.sockets.lock();
        if max > 0 && sockets.len() + elsewhere >= max {
            return Err(OverQuota(max));
        }
        sockets.insert(conn.socket_id, conn);
        Ok(())
    }

    /// Open connections of this app on this node.
    pub fn connection_count(&self) -> usize {
        self.sockets.lock().len()
    }

    /// Removes a connection and everything it held; returns what changed.
    pub fn remove_connection(&self, conn: &Connection) -> Departure {
        self.remove_connections(std::slice::from_ref(&conn)).pop().unwrap_or_default()
    }

    /// Removes several connections, taking each lock once for the batch;
    /// returns one departure per connection, in order.
    pub fn remove_connections<C: Deref<Target = Connection>>(&self, conns: &[C]) -> Vec<Departure> {
        let mut sockets = self.sockets.lock();
        for conn in conns {
            conn.mark_leaving();
            sockets.remove(&conn.socket_id);
        }
        drop(sockets);
        let joined: Vec<Vec<Arc<str>>> = conns.iter().map(|c| c.take_channels()).collect();
        let mut departures: Vec<Departure> = Vec::with_capacity(conns.len());
        {
            let mut channels = self.channels.lock();
            for (conn, joined) in conns.iter().zip(joined) {
                let mut departure = Departure::default();
                for channel in joined {
                    let outcome = self.remove_from_channel(&mut channels, conn.socket_id, &channel);
                    departure.channels.push((channel, outcome));
                }
                departures.push(departure);
            }
        }
        for (conn, departure) in conns.iter().zip(departures.iter_mut()) {
            if let Some(user) = conn.take_user() {
                departure.user = Some(self.remove_user(conn.socket_id, user));
            }
        }
        departures
    }
}
