//! How a frame reaches this node's connections: one shared, pre-encoded
//! frame, a non-blocking send to each recipient (in the server an append to
//! its bounded queue, written after the broadcast by a flusher), one batched
//! metrics count per broadcast. The subscriber list is a snapshot taken
//! under the channel's shard lock and sent to after it is released; a full queue
//! cuts that connection off (4100) instead of slowing anyone else. (This
//! measured better than a per-recipient `buffer_unordered` stream: see
//! docs/architecture.md.) Broadcasts go in steps that consume the task's
//! cooperative budget, so a large fan-out yields its worker every few
//! hundred recipients.

use std::sync::Arc;
use std::time::Instant;

use herald_metrics::{AppMetrics, Rejection};
use herald_protocol::SocketId;

use super::Namespace;
use crate::connection::{Connection, Frame, SendOutcome};

impl Namespace {
    /// Queues `frame` to every local subscriber of `channel` except
    /// `except`, giving the runtime worker back every [`STEP`] × 128
    /// recipients at most (see [`deliver_yielding`]): a 19,000-subscriber
    /// fan-out, or a REST batch of a thousand broadcasts, no longer holds
    /// one worker while other connections' reads and pings wait.
    ///
    /// With `remember` the frame is also stored as the cache channel's last
    /// event. It is stored and the recipients chosen under the channel's
    /// lock — the lock a subscriber's replay is decided under — so a
    /// subscriber arriving meanwhile either is a recipient or replays this
    /// event: once, never twice or not at all. (In a cluster, subscribers
    /// that got this very event as a peer's replay on a deferred miss are
    /// skipped.) Nothing is locked while the frame is queued (the
    /// recipients are the channel's shared snapshot).
    pub async fn fan_out(&self, channel: &str, frame: &Frame, except: Option<SocketId>, remember: bool) -> usize {
        let started = Instant::now();
        let (snapshot, have_it) = {
            let mut channels = self.channels.lock(channel);
            let have_it = if remember { self.store_live(channel, frame) } else { Vec::new() };
            match channels.get_mut(channel) {
                Some(state) => (state.snapshot(), have_it),
                None => return 0,
            }
        };
        let delivered = deliver_yielding(&snapshot, frame, except, &have_it, &self.metrics).await;
        self.metrics.delivered(delivered as u64, frame.len());
        self.metrics.broadcast_fanout_seconds.record(started.elapsed().as_secs_f64());
        delivered
    }

    /// Queues one frame to one connection, counted in metrics.
    pub fn send_to(&self, conn: &Connection, frame: Frame) -> SendOutcome {
        send_counted(conn, frame, &self.metrics)
    }

    /// Queues one frame to several connections (watchlist events), counted once.
    pub fn send_all(&self, recipients: &[Arc<Connection>], frame: &Frame) -> usize {
        let delivered = deliver(recipients, frame, None, &self.metrics);
        self.metrics.delivered(delivered as u64, frame.len());
        delivered
    }
}

/// Queues one frame to one connection and counts it (replies to a
/// connection's own requests go this way).
pub fn send_counted(conn: &Connection, frame: Frame, metrics: &AppMetrics) -> SendOutcome {
    let len = frame.len();
    let outcome = conn.send(frame);
    match outcome {
        SendOutcome::Queued => metrics.delivered(1, len),
        SendOutcome::SlowConsumer => metrics.rejected(Rejection::SlowConsumer),
        SendOutcome::Closed => {}
    }
    outcome
}

/// Recipients served per unit of the task's cooperative budget. A delivery
/// is an enqueue (the socket writes happen after the broadcast, in the
/// gateway's flusher tasks), well under a µs each, and Tokio gives a task
/// 128 units per poll, so a task fanning out yields its worker after at
/// most 128 × 32 = 4,096 recipients — across consecutive broadcasts of one
/// REST batch too — about 1–2 ms of work.
pub(crate) const STEP: usize = 32;

/// [`deliver`] (skipping `have_it`: subscribers that got this event as a
/// replay) in steps of [`STEP`] recipients, consuming a unit of the
/// task's budget after each one (and after a smaller remainder), so the
/// runtime can run other tasks between chunks once the budget is spent.
/// Recipients are served in the snapshot's order, and the caller awaits
/// the whole fan-out, so consecutive broadcasts keep their order on every
/// connection.
pub(super) async fn deliver_yielding(
    recipients: &[Arc<Connection>],
    frame: &Frame,
    except: Option<SocketId>,
    have_it: &[SocketId],
    metrics: &AppMetrics,
) -> usize {
    let mut delivered = 0;
    let mut start = 0;
    while start < recipients.len() {
        let end = (start + STEP).min(recipients.len());
        if have_it.is_empty() {
            delivered += deliver_range(recipients, start..end, frame, except, metrics);
        } else {
            for conn in recipients[start..end].iter().filter(|c| !have_it.contains(&c.socket_id)) {
                delivered += deliver(std::slice::from_ref(conn), frame, except, metrics);
            }
        }
        start = end;
        tokio::task::consume_budget().await;
    }
    delivered
}

/// How many recipients ahead a fan-out asks for a connection's state
/// ([`crate::prefetch`]); its outlet is asked for half as far ahead, once
/// the connection itself has had time to arrive.
const PREFETCH_AHEAD: usize = 8;

/// Enqueues one shared frame per recipient; returns how many were queued.
/// A slow consumer found during a delivery is counted once, when its
/// queue overflows (the connection is closing from then on).
pub(super) fn deliver(
    recipients: &[Arc<Connection>],
    frame: &Frame,
    except: Option<SocketId>,
    metrics: &AppMetrics,
) -> usize {
    deliver_range(recipients, 0..recipients.len(), frame, except, metrics)
}

/// [`deliver`] to `recipients[range]`, prefetching from the whole slice
/// (so the next range's first recipients are already on their way).
fn deliver_range(
    recipients: &[Arc<Connection>],
    range: std::ops::Range<usize>,
    frame: &Frame,
    except: Option<SocketId>,
    metrics: &AppMetrics,
) -> usize {
    let mut delivered = 0;
    for i in range {
        if let Some(ahead) = recipients.get(i + PREFETCH_AHEAD) {
            ahead.prefetch();
        }
        if let Some(ahead) = recipients.get(i + PREFETCH_AHEAD / 2) {
            ahead.prefetch_outlet();
        }
        let conn = &recipients[i];
        if Some(conn.socket_id) == except {
            continue;
        }
        match conn.send_shared(frame) {
            SendOutcome::Queued => delivered += 1,
            SendOutcome::SlowConsumer => metrics.rejected(Rejection::SlowConsumer),
            SendOutcome::Closed => {}
        }
    }
    delivered
}
