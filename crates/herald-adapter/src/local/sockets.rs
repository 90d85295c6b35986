//! The registry of this node's connections and their departure: a
//! departing connection leaves every channel and its sign-in in one batch,
//! each lock taken once per batch.

use std::ops::Deref;
use std::sync::Arc;

use super::shards::Shards;
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
        // Every (connection, channel) of the batch, grouped by shard (stable:
        // a channel's leavers keep the batch's order), so each shard is
        // locked once per batch and only one is held at a time.
        let mut leaving: Vec<(usize, usize, Arc<str>)> = Vec::new();
        for (i, conn) in conns.iter().enumerate() {
            leaving.extend(conn.take_channels().into_iter().map(|c| (Shards::index(&c), i, c)));
        }
        leaving.sort_by_key(|(shard, _, _)| *shard);
        let mut departures: Vec<Departure> = conns.iter().map(|_| Departure::default()).collect();
        let mut rest = &leaving[..];
        while let Some((shard, _, _)) = rest.first() {
            let n = rest.iter().take_while(|(s, _, _)| s == shard).count();
            let mut channels = self.channels.lock_index(*shard);
            for (_, i, channel) in &rest[..n] {
                let outcome = self.remove_from_channel(&mut channels, conns[*i].socket_id, channel);
                departures[*i].channels.push((channel.clone(), outcome));
            }
            drop(channels);
            rest = &rest[n..];
        }
        for (conn, departure) in conns.iter().zip(departures.iter_mut()) {
            if let Some(user) = conn.take_user() {
                departure.user = Some(self.remove_user(conn.socket_id, user));
            }
        }
        departures
    }
}
