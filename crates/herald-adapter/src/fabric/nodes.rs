//! The peers this node knows: when each was last heard, the last change
//! number applied from it (to notice lost messages), whether its snapshot
//! has been received, and its connection counts. Also the election of the
//! node that announces cluster facts (webhooks) about a channel.
//!
//! A peer is known from its first message of any kind — delivery never
//! waits for discovery — and forgotten after `node_timeout` of silence or at
//! its goodbye.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::replica::NodeId;

/// How long a requested snapshot may take before it is asked for again.
const SYNC_RETRY: Duration = Duration::from_secs(1);

/// Goodbyes remembered, so a late message of a departed node cannot bring
/// it back (ids are unique per process start, so none ever returns).
const DEPARTED_KEPT: usize = 1024;

struct Peer {
    last_heard: Instant,
    /// Last change number applied (or announced by a heartbeat).
    seq: u64,
    /// Its snapshot has been applied since it was first heard.
    synced: bool,
    /// When a snapshot was last asked of it, if one is outstanding.
    sync_asked: Option<Instant>,
    conns: HashMap<String, usize>,
}

impl Peer {
    fn new(now: Instant) -> Self {
        Self { last_heard: now, seq: 0, synced: false, sync_asked: None, conns: HashMap::new() }
    }

    /// Whether to ask for a snapshot now (not asked recently).
    fn ask(&mut self, now: Instant) -> bool {
        match self.sync_asked {
            Some(at) if now.duration_since(at) < SYNC_RETRY => false,
            _ => {
                self.sync_asked = Some(now);
                true
            }
        }
    }
}

/// This node and its peers.
pub(super) struct Peers {
    me: NodeId,
    peers: Mutex<HashMap<NodeId, Peer>>,
    departed: Mutex<std::collections::VecDeque<NodeId>>,
}

impl Peers {
    pub fn new(me: NodeId) -> Self {
        Self { me, peers: Mutex::default(), departed: Mutex::default() }
    }

    pub fn me(&self) -> &NodeId {
        &self.me
    }

    /// A change numbered `seq` arrived from `node`. Returns whether a
    /// snapshot must be asked for (unknown node, or changes were lost).
    pub fn on_change(&self, node: &NodeId, seq: u64) -> bool {
        let now = Instant::now();
        let mut peers = self.peers.lock();
        let peer = peers.entry(node.clone()).or_insert_with(|| Peer::new(now));
        peer.last_heard = now;
        let gap = !peer.synced || seq != peer.seq + 1;
        peer.seq = peer.seq.max(seq);
        gap && peer.ask(now)
    }

    /// A heartbeat arrived. Returns whether a snapshot must be asked for.
    pub fn on_heartbeat(&self, node: &NodeId, seq: u64, conns: HashMap<String, usize>) -> bool {
        let now = Instant::now();
        let mut peers = self.peers.lock();
        let peer = peers.entry(node.clone()).or_insert_with(|| Peer::new(now));
        peer.last_heard = now;
        peer.conns = conns;
        let gap = !peer.synced || seq != peer.seq;
        gap && peer.ask(now)
    }

    /// Any other message from `node` (it is alive). Returns whether the
    /// node is new, so a snapshot must be asked for.
    pub fn on_message(&self, node: &NodeId) -> bool {
        let now = Instant::now();
        let mut peers = self.peers.lock();
        let peer = peers.entry(node.clone()).or_insert_with(|| Peer::new(now));
        peer.last_heard = now;
        !peer.synced && peer.ask(now)
    }

    /// A snapshot as of `seq` arrived and is being applied.
    pub fn on_snapshot(&self, node: &NodeId, seq: u64, conns: HashMap<String, usize>) {
        let now = Instant::now();
        let mut peers = self.peers.lock();
        let peer = peers.entry(node.clone()).or_insert_with(|| Peer::new(now));
        peer.last_heard = now;
        peer.seq = seq;
        peer.conns = conns;
        peer.synced = true;
        peer.sync_asked = None;
    }

    /// Forgets `node` for good (goodbye). Returns whether it was known.
    pub fn remove(&self, node: &NodeId) -> bool {
        let mut departed = self.departed.lock();
        if departed.len() == DEPARTED_KEPT {
            departed.pop_front();
        }
        departed.push_back(node.clone());
        drop(departed);
        self.peers.lock().remove(node).is_some()
    }

