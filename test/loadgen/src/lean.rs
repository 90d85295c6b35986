//! A lean WebSocket client for load: the handshake is one pre-built
//! request and a fixed key (whose accept value is checked by string, no
//! SHA-1), client frames are masked with a fixed key, server frames are
//! parsed in place from one reusable buffer. So a client costs the load
//! generator little more than the kernel's reads and writes, and the
//! figures it reports (connection rate, round completion) are the server's
//! rather than this tool's: with tungstenite a read here cost more than the
//! server's write of the same frame.
//!
//! Enough of RFC 6455 for a Pusher server's traffic: unfragmented text,
//! ping (answered with a pong), pong and close frames.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// RFC 6455's sample nonce and the `Sec-WebSocket-Accept` it must get.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
/// The mask of every client frame (a client must mask; the key's value
/// does not matter to a server).
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
/// Largest handshake response accepted.
const MAX_HEAD: usize = 8192;
/// Largest server frame accepted.
const MAX_FRAME: usize = 1 << 20;

/// One client connection after the handshake.
pub struct LeanWs {
    stream: TcpStream,
    /// Bytes read and not yet consumed are `buf[start..]`.
    buf: Vec<u8>,
    start: usize,
}

/// One server frame, as far as a Pusher client cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    Text(&'a str),
    /// The server closed (or sent a close frame).
    Closed,
}

impl LeanWs {
    /// Sends the upgrade request for `path` (with `host`) on `stream` and
    /// reads the response; bytes after it (the first frames) are kept.
    pub async fn handshake(mut stream: TcpStream, host: &str, path: &str) -> Result<Self, String> {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.map_err(|e| format!("handshake write: {e}"))?;
        let mut buf = Vec::with_capacity(1024);
        let head_len = loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                break end + 4;
            }
            if buf.len() > MAX_HEAD {
                return Err("handshake response too long".into());
            }
            if stream.read_buf(&mut buf).await.map_err(|e| format!("handshake read: {e}"))? == 0 {
                return Err("closed during the handshake".into());
            }
        };
        check_response(&buf[..head_len])?;
        Ok(Self { stream, buf, start: head_len })
    }

    /// The next text frame (pings are answered on the way), or `Closed`.
    pub async fn next(&mut self) -> Result<Incoming<'_>, String> {
        loop {
            match parse(&self.buf[self.start..])? {
                Some((opcode, payload, used)) => {
                    let payload = self.start + payload.start..self.start + payload.end;
                    self.start += used;
                    match opcode {
                        0x1 => {
                            let text = std::str::from_utf8(&self.buf[payload]).map_err(|e| e.to_string())?;
                            return Ok(Incoming::Text(text));
                        }
                        0x8 => return Ok(Incoming::Closed),
                        0x9 => {
                            let ping = self.buf[payload].to_vec();
                            self.send(0xA, &ping).await?;
                        }
                        _ => {}
                    }
                }
                None => {
                    // Keep the unconsumed tail at the front, then read more.
                    self.buf.drain(..self.start);
                    self.start = 0;
                    if self.buf.capacity() - self.buf.len() < 4096 {
                        self.buf.reserve(4096);
                    }
                    match self.stream.read_buf(&mut self.buf).await {
                        Ok(0) => return Ok(Incoming::Closed),
                        Ok(_) => {}
                        Err(e) => return Err(e.to_string()),
                    }
                }
            }
        }
    }

    /// Sends a masked text frame.
    pub async fn send_text(&mut self, text: &str) -> Result<(), String> {
        self.send(0x1, text.as_bytes()).await
    }

    async fn send(&mut self, opcode: u8, payload: &[u8]) -> Result<(), String> {
        self.stream.write_all(&client_frame(opcode, payload)).await.map_err(|e| e.to_string())
    }
}

/// Checks the status line and the accept header of a handshake response.
fn check_response(head: &[u8]) -> Result<(), String> {
    let head = std::str::from_utf8(head).map_err(|_| "handshake response is not text".to_string())?;
    let status = head.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 101") {
        return Err(format!("handshake refused: {status}"));
    }
    let accepted = head.lines().any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("sec-websocket-accept") && value.trim() == ACCEPT
        })
    });
    if !accepted {
        return Err("handshake response lacks the right Sec-WebSocket-Accept".into());
    }
    Ok(())
}

/// A masked client frame.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(0x80 | opcode);
    match payload.len() {
        n @ 0..=125 => frame.push(0x80 | n as u8),
        n @ 126..=65535 => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&MASK);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    frame
}

/// Parses one server frame at the start of `bytes`: its opcode, where its
/// payload is, and how many bytes it takes; `None` if it is not complete.
fn parse(bytes: &[u8]) -> Result<Option<(u8, std::ops::Range<usize>, usize)>, String> {
    if bytes.len() < 2 {
        return Ok(None);
    }
    let (first, second) = (bytes[0], bytes[1]);
    if first & 0x80 == 0 || first & 0x0f == 0 {
        return Err("fragmented frames are not supported".into());
    }
    if second & 0x80 != 0 {
        return Err("the server masked a frame".into());
    }
    let (len, header) = match second & 0x7f {
        126 if bytes.len() >= 4 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
        127 if bytes.len() >= 10 => (u64::from_be_bytes(bytes[2..10].try_into().expect("8 bytes")) as usize, 10),
        126 | 127 => return Ok(None),
        n => (n as usize, 2),
    };
    if len > MAX_FRAME {
        return Err(format!("a {len}-byte frame is larger than this client accepts"));
    }
    if bytes.len() < header + len {
        return Ok(None);
    }
    Ok(Some((first & 0x0f, header..header + len, header + len)))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_frames_parse_by_length_form_and_wait_for_their_end() {
        assert_eq!(parse(b"\x81\x03abc").unwrap(), Some((1, 2..5, 5)));
        assert_eq!(parse(b"\x81\x03ab").unwrap(), None);
        let mut long = vec![0x81, 126, 0x01, 0x00];
        long.extend(std::iter::repeat_n(b'x', 256));
        assert_eq!(parse(&long).unwrap(), Some((1, 4..260, 260)));
        assert_eq!(parse(&long[..3]).unwrap(), None);
        assert_eq!(parse(b"\x88\x00").unwrap(), Some((8, 2..2, 2)));
        assert!(parse(b"\x01\x01a").is_err(), "a fragment");
        assert!(parse(b"\x81\x81abcdx").is_err(), "a masked server frame");
    }

    #[test]
    fn client_frames_are_masked_with_the_fixed_key() {
        // RFC 6455 §5.7's masked "Hello" uses another key; unmask ours.
        let frame = client_frame(1, b"Hello");
        assert_eq!(frame[..2], [0x81, 0x85]);
        let unmasked: Vec<u8> = frame[6..].iter().enumerate().map(|(i, b)| b ^ frame[2 + i % 4]).collect();
        assert_eq!(unmasked, b"Hello");
        assert_eq!(client_frame(1, &[b'x'; 200])[1..4], [0x80 | 126, 0, 200]);
    }

    #[test]
    fn the_handshake_response_must_switch_protocols_with_the_right_accept() {
        let ok = "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nsec-websocket-accept: \
                  s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert!(check_response(ok.as_bytes()).is_ok());
        assert!(check_response(ok.replace("xOo=", "xOp=").as_bytes()).is_err());
        assert!(check_response(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").is_err());
    }
}
