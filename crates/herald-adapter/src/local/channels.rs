//! Channels and their subscribers, presence members included: the local
//! subscribers (who receive broadcasts here) and, per peer node, the
//! presence members it holds there (so member lists, `member_added` /
//! `member_removed` and occupancy are the cluster's, decided under one lock).
//!
//! A cluster-wide transition is detected where it happens — a local
//! subscribe or leave, or a peer's change applied here — and reacted to at
//! once, still under the channel's shard of `channels`, so reactions keep their order:
//! `member_added` / `member_removed` frames to this node's subscribers, and
//! the webhook if this node is the channel's announcer.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use herald_protocol::message;
use herald_protocol::SocketId;
use serde_json::Value;

use super::delivery::deliver;
use super::shards::{Shards, SHARDS};
use super::Namespace;
use crate::adapter::{ChannelSummary, Subscription};
use crate::connection::{Connection, Frame};
use crate::replica::{Change, NodeAppState, NodeId};

#[derive(Default)]
pub(crate) struct Channel {
    /// This node's subscribers.
    subscribers: HashMap<SocketId, Arc<Connection>>,
    /// Subscribers as a shared slice, rebuilt lazily after a change, so
    /// repeated broadcasts to a stable channel copy nothing.
    snapshot: Option<Arc<[Arc<Connection>]>>,
    /// Presence: this node's members (user id → member).
    members: HashMap<Arc<str>, Member>,
    /// Presence: which user each local socket joined as.
    socket_users: HashMap<SocketId, Arc<str>>,
    /// Peers where the channel is occupied, with their presence members.
    remote: HashMap<NodeId, HashMap<Arc<str>, Value>>,
}

struct Member {
    info: Value,
    sockets: usize,
}

impl Channel {
    pub(super) fn snapshot(&mut self) -> Arc<[Arc<Connection>]> {
        self.snapshot.get_or_insert_with(|| self.subscribers.values().cloned().collect()).clone()
    }

    fn occupied(&self) -> bool {
        !self.subscribers.is_empty() || !self.remote.is_empty()
    }

    fn has_member(&self, user_id: &str) -> bool {
        self.members.contains_key(user_id) || self.remote.values().any(|m| m.contains_key(user_id))
    }

    /// Distinct members across the cluster (local info wins).
    fn all_members(&self) -> Vec<(&str, &Value)> {
        let mut seen: HashSet<&str> = HashSet::new();
        let mut out = Vec::new();
        for (id, m) in &self.members {
            seen.insert(id);
            out.push((&**id, &m.info));
        }
        for members in self.remote.values() {
            for (id, info) in members {
                if seen.insert(id) {
                    out.push((&**id, info));
                }
            }
        }
        out
    }

    fn user_count(&self) -> usize {
        if self.remote.is_empty() {
            return self.members.len();
        }
        self.all_members().len()
    }
}

/// A presence channel already holds its maximum of distinct members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("presence channel is full ({0} members)")]
pub struct PresenceFull(pub usize);

/// What a subscription changed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SubscribeOutcome {
    /// The socket was already subscribed; nothing changed.
    pub already_subscribed: bool,
    /// The socket is the channel's first subscriber in the cluster.
    pub channel_occupied: bool,
    /// The socket's user was not yet a member anywhere in the cluster.
    pub member_added: bool,
    /// A cache channel had no event to replay here. With `defer_miss` the
    /// caller still has to send `cache_miss` (after asking the peers).
    pub cache_miss: bool,
}

/// What an unsubscription changed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct UnsubscribeOutcome {
    /// The channel has no subscriber left in the cluster.
    pub vacated: bool,
    /// The user whose last socket in the cluster left this presence channel.
    pub member_removed: Option<Arc<str>>,
}

