//! The WebSocket handshake without hyper: the accept loop (`http.rs`)
//! offers each new connection's first bytes here, and a complete,
//! well-formed upgrade to `/app/{key}` is answered on the spot. The 101
//! leaves in the same write as `connection_established` (the client wakes
//! once, not twice), and no HTTP connection state, header map, warp filter
//! chain or upgrade hand-off is built for it.
//!
//! Only the plain case is taken. Anything else — a head not complete in the
//! first read, another path or method, a request with a body, a failed
//! header check, a draining node, a per-IP cap counted by
//! `X-Forwarded-For` — is given back untouched, and hyper with the
//! `upgrade.rs` route answers it exactly as before (400, 426, 503, 429,
//! or the upgrade). So every refusal has one author, and both handshakes
//! ask the same header question ([`check_headers`]).

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::session;
use super::upgrade::{admit, check_headers, ws_config};
use crate::http::{Early, Takeover};
use crate::state::State;

/// Headers looked at in one request; a head with more is hyper's.
const MAX_HEADERS: usize = 48;

/// The accept loop's [`Takeover`] for WebSocket upgrades.
pub struct FastHandshake {
    state: Arc<State>,
}

impl FastHandshake {
    pub fn new(state: Arc<State>) -> Arc<Self> {
        Arc::new(Self { state })
    }
}

/// What a request head says, when it is an upgrade this module serves.
#[derive(Debug, PartialEq, Eq)]
struct Upgrade<'a> {
    app_key: &'a str,
    query: &'a str,
    ws_key: &'a str,
    /// Length of the head: the client's first frames may follow it.
    head_len: usize,
}

/// Reads an upgrade to `/app/{key}` out of `bytes`, or `None` for anything
/// this module leaves to hyper.
fn parse<'a>(bytes: &'a [u8], headers: &'a mut [httparse::Header<'a>]) -> Option<Upgrade<'a>> {
    let mut request = httparse::Request::new(headers);
    let head_len = match request.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        _ => return None,
    };
    if request.method != Some("GET") || request.version != Some(1) {
        return None;
    }
    let (path, query) = match request.path?.split_once('?') {
        Some((path, query)) => (path, query),
        None => (request.path?, ""),
    };
    // Only what `http::Uri` accepts too (httparse lets more through, which
    // hyper answers with 400).
    if !path.bytes().chain(query.bytes()).all(|b| b.is_ascii_graphic() && !b"\"<>\\^`{|}".contains(&b)) {
        return None;
    }
    let app_key = path.strip_prefix("/app/")?;
    // Percent-encoded or nested paths are the route's to decode or refuse.
    if app_key.is_empty() || app_key.contains(['/', '%']) {
        return None;
    }
    let headers: &'a [httparse::Header<'a>] = request.headers;
    // Header values as hyper's `to_str` reads them: visible ASCII, spaces
    // and tabs; anything else is hyper's to judge.
    if !headers.iter().all(|h| h.value.iter().all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))) {
        return None;
    }
    // A body (even an empty or malformed length) is hyper's to judge.
    let has = |name: &str| headers.iter().any(|h| h.name.eq_ignore_ascii_case(name));
    if has("content-length") || has("transfer-encoding") {
        return None;
    }
    let header = |name: &str| -> &'a str {
        headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .unwrap_or("")
    };
    let ws_key = check_headers(header).ok()?;
    Some(Upgrade { app_key, query, ws_key, head_len })
}

/// Room for the 101 and a `connection_established` frame after it.
const PREFACE_CAPACITY: usize = 384;

