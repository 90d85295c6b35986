//! A connection's socket after the upgrade, shared by the three parties
//! that use it, so a delivery costs the kernel's write and nothing else:
//!
//! - broadcasters ([`Outbound::push`], Herald's [`Outlet`]): when nothing is
//!   queued the frame's pre-encoded bytes are written straight to the
//!   non-blocking socket (`try_write`) from the broadcasting task; whatever
//!   the kernel refuses is queued (bounded) and the writer task is woken;
//! - the writer task (`writer.rs`): runs only when something is queued,
//!   drains the queue with `try_write_vectored` (many frames per syscall)
//!   and sends the closing frames;
//! - the reader: tungstenite parses client frames from [`SocketIo`], which
//!   reads the socket and appends what tungstenite writes (pong and close
//!   replies) to the same queue, so their order with broadcasts is kept.
//!
//! The queue's lock is a `parking_lot::Mutex` held only around
//! non-blocking `try_write*` calls, never across an `.await`.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use herald_adapter::{Connection, Frame, Outlet, Pushed};
use herald_protocol::ErrorCode;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Most queued frames handed to one `writev`.
const MAX_IOVECS: usize = 64;

/// What is waiting to be written to one socket.
pub(super) struct Outbound {
    sock: Arc<TcpStream>,
    pending: Mutex<Pending>,
    /// Wakes the writer task when the queue stops being empty.
    wake: Notify,
    /// Most frames queued (`outbound_queue`).
    bound: usize,
}

#[derive(Default)]
struct Pending {
    /// Encoded frames (or tungstenite's replies) not yet written; the
    /// first may be partly written already (its written part is cut off).
    queue: VecDeque<Bytes>,
    /// The first entry has been partly written: it must be finished
    /// before anything else, or the client's frame stream breaks.
    front_started: bool,
    /// The closing frames are queued: nothing more is accepted.
    sealed: bool,
    /// The socket failed a write: nothing more is accepted.
    dead: bool,
}

/// What one drain attempt ended with.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Drained {
    /// Nothing left queued.
    Empty,
    /// The kernel's buffer is full: wait until the socket is writable.
    Blocked,
    /// The socket failed.
    Dead,
}

impl Outbound {
    pub(super) fn new(sock: Arc<TcpStream>, bound: usize) -> Self {
        Self { sock, pending: Mutex::new(Pending::default()), wake: Notify::new(), bound: bound.max(1) }
    }

    /// Writes `bytes` now if nothing is queued (what the kernel refuses is
    /// queued), else queues them behind what is waiting.
    fn push_bytes(&self, bytes: &Bytes) -> Pushed {
        let mut pending = self.pending.lock();
        if pending.sealed || pending.dead {
            return Pushed::Gone;
        }
        if !pending.queue.is_empty() {
            if pending.queue.len() >= self.bound {
                return Pushed::Full;
            }
            pending.queue.push_back(bytes.clone());
            return Pushed::Accepted;
        }
        let mut written = 0;
        while written < bytes.len() {
            match self.sock.try_write(&bytes[written..]) {
                Ok(0) => written = usize::MAX,
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => written = usize::MAX,
            }
        }
        if written == usize::MAX {
            pending.dead = true;
            drop(pending);
            self.wake.notify_one();
            return Pushed::Gone;
        }
        if written < bytes.len() {
            pending.front_started = written > 0;
            pending.queue.push_back(bytes.slice(written..));
            drop(pending);
            self.wake.notify_one();
        }
        Pushed::Accepted
    }

    /// Resolves when the writer has something to do (or was woken to
    /// look at a failure).
    pub(super) async fn queued(&self) {
        self.wake.notified().await
    }

    /// Resolves when the socket can take more.
    pub(super) async fn writable(&self) -> io::Result<()> {
        self.sock.writable().await
    }

    /// Writes as much of the queue as the kernel takes now, many frames per
    /// `writev`.
    pub(super) fn drain(&self) -> Drained {
        let mut pending = self.pending.lock();
        loop {
            if pending.dead {
                return Drained::Dead;
            }
            if pending.queue.is_empty() {
                return Drained::Empty;
            }
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            for (slot, bytes) in slices.iter_mut().zip(pending.queue.iter()) {
                *slot = IoSlice::new(bytes);
                count += 1;
            }
            match self.sock.try_write_vectored(&slices[..count]) {
                Ok(0) => pending.dead = true,
                Ok(mut n) => {
                    while n > 0 {
                        let Some(front) = pending.queue.front_mut() else { break };
                        if n >= front.len() {
                            n -= front.len();
                            pending.queue.pop_front();
                            pending.front_started = false;
                        } else {
                            front.advance(n);
                            pending.front_started = true;
                            n = 0;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Drained::Blocked,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => pending.dead = true,
            }
        }
    }

    /// Stops accepting frames and queues the closing ones: with a close
    /// `code`, whatever was waiting is dropped (but a partly written frame
    /// is finished) and `goodbye` follows; without one (the client left)
    /// what is queued is still sent.
    pub(super) fn seal(&self, code: Option<ErrorCode>, goodbye: &[Bytes]) {
        let mut pending = self.pending.lock();
        if code.is_some() {
            let keep = usize::from(pending.front_started);
            pending.queue.truncate(keep);
        }
        pending.queue.extend(goodbye.iter().cloned());
        pending.sealed = true;
    }

    /// Sends FIN: the client reads what was written, then end of stream.
    pub(super) fn shutdown(&self) {
        let _ = socket2::SockRef::from(&*self.sock).shutdown(std::net::Shutdown::Write);
    }
}

impl Outlet for Outbound {
    fn push(&self, frame: &Frame) -> Pushed {
        self.push_bytes(frame.wire())
    }
}

/// The socket as tungstenite sees it: reads come from the socket (first
/// any bytes hyper read past the handshake), writes join the outbound
/// queue.
pub(super) struct SocketIo {
    sock: Arc<TcpStream>,
    early: Bytes,
    out: Arc<Outbound>,
    conn: Arc<Connection>,
}

impl SocketIo {
    pub(super) fn new(sock: Arc<TcpStream>, early: Bytes, out: Arc<Outbound>, conn: Arc<Connection>) -> Self {
        Self { sock, early, out, conn }
    }
}

impl AsyncRead for SocketIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.early.is_empty() {
            let n = this.early.len().min(buf.remaining());
            buf.put_slice(&this.early[..n]);
            this.early.advance(n);
            return Poll::Ready(Ok(()));
        }
        loop {
            ready!(this.sock.poll_read_ready(cx))?;
            match this.sock.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SocketIo {
    /// tungstenite writes whole frames (its pong and close replies) from
    /// its own buffer; each joins the outbound queue in order. A client
    /// whose queue is full is closing (4100): its replies are dropped.
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.out.push_bytes(&Bytes::copy_from_slice(buf)) == Pushed::Full {
            self.conn.close(ErrorCode::OVER_CAPACITY);
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// The writer task ends the stream, after the closing frames.
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