impl Namespace {
    /// Subscribes `conn` and, in the same critical section, queues its
    /// `subscription_succeeded` (and a cache channel's replay, or its
    /// `cache_miss` unless `defer_miss`), so no broadcast can overtake them.
    pub fn subscribe(
        &self,
        conn: &Arc<Connection>,
        request: &Subscription,
        defer_miss: bool,
    ) -> Result<SubscribeOutcome, PresenceFull> {
        let channel = request.channel.as_str();
        let member = request.member.as_ref();
        let mut channels = self.channels.lock(channel);
        let mut outcome = SubscribeOutcome::default();
        let name: Arc<str> = match channels.get_key_value(channel) {
            Some((name, _)) => name.clone(),
            None => channel.into(),
        };
        let state = channels.entry(name.clone()).or_default();
        outcome.already_subscribed = state.subscribers.contains_key(&conn.socket_id);
        let user_id: Option<Arc<str>> = member.map(|m| m.user_id.as_str().into());
        let is_new_user = user_id.as_ref().is_some_and(|id| !state.has_member(id));
        if !outcome.already_subscribed && is_new_user && state.user_count() >= request.max_members {
            if !state.occupied() {
                channels.remove(&name);
            }
            return Err(PresenceFull(request.max_members));
        }
        if !outcome.already_subscribed {
            let was_occupied = state.occupied();
            if state.subscribers.is_empty() {
                self.changed(Change::Occupied { channel: channel.to_string() });
            }
            if !was_occupied {
                outcome.channel_occupied = true;
                if self.replica.announces(channel) {
                    self.lifecycle.channel_occupied(channel);
                }
            }
            state.subscribers.insert(conn.socket_id, conn.clone());
            state.snapshot = None;
            conn.join(&name);
            if let (Some(member), Some(user_id)) = (member, user_id) {
                let entry = state.members.entry(user_id.clone()).or_insert_with(|| {
                    self.changed(Change::MemberJoined {
                        channel: channel.to_string(),
                        user_id: user_id.to_string(),
                        info: member.user_info.clone(),
                    });
                    Member { info: member.user_info.clone(), sockets: 0 }
                });
                entry.sockets += 1;
                state.socket_users.insert(conn.socket_id, user_id.clone());
                if is_new_user {
                    outcome.member_added = true;
                    self.member_added(state, channel, &user_id, &member.user_info, Some(conn.socket_id), false);
                }
            }
        }
        let data = if member.is_some() { message::presence_data(state.all_members()) } else { "{}".to_string() };
        self.send_to(conn, crate::text_frame(message::subscription_succeeded(channel, &data)));
        if request.is_cache {
            match self.cached(channel) {
                Some(event) => {
                    self.send_to(conn, event.frame);
                }
                None => {
                    outcome.cache_miss = true;
                    if !defer_miss {
                        self.send_to(conn, crate::text_frame(message::cache_miss(channel)));
                    }
                }
            }
        }
        Ok(outcome)
    }

    /// A member joined the cluster's view of `channel`: tell this node's
    /// other subscribers and, if this node announces the channel, the backend.
    fn member_added(
        &self,
        state: &mut Channel,
        channel: &str,
        user_id: &str,
        info: &Value,
        except: Option<SocketId>,
        quiet: bool,
    ) {
        if !quiet && self.replica.announces(channel) {
            self.lifecycle.member_added(channel, user_id);
        }
        let frame = crate::text_frame(message::member_added(channel, user_id, info));
        self.deliver_locked(state, &frame, except);
    }

    fn member_removed(&self, state: &mut Channel, channel: &str, user_id: &str, quiet: bool) {
        if !quiet && self.replica.announces(channel) {
            self.lifecycle.member_removed(channel, user_id);
        }
        let frame = crate::text_frame(message::member_removed(channel, user_id));
        self.deliver_locked(state, &frame, None);
    }

    /// Presence frames go out under the channel lock so that they keep the
    /// order of the changes; presence channels are small (bounded members).
    fn deliver_locked(&self, state: &mut Channel, frame: &Frame, except: Option<SocketId>) {
        if state.subscribers.is_empty() {
            return;
        }
        let snapshot = state.snapshot();
        let delivered = deliver(&snapshot, frame, except, &self.metrics);
        self.metrics.delivered(delivered as u64, frame.len());
    }

    /// Removes `conn` from `channel`; `None` when it was not subscribed.
    pub fn unsubscribe(&self, conn: &Connection, channel: &str) -> Option<UnsubscribeOutcome> {
        if !conn.leave(channel) {
            return None;
        }
        let mut channels = self.channels.lock(channel);
        Some(self.remove_from_channel(&mut channels, conn.socket_id, channel))
    }