    /// Whether `node` said goodbye: its late messages are ignored.
    pub fn departed(&self, node: &str) -> bool {
        self.departed.lock().iter().any(|d| &**d == node)
    }

    /// Forgets and returns every peer silent for longer than `timeout`.
    pub fn expire(&self, timeout: Duration) -> Vec<NodeId> {
        let now = Instant::now();
        let mut peers = self.peers.lock();
        let dead: Vec<NodeId> = peers
            .iter()
            .filter(|(_, p)| now.duration_since(p.last_heard) > timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &dead {
            peers.remove(id);
        }
        dead
    }

    /// Counts every peer as just heard: after this node's own link was down
    /// it heard nobody, which says nothing about them; they get a fresh
    /// `node_timeout` to show up again.
    pub fn touch_all(&self) {
        let now = Instant::now();
        for peer in self.peers.lock().values_mut() {
            peer.last_heard = now;
        }
    }

    /// Every live peer (this node excluded).
    pub fn live(&self) -> Vec<NodeId> {
        self.peers.lock().keys().cloned().collect()
    }

    /// Live nodes, this one included.
    pub fn count(&self) -> usize {
        self.peers.lock().len() + 1
    }

    /// Connections of `app` on the peers, as of their last heartbeats.
    pub fn connections(&self, app: &str) -> usize {
        self.peers.lock().values().map(|p| p.conns.get(app).copied().unwrap_or(0)).sum()
    }

    /// Whether this node announces facts about `key`: rendezvous hashing
    /// over the live nodes, so every node elects the same one and a node's
    /// departure moves only its own keys.
    pub fn announces(&self, key: &str) -> bool {
        let mine = score(&self.me, key);
        let peers = self.peers.lock();
        peers.keys().all(|id| {
            let theirs = score(id, key);
            mine > theirs || (mine == theirs && *self.me > **id)
        })
    }
}

/// The rendezvous score of `node` for `key`: FNV-1a of each, combined
/// and run through the SplitMix64 finalizer so that every bit of both
/// affects the order (plain FNV over the concatenation ranks nodes almost
/// the same way for every key).
fn score(node: &str, key: &str) -> u64 {
    let mut z = fnv1a(node) ^ fnv1a(key).rotate_left(32);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn fnv1a(s: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn id(s: &str) -> NodeId {
        Arc::from(s)
    }

    #[test]
    fn exactly_one_node_announces_each_key() {
        let names = ["a-1", "b-2", "c-3"];
        let views: Vec<Peers> = names
            .iter()
            .map(|me| {
                let p = Peers::new(id(me));
                for other in names.iter().filter(|o| *o != me) {
                    p.on_message(&id(other));
                }
                p
            })
            .collect();
        let mut per_node = [0; 3];
        for i in 0..300 {
            let key = format!("channel-{i}");
            let winners: Vec<usize> = (0..3).filter(|n| views[*n].announces(&key)).collect();
            assert_eq!(winners.len(), 1, "{key}");
            per_node[winners[0]] += 1;
        }
        assert!(per_node.iter().all(|n| *n > 50), "{per_node:?}");
    }

    #[test]
    fn gaps_and_new_nodes_ask_for_a_snapshot_once() {
        let p = Peers::new(id("me"));
        let other = id("other");
        assert!(p.on_change(&other, 5), "unknown node");
        assert!(!p.on_change(&other, 6), "already asked");
        p.on_snapshot(&other, 6, HashMap::new());
        assert!(!p.on_change(&other, 7));
        assert!(!p.on_heartbeat(&other, 7, HashMap::new()));
        assert!(p.on_heartbeat(&other, 9, HashMap::new()), "changes 8 and 9 were lost");
    }

    #[test]
    fn a_departed_node_stays_gone() {
        let p = Peers::new(id("me"));
        p.on_message(&id("x"));
        assert!(p.remove(&id("x")));
        assert!(p.departed("x") && !p.departed("y"));
    }

    #[test]
    fn silent_peers_expire() {
        let p = Peers::new(id("me"));
        p.on_message(&id("x"));
        assert_eq!(p.count(), 2);
        assert!(p.expire(Duration::from_secs(60)).is_empty());
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(p.expire(Duration::from_millis(10)), vec![id("x")]);
        assert_eq!(p.count(), 1);
    }
}
