//! One app's state on this node: sockets, channels with their subscribers and
//! presence members, signed-in users and their watchers, and cache channels'
//! last events.
//!
//! Locks are `parking_lot` mutexes held for map updates only — never across
//! an `.await` and never while a broadcast sends. Lock order when nested:
//! `channels` → `cache` → a connection's own state.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_metrics::{AppMetrics, Rejection};
use herald_protocol::message;
use herald_protocol::presence::PresenceMember;
use herald_protocol::SocketId;
use parking_lot::Mutex;
use serde_json::Value;

use crate::connection::{Connection, Frame, SendOutcome, SignedIn};
use crate::lifecycle::Lifecycle;

/// How long a cache channel keeps its last event.
pub const CACHE_TTL: Duration = Duration::from_secs(30 * 60);

/// One app's state on this node.
pub struct Namespace {
    pub app_id: Arc<str>,
    metrics: AppMetrics,
    lifecycle: Arc<dyn Lifecycle>,
    sockets: Mutex<HashMap<SocketId, Arc<Connection>>>,
    channels: Mutex<HashMap<Arc<str>, Channel>>,
    users: Mutex<Users>,
    cache: Mutex<HashMap<Arc<str>, CachedEvent>>,
}

#[derive(Default)]
struct Channel {
    subscribers: HashMap<SocketId, Arc<Connection>>,
    /// Subscribers as a shared slice, rebuilt lazily after a change, so
    /// repeated broadcasts to a stable channel copy nothing.
    snapshot: Option<Arc<[Arc<Connection>]>>,
    /// Presence channels: user id → member.
    members: HashMap<Arc<str>, Member>,
    /// Presence channels: which user each socket joined as.
    socket_users: HashMap<SocketId, Arc<str>>,
}

struct Member {
    info: Value,
    sockets: usize,
}

impl Channel {
    fn snapshot(&mut self) -> Arc<[Arc<Connection>]> {
        self.snapshot.get_or_insert_with(|| self.subscribers.values().cloned().collect()).clone()
    }
}

#[derive(Default)]
struct Users {
    /// user id → that user's signed-in connections on this node.
    sockets: HashMap<Arc<str>, HashMap<SocketId, Arc<Connection>>>,
    /// watched user id → connections whose watchlist names them.
    watchers: HashMap<Arc<str>, HashMap<SocketId, Arc<Connection>>>,
}

/// The last event of a cache channel.
#[derive(Clone)]
pub struct CachedEvent {
    pub frame: Frame,
    pub stored: Instant,
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
    /// The socket is the channel's first subscriber on this node.
    pub channel_occupied: bool,
    /// The socket's user was not yet a member: others get `member_added`.
    pub member_added: bool,
    /// A cache channel had no event to replay.
    pub cache_miss: bool,
}

/// What an unsubscription changed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct UnsubscribeOutcome {
    /// The channel has no subscriber left on this node.
    pub vacated: bool,
    /// The user whose last socket left this presence channel.
    pub member_removed: Option<Arc<str>>,
}

/// What a user's departure changed.
pub struct UserDeparture {
    pub user_id: Arc<str>,
    /// This was the user's last signed-in connection.
    pub went_offline: bool,
    /// Connections watching this user (to tell them it went offline).
    pub watchers: Vec<Arc<Connection>>,
}

/// Everything a disconnect changed, for the caller to announce.
#[derive(Default)]
pub struct Departure {
    pub channels: Vec<(Arc<str>, UnsubscribeOutcome)>,
    pub user: Option<UserDeparture>,
}

/// What a sign-in changed.
pub struct SignInOutcome {
    /// The user's first signed-in connection: watchers learn it is online.
    pub came_online: bool,
    pub watchers: Vec<Arc<Connection>>,
    /// Which users of the new connection's watchlist are online now.
    pub online_watched: Vec<String>,
}

impl Namespace {
    pub fn new(app_id: &str, metrics: AppMetrics, lifecycle: Arc<dyn Lifecycle>) -> Self {
        Self {
            app_id: app_id.into(),
            metrics,
            lifecycle,
            sockets: Mutex::default(),
            channels: Mutex::default(),
            users: Mutex::default(),
            cache: Mutex::default(),
        }
    }

