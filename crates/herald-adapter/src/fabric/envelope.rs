//! The wire format between nodes, version 1 (docs/fabric.md): one line of
//! JSON (the header), then — for events and cache answers — a newline and
//! the Pusher frame exactly as clients receive it. An event is serialized
//! once by its origin; every node parses only the small header and hands
//! the frame bytes, uncopied, to its local fan-out.
//!
//! Backends may publish `event` envelopes themselves (with `redis-cli` or a
//! NATS client); every other type is Herald's own.

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::replica::{Change, NodeAppState};

/// The envelope version this node speaks.
pub const VERSION: u32 = 1;

/// The header of one fabric message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u32,
    #[serde(flatten)]
    pub body: Body,
}

/// What a fabric message says. `n` is always the sender's node id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Body {
    /// A Pusher event for `channel`'s subscribers; the frame follows the
    /// header. `origin` (absent from backend publishes) already delivered
    /// it locally; `cache` stores it as a cache channel's last event.
    Event {
        app: String,
        channel: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        except: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        origin: Option<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        cache: bool,
    },
    /// A node-level change, numbered per sender so gaps are noticed.
    Change { n: String, seq: u64, app: String, change: Change },
    /// "I am alive"; `seq` is the sender's last change number.
    Hb {
        n: String,
        seq: u64,
        #[serde(default)]
        conns: HashMap<String, usize>,
    },
    /// Asks `to` (every node when absent) to publish a snapshot.
    Sync {
        n: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
    },
    /// Everything the sender holds, as of change `seq`.
    Snap { n: String, seq: u64, apps: HashMap<String, NodeAppState> },
    /// The sender leaves the cluster (graceful stop).
    Bye { n: String },
    /// A cluster question; answers go to the sender's node subject.
    Req { n: String, id: u64, app: String, q: Question },
    /// One node's answer to question `id`.
    Rep { n: String, id: u64, a: Answer },
    /// Close every connection of `user` on every node (4009).
    Term { n: String, app: String, user: String },
}

impl Body {
    /// The node that sent it (`None` for events, which backends publish too).
    pub fn sender(&self) -> Option<&str> {
        match self {
            Body::Event { .. } => None,
            Body::Change { n, .. }
            | Body::Hb { n, .. }
            | Body::Sync { n, .. }
            | Body::Snap { n, .. }
            | Body::Bye { n }
            | Body::Req { n, .. }
            | Body::Rep { n, .. }
            | Body::Term { n, .. } => Some(n),
        }
    }
}

/// What a node can be asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "q", rename_all = "snake_case")]
pub enum Question {
    /// Local subscriptions of one channel.
    Count { channel: String },
    /// Local channels with their subscriptions.
    Channels,
    /// The cache channel's last event, if this node has it.
    Cache { channel: String },
}

/// A node's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "a", rename_all = "snake_case")]
pub enum Answer {
    Count {
        count: usize,
    },
    Channels {
        channels: Vec<(String, usize)>,
    },
    /// `found`: the frame follows the header; `age_ms`: how long ago it
    /// was stored (the youngest answer wins).
    Cache {
        found: bool,
        #[serde(default)]
        age_ms: u64,
    },
}

/// Why a message was not understood.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a Herald envelope: {0}")]
    Json(#[from] serde_json::Error),
    #[error("envelope version {0} is not supported (this node speaks {VERSION})")]
    Version(u32),
}

/// Serializes a header and its optional frame into one message.
pub fn encode(body: Body, payload: Option<&[u8]>) -> Bytes {
    let header = serde_json::to_vec(&Envelope { v: VERSION, body }).expect("envelopes serialize");
    let mut out = BytesMut::with_capacity(header.len() + payload.map_or(0, |p| p.len() + 1));
    out.put_slice(&header);
    if let Some(payload) = payload {
        out.put_u8(b'\n');
        out.put_slice(payload);
    }
    out.freeze()
}

/// Splits a message into its header and the (possibly empty) bytes after
/// the first newline, which are shared with `message`, not copied.
pub fn decode(message: &Bytes) -> Result<(Body, Bytes), DecodeError> {
    let (header, payload) = match message.iter().position(|b| *b == b'\n') {
        Some(i) => (&message[..i], message.slice(i + 1..)),
        None => (&message[..], Bytes::new()),
    };
    #[derive(Deserialize)]
    struct Version {
        v: u32,
    }
    let version: Version = serde_json::from_slice(header)?;
    if version.v != VERSION {
        return Err(DecodeError::Version(version.v));
    }
    let envelope: Envelope = serde_json::from_slice(header)?;
    Ok((envelope.body, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_keeps_its_frame_bytes() {
        let frame = br#"{"event":"e","channel":"c","data":"{\"a\":\"x\ny\"}"}"#;
        let body = Body::Event {
            app: "app".into(),
            channel: "c".into(),
            except: Some("1.2".into()),
            origin: Some("n1".into()),
            cache: false,
        };
        let bytes = encode(body.clone(), Some(frame));
        let (decoded, payload) = decode(&bytes).unwrap();
        assert_eq!(decoded, body);
        assert_eq!(&payload[..], &frame[..]);
    }

    #[test]
    fn a_backend_publish_is_understood() {
        // What docs/fabric.md tells backends to publish.
        let text = "{\"v\":1,\"t\":\"event\",\"app\":\"app-id\",\"channel\":\"orders\"}\n\
                    {\"event\":\"created\",\"channel\":\"orders\",\"data\":\"{}\"}";
        let (body, payload) = decode(&Bytes::from(text)).unwrap();
        assert_eq!(
            body,
            Body::Event { app: "app-id".into(), channel: "orders".into(), except: None, origin: None, cache: false }
        );
        assert!(payload.starts_with(b"{\"event\":\"created\""));
    }

    #[test]
    fn other_versions_and_garbage_are_refused() {
        assert!(matches!(
            decode(&Bytes::from_static(b"{\"v\":2,\"t\":\"bye\",\"n\":\"x\"}")),
            Err(DecodeError::Version(2))
        ));
        assert!(decode(&Bytes::from_static(b"hello")).is_err());
        assert!(decode(&Bytes::from_static(b"{\"v\":1,\"t\":\"nope\"}")).is_err());
    }

    #[test]
    fn changes_round_trip() {
        let body = Body::Change {
            n: "n".into(),
            seq: 7,
            app: "a".into(),
            change: Change::MemberJoined {
                channel: "presence-x".into(),
                user_id: "u".into(),
                info: serde_json::json!({"name": "U"}),
            },
        };
        let (decoded, payload) = decode(&encode(body.clone(), None)).unwrap();
        assert_eq!(decoded, body);
        assert!(payload.is_empty());
    }
}
