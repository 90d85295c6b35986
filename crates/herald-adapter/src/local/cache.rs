//! Cache channels' last events on this node. Every node stores the events
//! it delivers for a cache channel (the origin and every receiver of the
//! fabric message), so a subscriber anywhere finds the last one; a node that
//! started later asks its peers on a miss (see the cluster adapter).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Namespace;
use crate::connection::Frame;

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
