//! What the gateway does around adapter calls, the same way on every path
//! (connection handlers, the REST API, cleanup): count subscriptions that
//! ended, log (not fail) fabric errors of broadcasts that have no caller to
//! answer, and build the watchlist snapshot a sign-in replies with.
//!
//! Presence `member_added`/`member_removed`, watchlist online/offline and
//! lifecycle webhooks are decided and sent by the adapter itself, where the
//! cluster's view is.

use herald_adapter::{text_frame, Departure, Frame};
use herald_protocol::message::{self, WatchlistEvent};
use herald_protocol::{ChannelName, SocketId};

use crate::apps::App;
use crate::state::State;

/// A socket left `channel` (unsubscribe or disconnect).
pub fn channel_left(app: &App, channel: &str) {
    if let Ok(name) = ChannelName::parse(channel) {
        app.metrics.unsubscribed(name.kind().index());
    }
}

/// Counts everything a disconnect changed.
pub fn departed(app: &App, departure: &Departure) {
    for (channel, _) in &departure.channels {
        channel_left(app, channel);
    }
}

/// Relays a client event through the adapter. While the fabric is
/// unreachable it still reaches this node's subscribers; the failure is
/// logged at debug level (the outage itself is logged once by the transport).
pub async fn broadcast(state: &State, app: &App, channel: &str, frame: Frame, except: Option<SocketId>) {
    match state.adapter.broadcast(&app.config.id, channel, frame.clone(), except, false).await {
        Ok(_) => {}
        Err(e @ herald_adapter::AdapterError::Fabric(_)) => {
            tracing::debug!(app = %app.config.id, channel, error = %e, "fabric unreachable: delivered locally only");
            let _ = state.adapter.broadcast_local(&app.config.id, channel, frame, except).await;
        }
        Err(e) => tracing::warn!(app = %app.config.id, channel, error = %e, "broadcast failed"),
    }
}

/// The frame for a watchlist snapshot right after sign-in.
pub fn watchlist_snapshot(watchlist: &[String], online: &[String]) -> Option<Frame> {
    if watchlist.is_empty() {
        return None;
    }
    let offline: Vec<String> = watchlist.iter().filter(|w| !online.contains(w)).cloned().collect();
    Some(text_frame(message::watchlist_events(&[
        (WatchlistEvent::Online, online.to_vec()),
        (WatchlistEvent::Offline, offline),
    ])))
}