    pub(super) fn remove_from_channel(
        &self,
        channels: &mut HashMap<Arc<str>, Channel>,
        socket_id: SocketId,
        channel: &str,
    ) -> UnsubscribeOutcome {
        let mut outcome = UnsubscribeOutcome::default();
        let Some(state) = channels.get_mut(channel) else {
            return outcome;
        };
        if state.subscribers.remove(&socket_id).is_some() {
            state.snapshot = None;
        }
        if let Some(user_id) = state.socket_users.remove(&socket_id) {
            let last_here = state.members.get_mut(&user_id).is_some_and(|m| {
                m.sockets -= 1;
                m.sockets == 0
            });
            if last_here {
                state.members.remove(&user_id);
                self.changed(Change::MemberLeft { channel: channel.to_string(), user_id: user_id.to_string() });
                if !state.has_member(&user_id) {
                    self.member_removed(state, channel, &user_id, false);
                    outcome.member_removed = Some(user_id);
                }
            }
        }
        if state.subscribers.is_empty() {
            self.changed(Change::Vacated { channel: channel.to_string() });
            if !state.occupied() {
                channels.remove(channel);
                if self.replica.announces(channel) {
                    self.lifecycle.channel_vacated(channel);
                }
                outcome.vacated = true;
            }
        }
        outcome
    }

    /// Applies a peer's channel change (see [`Namespace::apply_remote`]).
    pub(super) fn apply_remote_channel(&self, node: &NodeId, change: &Change, quiet: bool) {
        let channel = match change {
            Change::Occupied { channel }
            | Change::Vacated { channel }
            | Change::MemberJoined { channel, .. }
            | Change::MemberLeft { channel, .. } => channel,
            Change::UserOnline { .. } | Change::UserOffline { .. } => return,
        };
        let mut channels = self.channels.lock(channel);
        match change {
            Change::Occupied { channel } => {
                self.remote_occupied(&mut channels, node, channel, quiet);
            }
            Change::Vacated { channel } => self.remote_vacated(&mut channels, node, channel, quiet),
            Change::MemberJoined { channel, user_id, info } => {
                let state = self.remote_occupied(&mut channels, node, channel, quiet);
                let is_new = !state.has_member(user_id);
                state.remote.entry(node.clone()).or_default().insert(user_id.as_str().into(), info.clone());
                if is_new {
                    self.member_added(state, channel, user_id, info, None, quiet);
                }
            }
            Change::MemberLeft { channel, user_id } => {
                if let Some(state) = channels.get_mut(channel.as_str()) {
                    let removed = state.remote.get_mut(node).and_then(|m| m.remove(user_id.as_str())).is_some();
                    if removed && !state.has_member(user_id) {
                        self.member_removed(state, channel, user_id, quiet);
                    }
                }
            }
            Change::UserOnline { .. } | Change::UserOffline { .. } => {}
        }
    }

