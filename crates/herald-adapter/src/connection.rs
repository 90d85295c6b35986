//! The adapter's handle on one WebSocket connection: where its frames go
//! (an [`Outlet`]: in the server, a bounded queue that flusher tasks write
//! to the socket after the broadcast; in tests, a bounded in-memory queue) and a
//! one-shot close request.
//!
//! Sending never waits: a full queue means the client stopped reading, so
//! the connection is asked to close with 4100 instead of growing memory or
//! delaying anyone else.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;

use herald_protocol::{ErrorCode, SocketId};
use parking_lot::Mutex;
use tokio::sync::{mpsc, Notify};

pub use crate::frame::Frame;

/// What happened to one enqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOutcome {
    Queued,
    /// The queue was full: the connection is now closing with 4100.
    SlowConsumer,
    /// The connection is already gone or closing.
    Closed,
}

/// What an [`Outlet`] did with one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued behind what is already waiting (or written).
    Accepted,
    /// The queue is at its bound: the client is not reading.
    Full,
    /// The connection can take nothing more (closed, or its socket failed).
    Gone,
}

/// Where a connection's frames go. Called from the broadcasting task, so
/// it must never wait: queue the frame (bounded) for a later write.
pub trait Outlet: Send + Sync {
    fn push(&self, frame: &Frame) -> Pushed;

    /// A frame for this connection alone (a reply to its own request): may
    /// be written at once when nothing is waiting. By default, [`Outlet::push`].
    fn push_reply(&self, frame: &Frame) -> Pushed {
        self.push(frame)
    }

    /// Starts loading what [`Outlet::push`] reads first (see
    /// [`crate::prefetch`]); a fan-out calls it a few recipients ahead.
    fn prefetch(&self) {}
}

enum Outbox {
    /// A bounded queue drained by someone else (tests, benchmarks).
    Queue(mpsc::Sender<Frame>),
    Outlet(Arc<dyn Outlet>),
}

/// One connection as the adapter sees it.
pub struct Connection {
    pub socket_id: SocketId,
    outbox: Outbox,
    close_code: AtomicU16,
    /// Set once when the connection starts closing or leaving; checked on
    /// every enqueue, so it is a plain atomic (a `CancellationToken` takes a
    /// mutex to answer `is_cancelled`).
    closed: AtomicBool,
    closed_notify: Notify,
    state: Mutex<ConnectionState>,
}

/// What a connection has joined; touched by its own task and by cleanup only.
#[derive(Default)]
struct ConnectionState {
    channels: HashSet<Arc<str>>,
    user: Option<SignedIn>,
}

/// The user a connection signed in as, and whom it watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedIn {
    pub user_id: Arc<str>,
    pub watchlist: Vec<Arc<str>>,
}

impl Connection {
    fn with_outbox(socket_id: SocketId, outbox: Outbox) -> Arc<Self> {
        Arc::new(Self {
            socket_id,
            outbox,
            close_code: AtomicU16::new(0),
            closed: AtomicBool::new(false),
            closed_notify: Notify::new(),
            state: Mutex::new(ConnectionState::default()),
        })
    }

    /// A handle whose frames go to a bounded in-memory queue, plus its
    /// receiving end (tests and benchmarks drain it).
    pub fn new(socket_id: SocketId, queue_len: usize) -> (Arc<Self>, mpsc::Receiver<Frame>) {
        let (tx, rx) = mpsc::channel(queue_len.max(1));
        (Self::with_outbox(socket_id, Outbox::Queue(tx)), rx)
    }

    /// A handle whose frames go to `outlet` (the server's socket writer).
    pub fn with_outlet(socket_id: SocketId, outlet: Arc<dyn Outlet>) -> Arc<Self> {
        Self::with_outbox(socket_id, Outbox::Outlet(outlet))
    }

    /// Starts loading the fields a delivery reads ([`crate::prefetch`]);
    /// a fan-out calls it several recipients ahead.
    #[inline]
    pub fn prefetch(&self) {
        crate::prefetch(&self.closed);
        crate::prefetch(&self.outbox);
    }

    /// Starts loading what the outlet reads on a delivery; call it after
    /// [`Connection::prefetch`] had time to bring this connection in.
    #[inline]
    pub fn prefetch_outlet(&self) {
        if let Outbox::Outlet(outlet) = &self.outbox {
            outlet.prefetch();
        }
    }

