//! Our own WebSocket upgrade, so tungstenite is configured by us: warp's
//! `ws()` cannot set the read buffer and would allocate 128 KiB per
//! connection. We check the handshake headers, answer 101 ourselves, take
//! hyper's `OnUpgrade`, get our TCP socket back out of it (`downcast`) and
//! serve it ourselves: tungstenite parses what the client sends (small,
//! bounded buffers), and frames to the client are written by `socket.rs`.
//!
//! App and protocol checks happen after the handshake, because pusher-js
//! only understands refusals sent as `pusher:error` + a close code.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use herald_metrics::Rejection as Rejected;
use herald_protocol::ErrorCode;
use hyper::upgrade::OnUpgrade;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use warp::http::{HeaderMap, Response, StatusCode};
use warp::Filter;

use super::session;
use crate::apps::App;
use crate::http::{forwarded_for, AtCap, PeerAddr, Slotted};
use crate::state::State;

/// Lowest protocol version served.
const MIN_PROTOCOL: u32 = 7;

type Reply = Response<Bytes>;

/// `GET /app/{key}`: the WebSocket endpoint.
pub fn route(state: Arc<State>) -> impl Filter<Extract = (Reply,), Error = warp::Rejection> + Clone {
    warp::path!("app" / String)
        .and(warp::get())
        .and(warp::header::headers_cloned())
        .and(crate::rest::raw_query())
        .and(warp::ext::optional::<OnUpgrade>())
        .and(warp::ext::optional::<PeerAddr>())
        .map(
            move |key: String,
                  headers: HeaderMap,
                  query: String,
                  on_upgrade: Option<OnUpgrade>,
                  peer: Option<PeerAddr>| {
                upgrade(state.clone(), key, &headers, &query, on_upgrade, peer)
            },
        )
}

/// Whether a handshaken connection is served or refused.
pub(super) enum Admission {
    Accept(Arc<App>),
    Refuse(ErrorCode),
}

fn upgrade(
    state: Arc<State>,
    key: String,
    headers: &HeaderMap,
    query: &str,
    on_upgrade: Option<OnUpgrade>,
    peer: Option<PeerAddr>,
) -> Reply {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    let ws_key = match check_headers(header) {
        Ok(key) => key,
        Err(NotHandshake::NotUpgrade) => return plain(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade"),
        Err(NotHandshake::Version) => {
            let mut r = plain(StatusCode::UPGRADE_REQUIRED, "only WebSocket version 13 is supported");
            r.headers_mut().insert("sec-websocket-version", "13".parse().expect("static header"));
            return r;
        }
        Err(NotHandshake::NoKey) => return plain(StatusCode::BAD_REQUEST, MISSING_KEY),
    };
    let Some(on_upgrade) = on_upgrade else {
        return plain(StatusCode::BAD_REQUEST, MISSING_KEY);
    };
    if state.is_draining() {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "server is shutting down");
    }
    // Behind a trusted proxy the accept loop cannot tell clients apart:
    // the per-IP cap is taken here, by the forwarded address.
    let ip_slot = if state.config.trust_forwarded_for && state.ip_limits.enabled() {
        let ip = forwarded_for(headers).or(peer.map(|p| p.0.ip()));
        match ip.map(|ip| state.ip_limits.acquire(ip)) {
            Some(Err(AtCap)) => {
                state.metrics.node().ip_limit_rejections.increment(1);
                return plain(StatusCode::TOO_MANY_REQUESTS, "too many connections from this address");
            }
            Some(Ok(slot)) => slot,
            None => None,
        }
    } else {
        None
    };
    let admission = admit(&state, &key, query);
    let accept = derive_accept_key(ws_key.as_bytes());
    let config = ws_config(&state);
    let task_state = state.clone();
    let handshake_timeout = state.config.http_head_timeout;
    state.tracker.spawn(async move {
        let _ip_slot = ip_slot;
        match tokio::time::timeout(handshake_timeout, on_upgrade).await {
            Ok(Ok(upgraded)) => match upgraded.downcast::<Slotted>() {
                Ok(parts) => {
                    // The socket is ours again: broadcasts write to it directly.
                    let (sock, _slot, unread) = parts.io.into_parts();
                    // Moved or dropped here: nothing read survives into the session.
                    let early = if unread.is_empty() {
                        drop(unread);
                        parts.read_buf
                    } else {
                        [parts.read_buf, unread].concat().into()
                    };
                    session::run(task_state, sock, early, config, admission, BytesMut::new()).await;
                }
                Err(_) => tracing::warn!("upgraded connection is not one of our sockets; dropped"),
            },
            Ok(Err(e)) => tracing::debug!(error = %e, "websocket upgrade failed"),
            Err(_) => {
                task_state.metrics.node().http_timeout_rejections.increment(1);
                tracing::debug!("websocket handshake not completed in time");
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept)
        .body(Bytes::new())
        .expect("valid 101 response")
}

const MISSING_KEY: &str = "missing Sec-WebSocket-Key or upgrade state";

/// Why a request is not a WebSocket handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NotHandshake {
    /// No `Connection: upgrade` + `Upgrade: websocket`.
    NotUpgrade,
    /// Not `Sec-WebSocket-Version: 13`.
    Version,
    /// No `Sec-WebSocket-Key`.
    NoKey,
}

/// Checks a handshake's headers (`header` gives a header's first value,
/// or "" when absent); returns the client's `Sec-WebSocket-Key`. Both
/// handshakes (hyper's and `handshake.rs`) ask this one question.
pub(super) fn check_headers<'h>(header: impl Fn(&str) -> &'h str) -> Result<&'h str, NotHandshake> {
    let connection_upgrade = header("connection").split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !connection_upgrade || !header("upgrade").eq_ignore_ascii_case("websocket") {
        return Err(NotHandshake::NotUpgrade);
    }
    if header("sec-websocket-version") != "13" {
        return Err(NotHandshake::Version);
    }
    match header("sec-websocket-key") {
        "" => Err(NotHandshake::NoKey),
        key => Ok(key),
    }
}