    pub fn metrics(&self) -> &AppMetrics {
        &self.metrics
    }

    pub fn add_connection(&self, conn: Arc<Connection>) {
        self.sockets.lock().insert(conn.socket_id, conn);
    }

    pub fn connection_count(&self) -> usize {
        self.sockets.lock().len()
    }

    /// Subscribes `conn` and, in the same critical section, queues its
    /// `subscription_succeeded` (and a cache channel's replay or
    /// `cache_miss`), so no broadcast can overtake them.
    pub fn subscribe(
        &self,
        conn: &Arc<Connection>,
        channel: &str,
        member: Option<PresenceMember>,
        max_members: usize,
        is_cache: bool,
    ) -> Result<SubscribeOutcome, PresenceFull> {
        let mut channels = self.channels.lock();
        let mut outcome = SubscribeOutcome::default();
        let name: Arc<str> = match channels.get_key_value(channel) {
            Some((name, _)) => name.clone(),
            None => channel.into(),
        };
        let state = channels.entry(name.clone()).or_default();
        outcome.already_subscribed = state.subscribers.contains_key(&conn.socket_id);
        let user_id: Option<Arc<str>> = member.as_ref().map(|m| m.user_id.as_str().into());
        let is_new_user = user_id.as_ref().is_some_and(|id| !state.members.contains_key(id));
        if !outcome.already_subscribed && is_new_user && state.members.len() >= max_members {
            if state.subscribers.is_empty() {
                channels.remove(&name);
            }
            return Err(PresenceFull(max_members));
        }
        if !outcome.already_subscribed {
            outcome.channel_occupied = state.subscribers.is_empty();
            if outcome.channel_occupied {
                self.lifecycle.channel_occupied(channel);
            }
            state.subscribers.insert(conn.socket_id, conn.clone());
            state.snapshot = None;
            conn.join(&name);
            if let (Some(member), Some(user_id)) = (&member, user_id) {
                let entry = state
                    .members
                    .entry(user_id.clone())
                    .or_insert_with(|| Member { info: member.user_info.clone(), sockets: 0 });
                entry.sockets += 1;
                if is_new_user {
                    self.lifecycle.member_added(channel, &user_id);
                }
                state.socket_users.insert(conn.socket_id, user_id);
                outcome.member_added = is_new_user;
            }
        }
        let data = if member.is_some() {
            message::presence_data(state.members.iter().map(|(id, m)| (&**id, &m.info)))
        } else {
            "{}".to_string()
        };
        self.send_to(conn, crate::text_frame(message::subscription_succeeded(channel, &data)));
        if is_cache {
            match self.cached(channel) {
                Some(event) => {
                    self.send_to(conn, event.frame);
                }
                None => {
                    outcome.cache_miss = true;
                    self.send_to(conn, crate::text_frame(message::cache_miss(channel)));
                }
            }
        }
        Ok(outcome)
    }

    /// Removes `conn` from `channel`; `None` when it was not subscribed.
    pub fn unsubscribe(&self, conn: &Connection, channel: &str) -> Option<UnsubscribeOutcome> {
        if !conn.leave(channel) {
            return None;
        }
        let mut channels = self.channels.lock();
        Some(self.remove_from_channel(&mut channels, conn.socket_id, channel))
    }

