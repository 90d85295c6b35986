//! The public port's accept loop. `warp::serve` (warp 0.4) gives hyper no
//! timer, so hyper cannot bound how long a client takes to send a request
//! head (slowloris, idle keep-alive), and it has no hook at accept time for
//! a per-IP cap. So we accept ourselves and hand each connection to hyper's
//! HTTP/1 server with a header-read timeout, serving the same warp filter
//! through `warp::service`. Each accepted socket carries its per-IP slot
//! ([`IpSlot`]) inside its IO, so a WebSocket keeps the slot after hyper
//! hands the socket over on upgrade, until the socket is dropped.
//!
//! Before hyper sees a connection, its first bytes are read here and
//! offered to a [`Takeover`] (the WebSocket endpoint's fast handshake): a
//! well-formed upgrade is served without hyper, warp or a second write;
//! anything else goes to hyper with the bytes already read put back in
//! front of the socket ([`Slotted`]'s prefix), so hyper sees the very
//! same byte stream.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use herald_metrics::NodeMetrics;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use warp::http::{HeaderMap, Request, Response, StatusCode};
use warp::{Filter, Reply};

/// The TCP peer of the connection a request came on (a request extension).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Open connections per client IP, when capped.
pub struct IpLimits {
    max: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// Why a connection was not given a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many connections from this address")]
pub struct AtCap;

/// One held slot of an IP's cap; released on drop.
pub struct IpSlot {
    limits: Arc<IpLimits>,
    ip: IpAddr,
}

impl IpLimits {
    /// `max` connections per IP; 0 turns the cap off.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self { max, counts: Mutex::new(HashMap::new()) })
    }

    pub fn enabled(&self) -> bool {
        self.max > 0
    }

    /// Takes a slot for `ip`: `Ok(None)` when the cap is off.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Option<IpSlot>, AtCap> {
        if !self.enabled() {
            return Ok(None);
        }
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if *count >= self.max {
            return Err(AtCap);
        }
        *count += 1;
        Ok(Some(IpSlot { limits: self.clone(), ip }))
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.limits.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// The client address a proxy put last in `X-Forwarded-For`.
pub fn forwarded_for(headers: &HeaderMap) -> Option<IpAddr> {
    let last = headers.get_all("x-forwarded-for").iter().next_back()?;
    last.to_str().ok()?.rsplit(',').next()?.trim().parse().ok()
}

/// An accepted socket, the per-IP slot it holds, and the bytes read from
/// it before hyper took it (read again first).
pub(crate) struct Slotted {
    io: TokioIo<TcpStream>,
    slot: Option<IpSlot>,
    prefix: Bytes,
}

impl Slotted {
    /// The socket back from hyper (after a WebSocket upgrade), with the
    /// slot, which the caller keeps for as long as it serves the socket,
    /// and whatever of the prefix hyper had not read yet.
    pub(crate) fn into_parts(self) -> (TcpStream, Option<IpSlot>, Bytes) {
        (self.io.into_inner(), self.slot, self.prefix)
    }
}

impl hyper::rt::Read for Slotted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // An advanced-to-empty `Bytes` still holds its allocation.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Slotted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

/// A new connection's first bytes, offered to a [`Takeover`] before hyper.
pub(crate) struct Early<'a> {
    pub stream: TcpStream,
    pub slot: Option<IpSlot>,
    /// Everything read so far (at least the start of the first request),
    /// in a buffer on the stack: copy what must outlive the call.
    pub read: &'a [u8],
}

/// Serves some connections itself, from their first bytes, instead of
/// hyper (the WebSocket endpoint's handshake, `ws::handshake`).
pub(crate) trait Takeover: Send + Sync + 'static {
    /// Takes the connection (and owns it from now on), or gives it back
    /// untouched for hyper: every byte in `early.read` is still unread as
    /// far as hyper is concerned.
    fn take<'a>(&self, early: Early<'a>) -> Result<(), Early<'a>>;
}

