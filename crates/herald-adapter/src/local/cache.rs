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

use lru::LruCache;

use super::Namespace;
use crate::connection::Frame;

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

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

impl Namespace {
    /// Stores the last event of a cache channel.
    pub fn set_cached(&self, channel: &str, frame: Frame) {
        let event = CachedEvent { frame, stored: Instant::now(), replayed: false };
        self.cache.lock().put(channel, event);
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
        let event = CachedEvent { frame, stored, replayed: true };
        cache.put(channel, event.clone());
        event
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
        CachedEvent { frame: Frame::Text(text.into()), stored, replayed: false }
    }

    fn text(event: &CachedEvent) -> String {
        match &event.frame {
            Frame::Text(t) => t.to_string(),
            _ => panic!("not a text frame"),
        }
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
            ns.set_cached(name, Frame::Text(name.into()));
        }
        assert!(ns.cached("a").is_none());
        assert!(ns.cached("b").is_some() && ns.cached("c").is_some());
        // A replayed event older than the TTL is stored but never served.
        ns.set_replayed("old", Frame::Text("old".into()), Duration::from_secs(61));
        assert!(ns.cached("old").is_none());
    }
}