    fn remote_occupied<'a>(
        &self,
        channels: &'a mut HashMap<Arc<str>, Channel>,
        node: &NodeId,
        channel: &str,
        quiet: bool,
    ) -> &'a mut Channel {
        let state = channels.entry(Arc::from(channel)).or_default();
        if !state.remote.contains_key(node) {
            let was_occupied = state.occupied();
            state.remote.insert(node.clone(), HashMap::new());
            if !was_occupied && !quiet && self.replica.announces(channel) {
                self.lifecycle.channel_occupied(channel);
            }
        }
        state
    }

    fn remote_vacated(&self, channels: &mut HashMap<Arc<str>, Channel>, node: &NodeId, channel: &str, quiet: bool) {
        let Some(state) = channels.get_mut(channel) else { return };
        let Some(members) = state.remote.remove(node) else { return };
        for user_id in members.keys() {
            if !state.has_member(user_id) {
                self.member_removed(state, channel, user_id, quiet);
            }
        }
        if !state.occupied() {
            channels.remove(channel);
            if !quiet && self.replica.announces(channel) {
                self.lifecycle.channel_vacated(channel);
            }
        }
    }

    /// Brings the view of `node` in line with its snapshot `state`.
    pub(super) fn replace_remote_channels(&self, node: &NodeId, state: &NodeAppState, quiet: bool) {
        let wanted: HashSet<&str> =
            state.occupied.iter().map(String::as_str).chain(state.members.keys().map(String::as_str)).collect();
        let mut by_shard: Vec<Vec<&str>> = vec![Vec::new(); SHARDS];
        for name in &wanted {
            by_shard[Shards::index(name)].push(name);
        }
        // One shard at a time: a snapshot of a busy node does not stall the
        // app's other channels while it is applied.
        for (i, names) in by_shard.iter().enumerate() {
            let mut channels = self.channels.lock_index(i);
            let known: Vec<Arc<str>> =
                channels.iter().filter(|(_, c)| c.remote.contains_key(node)).map(|(name, _)| name.clone()).collect();
            for name in &known {
                if !wanted.contains(&**name) {
                    self.remote_vacated(&mut channels, node, name, quiet);
                }
            }
            for name in names {
                let state_here = self.remote_occupied(&mut channels, node, name, quiet);
                let members = state.members.get(*name);
                let gone: Vec<Arc<str>> = state_here
                    .remote
                    .get(node)
                    .map(|m| m.keys().filter(|u| !members.is_some_and(|n| n.contains_key(&***u))).cloned().collect())
                    .unwrap_or_default();
                for user_id in gone {
                    if let Some(m) = state_here.remote.get_mut(node) {
                        m.remove(&user_id);
                    }
                    if !state_here.has_member(&user_id) {
                        self.member_removed(state_here, name, &user_id, quiet);
                    }
                }
                for (user_id, info) in members.into_iter().flatten() {
                    let is_new = !state_here.has_member(user_id);
                    state_here.remote.entry(node.clone()).or_default().insert(user_id.as_str().into(), info.clone());
                    if is_new {
                        self.member_added(state_here, name, user_id, info, None, quiet);
                    }
                }
            }
        }
    }

    /// This node's part of every channel, for a snapshot.
    pub(super) fn fill_channel_state(&self, out: &mut NodeAppState) {
        for shard in self.channels.all() {
            let channels = shard.lock();
            for (name, c) in channels.iter().filter(|(_, c)| !c.subscribers.is_empty()) {
                out.occupied.push(name.to_string());
                if !c.members.is_empty() {
                    let members = c.members.iter().map(|(id, m)| (id.to_string(), m.info.clone())).collect();
                    out.members.insert(name.to_string(), members);
                }
            }
        }
    }

    /// Local subscriptions to `channel`.
    pub fn subscription_count(&self, channel: &str) -> usize {
        self.channels.lock(channel).get(channel).map_or(0, |c| c.subscribers.len())
    }

    /// Distinct presence members of `channel` in the cluster.
    pub fn user_count(&self, channel: &str) -> usize {
        self.channels.lock(channel).get(channel).map_or(0, |c| c.user_count())
    }

    /// A presence channel's members in the cluster: (user id, user info).
    pub fn members(&self, channel: &str) -> Vec<(String, Value)> {
        self.channels
            .lock(channel)
            .get(channel)
            .map(|c| c.all_members().into_iter().map(|(id, info)| (id.to_string(), info.clone())).collect())
            .unwrap_or_default()
    }

    /// Channels with local subscribers: (name, local subscriptions).
    pub fn local_channels(&self) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for shard in self.channels.all() {
            let shard = shard.lock();
            out.extend(
                shard
                    .iter()
                    .filter(|(_, c)| !c.subscribers.is_empty())
                    .map(|(name, c)| (name.to_string(), c.subscribers.len())),
            );
        }
        out
    }

    /// The REST view of channels given their subscription counts (local, or
    /// summed over the cluster): `user_count` from the replicated presence,
    /// one shard lock at a time.
    pub fn summarize(&self, counts: impl IntoIterator<Item = (String, usize)>) -> Vec<ChannelSummary> {
        counts
            .into_iter()
            .map(|(name, subscription_count)| {
                let user_count = self.user_count(&name);
                ChannelSummary { name, subscription_count, user_count }
            })
            .collect()
    }

    /// Channels occupied anywhere in the cluster, as far as this node knows.
    pub fn known_channels(&self) -> Vec<String> {
        let mut out = Vec::new();
        for shard in self.channels.all() {
            out.extend(shard.lock().keys().map(|k| k.to_string()));
        }
        out
    }
}
