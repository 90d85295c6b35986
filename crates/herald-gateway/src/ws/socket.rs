//! A connection's socket after the upgrade, shared by the parties that
//! use it, so a delivery costs an enqueue and the kernel's write is shared
//! by every frame queued meanwhile ("corking"):
//!
//! - broadcasters ([`Outbound::push`], Herald's [`Outlet`]): append the
//!   frame's pre-encoded bytes to the bounded queue and, if the connection
//!   was idle and not yet marked ready, put it on its flusher's ready list
//!   (`flush.rs`); nothing is written from the broadcasting task;
//! - replies to the connection's own requests (`Outlet::push_reply`, and
//!   tungstenite's pongs): written at once if the connection is idle —
//!   nothing queued, not marked ready — else appended like a broadcast;
//! - the flusher ([`Outbound::flush`]): writes everything queued with
//!   `writev` (many frames per syscall); what the kernel refuses stays
//!   queued and the session is woken;
//! - the session's loop (`session.rs`): drains only when the kernel
//!   refused something (waiting for writability); `writer.rs` sends the
//!   closing frames;
//! - the reader: tungstenite parses client frames from [`SocketIo`], which
//!   reads the socket and appends what tungstenite writes (pong and close
//!   replies) to the same queue, so their order with broadcasts is kept.
//!
//! A write is either of the queue's front or, for a reply, to an idle
//! connection, so the order on the wire is the order frames were sent. Its lock is a `parking_lot::Mutex` held only around
//! non-blocking `try_write*` calls, never across an `.await`.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd};
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use herald_adapter::{Connection, Frame, Outlet, Pushed};
use herald_protocol::ErrorCode;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::flush::Flusher;

/// Most queued frames handed to one `writev`.
const MAX_IOVECS: usize = 64;

/// What is waiting to be written to one socket.
pub(super) struct Outbound {
    /// The socket's descriptor, kept inline so the flusher's `sendmsg` does
    /// not read it through `sock` (another cache miss per delivery). Never
    /// dropped (it would close the descriptor): `sock` owns it and is held
    /// as long as this is.
    raw: ManuallyDrop<socket2::Socket>,
    sock: Arc<TcpStream>,
    pending: Mutex<Pending>,
    /// Wakes the session when the kernel refused part of the queue (or the
    /// socket failed).
    wake: Notify,
    /// Most frames queued (`outbound_queue`).
    bound: usize,
    /// The flusher whose ready list this connection goes on.
    flusher: Arc<Flusher>,
    /// This very `Outbound`, to put on the ready list.
    me: Weak<Outbound>,
}

#[derive(Default)]
struct Pending {
    /// Encoded frames (or tungstenite's replies) not yet written; the
    /// first may be partly written already (its written part is cut off).
    queue: FrameQueue,
    /// The first entry has been partly written: it must be finished
    /// before anything else, or the client's frame stream breaks.
    front_started: bool,
    /// The closing frames are queued: nothing more is accepted.
    sealed: bool,
    /// The socket failed a write: nothing more is accepted.
    dead: bool,
    /// On the flusher's ready list (cleared when the flusher takes it).
    ready: bool,
}

/// A FIFO of encoded frames whose first entry lives inline, so the common
/// case — one broadcast queued on an idle connection, then flushed — never
/// touches a second heap block (one cache miss fewer per delivery on each
/// side, and most connections never allocate the overflow at all).
#[derive(Default)]
struct FrameQueue {
    /// The front; `None` only when the queue is empty.
    first: Option<Bytes>,
    /// Everything behind the front.
    rest: VecDeque<Bytes>,
}

impl FrameQueue {
    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    fn push_back(&mut self, bytes: Bytes) {
        if self.first.is_none() {
            self.first = Some(bytes);
        } else {
            self.rest.push_back(bytes);
        }
    }

    fn front_mut(&mut self) -> Option<&mut Bytes> {
        self.first.as_mut()
    }

    fn pop_front(&mut self) {
        self.first = self.rest.pop_front();
    }

    fn iter(&self) -> impl Iterator<Item = &Bytes> {
        self.first.iter().chain(self.rest.iter())
    }

    /// Keeps the first `keep` entries.
    fn truncate(&mut self, keep: usize) {
        if keep == 0 {
            self.first = None;
            self.rest.clear();
        } else {
            self.rest.truncate(keep - 1);
        }
    }