    /// Sends a frame to this connection alone without waiting (a reply:
    /// [`Outlet::push_reply`]).
    pub fn send(&self, frame: Frame) -> SendOutcome {
        self.send_via(&frame, true)
    }

    /// Sends a shared frame without waiting (a broadcast: no clone unless
    /// it has to be queued).
    pub fn send_shared(&self, frame: &Frame) -> SendOutcome {
        self.send_via(frame, false)
    }

    fn send_via(&self, frame: &Frame, reply: bool) -> SendOutcome {
        if self.closed.load(Ordering::Acquire) {
            return SendOutcome::Closed;
        }
        let pushed = match &self.outbox {
            Outbox::Outlet(outlet) if reply => outlet.push_reply(frame),
            Outbox::Outlet(outlet) => outlet.push(frame),
            Outbox::Queue(tx) => match tx.try_send(frame.clone()) {
                Ok(()) => Pushed::Accepted,
                Err(mpsc::error::TrySendError::Full(_)) => Pushed::Full,
                Err(mpsc::error::TrySendError::Closed(_)) => Pushed::Gone,
            },
        };
        match pushed {
            Pushed::Accepted => SendOutcome::Queued,
            Pushed::Full => {
                self.close(ErrorCode::OVER_CAPACITY);
                SendOutcome::SlowConsumer
            }
            Pushed::Gone => SendOutcome::Closed,
        }
    }

    /// Asks the connection's task to close with `code` (the first request wins).
    pub fn close(&self, code: ErrorCode) {
        let _ = self.close_code.compare_exchange(0, code.as_u16(), Ordering::AcqRel, Ordering::Acquire);
        self.mark_closed();
    }

    fn mark_closed(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            self.closed_notify.notify_waiters();
        }
    }

    /// The code a close was requested with, if any.
    pub fn close_requested(&self) -> Option<ErrorCode> {
        match self.close_code.load(Ordering::Acquire) {
            0 => None,
            code => Some(ErrorCode(code)),
        }
    }

    /// Resolves when a close has been requested. Create it once and poll
    /// it repeatedly (pinned) rather than once per loop iteration.
    pub async fn closing(&self) {
        let notified = self.closed_notify.notified();
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        notified.await
    }

    pub fn is_closing(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Marks the connection as leaving without a close code (it disconnected).
    pub fn mark_leaving(&self) {
        self.mark_closed();
    }

    pub(crate) fn join(&self, channel: &Arc<str>) -> bool {
        self.state.lock().channels.insert(channel.clone())
    }

    pub(crate) fn leave(&self, channel: &str) -> bool {
        self.state.lock().channels.remove(channel)
    }

    /// How many channels this connection has joined.
    pub fn channel_count(&self) -> usize {
        self.state.lock().channels.len()
    }

    pub fn is_subscribed(&self, channel: &str) -> bool {
        self.state.lock().channels.contains(channel)
    }

    pub(crate) fn take_channels(&self) -> Vec<Arc<str>> {
        self.state.lock().channels.drain().collect()
    }

    pub(crate) fn set_user(&self, user: SignedIn) -> Option<SignedIn> {
        self.state.lock().user.replace(user)
    }

    pub(crate) fn take_user(&self) -> Option<SignedIn> {
        self.state.lock().user.take()
    }

    /// The user id this connection signed in as.
    pub fn user_id(&self) -> Option<Arc<str>> {
        self.state.lock().user.as_ref().map(|u| u.user_id.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn full_queue_closes_with_over_capacity() {
        let (conn, mut rx) = Connection::new(SocketId { major: 1, minor: 1 }, 2);
        let frame = crate::text_frame("x".into());
        assert_eq!(conn.send(frame.clone()), SendOutcome::Queued);
        assert_eq!(conn.send(frame.clone()), SendOutcome::Queued);
        assert_eq!(conn.send(frame.clone()), SendOutcome::SlowConsumer);
        assert_eq!(conn.close_requested(), Some(ErrorCode::OVER_CAPACITY));
        assert_eq!(conn.send(frame.clone()), SendOutcome::Closed);
        conn.closing().await;
        assert!(rx.recv().await.is_some());
    }

    #[test]
    fn first_close_code_wins() {
        let (conn, _rx) = Connection::new(SocketId { major: 1, minor: 1 }, 2);
        conn.close(ErrorCode::UNAUTHORIZED);
        conn.close(ErrorCode::OVER_CAPACITY);
        assert_eq!(conn.close_requested(), Some(ErrorCode::UNAUTHORIZED));
    }
}