/// The most read before hyper: a WebSocket upgrade request from a browser
/// (with cookies) fits; a longer head is hyper's to read.
const FIRST_READ: usize = 4096;

/// What became of a connection offered to a [`Takeover`].
enum Offered {
    /// The takeover serves it.
    Taken,
    /// Closed or failed before sending anything.
    Gone,
    /// Nothing to read yet (a spurious readiness).
    NotYet(TcpStream, Option<IpSlot>),
    /// Hyper's, with the bytes already read.
    Declined(TcpStream, Option<IpSlot>, Bytes),
}

/// Reads what has arrived (into a stack buffer: no heap block per
/// connection, and nothing kept in the connection task's future) and
/// offers it; only what is given back to hyper is copied out.
fn offer(takeover: &dyn Takeover, stream: TcpStream, slot: Option<IpSlot>) -> Offered {
    let mut buf = [0u8; FIRST_READ];
    match stream.try_read(&mut buf) {
        Ok(0) => Offered::Gone,
        Ok(n) => match takeover.take(Early { stream, slot, read: &buf[..n] }) {
            Ok(()) => Offered::Taken,
            Err(early) => Offered::Declined(early.stream, early.slot, Bytes::copy_from_slice(early.read)),
        },
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Offered::NotYet(stream, slot),
        Err(_) => Offered::Gone,
    }
}

/// Waits for a new connection's first bytes (until `deadline` or `stop`)
/// and offers them to `takeover`. `None`: nothing more to do with it.
async fn offer_first_bytes(
    takeover: &dyn Takeover,
    mut stream: TcpStream,
    mut slot: Option<IpSlot>,
    deadline: tokio::time::Instant,
    stop: &CancellationToken,
    metrics: &NodeMetrics,
) -> Option<(TcpStream, Option<IpSlot>, Bytes)> {
    loop {
        tokio::select! {
            ready = tokio::time::timeout_at(deadline, stream.readable()) => match ready {
                // Not a byte in the head's time: closed and counted, as
                // hyper's own head timer does with a silent connection.
                Err(_) => {
                    metrics.http_timeout_rejections.increment(1);
                    tracing::debug!("nothing received within the head timeout");
                    return None;
                }
                Ok(Err(_)) => return None,
                Ok(Ok(())) => {}
            },
            _ = stop.cancelled() => return None,
        }
        match offer(takeover, stream, slot) {
            Offered::Taken | Offered::Gone => return None,
            Offered::NotYet(s, sl) => (stream, slot) = (s, sl),
            Offered::Declined(s, sl, read) => return Some((s, sl, read)),
        }
    }
}

/// How the accept loop treats connections.
#[derive(Clone)]
pub struct Settings {
    pub head_timeout: Duration,
    pub ip_limits: Arc<IpLimits>,
    /// Count connections by the TCP peer (false behind a trusted proxy,
    /// where the WebSocket upgrade counts by `X-Forwarded-For` instead).
    pub cap_by_peer: bool,
    pub metrics: NodeMetrics,
    /// Offered each connection's first bytes before hyper.
    pub takeover: Option<Arc<dyn Takeover>>,
}

