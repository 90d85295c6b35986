//! An app's channels, split into shards by a hash of the channel name, each
//! behind its own mutex: a subscribe, a broadcast or a peer's change locks
//! only its channel's shard, so one hot channel, a long cleanup batch or a
//! REST listing no longer stalls every other channel of the app (one
//! app-wide mutex did).
//!
//! Lock order: at most one shard is held at a time (walks over every
//! channel take the shards one after another); inside a shard, `cache`,
//! then `users`, then a connection's state may be taken.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use super::channels::Channel;

/// Shards per app: enough that unrelated channels rarely share one on a
/// 2–64 core node; an empty shard costs a mutex and an empty map.
pub(super) const SHARDS: usize = 32;

pub(super) type ChannelMap = HashMap<Arc<str>, Channel>;

pub(super) struct Shards {
    shards: Box<[Mutex<ChannelMap>]>,
}

impl Default for Shards {
    fn default() -> Self {
        Self { shards: (0..SHARDS).map(|_| Mutex::default()).collect() }
    }
}

impl Shards {
    /// Which shard holds `channel` (FNV-1a: stable, cheap, no allocation).
    pub(super) fn index(channel: &str) -> usize {
        let mut h = Fnv(0xcbf2_9ce4_8422_2325);
        channel.hash(&mut h);
        (h.finish() % SHARDS as u64) as usize
    }

    /// Locks the shard of `channel`.
    pub(super) fn lock(&self, channel: &str) -> MutexGuard<'_, ChannelMap> {
        self.shards[Self::index(channel)].lock()
    }

    /// Locks shard `i` (see [`Shards::index`]).
    pub(super) fn lock_index(&self, i: usize) -> MutexGuard<'_, ChannelMap> {
        self.shards[i].lock()
    }

    /// Every shard, to be locked one after another (never two at once).
    pub(super) fn all(&self) -> impl Iterator<Item = &Mutex<ChannelMap>> {
        self.shards.iter()
    }
}

struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}
