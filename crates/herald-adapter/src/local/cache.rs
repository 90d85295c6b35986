//! Cache channels' last events on this node. Every node stores the events
//! it delivers for a cache channel (the origin and every receiver of the
//! fabric message), so a subscriber anywhere finds the last one; a node that
//! started later asks its peers on a miss (see the cluster adapter).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_protocol::{message, SocketId};

use super::Namespace;
use crate::connection::{Connection, Frame};

/// How long a cache channel keeps its last event.
pub const CACHE_TTL: Duration = Duration::from_secs(30 * 60);

/// Most cache channels remembered before expired entries are swept.
const SWEEP_AT: usize = 10_000;

/// The last event of a cache channel.
#[derive(Clone)]
pub struct CachedEvent {
    pub frame: Frame,
    /// When the event was triggered (for a replayed one: as its peer said).
    pub stored: Instant,
    /// Taken from a peer on a miss, not delivered here live.
    pub replayed: bool,
    /// A replayed event: the subscribers it was replayed to on a deferred
    /// miss. If the same event then arrives live, they have it already.
    pub replayed_to: Vec<SocketId>,
}

impl Namespace {
    /// Stores the last event of a cache channel.
    pub fn set_cached(&self, channel: &str, frame: Frame) {
        self.store(channel, CachedEvent { frame, stored: Instant::now(), replayed: false, replayed_to: Vec::new() });
    }

    /// Stores an event delivered here live; returns the subscribers that
    /// already got this very event as a peer's replay (the event replaced
    /// is a replay with the same bytes), who must not get it twice. A later
    /// event identical byte for byte to a replay is taken for the replayed
    /// one: Pusher events carry no id, and a cache channel's subscriber
    /// missing an exact repeat of the state it just got is the lesser harm.
    pub(super) fn store_live(&self, channel: &str, frame: &Frame) -> Vec<SocketId> {
        let now = Instant::now();
        let event = CachedEvent { frame: frame.clone(), stored: now, replayed: false, replayed_to: Vec::new() };
        let mut cache = self.cache.lock();
        let had = match cache.get_mut(channel) {
            Some(e) if e.replayed && e.frame == *frame => std::mem::take(&mut e.replayed_to),
            _ => Vec::new(),
        };
        Self::insert(&mut cache, channel, event, now);
        had
    }

    /// Stores an event a peer had, `age` old, unless a newer one is here
    /// already. Returns the event now cached (the peer's or the newer one).
    pub fn set_replayed(&self, channel: &str, frame: Frame, age: Duration) -> CachedEvent {
        let now = Instant::now();
        let stored = now.checked_sub(age).unwrap_or(now);
        let mut cache = self.cache.lock();
        if let Some(existing) = cache.get(channel) {
            if existing.stored >= stored && now.duration_since(existing.stored) < CACHE_TTL {
                return existing.clone();
            }
        }
        let event = CachedEvent { frame, stored, replayed: true, replayed_to: Vec::new() };
        Self::insert(&mut cache, channel, event.clone(), now);
        event
    }

    /// Ends a deferred cache miss of `conn`, subscribed at `subscribed_at`:
    /// stores the peers' `answer` (unless a newer event is here) and sends
    /// `conn` the channel's last event — unless one was triggered live here
    /// since the subscription (then it was delivered live) — or
    /// `cache_miss`. A replay is remembered on the cached event, so the
    /// same event arriving live afterwards skips `conn`.
    /// Decided and queued under the channel's lock, the lock a live event
    /// is stored and its recipients chosen under, so a replay never follows
    /// a newer live event. Returns whether `conn` got an event.
    pub fn finish_replay(
        &self,
        conn: &Connection,
        channel: &str,
        answer: Option<(Frame, Duration)>,
        subscribed_at: Instant,
    ) -> bool {
        let _channel = self.channels.lock(channel);
        // Triggered live here after this subscription: it was delivered to
        // it, whatever the peers answered (perhaps that very event).
        if self.cached(channel).is_some_and(|e| !e.replayed && e.stored >= subscribed_at) {
            return true;
        }
        let event = match answer {
            Some((frame, age)) => Some(self.set_replayed(channel, frame, age)),
            None => self.cached(channel),
        };
        match event {
            // Triggered live after this subscription: it was delivered to it.
            Some(event) if !event.replayed && event.stored >= subscribed_at => true,
            Some(event) => {
                if event.replayed {
                    if let Some(e) = self.cache.lock().get_mut(channel) {
                        e.replayed_to.push(conn.socket_id);
                    }
                }
                self.send_to(conn, event.frame);
                true
            }
            None => {
                self.send_to(conn, crate::text_frame(message::cache_miss(channel)));
                false
            }
        }
    }

    fn store(&self, channel: &str, event: CachedEvent) {
        let now = Instant::now();
        Self::insert(&mut self.cache.lock(), channel, event, now);
    }

    fn insert(cache: &mut HashMap<Arc<str>, CachedEvent>, channel: &str, event: CachedEvent, now: Instant) {
        if cache.len() >= SWEEP_AT {
            cache.retain(|_, e| now.duration_since(e.stored) < CACHE_TTL);
        }
        cache.insert(Arc::from(channel), event);
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
}
