//! Signed-in users and watchlists. A user is online while it has a
//! signed-in connection on this node or on any peer; watchers on this node
//! hear `online` / `offline` when the cluster's view of the user changes,
//! not when one node's does.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use herald_protocol::message::{self, WatchlistEvent};
use herald_protocol::SocketId;

use super::delivery::deliver;
use super::Namespace;
use crate::connection::{Connection, Frame, SignedIn};
use crate::replica::{Change, NodeId};

#[derive(Default)]
pub(super) struct Users {
    /// user id → that user's signed-in connections on this node.
    sockets: HashMap<Arc<str>, HashMap<SocketId, Arc<Connection>>>,
    /// watched user id → connections of this node whose watchlist names them.
    watchers: HashMap<Arc<str>, HashMap<SocketId, Arc<Connection>>>,
    /// user id → peers where the user is signed in.
    remote: HashMap<Arc<str>, HashSet<NodeId>>,
}

impl Users {
    fn online(&self, user_id: &str) -> bool {
        self.sockets.contains_key(user_id) || self.remote.contains_key(user_id)
    }

    pub(super) fn local_users(&self) -> Vec<String> {
        self.sockets.keys().map(|u| u.to_string()).collect()
    }

    fn watchers_of(&self, user_id: &str, except: Option<SocketId>) -> Vec<Arc<Connection>> {
        self.watchers
            .get(user_id)
            .map(|w| w.values().filter(|c| Some(c.socket_id) != except).cloned().collect())
            .unwrap_or_default()
    }
}

/// What a sign-in changed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SignInOutcome {
    /// The user's first signed-in connection in the cluster.
    pub came_online: bool,
    /// Which users of the new connection's watchlist are online now.
    pub online_watched: Vec<String>,
}

/// What a user's departure changed.
#[derive(Debug, Clone, PartialEq)]
pub struct UserDeparture {
    pub user_id: Arc<str>,
    /// This was the user's last signed-in connection in the cluster.
    pub went_offline: bool,
}

fn watch_frame(event: WatchlistEvent, user_id: &str) -> Frame {
    crate::text_frame(message::watchlist_events(&[(event, vec![user_id.to_string()])]))
}

impl Namespace {
    /// Records a sign-in. A second sign-in on the same connection replaces
    /// the first in the same critical section: as another user, the old one
    /// goes `offline` for its watchers (if it was its last connection) before
    /// the new one comes `online`; as the same user, only the watchlist
    /// changes and watchers hear nothing.
    pub fn sign_in(&self, conn: &Arc<Connection>, user_id: &str, watchlist: &[String]) -> SignInOutcome {
        let user =
            SignedIn { user_id: user_id.into(), watchlist: watchlist.iter().map(|w| Arc::from(w.as_str())).collect() };
        let mut users = self.users.lock();
        // Lock order: `users` → the connection's state.
        match conn.set_user(user.clone()) {
            Some(previous) if previous.user_id == user.user_id => {
                Self::unwatch(&mut users, conn.socket_id, &previous.watchlist);
            }
            Some(previous) => {
                self.remove_user_locked(&mut users, conn.socket_id, previous);
            }
            None => {}
        }
        let was_online = users.online(user_id);
        let sockets = users.sockets.entry(user.user_id.clone()).or_default();
        if sockets.is_empty() {
            self.changed(Change::UserOnline { user_id: user_id.to_string() });
        }
        sockets.insert(conn.socket_id, conn.clone());
        for watched in &user.watchlist {
            users.watchers.entry(watched.clone()).or_default().insert(conn.socket_id, conn.clone());
        }
        if !was_online {
            let watchers = users.watchers_of(user_id, Some(conn.socket_id));
            self.tell(&watchers, WatchlistEvent::Online, user_id);
        }
        let online_watched = watchlist.iter().filter(|w| users.online(w)).cloned().collect();
        SignInOutcome { came_online: !was_online, online_watched }
    }

    fn tell(&self, watchers: &[Arc<Connection>], event: WatchlistEvent, user_id: &str) {
        if watchers.is_empty() {
            return;
        }
        let frame = watch_frame(event, user_id);
        let delivered = deliver(watchers, &frame, None, &self.metrics);
        self.metrics.delivered(delivered as u64, frame.len());
    }

    fn unwatch(users: &mut Users, socket_id: SocketId, watchlist: &[Arc<str>]) {
        for watched in watchlist {
            if let Some(watchers) = users.watchers.get_mut(watched) {
                watchers.remove(&socket_id);
                if watchers.is_empty() {
                    users.watchers.remove(watched);
                }
            }
        }
    }

    pub(super) fn remove_user(&self, socket_id: SocketId, user: SignedIn) -> UserDeparture {
        self.remove_user_locked(&mut self.users.lock(), socket_id, user)
    }

    fn remove_user_locked(&self, users: &mut Users, socket_id: SocketId, user: SignedIn) -> UserDeparture {
        let mut last_here = false;
        if let Some(sockets) = users.sockets.get_mut(&user.user_id) {
            sockets.remove(&socket_id);
            if sockets.is_empty() {
                users.sockets.remove(&user.user_id);
                last_here = true;
            }
        }
        Self::unwatch(users, socket_id, &user.watchlist);
        let mut went_offline = false;
        if last_here {
            self.changed(Change::UserOffline { user_id: user.user_id.to_string() });
            if !users.online(&user.user_id) {
                went_offline = true;
                let watchers = users.watchers_of(&user.user_id, None);
                self.tell(&watchers, WatchlistEvent::Offline, &user.user_id);
            }
        }
        UserDeparture { user_id: user.user_id, went_offline }
    }

    /// A peer reported a user's first (`online`) or last sign-in there.
    pub(super) fn remote_user(&self, node: &NodeId, user_id: &str, online: bool) {
        let mut users = self.users.lock();
        let was_online = users.online(user_id);
        if online {
            users.remote.entry(Arc::from(user_id)).or_default().insert(node.clone());
        } else if let Some(nodes) = users.remote.get_mut(user_id) {
            nodes.remove(node);
            if nodes.is_empty() {
                users.remote.remove(user_id);
            }
        }
        let is_online = users.online(user_id);
        if was_online != is_online {
            let event = if is_online { WatchlistEvent::Online } else { WatchlistEvent::Offline };
            let watchers = users.watchers_of(user_id, None);
            self.tell(&watchers, event, user_id);
        }
    }

    /// Brings the view of `node`'s signed-in users in line with `online`.
    pub(super) fn replace_remote_users(&self, node: &NodeId, online: &[String]) {
        let wanted: HashSet<&str> = online.iter().map(String::as_str).collect();
        let gone: Vec<String> = {
            let users = self.users.lock();
            users
                .remote
                .iter()
                .filter(|(u, nodes)| nodes.contains(node) && !wanted.contains(&***u))
                .map(|(u, _)| u.to_string())
                .collect()
        };
        for user_id in gone {
            self.remote_user(node, &user_id, false);
        }
        for user_id in wanted {
            self.remote_user(node, user_id, true);
        }
    }

    /// The connections signed in as `user_id` on this node.
    pub fn user_connections(&self, user_id: &str) -> Vec<Arc<Connection>> {
        self.users.lock().sockets.get(user_id).map(|s| s.values().cloned().collect()).unwrap_or_default()
    }

    #[cfg(test)]
    pub(super) fn users_empty(&self) -> bool {
        let users = self.users.lock();
        users.sockets.is_empty() && users.watchers.is_empty() && users.remote.is_empty()
    }
}
