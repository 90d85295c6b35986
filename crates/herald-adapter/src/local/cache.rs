//! Cache channels' last events on this node. Every node stores the events
//! it delivers for a cache channel (the origin and every receiver of the
//! fabric message), so a subscriber anywhere finds the last one; a node that
//! started later asks its peers on a miss (see the cluster adapter).

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
    pub stored: Instant,
}

impl Namespace {
    /// Stores the last event of a cache channel.
    pub fn set_cached(&self, channel: &str, frame: Frame) {
        let mut cache = self.cache.lock();
        let now = Instant::now();
        if cache.len() >= SWEEP_AT {
            cache.retain(|_, e| now.duration_since(e.stored) < CACHE_TTL);
        }
        cache.insert(Arc::from(channel), CachedEvent { frame, stored: now });
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