/// The 101 answer to a client's `Sec-WebSocket-Key` (with room for the
/// first frame: the session appends it and writes both at once).
fn switching_protocols(ws_key: &str) -> BytesMut {
    let accept = derive_accept_key(ws_key.as_bytes());
    let mut out = BytesMut::with_capacity(PREFACE_CAPACITY);
    out.put_slice(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n");
    out.put_slice(b"Sec-WebSocket-Accept: ");
    out.put_slice(accept.as_bytes());
    out.put_slice(b"\r\n\r\n");
    out
}

impl Takeover for FastHandshake {
    fn take<'a>(&self, early: Early<'a>) -> Result<(), Early<'a>> {
        let state = &self.state;
        // The drain's 503 and a cap by forwarded address are the route's.
        if state.is_draining() || (state.config.trust_forwarded_for && state.ip_limits.enabled()) {
            return Err(early);
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let Some(upgrade) = parse(early.read, &mut headers) else {
            return Err(early);
        };
        let admission = admit(state, upgrade.app_key, upgrade.query);
        let preface = switching_protocols(upgrade.ws_key);
        // The client's first frames, if it sent any along with the head.
        let frames = Bytes::copy_from_slice(&early.read[upgrade.head_len..]);
        let config = ws_config(state);
        let task_state = state.clone();
        let Early { stream, slot, .. } = early;
        state.tracker.spawn(async move {
            let _slot = slot;
            session::run(task_state, stream, frames, config, admission, preface).await;
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn head(request_line: &str, extra: &str) -> String {
        format!(
            "{request_line}\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n{extra}\r\n"
        )
    }

    fn parsed(bytes: &str) -> Option<(String, String, String, usize)> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        parse(bytes.as_bytes(), &mut headers)
            .map(|u| (u.app_key.to_owned(), u.query.to_owned(), u.ws_key.to_owned(), u.head_len))
    }

    #[test]
    fn a_plain_upgrade_is_read_with_its_key_query_and_length() {
        let text = head("GET /app/app-key?protocol=7&client=js HTTP/1.1", "");
        let frames = "\u{81}\u{0}";
        let got = parsed(&format!("{text}{frames}")).expect("an upgrade");
        assert_eq!(got, ("app-key".into(), "protocol=7&client=js".into(), KEY.into(), text.len()));
        let bare = head("GET /app/k HTTP/1.1", "");
        assert_eq!(parsed(&bare).map(|g| g.1), Some(String::new()));
    }

    #[test]
    fn everything_but_the_plain_upgrade_is_left_to_hyper() {
        let full = head("GET /app/k?protocol=7 HTTP/1.1", "");
        // Not complete yet: hyper reads the rest.
        assert_eq!(parsed(&full[..full.len() - 2]), None);
        for line in [
            "POST /app/k HTTP/1.1",
            "GET /app/k HTTP/1.0",
            "GET /apps/k HTTP/1.1",
            "GET /app/ HTTP/1.1",
            "GET /app/k/x HTTP/1.1",
            "GET /app/k%20 HTTP/1.1",
            "GET /up HTTP/1.1",
        ] {
            assert_eq!(parsed(&head(line, "")), None, "{line}");
        }
        let line = "GET /app/k HTTP/1.1";
        assert_eq!(parsed(&head(line, "Content-Length: 3\r\n")), None);
        assert_eq!(parsed(&head(line, "Transfer-Encoding: chunked\r\n")), None);
        assert_eq!(parsed(&head(line, "Content-Length:\r\n")), None, "an empty length is still a length");
        assert_eq!(parsed(&head(line, "X-Odd: caf\u{e9}\r\n")), None, "a non-ASCII header value");
        assert_eq!(parsed(&head("GET /app/k{ HTTP/1.1", "")), None, "a byte http::Uri refuses");
        assert_eq!(parsed(&head("GET /app/k?a=<b> HTTP/1.1", "")), None, "in the query too");
        let wrong_version = head(line, "").replace("Version: 13", "Version: 8");
        assert_eq!(parsed(&wrong_version), None);
        let no_upgrade = head(line, "").replace("Upgrade: WebSocket", "Upgrade: h2c");
        assert_eq!(parsed(&no_upgrade), None);
        let no_key = head(line, "").replace(&format!("Sec-WebSocket-Key: {KEY}\r\n"), "");
        assert_eq!(parsed(&no_key), None);
        let many: String = (0..MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(parsed(&head(line, &many)), None);
        assert_eq!(parsed("\u{0}\u{1}garbage\r\n\r\n"), None);
    }

    #[test]
    fn the_101_carries_the_rfc_6455_accept_value() {
        // RFC 6455 §1.3's example: this key's accept value, computed by hand there.
        let reply = switching_protocols(KEY);
        let text = std::str::from_utf8(&reply).unwrap();
        assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{text}");
        assert!(text.contains("\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"));
    }
}
