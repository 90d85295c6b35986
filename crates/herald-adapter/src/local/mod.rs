//! This node's state: one [`Namespace`] per app, split by role —
//! `sockets` (who is connected), `channels` (who is subscribed where, with
//! presence members of this node and of its peers), `users` (sign-ins and
//! watchlists), `cache` (cache channels' last events) and `delivery` (how a
//! frame reaches local connections).
//!
//! The namespace also holds what it knows of the peers' state (replicated
//! through [`Replica`]), so cluster-wide presence, watchlist and occupancy
//! transitions are decided here, under the same lock as the local ones, by
//! the same code for one node or twenty.
//!
//! Locks are `parking_lot` mutexes held for map updates only — never across
//! an `.await` and never while a channel broadcast sends. `channels` is
//! sharded by channel name (`shards`); one shard at a time is held. Lock
//! order when nested: a channel shard → `cache` → `users` → a connection's
//! own state.

mod cache;
mod channels;
mod delivery;
#[cfg(test)]
mod races;
mod shards;
mod sockets;
mod users;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use herald_metrics::AppMetrics;
use herald_protocol::{ErrorCode, SocketId};
use parking_lot::Mutex;
use serde_json::Value;

pub use cache::{CacheSettings, CachedEvent, DEFAULT_CACHE_CHANNELS, DEFAULT_CACHE_TTL};
pub use channels::{PresenceFull, SubscribeOutcome, UnsubscribeOutcome};
pub use delivery::send_counted;
pub use sockets::OverQuota;
pub use users::{SignInOutcome, UserDeparture};

use crate::adapter::{Adapter, AdapterError, ChannelSummary, Subscription};
use crate::connection::{Connection, Frame};
use crate::lifecycle::Lifecycle;
use crate::replica::{Change, NodeAppState, NodeId, Replica, SingleNode};

/// One app's state on this node.
pub struct Namespace {
    pub app_id: Arc<str>,
    metrics: AppMetrics,
    lifecycle: Arc<dyn Lifecycle>,
    replica: Arc<dyn Replica>,
    sockets: Mutex<HashMap<SocketId, Arc<Connection>>>,
    channels: shards::Shards,
    users: Mutex<users::Users>,
    cache: Mutex<cache::Cache>,
}

/// Everything a disconnect changed.
#[derive(Default)]
pub struct Departure {
    pub channels: Vec<(Arc<str>, UnsubscribeOutcome)>,
    pub user: Option<UserDeparture>,
}

/// What an app needs to get a namespace.
pub struct NamespaceSpec {
    pub app_id: String,
    pub metrics: AppMetrics,
    /// Webhook sink for the app's channel lifecycle.
    pub lifecycle: Arc<dyn Lifecycle>,
    /// Bounds of the app's cache-channel store.
    pub cache: CacheSettings,
}

impl Namespace {
    pub fn new(app_id: &str, metrics: AppMetrics, lifecycle: Arc<dyn Lifecycle>, replica: Arc<dyn Replica>) -> Self {
        Self {
            app_id: app_id.into(),
            metrics,
            lifecycle,
            replica,
            sockets: Mutex::default(),
            channels: shards::Shards::default(),
            users: Mutex::default(),
            cache: Mutex::new(cache::Cache::new(CacheSettings::default())),
        }
    }

    /// The same namespace with its cache-channel store bounded by `settings`.
    pub fn with_cache(self, settings: CacheSettings) -> Self {
        Self { cache: Mutex::new(cache::Cache::new(settings)), ..self }
    }

    pub fn metrics(&self) -> &AppMetrics {
        &self.metrics
    }

    fn changed(&self, change: Change) {
        self.replica.changed(&self.app_id, change);
    }

    /// What this node holds, for a peer that needs a snapshot.
    pub fn node_state(&self) -> NodeAppState {
        let mut state = NodeAppState { connections: self.connection_count(), ..Default::default() };
        self.fill_channel_state(&mut state);
        state.online = self.users.lock().local_users();
        state
    }