/// Small read buffer, bounded write buffer, Pusher-sized messages.
pub(super) fn ws_config(state: &State) -> WebSocketConfig {
    let max = state.config.max_frame_bytes;
    WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(8 * 1024)
        .max_write_buffer_size(256 * 1024)
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}

pub(super) fn admit(state: &State, key: &str, query: &str) -> Admission {
    let protocol = serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .unwrap_or_default()
        .into_iter()
        .find(|(k, _)| k == "protocol")
        .map(|(_, v)| v);
    let reject = |why: Rejected| {
        if let Some(app) = state.apps.by_key(key) {
            app.metrics.rejected(why);
        }
    };
    match protocol.as_deref().map(str::parse::<u32>) {
        None => {
            reject(Rejected::BadProtocolVersion);
            return Admission::Refuse(ErrorCode::UNSUPPORTED_PROTOCOL);
        }
        Some(Err(_)) => {
            reject(Rejected::BadProtocolVersion);
            return Admission::Refuse(ErrorCode::INVALID_VERSION);
        }
        Some(Ok(v)) if v < MIN_PROTOCOL => {
            reject(Rejected::BadProtocolVersion);
            return Admission::Refuse(ErrorCode::UNSUPPORTED_PROTOCOL);
        }
        Some(Ok(_)) => {}
    }
    let Some(app) = state.apps.by_key(key) else {
        state.metrics.node().unknown_app_rejections.increment(1);
        return Admission::Refuse(ErrorCode::APP_NOT_FOUND);
    };
    if !app.config.enabled {
        app.metrics.rejected(Rejected::AppDisabled);
        return Admission::Refuse(ErrorCode::APP_DISABLED);
    }
    // The connection quota is reserved by the session (`add_connection`),
    // atomically: a count taken here would let a burst through.
    Admission::Accept(app.clone())
}

fn plain(status: StatusCode, text: &'static str) -> Reply {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Bytes::from_static(text.as_bytes()))
        .expect("valid response")
}
