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
//!
//! A flusher writes its batch in socket-descriptor order, not in the order
//! connections were marked ready (a channel's subscriber order, which is a
//! hash order). The kernel's per-socket state was allocated in the order
//! the sockets were opened — the order of their descriptors, in a node
//! that has not churned much — and walking it in that order costs the
//! kernel noticeably less per write than a random walk (measured with
//! `herald-loadgen floor --shuffle`; docs/benchmarks.md).

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

/// A connection waiting on a ready list, with its socket's descriptor:
/// the sort key, kept beside it so sorting a batch reads no `Outbound`.
pub(super) struct Ready {
    fd: i32,
    out: Arc<Outbound>,
}

/// One flusher's ready list and wake-up.
#[derive(Default)]
pub(crate) struct Flusher {
    ready: Mutex<Vec<Ready>>,
    wake: Notify,
}

impl Flusher {
    /// Puts `out` on the ready list (the caller set its ready mark); wakes
    /// the flusher if the list was empty.
    pub(super) fn schedule(&self, fd: i32, out: Arc<Outbound>) {
        let first = {
            let mut ready = self.ready.lock();
            ready.push(Ready { fd, out });
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
        let mut batch = Vec::new();
        self.take_batch(&mut batch);
        for ready in batch {
            ready.out.flush();
        }
    }

    /// Takes the ready list into `batch` (empty), in descriptor order.
    fn take_batch(&self, batch: &mut Vec<Ready>) {
        std::mem::swap(&mut *self.ready.lock(), batch);
        batch.sort_unstable_by_key(|ready| ready.fd);
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
                self.take_batch(&mut batch);
                if batch.is_empty() {
                    break;
                }
                // Each entry is dropped right after its write, while its
                // `Outbound` (whose reference count the drop touches) is
                // still in cache, not in a second pass over all of them.
                let mut entries = batch.drain(..);
                let mut done = 0;
                while let Some(ready) = entries.next() {
                    if let Some(ahead) = entries.as_slice().get(PREFETCH_AHEAD - 1) {
                        ahead.out.prefetch_flush();
                    }
                    ready.out.flush();
                    drop(ready);
                    done += 1;
                    if done % FLUSH_STEP == 0 || entries.len() == 0 {
                        tokio::task::yield_now().await;
                    }
                }
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

#[cfg(test)]
mod tests {
    use herald_adapter::{Frame, Outlet};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    #[tokio::test]
    async fn a_batch_is_written_in_descriptor_order_whatever_order_it_was_marked_ready_in() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let flusher = Arc::new(Flusher::default());
        let mut clients = Vec::new();
        let mut outs = Vec::new();
        for _ in 0..5 {
            let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
            let (server, _) = listener.accept().await.unwrap();
            clients.push(client);
            outs.push(Outbound::new(Arc::new(server), 4, flusher.clone()));
        }
        // Marked ready in an order that is not the descriptors' (as a
        // channel's hash-ordered subscribers are).
        for i in [3, 0, 4, 1, 2] {
            outs[i].push(&Frame::text("x"));
        }
        let mut batch = Vec::new();
        flusher.take_batch(&mut batch);
        let got: Vec<i32> = batch.iter().map(|r| r.fd).collect();
        let mut want: Vec<i32> = outs.iter().map(|o| o.sock_fd()).collect();
        want.sort_unstable();
        assert_eq!(got, want);
        assert!(batch.iter().all(|r| r.out.sock_fd() == r.fd));
        drop(clients);
    }
}