    /// Applies one change a peer reported. `quiet` suppresses webhooks
    /// (used while catching up on a node's existing state).
    pub fn apply_remote(&self, node: &NodeId, change: &Change, quiet: bool) {
        match change {
            Change::UserOnline { user_id } => self.remote_user(node, user_id, true),
            Change::UserOffline { user_id } => self.remote_user(node, user_id, false),
            other => self.apply_remote_channel(node, other, quiet),
        }
    }

    /// Replaces everything known of `node` with `state` (a snapshot), or
    /// forgets the node entirely with an empty state. Every member, channel
    /// or user that disappears or appears in the cluster's view is
    /// announced as if it had changed one by one.
    pub fn replace_remote(&self, node: &NodeId, state: &NodeAppState, quiet: bool) {
        self.replace_remote_channels(node, state, quiet);
        self.replace_remote_users(node, &state.online);
    }
}

/// The single-node adapter, and the local half of every cluster adapter:
/// a fixed map from app id to [`Namespace`]. Apps are known at start, so
/// the map is built once and never locked.
pub struct LocalAdapter {
    namespaces: HashMap<Arc<str>, Arc<Namespace>>,
}

impl LocalAdapter {
    /// One namespace per app, each on a cluster of one.
    pub fn new(specs: impl IntoIterator<Item = NamespaceSpec>) -> Self {
        Self::with_replica(specs, Arc::new(SingleNode))
    }

    /// One namespace per app, reporting to `replica`.
    pub fn with_replica(specs: impl IntoIterator<Item = NamespaceSpec>, replica: Arc<dyn Replica>) -> Self {
        let namespaces = specs
            .into_iter()
            .map(|s| {
                let ns = Namespace::new(&s.app_id, s.metrics, s.lifecycle, replica.clone()).with_cache(s.cache);
                (ns.app_id.clone(), Arc::new(ns))
            })
            .collect();
        Self { namespaces }
    }

    pub fn namespace(&self, app_id: &str) -> Option<&Arc<Namespace>> {
        self.namespaces.get(app_id)
    }

    pub fn namespaces(&self) -> impl Iterator<Item = &Arc<Namespace>> {
        self.namespaces.values()
    }

    pub(crate) fn ns(&self, app_id: &str) -> Result<&Arc<Namespace>, AdapterError> {
        self.namespace(app_id).ok_or_else(|| AdapterError::UnknownApp(app_id.to_string()))
    }

    /// Closes this node's connections of `user_id` with 4009.
    pub fn terminate_local(&self, app_id: &str, user_id: &str) -> Result<usize, AdapterError> {
        let connections = self.ns(app_id)?.user_connections(user_id);
        for conn in &connections {
            conn.close(ErrorCode::UNAUTHORIZED);
        }
        Ok(connections.len())
    }

    /// Occupied channels of this node: (name, local subscriptions).
    pub fn local_channels(&self, app_id: &str) -> Result<Vec<(String, usize)>, AdapterError> {
        Ok(self.ns(app_id)?.local_channels())
    }
}

#[async_trait]
impl Adapter for LocalAdapter {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn add_connection(&self, app_id: &str, conn: Arc<Connection>, max_connections: usize) -> Result<(), AdapterError> {
        Ok(self.ns(app_id)?.add_connection(conn, max_connections, 0)?)
    }

    fn connection_count(&self, app_id: &str) -> Result<usize, AdapterError> {
        Ok(self.ns(app_id)?.connection_count())
    }

    async fn remove_connections(
        &self,
        app_id: &str,
        conns: &[Arc<Connection>],
    ) -> Result<Vec<Departure>, AdapterError> {
        Ok(self.ns(app_id)?.remove_connections(conns))
    }

    async fn subscribe(
        &self,
        app_id: &str,
        conn: &Arc<Connection>,
        request: Subscription,
    ) -> Result<SubscribeOutcome, AdapterError> {
        let ns = self.ns(app_id)?;
        Ok(ns.subscribe(conn, &request, false)?)
    }

