//! A server→client WebSocket text frame, encoded once per broadcast.
//!
//! A frame the server sends is never masked, so its header and payload are
//! the same bytes for every recipient: [`Frame`] holds the whole encoded
//! frame (header + payload) in shared `Bytes`, built once, and a delivery
//! is a write of those bytes (a clone is a reference-count bump). Nothing
//! re-encodes it per recipient.

use bytes::{BufMut, Bytes, BytesMut};

/// One encoded, unmasked, final text frame.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    /// Header + payload, ready for the socket.
    wire: Bytes,
    /// Where the payload starts in `wire`.
    header: u8,
}

/// Bytes that are not UTF-8 cannot be a text frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a text frame's payload must be UTF-8")]
pub struct NotUtf8;

const FIN_TEXT: u8 = 0x81;
const FIN_CLOSE: u8 = 0x88;

/// The header of an unmasked final frame with `opcode_byte` (FIN | opcode).
fn header(opcode_byte: u8, len: usize, out: &mut BytesMut) {
    out.put_u8(opcode_byte);
    if len < 126 {
        out.put_u8(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.put_u8(126);
        out.put_u16(len);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
}

impl Frame {
    /// Encodes `text` as a text frame (one allocation, one copy).
    pub fn text(text: &str) -> Self {
        let mut out = BytesMut::with_capacity(text.len() + 10);
        header(FIN_TEXT, text.len(), &mut out);
        let header_len = out.len() as u8;
        out.put_slice(text.as_bytes());
        Self { wire: out.freeze(), header: header_len }
    }

    /// Encodes received payload bytes (a fabric envelope's frame) after
    /// checking they are UTF-8.
    pub fn from_payload(payload: &[u8]) -> Result<Self, NotUtf8> {
        let text = std::str::from_utf8(payload).map_err(|_| NotUtf8)?;
        Ok(Self::text(text))
    }

    /// The whole encoded frame, as written to the socket.
    pub fn wire(&self) -> &Bytes {
        &self.wire
    }

    /// The payload (the JSON text), as bytes.
    pub fn payload(&self) -> &[u8] {
        &self.wire[usize::from(self.header)..]
    }

    /// The payload, sharing the frame's bytes.
    pub fn payload_bytes(&self) -> Bytes {
        self.wire.slice(usize::from(self.header)..)
    }

    /// The payload as text (always UTF-8: checked when built).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.payload()).unwrap_or_default()
    }

    /// The payload's length: what `herald_ws_bytes_sent_total` counts.
    pub fn len(&self) -> usize {
        self.wire.len() - usize::from(self.header)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Frame").field(&self.as_str()).finish()
    }
}

/// An encoded close frame with `code` and `reason` (cut to the 123 bytes a
/// control frame allows, at a character boundary).
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason[..end];
    let mut out = BytesMut::with_capacity(4 + reason.len());
    header(FIN_CLOSE, 2 + reason.len(), &mut out);
    out.put_u16(code);
    out.put_slice(reason.as_bytes());
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_use_the_three_length_forms() {
        let short = Frame::text("hi");
        assert_eq!(&short.wire()[..], b"\x81\x02hi");
        assert_eq!(short.len(), 2);
        let medium = Frame::text(&"x".repeat(300));
        assert_eq!(&medium.wire()[..4], &[0x81, 126, 0x01, 0x2c]);
        assert_eq!(medium.len(), 300);
        let long = Frame::text(&"y".repeat(70_000));
        assert_eq!(&long.wire()[..10], &[0x81, 127, 0, 0, 0, 0, 0, 0x01, 0x11, 0x70]);
        assert_eq!(long.payload().len(), 70_000);
    }

    #[test]
    fn non_utf8_payloads_are_refused() {
        assert_eq!(Frame::from_payload(b"\xff"), Err(NotUtf8));
        assert_eq!(Frame::from_payload(b"ok").unwrap().as_str(), "ok");
    }

    #[test]
    fn close_frames_carry_the_code_and_a_bounded_reason() {
        assert_eq!(&close_frame(4100, "slow")[..], b"\x88\x06\x10\x04slow");
        let long = close_frame(1000, &"é".repeat(100));
        assert!(long.len() <= 2 + 125);
        assert_eq!(usize::from(long[1]), long.len() - 2);
    }
}
