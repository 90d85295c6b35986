//! Cache channels' last events on this node. Every node stores the events
//! it delivers for a cache channel (the origin and every receiver of the
//! fabric message), so a subscriber anywhere finds the last one; a node that
//! started later asks its peers on a miss (see the cluster adapter).
//!
//! The store is bounded: it holds at most [`CacheSettings::max_channels`]
//! channels per app and, when full, forgets the channel whose last event was
//! written longest ago (an LRU ordered by writes; reads do not refresh it),
//! in O(1). An entry older than [`CacheSettings::ttl`] is never returned.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_protocol::{message, SocketId};
use lru::LruCache;

use super::Namespace;
use crate::connection::{Connection, Frame};

/// How long a cache channel keeps its last event unless configured.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(30 * 60);

/// Most cache channels per app remembered unless configured.
pub const DEFAULT_CACHE_CHANNELS: usize = 10_000;

/// Bounds of one app's cache-channel store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    /// Most channels whose last event is kept (at least 1).
    pub max_channels: usize,
    /// How long a last event stays valid.
    pub ttl: Duration,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self { max_channels: DEFAULT_CACHE_CHANNELS, ttl: DEFAULT_CACHE_TTL }
    }
}

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

/// One app's cache channels, bounded by count and age.
pub(super) struct Cache {
    entries: LruCache<Arc<str>, CachedEvent>,
    ttl: Duration,
}

impl Cache {
    pub(super) fn new(settings: CacheSettings) -> Self {
        let cap = NonZeroUsize::new(settings.max_channels).unwrap_or(NonZeroUsize::MIN);
        Self { entries: LruCache::new(cap), ttl: settings.ttl }
    }

    fn fresh(&self, event: &CachedEvent, now: Instant) -> bool {
        now.saturating_duration_since(event.stored) < self.ttl
    }

    /// Stores `event`, making it the most recently written; a full store
    /// forgets its least recently written channel first.
    fn put(&mut self, channel: &str, event: CachedEvent) {
        self.entries.put(Arc::from(channel), event);
    }

    /// The unexpired event of `channel`; an expired one is dropped.
    fn get(&mut self, channel: &str, now: Instant) -> Option<CachedEvent> {
        let fresh = self.fresh(self.entries.peek(channel)?, now);
        if fresh {
            self.entries.peek(channel).cloned()
        } else {
            self.entries.pop(channel);
            None
        }
    }

    /// The unexpired event of `channel`, to update in place (not a write:
    /// its place in the eviction order stays).
    fn get_mut(&mut self, channel: &str, now: Instant) -> Option<&mut CachedEvent> {
        let fresh = self.fresh(self.entries.peek(channel)?, now);
        if fresh {
            self.entries.peek_mut(channel)
        } else {
            self.entries.pop(channel);
            None
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

impl Namespace {
    /// Stores the last event of a cache channel.
    pub fn set_cached(&self, channel: &str, frame: Frame) {
        let event = CachedEvent { frame, stored: Instant::now(), replayed: false, replayed_to: Vec::new() };
        self.cache.lock().put(channel, event);
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
        let had = match cache.get_mut(channel, now) {
            Some(e) if e.replayed && e.frame == *frame => std::mem::take(&mut e.replayed_to),
            _ => Vec::new(),
        };
        cache.put(channel, event);
        had
    }

    /// Stores an event a peer had, `age` old, unless a newer one is here
    /// already. Returns the event now cached (the peer's or the newer one).
    pub fn set_replayed(&self, channel: &str, frame: Frame, age: Duration) -> CachedEvent {
        let now = Instant::now();
        let stored = now.checked_sub(age).unwrap_or(now);
        let mut cache = self.cache.lock();
        if let Some(existing) = cache.get(channel, now) {
            if existing.stored >= stored {
                return existing;
            }
        }
        let event = CachedEvent { frame, stored, replayed: true, replayed_to: Vec::new() };
        cache.put(channel, event.clone());
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
                    if let Some(e) = self.cache.lock().get_mut(channel, Instant::now()) {
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

    /// The last event of a cache channel, if it has not expired.
    pub fn cached(&self, channel: &str) -> Option<CachedEvent> {
        self.cache.lock().get(channel, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(text: &str, stored: Instant) -> CachedEvent {
        CachedEvent { frame: Frame::text(text), stored, replayed: false, replayed_to: Vec::new() }
    }

    fn text(event: &CachedEvent) -> String {
        event.frame.as_str().to_string()
    }

    #[test]
    fn full_store_forgets_the_least_recently_written() {
        let mut cache = Cache::new(CacheSettings { max_channels: 3, ttl: Duration::from_secs(60) });
        let now = Instant::now();
        for name in ["a", "b", "c"] {
            cache.put(name, event(name, now));
        }
        // Reading `a` does not make it recent: only writes count.
        assert!(cache.get("a", now).is_some());
        // Rewriting `b` makes `a` the least recently written.
        cache.put("b", event("b2", now));
        cache.put("d", event("d", now));
        assert_eq!(cache.len(), 3);
        assert!(cache.get("a", now).is_none(), "the least recently written goes first");
        assert_eq!(text(&cache.get("b", now).unwrap()), "b2");
        assert!(cache.get("c", now).is_some());
        assert!(cache.get("d", now).is_some());
        for i in 0..100 {
            cache.put(&format!("x{i}"), event("x", now));
            assert!(cache.len() <= 3, "bound exceeded after {i} more writes");
        }
        assert!(cache.get("x99", now).is_some() && cache.get("x97", now).is_some());
        assert!(cache.get("x96", now).is_none());
    }

    #[test]
    fn expired_entries_are_not_returned() {
        let ttl = Duration::from_secs(60);
        let mut cache = Cache::new(CacheSettings { max_channels: 10, ttl });
        let now = Instant::now();
        cache.put("old", event("old", now));
        assert!(cache.get("old", now + ttl - Duration::from_millis(1)).is_some());
        assert!(cache.get("old", now + ttl).is_none());
        assert_eq!(cache.len(), 0, "an expired entry is dropped on read");
    }

    #[test]
    fn namespace_uses_its_settings() {
        use herald_metrics::Metrics;
        let ns = Namespace::new(
            "app",
            Metrics::new("test").app("app"),
            Arc::new(crate::NoLifecycle),
            Arc::new(crate::SingleNode),
        )
        .with_cache(CacheSettings { max_channels: 2, ttl: Duration::from_secs(60) });
        for name in ["a", "b", "c"] {
            ns.set_cached(name, Frame::text(name));
        }
        assert!(ns.cached("a").is_none());
        assert!(ns.cached("b").is_some() && ns.cached("c").is_some());
        // A replayed event older than the TTL is stored but never served.
        ns.set_replayed("old", Frame::text("old"), Duration::from_secs(61));
        assert!(ns.cached("old").is_none());
    }
}