    async fn unsubscribe(
        &self,
        app_id: &str,
        conn: &Arc<Connection>,
        channel: &str,
    ) -> Result<Option<UnsubscribeOutcome>, AdapterError> {
        Ok(self.ns(app_id)?.unsubscribe(conn, channel))
    }

    async fn sign_in(
        &self,
        app_id: &str,
        conn: &Arc<Connection>,
        user_id: &str,
        watchlist: &[String],
    ) -> Result<SignInOutcome, AdapterError> {
        Ok(self.ns(app_id)?.sign_in(conn, user_id, watchlist))
    }

    async fn broadcast(
        &self,
        app_id: &str,
        channel: &str,
        frame: Frame,
        except: Option<SocketId>,
        remember: bool,
    ) -> Result<usize, AdapterError> {
        Ok(self.ns(app_id)?.fan_out(channel, &frame, except, remember).await)
    }

    async fn broadcast_local(
        &self,
        app_id: &str,
        channel: &str,
        frame: Frame,
        except: Option<SocketId>,
    ) -> Result<usize, AdapterError> {
        Ok(self.ns(app_id)?.fan_out(channel, &frame, except, false).await)
    }

    async fn subscription_count(&self, app_id: &str, channel: &str) -> Result<usize, AdapterError> {
        Ok(self.ns(app_id)?.subscription_count(channel))
    }

    async fn members(&self, app_id: &str, channel: &str) -> Result<Vec<(String, Value)>, AdapterError> {
        Ok(self.ns(app_id)?.members(channel))
    }

    async fn channels(&self, app_id: &str) -> Result<Vec<ChannelSummary>, AdapterError> {
        let ns = self.ns(app_id)?;
        Ok(ns.summarize(ns.local_channels()))
    }