    fn remove_from_channel(
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
            if let Some(member) = state.members.get_mut(&user_id) {
                member.sockets -= 1;
                if member.sockets == 0 {
                    state.members.remove(&user_id);
                    self.lifecycle.member_removed(channel, &user_id);
                    outcome.member_removed = Some(user_id);
                }
            }
        }
        if state.subscribers.is_empty() {
            channels.remove(channel);
            self.lifecycle.channel_vacated(channel);
            outcome.vacated = true;
        }
        outcome
    }

    /// Removes a connection and everything it held; returns what changed.
    pub fn remove_connection(&self, conn: &Connection) -> Departure {
        self.remove_connections(std::slice::from_ref(&conn)).pop().unwrap_or_default()
    }

    /// Removes several connections, taking each lock once for the batch;
    /// returns one departure per connection, in order.
    pub fn remove_connections<C: std::ops::Deref<Target = Connection>>(&self, conns: &[C]) -> Vec<Departure> {
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

    fn remove_user(&self, socket_id: SocketId, user: SignedIn) -> UserDeparture {
        let mut users = self.users.lock();
        let mut went_offline = false;
        if let Some(sockets) = users.sockets.get_mut(&user.user_id) {
            sockets.remove(&socket_id);
            if sockets.is_empty() {
                users.sockets.remove(&user.user_id);
                went_offline = true;
            }
        }
        for watched in &user.watchlist {
            if let Some(watchers) = users.watchers.get_mut(watched) {
                watchers.remove(&socket_id);
                if watchers.is_empty() {
                    users.watchers.remove(watched);
                }
            }
        }
        let watchers = match (went_offline, users.watchers.get(&user.user_id)) {
            (true, Some(w)) => w.values().cloned().collect(),
            _ => Vec::new(),
        };
        UserDeparture { user_id: user.user_id, went_offline, watchers }
    }

    /// Records a sign-in. A connection signs in once; a second sign-in
    /// replaces the first.
    pub fn sign_in(&self, conn: &Arc<Connection>, user_id: &str, watchlist: &[String]) -> SignInOutcome {
        let user =
            SignedIn { user_id: user_id.into(), watchlist: watchlist.iter().map(|w| Arc::from(w.as_str())).collect() };
        if let Some(previous) = conn.set_user(user.clone()) {
            self.remove_user(conn.socket_id, previous);
        }
        let mut users = self.users.lock();
        let sockets = users.sockets.entry(user.user_id.clone()).or_default();
        let came_online = sockets.is_empty();
        sockets.insert(conn.socket_id, conn.clone());
        for watched in &user.watchlist {
            users.watchers.entry(watched.clone()).or_default().insert(conn.socket_id, conn.clone());
        }
        let watchers = match (came_online, users.watchers.get(user_id)) {
            (true, Some(w)) => w.values().filter(|c| c.socket_id != conn.socket_id).cloned().collect(),
            _ => Vec::new(),
        };
        let online_watched = watchlist.iter().filter(|w| users.sockets.contains_key(w.as_str())).cloned().collect();
        SignInOutcome { came_online, watchers, online_watched }
    }

    /// The connections signed in as `user_id` on this node.
    pub fn user_connections(&self, user_id: &str) -> Vec<Arc<Connection>> {
        self.users.lock().sockets.get(user_id).map(|s| s.values().cloned().collect()).unwrap_or_default()
    }

    /// Queues `frame` to every subscriber of `channel` except `except`.
    /// The subscriber list is snapshotted under the lock and sent to after
    /// it is released; metrics are recorded once for the whole broadcast.
    pub fn broadcast(&self, channel: &str, frame: &Frame, except: Option<SocketId>) -> usize {
        let started = Instant::now();
        let snapshot = match self.channels.lock().get_mut(channel) {
            Some(state) => state.snapshot(),
            None => return 0,
        };
        let delivered = deliver(&snapshot, frame, except, &self.metrics);
        self.metrics.delivered(delivered as u64, frame.len());
        self.metrics.broadcast_fanout_seconds.record(started.elapsed().as_secs_f64());
        delivered
    }

    /// Queues one frame to one connection, counted in metrics.
    pub fn send_to(&self, conn: &Connection, frame: Frame) -> SendOutcome {
        let len = frame.len();
        let outcome = conn.send(frame);
        match outcome {
            SendOutcome::Queued => self.metrics.delivered(1, len),
            SendOutcome::SlowConsumer => self.metrics.rejected(Rejection::SlowConsumer),
            SendOutcome::Closed => {}
        }
        outcome
    }

    /// Queues one frame to several connections (watchlist events), counted once.
    pub fn send_all(&self, recipients: &[Arc<Connection>], frame: &Frame) -> usize {
        let delivered = deliver(recipients, frame, None, &self.metrics);
        self.metrics.delivered(delivered as u64, frame.len());
        delivered
    }

    /// Stores the last event of a cache channel.
    pub fn set_cached(&self, channel: &str, frame: Frame) {
        let mut cache = self.cache.lock();
        let now = Instant::now();
        if cache.len() >= 10_000 {
            cache.retain(|_, e| now.duration_since(e.stored) < CACHE_TTL);
        }
        cache.insert(channel.into(), CachedEvent { frame, stored: now });
    }

    /// The last event of a cache channel, if it has not expired.
    pub fn cached(&self, channel: &str) -> Option<CachedEvent> {
        let mut cache = self.cache.lock();
        match cache.get(channel) {
            Some(e) if e.stored.elapsed() < CACHE_TTL => Some(e.clone()),
            Some(_) => {
                cache.remove(channel);
                None
            }
            None => None,
        }
    }

    pub fn subscription_count(&self, channel: &str) -> usize {
        self.channels.lock().get(channel).map_or(0, |c| c.subscribers.len())
    }

    pub fn user_count(&self, channel: &str) -> usize {
        self.channels.lock().get(channel).map_or(0, |c| c.members.len())
    }

    /// A presence channel's members: (user id, user info).
    pub fn members(&self, channel: &str) -> Vec<(String, Value)> {
        self.channels
            .lock()
            .get(channel)
            .map(|c| c.members.iter().map(|(id, m)| (id.to_string(), m.info.clone())).collect())
            .unwrap_or_default()
    }

    /// Every occupied channel: (name, subscriptions, distinct users).
    pub fn channels(&self) -> Vec<(String, usize, usize)> {
        self.channels.lock().iter().map(|(name, c)| (name.to_string(), c.subscribers.len(), c.members.len())).collect()
    }
}