/// Serves `filter` on `listener` until `stop`; then stops accepting, asks
/// every connection to finish its current request and waits for them.
/// Dropping this future aborts every connection task it owns.
pub async fn serve<F>(listener: TcpListener, filter: F, settings: Settings, stop: CancellationToken)
where
    F: Filter + Clone + Send + Sync + 'static,
    F::Extract: Reply,
{
    let mut conns = JoinSet::new();
    let refuse = warp::any().map(|| {
        let mut r = Response::new(Bytes::from_static(b"too many connections from this address\n"));
        *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        r.headers_mut().insert("content-type", "text/plain".parse().expect("static header"));
        r
    });
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Most likely out of descriptors: give connections time to close.
                    tracing::error!(error = %e, "accept failed");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = stop.cancelled() => break,
                    }
                }
            },
        };
        let slot = if settings.cap_by_peer { settings.ip_limits.acquire(peer.ip()) } else { Ok(None) };
        let mut builder = http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(settings.head_timeout);
        let metrics = settings.metrics.clone();
        let stop = stop.clone();
        match slot {
            Ok(slot) => {
                let service = with_peer(filter.clone(), peer);
                let takeover = settings.takeover.clone();
                let head_timeout = settings.head_timeout;
                conns.spawn(async move {
                    let deadline = tokio::time::Instant::now() + head_timeout;
                    let (stream, slot, prefix) = match takeover {
                        None => (stream, slot, Bytes::new()),
                        Some(takeover) => {
                            match offer_first_bytes(&*takeover, stream, slot, deadline, &stop, &metrics).await {
                                Some(declined) => declined,
                                None => return,
                            }
                        }
                    };
                    // hyper keeps its own head timeout, which also bounds
                    // every later request and idle gap on this connection
                    // (a first head that arrived in pieces may so get up to
                    // twice `head_timeout` in all).
                    let io = Slotted { io: TokioIo::new(stream), slot, prefix };
                    let conn = builder.serve_connection(io, service).with_upgrades();
                    tokio::pin!(conn);
                    let result = tokio::select! {
                        result = conn.as_mut() => result,
                        _ = stop.cancelled() => {
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    };
                    finished(result, &metrics);
                });
            }
            Err(AtCap) => {
                settings.metrics.ip_limit_rejections.increment(1);
                tracing::debug!(%peer, "connection over the per-IP cap");
                builder.keep_alive(false);
                let io = TokioIo::new(stream);
                let service = with_peer(refuse, peer);
                conns.spawn(async move {
                    let result = tokio::select! {
                        result = builder.serve_connection(io, service) => result,
                        _ = stop.cancelled() => Ok(()),
                    };
                    finished(result, &metrics);
                });
            }
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// The warp filter as a hyper service that tags each request with its peer.
fn with_peer<F>(
    filter: F,
    peer: SocketAddr,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = warp::reply::Response,
    Error = std::convert::Infallible,
    Future: Send + 'static,
> + Send
       + 'static
where
    F: Filter + Clone + Send + Sync + 'static,
    F::Extract: Reply,
{
    let inner = TowerToHyperService::new(warp::service(filter));
    hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(PeerAddr(peer));
        inner.call(request)
    })
}

fn finished(result: Result<(), hyper::Error>, metrics: &NodeMetrics) {
    match result {
        Ok(()) => {}
        Err(e) if e.is_timeout() => {
            metrics.http_timeout_rejections.increment(1);
            tracing::debug!("request head not received in time");
        }
        Err(e) => tracing::debug!(error = %e, "http connection ended with an error"),
    }
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_per_ip_and_released() {
        let limits = IpLimits::new(2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let one = limits.acquire(a).unwrap();
        let _two = limits.acquire(a).unwrap();
        assert_eq!(limits.acquire(a).err(), Some(AtCap));
        assert!(limits.acquire(b).unwrap().is_some());
        drop(one);
        assert!(limits.acquire(a).unwrap().is_some());
        assert!(IpLimits::new(0).acquire(a).unwrap().is_none());
    }

    #[test]
    fn forwarded_for_takes_the_last_entry() {
        let mut h = HeaderMap::new();
        assert_eq!(forwarded_for(&h), None);
        h.append("x-forwarded-for", "6.6.6.6, 10.1.2.3".parse().unwrap());
        assert_eq!(forwarded_for(&h), Some([10, 1, 2, 3].into()));
        h.append("x-forwarded-for", " 2001:db8::1 ".parse().unwrap());
        assert_eq!(forwarded_for(&h), Some("2001:db8::1".parse().unwrap()));
        h.insert("x-forwarded-for", "junk".parse().unwrap());
        assert_eq!(forwarded_for(&h), None);
    }
}
