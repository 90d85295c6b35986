//! Flusher tasks: where a broadcast's socket writes happen, after it.
//!
//! A broadcast only appends its frame to each recipient's bounded queue
//! (`socket.rs`); a connection whose queue was idle is put once on the
//! ready list of its flusher (chosen by socket id). A small fixed set of
//! flushers — one per runtime worker — drains those lists: per connection
//! one `writev` of everything queued, so back-to-back broadcasts leave in
//! one write and the REST call returns without waiting for the kernel.
//! What the kernel refuses stays queued for the connection's session loop.
//!
//! A ready list holds each connection at most once (its `ready` mark is
//! cleared only when its flusher takes it), so it is bounded by the number
//! of connections. A flusher is woken only when its list stops being empty.

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use herald_protocol::SocketId;

use super::socket::Outbound;

/// Connections flushed between two yields of the flusher's worker (each is
/// one `writev`, a few µs: ≈ 1 ms of work).
const FLUSH_STEP: usize = 128;

/// How many connections ahead of its write the flusher asks for the next
/// one's state ([`herald_adapter::prefetch`]): each write is a syscall of a
/// few µs, plenty of time for a cache miss to resolve.
const PREFETCH_AHEAD: usize = 2;

/// One flusher's ready list and wake-up.
#[derive(Default)]
pub(crate) struct Flusher {
    ready: Mutex<Vec<Arc<Outbound>>>,
    wake: Notify,
}

impl Flusher {
    /// Puts `out` on the ready list (the caller set its ready mark); wakes
    /// the flusher if the list was empty.
    pub(super) fn schedule(&self, out: Arc<Outbound>) {
        let first = {
            let mut ready = self.ready.lock();
            ready.push(out);
            ready.len() == 1
        };
        if first {
            self.wake.notify_one();
        }
    }

    /// How many connections are waiting to be flushed.
    #[cfg(test)]
    pub(super) fn waiting(&self) -> usize {
        self.ready.lock().len()
    }

    /// Flushes every connection on the list now (tests).
    #[cfg(test)]
    pub(super) fn flush_now(&self) {
        let batch = std::mem::take(&mut *self.ready.lock());
        for out in batch {
            out.flush();
        }
    }

    async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
            }
            loop {
                std::mem::swap(&mut *self.ready.lock(), &mut batch);
                if batch.is_empty() {
                    break;
                }
                for (i, out) in batch.iter().enumerate() {
                    if let Some(ahead) = batch.get(i + PREFETCH_AHEAD) {
                        ahead.prefetch_flush();
                    }
                    out.flush();
                    if (i + 1) % FLUSH_STEP == 0 || i + 1 == batch.len() {
                        tokio::task::yield_now().await;
                    }
                }
                batch.clear();
            }
        }
    }
}

/// The node's flushers, owned by the state and stopped at shutdown after
/// the connections.
pub struct Flushers {
    shards: Box<[Arc<Flusher>]>,
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl Flushers {
    /// Starts one flusher per available core (the runtime's worker count).
    /// Needs a Tokio runtime.
    pub fn start() -> Self {
        let count = std::thread::available_parallelism().map_or(1, |n| n.get());
        let tasks = TaskTracker::new();
        let stop = CancellationToken::new();
        let shards: Box<[Arc<Flusher>]> = (0..count).map(|_| Arc::new(Flusher::default())).collect();
        for flusher in shards.iter() {
            tasks.spawn(flusher.clone().run(stop.clone()));
        }
        tasks.close();
        Self { shards, tasks, stop }
    }

    /// The flusher that serves `socket_id`.
    pub(super) fn for_socket(&self, socket_id: SocketId) -> Arc<Flusher> {
        let hash = socket_id.major ^ socket_id.minor.rotate_left(17);
        self.shards[(hash % self.shards.len() as u64) as usize].clone()
    }

    /// Stops the flushers and waits for them.
    pub async fn stop(&self) {
        self.stop.cancel();
        self.tasks.wait().await;
    }
}
