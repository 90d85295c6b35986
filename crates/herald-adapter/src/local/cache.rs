//! Cache channels' last events on this node. Every node stores the events
//! it delivers for a cache channel (the origin and every receiver of the
//! fabric message), so a subscriber anywhere finds the last one; a node that
//! started later asks its peers on a miss (see the cluster adapter).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_protocol::message;

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
}

impl Namespace {
    /// Stores the last event of a cache channel.
    pub fn set_cached(&self, channel: &str, frame: Frame) {
        self.store(channel, CachedEvent { frame, stored: Instant::now(), replayed: false });
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
        let event = CachedEvent { frame, stored, replayed: true };
        Self::insert(&mut cache, channel, event.clone(), now);
        event
    }

    /// Ends a deferred cache miss of `conn`, subscribed at `subscribed_at`:
    /// stores the peers' `answer` (unless a newer event is here) and sends
    /// `conn` the channel's last event — unless it was triggered live since
    /// the subscription (then it was delivered live) — or `cache_miss`.
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
        let event = match answer {
            Some((frame, age)) => Some(self.set_replayed(channel, frame, age)),
            None => self.cached(channel),
        };
        match event {
            // Triggered live after this subscription: it was delivered to it.
            Some(event) if !event.replayed && event.stored >= subscribed_at => true,
            Some(event) => {
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