    async fn terminate_user_connections(&self, app_id: &str, user_id: &str) -> Result<usize, AdapterError> {
        self.terminate_local(app_id, user_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use herald_metrics::Metrics;
    use herald_protocol::presence::PresenceMember;
    use serde_json::json;
    use tokio::sync::mpsc::Receiver;

    /// Records what the namespace reports, and announces every channel.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<Change>>);

    impl Replica for Recorder {
        fn changed(&self, _app: &str, change: Change) {
            self.0.lock().push(change);
        }
        fn announces(&self, _channel: &str) -> bool {
            true
        }
    }

    /// Webhook facts, in order.
    #[derive(Default)]
    struct Facts(Mutex<Vec<String>>);

    impl Lifecycle for Facts {
        fn channel_occupied(&self, c: &str) {
            self.0.lock().push(format!("occupied {c}"));
        }
        fn channel_vacated(&self, c: &str) {
            self.0.lock().push(format!("vacated {c}"));
        }
        fn member_added(&self, c: &str, u: &str) {
            self.0.lock().push(format!("added {c} {u}"));
        }
        fn member_removed(&self, c: &str, u: &str) {
            self.0.lock().push(format!("removed {c} {u}"));
        }
    }

    fn ns() -> Namespace {
        Namespace::new("app", Metrics::new("test").app("app"), Arc::new(crate::NoLifecycle), Arc::new(SingleNode))
    }

    fn recorded() -> (Namespace, Arc<Recorder>, Arc<Facts>) {
        let rec = Arc::new(Recorder::default());
        let facts = Arc::new(Facts::default());
        let ns = Namespace::new("app", Metrics::new("test").app("app"), facts.clone(), rec.clone());
        (ns, rec, facts)
    }

    fn conn(n: u64) -> (Arc<Connection>, Receiver<Frame>) {
        Connection::new(SocketId { major: n, minor: n }, 64)
    }

    fn drain(rx: &mut Receiver<Frame>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(f) = rx.try_recv() {
            out.push(f.as_str().to_string());
        }
        out
    }

    fn sub(channel: &str, user: Option<&str>, max_members: usize) -> Subscription {
        Subscription {
            channel: channel.into(),
            member: user.map(|id| PresenceMember { user_id: id.into(), user_info: json!({"name": id}) }),
            max_members,
            is_cache: channel.starts_with("cache-"),
        }
    }

    fn node(s: &str) -> NodeId {
        Arc::from(s)
    }

    #[test]
    fn presence_members_are_per_user() {
        let ns = ns();
        let (a1, _r1) = conn(1);
        let (a2, _r2) = conn(2);
        let (b, mut rb) = conn(3);
        let o = ns.subscribe(&a1, &sub("presence-x", Some("a"), 100), false).unwrap();
        assert!(o.channel_occupied && o.member_added);
        let o = ns.subscribe(&a2, &sub("presence-x", Some("a"), 100), false).unwrap();
        assert!(!o.channel_occupied && !o.member_added);
        let o = ns.subscribe(&b, &sub("presence-x", Some("b"), 100), false).unwrap();
        assert!(o.member_added);
        let succeeded = drain(&mut rb).remove(0);
        assert!(succeeded.contains(r#"\"count\":2"#), "{succeeded}");
        assert_eq!(ns.user_count("presence-x"), 2);
        assert_eq!(ns.subscription_count("presence-x"), 3);
        assert_eq!(ns.unsubscribe(&a1, "presence-x"), Some(UnsubscribeOutcome::default()));
        let o = ns.unsubscribe(&a2, "presence-x").unwrap();
        assert_eq!(o.member_removed.as_deref(), Some("a"));
        assert_eq!(
            drain(&mut rb),
            vec![r#"{"event":"pusher_internal:member_removed","channel":"presence-x","data":"{\"user_id\":\"a\"}"}"#]
        );
        let d = ns.remove_connection(&b);
        assert!(d.channels[0].1.vacated);
        assert!(ns.local_channels().is_empty());
    }

    #[test]
    fn presence_limit_counts_distinct_users() {
        let ns = ns();
        let (a, _ra) = conn(1);
        let (a2, _ra2) = conn(2);
        let (b, _rb) = conn(3);
        ns.subscribe(&a, &sub("presence-x", Some("a"), 1), false).unwrap();
        ns.subscribe(&a2, &sub("presence-x", Some("a"), 1), false).unwrap();
        assert_eq!(ns.subscribe(&b, &sub("presence-x", Some("b"), 1), false), Err(PresenceFull(1)));
        assert!(!b.is_subscribed("presence-x"));
    }

    #[test]
    fn broadcast_skips_the_excluded_socket_and_survives_churn() {
        let ns = ns();
        let (a, mut ra) = conn(1);
        let (b, mut rb) = conn(2);
        ns.subscribe(&a, &sub("c", None, 100), false).unwrap();
        ns.subscribe(&b, &sub("c", None, 100), false).unwrap();
        drain(&mut ra);
        drain(&mut rb);
        let frame = crate::text_frame("hello".into());
        assert_eq!(ns.fan_out("c", &frame, Some(a.socket_id), false).now_or_never().unwrap(), 1);
        assert!(drain(&mut ra).is_empty());
        assert_eq!(drain(&mut rb), vec!["hello"]);
        ns.unsubscribe(&b, "c");
        assert_eq!(ns.fan_out("c", &frame, None, false).now_or_never().unwrap(), 1);
        assert_eq!(ns.fan_out("none", &frame, None, false).now_or_never().unwrap(), 0);
    }

    #[test]
    fn subscribing_twice_is_harmless() {
        let ns = ns();
        let (a, mut ra) = conn(1);
        ns.subscribe(&a, &sub("presence-x", Some("a"), 100), false).unwrap();
        let o = ns.subscribe(&a, &sub("presence-x", Some("a"), 100), false).unwrap();
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
        assert!(ns.subscribe(&a, &sub("cache-x", None, 100), false).unwrap().cache_miss);
        assert!(drain(&mut ra)[1].contains("pusher:cache_miss"));
        ns.set_cached("cache-x", crate::text_frame("last".into()));
        let (b, mut rb) = conn(2);
        assert!(!ns.subscribe(&b, &sub("cache-x", None, 100), false).unwrap().cache_miss);
        assert_eq!(drain(&mut rb)[1], "last");
        let (c, mut rc) = conn(3);
        ns.subscribe(&c, &sub("cache-y", None, 100), true).unwrap();
        assert_eq!(drain(&mut rc).len(), 1, "a deferred miss is the caller's to send");
    }

    #[test]
    fn watchlist_follows_sign_in_and_departure() {
        let ns = ns();
        let (w, mut rw) = conn(1);
        let o = ns.sign_in(&w, "watcher", &["u".to_string()]);
        assert!(o.online_watched.is_empty());
        let (u, _ru) = conn(2);
        let o = ns.sign_in(&u, "u", &[]);
        assert!(o.came_online);
        assert_eq!(
            drain(&mut rw),
            vec![
                r#"{"event":"pusher_internal:watchlist_events","data":"{\"events\":[{\"name\":\"online\",\"user_ids\":[\"u\"]}]}"}"#
            ]
        );
        assert_eq!(ns.user_connections("u").len(), 1);
        let d = ns.remove_connection(&u).user.unwrap();
        assert!(d.went_offline);
        assert!(drain(&mut rw)[0].contains("offline"));
        ns.remove_connection(&w);
        assert!(ns.users_empty());
    }

    #[test]
    fn only_node_level_transitions_are_reported() {
        let (ns, rec, _) = recorded();
        let (a1, _r1) = conn(1);
        let (a2, _r2) = conn(2);
        ns.subscribe(&a1, &sub("presence-x", Some("a"), 100), false).unwrap();
        ns.subscribe(&a2, &sub("presence-x", Some("a"), 100), false).unwrap();
        ns.sign_in(&a1, "a", &[]);
        ns.sign_in(&a2, "a", &[]);
        assert_eq!(
            *rec.0.lock(),
            vec![
                Change::Occupied { channel: "presence-x".into() },
                Change::MemberJoined { channel: "presence-x".into(), user_id: "a".into(), info: json!({"name": "a"}) },
                Change::UserOnline { user_id: "a".into() },
            ]
        );
        rec.0.lock().clear();
        ns.remove_connections(&[a1, a2]);
        assert_eq!(
            *rec.0.lock(),
            vec![
                Change::MemberLeft { channel: "presence-x".into(), user_id: "a".into() },
                Change::Vacated { channel: "presence-x".into() },
                Change::UserOffline { user_id: "a".into() },
            ]
        );
    }

    #[test]
    fn re_signing_in_tells_the_peers_only_what_changed() {
        let (ns, rec, _) = recorded();
        let (a, _r) = conn(1);
        ns.sign_in(&a, "u", &[]);
        rec.0.lock().clear();
        ns.sign_in(&a, "u", &["x".to_string()]);
        assert_eq!(*rec.0.lock(), vec![], "the same user again is no change");
        ns.sign_in(&a, "v", &[]);
        assert_eq!(
            *rec.0.lock(),
            vec![Change::UserOffline { user_id: "u".into() }, Change::UserOnline { user_id: "v".into() }]
        );
    }

    #[test]
    fn a_member_on_two_nodes_is_added_once_and_removed_once() {
        let (ns, _, facts) = recorded();
        let (local, mut rl) = conn(1);
        ns.subscribe(&local, &sub("presence-x", Some("watcher"), 100), false).unwrap();
        drain(&mut rl);
        let joined = |u: &str| Change::MemberJoined {
            channel: "presence-x".into(),
            user_id: u.into(),
            info: json!({"name": u}),
        };
        ns.apply_remote(&node("b"), &joined("u"), false);
        ns.apply_remote(&node("c"), &joined("u"), false);
        let frames = drain(&mut rl);
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert!(frames[0].contains("member_added") && frames[0].contains(r#"\"user_id\":\"u\""#));
        assert_eq!(ns.user_count("presence-x"), 2);
        let (late, mut rlate) = conn(2);
        ns.subscribe(&late, &sub("presence-x", Some("late"), 100), false).unwrap();
        let succeeded = drain(&mut rlate).remove(0);
        assert!(succeeded.contains(r#"\"count\":3"#) && succeeded.contains(r#"\"u\""#), "{succeeded}");
        drain(&mut rl);
        let left = Change::MemberLeft { channel: "presence-x".into(), user_id: "u".into() };
        ns.apply_remote(&node("b"), &left, false);
        assert!(drain(&mut rl).is_empty(), "u is still on node c");
        ns.apply_remote(&node("c"), &Change::Vacated { channel: "presence-x".into() }, false);
        let frames = drain(&mut rl);
        assert_eq!(frames.len(), 1);
        assert!(frames[0].contains("member_removed"));
        assert_eq!(
            *facts.0.lock(),
            vec![
                "occupied presence-x",
                "added presence-x watcher",
                "added presence-x u",
                "added presence-x late",
                "removed presence-x u"
            ]
        );
    }

    #[test]
    fn a_remote_channel_is_occupied_until_its_last_node_vacates() {
        let (ns, _, facts) = recorded();
        ns.apply_remote(&node("b"), &Change::Occupied { channel: "c".into() }, false);
        ns.apply_remote(&node("c"), &Change::Occupied { channel: "c".into() }, false);
        let (local, _r) = conn(1);
        let o = ns.subscribe(&local, &sub("c", None, 100), false).unwrap();
        assert!(!o.channel_occupied);
        ns.apply_remote(&node("b"), &Change::Vacated { channel: "c".into() }, false);
        let o = ns.unsubscribe(&local, "c").unwrap();
        assert!(!o.vacated, "still occupied on c");
        ns.apply_remote(&node("c"), &Change::Vacated { channel: "c".into() }, false);
        assert_eq!(*facts.0.lock(), vec!["occupied c", "vacated c"]);
        assert!(ns.known_channels().is_empty());
    }

    #[test]
    fn snapshots_replace_a_nodes_view_and_forgetting_removes_its_members() {
        let (ns, _, facts) = recorded();
        let (local, mut rl) = conn(1);
        ns.subscribe(&local, &sub("presence-x", Some("me"), 100), false).unwrap();
        let (watcher, mut rw) = conn(2);
        ns.sign_in(&watcher, "w", &["u".to_string()]);
        drain(&mut rl);
        let mut state = NodeAppState { occupied: vec!["presence-x".into(), "plain".into()], ..Default::default() };
        state.members.insert("presence-x".into(), [("u".to_string(), json!({}))].into_iter().collect());
        state.online = vec!["u".into()];
        ns.replace_remote(&node("b"), &state, true);
        assert!(drain(&mut rl)[0].contains("member_added"));
        assert!(drain(&mut rw)[0].contains("online"));
        assert_eq!(ns.known_channels().len(), 2);
        // The same snapshot again changes nothing.
        ns.replace_remote(&node("b"), &state, false);
        assert!(drain(&mut rl).is_empty() && drain(&mut rw).is_empty());
        // The node dies.
        ns.replace_remote(&node("b"), &NodeAppState::default(), false);
        assert!(drain(&mut rl)[0].contains("member_removed"));
        assert!(drain(&mut rw)[0].contains("offline"));
        assert_eq!(ns.known_channels(), vec!["presence-x".to_string()]);
        // quiet: the first snapshot fired no webhook; the death did.
        let mut fired = facts.0.lock().clone();
        fired.sort();
        assert_eq!(fired, vec!["added presence-x me", "occupied presence-x", "removed presence-x u", "vacated plain"]);
    }
}