/// Enqueues one shared frame per recipient; returns how many were queued.
/// A slow consumer found during a delivery is counted once, when its
/// queue overflows (the connection is closing from then on).
fn deliver(recipients: &[Arc<Connection>], frame: &Frame, except: Option<SocketId>, metrics: &AppMetrics) -> usize {
    let mut delivered = 0;
    for conn in recipients {
        if Some(conn.socket_id) == except {
            continue;
        }
        match conn.send(frame.clone()) {
            SendOutcome::Queued => delivered += 1,
            SendOutcome::SlowConsumer => metrics.rejected(Rejection::SlowConsumer),
            SendOutcome::Closed => {}
        }
    }
    delivered
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_metrics::Metrics;
    use serde_json::json;
    use tokio::sync::mpsc::Receiver;

    fn ns() -> Namespace {
        Namespace::new("app", Metrics::new("test").app("app"), Arc::new(crate::NoLifecycle))
    }

    fn conn(n: u64) -> (Arc<Connection>, Receiver<Frame>) {
        Connection::new(SocketId { major: n, minor: n }, 64)
    }

    fn drain(rx: &mut Receiver<Frame>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(f) = rx.try_recv() {
            out.push(f.into_text().unwrap().to_string());
        }
        out
    }

    fn member(id: &str) -> Option<PresenceMember> {
        Some(PresenceMember { user_id: id.into(), user_info: json!({"name": id}) })
    }

    #[test]
    fn presence_members_are_per_user() {
        let ns = ns();
        let (a1, _r1) = conn(1);
        let (a2, _r2) = conn(2);
        let (b, mut rb) = conn(3);
        let o = ns.subscribe(&a1, "presence-x", member("a"), 100, false).unwrap();
        assert!(o.channel_occupied && o.member_added);
        let o = ns.subscribe(&a2, "presence-x", member("a"), 100, false).unwrap();
        assert!(!o.channel_occupied && !o.member_added);
        let o = ns.subscribe(&b, "presence-x", member("b"), 100, false).unwrap();
        assert!(o.member_added);
        let succeeded = drain(&mut rb).remove(0);
        assert!(succeeded.contains(r#"\"count\":2"#), "{succeeded}");
        assert_eq!(ns.user_count("presence-x"), 2);
        assert_eq!(ns.subscription_count("presence-x"), 3);
        assert_eq!(ns.unsubscribe(&a1, "presence-x"), Some(UnsubscribeOutcome::default()));
        let o = ns.unsubscribe(&a2, "presence-x").unwrap();
        assert_eq!(o.member_removed.as_deref(), Some("a"));
        let d = ns.remove_connection(&b);
        assert!(d.channels[0].1.vacated);
        assert!(ns.channels().is_empty());
    }

    #[test]
    fn presence_limit_counts_distinct_users() {
        let ns = ns();
        let (a, _ra) = conn(1);
        let (a2, _ra2) = conn(2);
        let (b, _rb) = conn(3);
        ns.subscribe(&a, "presence-x", member("a"), 1, false).unwrap();
        ns.subscribe(&a2, "presence-x", member("a"), 1, false).unwrap();
        assert_eq!(ns.subscribe(&b, "presence-x", member("b"), 1, false), Err(PresenceFull(1)));
        assert!(!b.is_subscribed("presence-x"));
    }

    #[test]
    fn broadcast_skips_the_excluded_socket_and_survives_churn() {
        let ns = ns();
        let (a, mut ra) = conn(1);
        let (b, mut rb) = conn(2);
        ns.subscribe(&a, "c", None, 100, false).unwrap();
        ns.subscribe(&b, "c", None, 100, false).unwrap();
        drain(&mut ra);
        drain(&mut rb);
        let frame = crate::text_frame("hello".into());
        assert_eq!(ns.broadcast("c", &frame, Some(a.socket_id)), 1);
        assert!(drain(&mut ra).is_empty());
        assert_eq!(drain(&mut rb), vec!["hello"]);
        ns.unsubscribe(&b, "c");
        assert_eq!(ns.broadcast("c", &frame, None), 1);
        assert_eq!(ns.broadcast("none", &frame, None), 0);
    }

    #[test]
    fn subscribing_twice_is_harmless() {
        let ns = ns();
        let (a, mut ra) = conn(1);
        ns.subscribe(&a, "presence-x", member("a"), 100, false).unwrap();
        let o = ns.subscribe(&a, "presence-x", member("a"), 100, false).unwrap();
        assert!(o.already_subscribed && !o.member_added);
        assert_eq!(ns.subscription_count("presence-x"), 1);
        assert_eq!(drain(&mut ra).len(), 2);
        let d = ns.remove_connection(&a);
        assert_eq!(d.channels[0].1.member_removed.as_deref(), Some("a"));
    }

    #[test]
    fn cache_channels_replay_or_miss() {
        let ns = ns();
        let (a, mut ra) = conn(1);
        assert!(ns.subscribe(&a, "cache-x", None, 100, true).unwrap().cache_miss);
        assert!(drain(&mut ra)[1].contains("pusher:cache_miss"));
        ns.set_cached("cache-x", crate::text_frame("last".into()));
        let (b, mut rb) = conn(2);
        assert!(!ns.subscribe(&b, "cache-x", None, 100, true).unwrap().cache_miss);
        assert_eq!(drain(&mut rb)[1], "last");
    }

    #[test]
    fn watchlist_follows_sign_in_and_departure() {
        let ns = ns();
        let (w, _rw) = conn(1);
        let o = ns.sign_in(&w, "watcher", &["u".to_string()]);
        assert!(o.online_watched.is_empty());
        let (u, _ru) = conn(2);
        let o = ns.sign_in(&u, "u", &[]);
        assert!(o.came_online);
        assert_eq!(o.watchers.len(), 1);
        assert_eq!(ns.user_connections("u").len(), 1);
        let d = ns.remove_connection(&u).user.unwrap();
        assert!(d.went_offline);
        assert_eq!(d.watchers.len(), 1);
        ns.remove_connection(&w);
        assert!(ns.users.lock().watchers.is_empty());
        assert!(ns.users.lock().sockets.is_empty());
    }
}
