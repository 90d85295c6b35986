//! Turns what changed in the adapter into what others must hear: presence
//! `member_added`/`member_removed`, watchlist online/offline, and (through
//! the webhook sink) the app's backend. Called by connection handlers, the
//! REST API and cleanup, so every path announces the same way.

use herald_adapter::{text_frame, Departure, Frame, UnsubscribeOutcome};
use herald_protocol::message::{self, WatchlistEvent};
use herald_protocol::{ChannelName, SocketId};
use serde_json::Value;

use crate::apps::App;
use crate::state::State;

/// A new user joined presence `channel`: tell the other members.
pub async fn member_joined(state: &State, app: &App, channel: &str, socket_id: SocketId, user_id: &str, info: &Value) {
    let frame = text_frame(message::member_added(channel, user_id, info));
    broadcast(state, app, channel, frame, Some(socket_id)).await;
}

/// A socket left `channel` (unsubscribe or disconnect).
pub async fn channel_left(state: &State, app: &App, channel: &str, outcome: UnsubscribeOutcome) {
    if let Ok(name) = ChannelName::parse(channel) {
        app.metrics.unsubscribed(name.kind().index());
    }
    if let Some(user_id) = outcome.member_removed {
        let frame = text_frame(message::member_removed(channel, &user_id));
        broadcast(state, app, channel, frame, None).await;
    }
}

/// Announces everything a disconnect changed.
pub async fn departed(state: &State, app: &App, departure: Departure) {
    for (channel, outcome) in departure.channels {
        channel_left(state, app, &channel, outcome).await;
    }
    if let Some(user) = departure.user {
        if user.went_offline && !user.watchers.is_empty() {
            let frame =
                text_frame(message::watchlist_events(&[(WatchlistEvent::Offline, vec![user.user_id.to_string()])]));
            app.namespace.send_all(&user.watchers, &frame);
        }
    }
}

/// Delivers a frame through the adapter, logging (not failing) fabric errors.
pub async fn broadcast(state: &State, app: &App, channel: &str, frame: Frame, except: Option<SocketId>) {
    if let Err(e) = state.adapter.broadcast(&app.config.id, channel, frame, except).await {
        tracing::warn!(app = %app.config.id, channel, error = %e, "broadcast failed");
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

/// The frame telling watchers a user came online.
pub fn came_online(user_id: &str) -> Frame {
    text_frame(message::watchlist_events(&[(WatchlistEvent::Online, vec![user_id.to_string()])]))
}