    fn extend(&mut self, frames: impl IntoIterator<Item = Bytes>) {
        for bytes in frames {
            self.push_back(bytes);
        }
    }
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
    pub(super) fn new(sock: Arc<TcpStream>, bound: usize, flusher: Arc<Flusher>) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            // SAFETY: the descriptor is `sock`'s, open while `sock` is held
            // (by this very struct); `ManuallyDrop` never closes it.
            raw: ManuallyDrop::new(unsafe { socket2::Socket::from_raw_fd(sock.as_raw_fd()) }),
            sock,
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
            bound: bound.max(1),
            flusher,
            me: me.clone(),
        })
    }

    /// The socket's descriptor (tests).
    #[cfg(test)]
    pub(super) fn sock_fd(&self) -> i32 {
        self.sock.as_raw_fd()
    }

    /// The socket, for plain non-blocking calls.
    fn raw(&self) -> &socket2::Socket {
        &self.raw
    }

    /// Asks the CPU to start loading what [`Outbound::flush`] touches first
    /// (the lock and the queue's front), so a flusher walking its ready
    /// list overlaps these cache misses with the previous connection's write.
    pub(super) fn prefetch_flush(&self) {
        herald_adapter::prefetch(&self.pending);
        herald_adapter::prefetch(&self.raw);
    }

    /// Queues `bytes` behind what is waiting; an idle connection not yet
    /// marked ready goes on its flusher's ready list. With `direct` (a reply
    /// to the connection's own request) an idle connection — nothing
    /// queued, not marked ready — is written to at once instead, so replies
    /// do not wait behind a large broadcast's flush; order still holds, as
    /// nothing is waiting.
    fn push_bytes(&self, bytes: &Bytes, direct: bool) -> Pushed {
        let mut pending = self.pending.lock();
        if pending.sealed || pending.dead {
            return Pushed::Gone;
        }
        if pending.queue.len() >= self.bound {
            return Pushed::Full;
        }
        let idle = pending.queue.is_empty() && !pending.ready;
        if idle && direct {
            return self.write_now(pending, bytes);
        }
        // A non-empty queue that is not marked ready is the session's to drain (the
        // kernel refused part of it): it drains what is added too.
        pending.queue.push_back(bytes.clone());
        if idle {
            pending.ready = true;
        }
        drop(pending);
        if idle {
            if let Some(me) = self.me.upgrade() {
                self.flusher.schedule(self.raw.as_raw_fd(), me);
            }
        }
        Pushed::Accepted
    }

    /// Sends the handshake's 101 (with the first frame, if it goes along)
    /// as a reply: the socket is new and idle, so it is written at once.
    /// Nothing when `bytes` is empty (hyper wrote the 101 already).
    pub(super) fn push_preface(&self, bytes: BytesMut) -> Pushed {
        if bytes.is_empty() {
            return Pushed::Accepted;
        }
        self.push_bytes(&bytes.freeze(), true)
    }

    /// Writes `bytes` to the idle socket now; what the kernel refuses is
    /// queued for the session to drain.
    fn write_now(&self, mut pending: parking_lot::MutexGuard<'_, Pending>, bytes: &Bytes) -> Pushed {
        // A plain `send` on the non-blocking socket, not tokio's `try_write`:
        // that first reads the socket's readiness state, one more cache
        // miss. Nothing waits on write readiness here; the session's own
        // `try_write_vectored` keeps tokio's readiness right for it.
        let sock = self.raw();
        let mut written = 0;
        while written < bytes.len() {
            match sock.send(&bytes[written..]) {
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

    /// The flusher's turn: clears the ready mark and writes what the kernel
    /// takes now; if it refuses some (or the socket failed), the session
    /// is woken to carry on.
    pub(super) fn flush(&self) {
        let mut pending = self.pending.lock();
        pending.ready = false;
        match self.drain_locked(&mut pending, true) {
            Drained::Empty => {}
            Drained::Blocked | Drained::Dead => {
                drop(pending);
                self.wake.notify_one();
            }
        }
    }

    /// Resolves when the session has something to drain (or was woken to
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
        self.drain_locked(&mut self.pending.lock(), false)
    }

    /// With `raw` (the flusher) a plain `sendmsg`, skipping tokio's
    /// readiness lookup (a cache miss per socket); the session uses
    /// tokio's `try_write_vectored`, which keeps the readiness it waits on
    /// right (a stale "writable" after a raw WouldBlock costs it one retry).
    fn drain_locked(&self, pending: &mut Pending, raw: bool) -> Drained {
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
            let written = if raw && count == 1 {
                // One frame (a lone broadcast, the common case): a plain
                // `send`, which skips `sendmsg`'s header and iovec import.
                self.raw().send(&slices[0])
            } else if raw {
                self.raw().send_vectored(&slices[..count])
            } else {
                self.sock.try_write_vectored(&slices[..count])
            };
            match written {
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
        let _ = self.raw().shutdown(std::net::Shutdown::Write);
    }
}

impl Outlet for Outbound {
    fn push(&self, frame: &Frame) -> Pushed {
        self.push_bytes(frame.wire(), false)
    }

    fn push_reply(&self, frame: &Frame) -> Pushed {
        self.push_bytes(frame.wire(), true)
    }

    fn prefetch(&self) {
        herald_adapter::prefetch(&self.pending);
        herald_adapter::prefetch(&self.me);
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
    /// `early` is copied out: it is a slice of hyper's read buffer (8 KiB
    /// or more), which would otherwise stay allocated for the connection's
    /// life, even when empty.
    pub(super) fn new(sock: Arc<TcpStream>, early: Bytes, out: Arc<Outbound>, conn: Arc<Connection>) -> Self {
        let early = if early.is_empty() { Bytes::new() } else { Bytes::copy_from_slice(&early) };
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
        if self.out.push_bytes(&Bytes::copy_from_slice(buf), true) == Pushed::Full {
            self.conn.close(ErrorCode::OVER_CAPACITY);
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// The session ends the stream, after the closing frames.
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use herald_protocol::SocketId;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpSocket};

    use super::*;

    /// A connected pair: the server's side (as an `Outbound` with `bound`)
    /// and a client whose receive buffer is `client_buf` bytes.
    async fn pair(bound: usize, client_buf: u32) -> (Arc<Outbound>, TcpStream, Arc<Flusher>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpSocket::new_v4().unwrap();
        client.set_recv_buffer_size(client_buf).unwrap();
        let (client, accepted) = tokio::join!(client.connect(listener.local_addr().unwrap()), listener.accept());
        let (server, _) = accepted.unwrap();
        server.set_nodelay(true).unwrap();
        let sock = socket2::SockRef::from(&server);
        sock.set_send_buffer_size(4096).unwrap();
        let flusher = Arc::new(Flusher::default());
        (Outbound::new(Arc::new(server), bound, flusher.clone()), client.unwrap(), flusher)
    }

    /// Pushes `frame` and flushes until the kernel refuses part of it;
    /// returns how many were pushed.
    fn fill(out: &Outbound, flusher: &Flusher, frame: &Frame) -> usize {
        let mut pushed = 0;
        while out.pending.lock().queue.is_empty() {
            assert_eq!(out.push(frame), Pushed::Accepted);
            flusher.flush_now();
            pushed += 1;
            assert!(pushed < 1_000, "the kernel never refused a write");
        }
        pushed
    }

    async fn read_exactly(client: &mut TcpStream, len: usize) -> Vec<u8> {
        let mut got = vec![0; len];
        tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut got))
            .await
            .expect("the bytes arrive")
            .unwrap();
        got
    }

    #[test]
    fn the_frame_queue_is_first_in_first_out_across_its_inline_slot() {
        let mut q = FrameQueue::default();
        assert!(q.is_empty());
        for word in ["a", "b", "c"] {
            q.push_back(Bytes::from_static(word.as_bytes()));
        }
        assert_eq!(q.len(), 3);
        assert_eq!(q.iter().map(|b| &b[..]).collect::<Vec<_>>(), [b"a", b"b", b"c"]);
        q.pop_front();
        assert_eq!(q.front_mut().map(|b| b.clone()), Some(Bytes::from_static(b"b")));
        q.push_back(Bytes::from_static(b"d"));
        assert_eq!(q.iter().map(|b| &b[..]).collect::<Vec<_>>(), [b"b", b"c", b"d"]);
        q.truncate(1);
        assert_eq!(q.iter().map(|b| &b[..]).collect::<Vec<_>>(), [b"b"]);
        q.extend([Bytes::from_static(b"e")]);
        assert_eq!(q.len(), 2);
        q.truncate(0);
        assert!(q.is_empty());
        assert_eq!(q.len(), 0);
        q.pop_front();
        assert!(q.is_empty());
        q.push_back(Bytes::from_static(b"f"));
        assert_eq!(q.iter().map(|b| &b[..]).collect::<Vec<_>>(), [b"f"]);
    }

    #[tokio::test]
    async fn broadcasts_are_queued_marked_ready_once_and_written_together_by_the_flusher() {
        let (out, mut client, flusher) = pair(8, 1 << 20).await;
        let frames: Vec<Frame> = ["one", "two", "three"].iter().map(|t| Frame::text(t)).collect();
        for frame in &frames {
            assert_eq!(out.push(frame), Pushed::Accepted);
        }
        // Nothing written by the senders: all three wait, the connection is
        // on the ready list once.
        assert_eq!(out.pending.lock().queue.len(), 3);
        assert_eq!(flusher.waiting(), 1);
        assert!(out.pending.lock().ready);
        // One flush writes them all, in order.
        flusher.flush_now();
        assert!(out.pending.lock().queue.is_empty());
        assert!(!out.pending.lock().ready);
        assert_eq!(read_exactly(&mut client, 17).await, b"\x81\x03one\x81\x03two\x81\x05three");
        // Idle again: the next frame puts it back on the list.
        out.push(&frames[0]);
        assert_eq!(flusher.waiting(), 1);
    }

    #[tokio::test]
    async fn a_reply_to_an_idle_connection_is_written_at_once_but_never_overtakes_queued_frames() {
        let (out, mut client, flusher) = pair(8, 1 << 20).await;
        // Idle: the reply is written by the sender, no flusher involved.
        assert_eq!(out.push_reply(&Frame::text("r1")), Pushed::Accepted);
        assert!(out.pending.lock().queue.is_empty());
        assert_eq!(flusher.waiting(), 0);
        assert_eq!(read_exactly(&mut client, 4).await, b"\x81\x02r1");
        // A broadcast is waiting for the flusher: the reply queues behind it.
        out.push(&Frame::text("b1"));
        assert_eq!(out.push_reply(&Frame::text("r2")), Pushed::Accepted);
        assert_eq!(out.pending.lock().queue.len(), 2);
        flusher.flush_now();
        assert_eq!(read_exactly(&mut client, 8).await, b"\x81\x02b1\x81\x02r2");
    }

    #[tokio::test]
    async fn what_the_kernel_refuses_is_queued_in_order_drained_with_writev_and_bounded() {
        let (out, mut client, flusher) = pair(8, 4096).await;
        let big = Frame::text(&"x".repeat(60_000));
        let pushed = fill(&out, &flusher, &big);
        // Queued behind the rest (the writer's now, not the flusher's):
        // accepted up to the bound, then full.
        let small: Vec<Frame> = (0..7).map(|i| Frame::text(&format!("n{i}"))).collect();
        for frame in &small {
            assert_eq!(out.push(frame), Pushed::Accepted);
        }
        assert_eq!(flusher.waiting(), 0);
        assert_eq!(out.pending.lock().queue.len(), 8);
        assert_eq!(out.push(&small[0]), Pushed::Full);

        // The client reads while the writer's part drains the queue.
        let drainer = {
            let out = out.clone();
            tokio::spawn(async move {
                while out.drain() == Drained::Blocked {
                    out.writable().await.unwrap();
                }
            })
        };
        let mut expected = big.wire().repeat(pushed);
        for frame in &small {
            expected.extend_from_slice(frame.wire());
        }
        let got = read_exactly(&mut client, expected.len()).await;
        assert!(got == expected, "the byte stream differs from the frames in order");
        drainer.await.unwrap();
        assert!(out.pending.lock().queue.is_empty());
    }

    #[tokio::test]
    async fn a_seal_with_a_code_finishes_the_partial_frame_then_says_goodbye() {
        let (out, mut client, flusher) = pair(8, 4096).await;
        let big = Frame::text(&"y".repeat(60_000));
        let pushed = fill(&out, &flusher, &big);
        out.push(&Frame::text("dropped"));
        let partial = out.pending.lock().front_started;
        let goodbye = close_frame_for_test();
        out.seal(Some(ErrorCode::OVER_CAPACITY), std::slice::from_ref(&goodbye));
        assert_eq!(out.push(&big), Pushed::Gone);
        let drainer = {
            let out = out.clone();
            tokio::spawn(async move {
                while out.drain() == Drained::Blocked {
                    out.writable().await.unwrap();
                }
                out.shutdown();
            })
        };
        let frames = if partial { pushed } else { pushed - 1 };
        let mut expected = big.wire().repeat(frames);
        expected.extend_from_slice(&goodbye);
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut got)).await.unwrap().unwrap();
        assert!(got == expected, "{} bytes, expected {}", got.len(), expected.len());
        drainer.await.unwrap();
    }

    fn close_frame_for_test() -> Bytes {
        herald_adapter::close_frame(4100, "slow")
    }

    #[tokio::test]
    async fn tungstenite_replies_join_the_queue_and_a_full_queue_closes_with_4100() {
        let (out, mut client, flusher) = pair(1, 4096).await;
        let listener_side = out.sock.clone();
        let (conn, _rx) = Connection::new(SocketId { major: 1, minor: 1 }, 1);
        let mut io = SocketIo::new(listener_side, Bytes::new(), out.clone(), conn.clone());
        use tokio::io::AsyncWriteExt;
        io.write_all(b"\x8a\x00").await.unwrap();
        flusher.flush_now();
        assert_eq!(read_exactly(&mut client, 2).await, b"\x8a\x00");
        let big = Frame::text(&"z".repeat(60_000));
        fill(&out, &flusher, &big);
        io.write_all(b"\x8a\x00").await.unwrap();
        assert_eq!(conn.close_requested(), Some(ErrorCode::OVER_CAPACITY));
    }
}
