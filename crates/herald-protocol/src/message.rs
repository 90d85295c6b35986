//! Frames on the wire: what clients send (parsed into [`ClientMessage`]) and
//! what the server sends (built as JSON text by the functions below).
//!
//! Server events carry `data` as a JSON-encoded *string* (pusher-js parses it
//! again), except `pusher:error`, whose `data` is an object.

use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::codes::ErrorCode;
use crate::socket_id::SocketId;

/// A frame a client sent, understood.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    Ping,
    Pong,
    Subscribe {
        channel: String,
        auth: Option<String>,
        channel_data: Option<String>,
    },
    Unsubscribe {
        channel: String,
    },
    Signin {
        auth: String,
        user_data: String,
    },
    /// A `client-*` event to relay to the channel's other subscribers.
    ClientEvent {
        event: String,
        channel: String,
        data: Value,
    },
}

/// Why a client frame was not understood (sent back as `pusher:error` 4302).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame is not valid JSON")]
    InvalidJson,
    #[error("frame has no string \"event\" field")]
    MissingEvent,
    #[error("{0} needs a \"data\" object with a string \"{1}\"")]
    MissingField(&'static str, &'static str),
    #[error("client event needs a \"channel\"")]
    MissingChannel,
    #[error("unknown event {0:?}")]
    UnknownEvent(String),
}

impl ClientMessage {
    /// Parses one text frame.
    pub fn parse(text: &str) -> Result<Self, FrameError> {
        let value: Value = serde_json::from_str(text).map_err(|_| FrameError::InvalidJson)?;
        let Value::Object(mut frame) = value else {
            return Err(FrameError::InvalidJson);
        };
        let event = match frame.remove("event") {
            Some(Value::String(e)) => e,
            _ => return Err(FrameError::MissingEvent),
        };
        let data = frame.remove("data").unwrap_or(Value::Null);
        match event.as_str() {
            "pusher:ping" => Ok(Self::Ping),
            "pusher:pong" => Ok(Self::Pong),
            "pusher:subscribe" => {
                let data = data_object(data);
                Ok(Self::Subscribe {
                    channel: string_field(&data, "channel")
                        .ok_or(FrameError::MissingField("pusher:subscribe", "channel"))?,
                    auth: string_field(&data, "auth"),
                    channel_data: string_field(&data, "channel_data"),
                })
            }
            "pusher:unsubscribe" => {
                let data = data_object(data);
                Ok(Self::Unsubscribe {
                    channel: string_field(&data, "channel")
                        .ok_or(FrameError::MissingField("pusher:unsubscribe", "channel"))?,
                })
            }
            "pusher:signin" => {
                let data = data_object(data);
                Ok(Self::Signin {
                    auth: string_field(&data, "auth").ok_or(FrameError::MissingField("pusher:signin", "auth"))?,
                    user_data: string_field(&data, "user_data")
                        .ok_or(FrameError::MissingField("pusher:signin", "user_data"))?,
                })
            }
            e if e.starts_with("client-") => {
                let channel = match frame.remove("channel") {
                    Some(Value::String(c)) => c,
                    _ => return Err(FrameError::MissingChannel),
                };
                Ok(Self::ClientEvent { event, channel, data })
            }
            _ => Err(FrameError::UnknownEvent(event)),
        }
    }
}

/// `data` may be an object or (from some clients) a JSON string holding one.
fn data_object(data: Value) -> Map<String, Value> {
    match data {
        Value::Object(map) => map,
        Value::String(s) => match serde_json::from_str(&s) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        },
        _ => Map::new(),
    }
}

fn string_field(data: &Map<String, Value>, key: &str) -> Option<String> {
    match data.get(key) {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    }
}

/// The `data` of an event to deliver.
#[derive(Debug, Clone, Copy)]
pub enum EventData<'a> {
    /// From the REST API: already a string, sent as a JSON string.
    Text(&'a str),
    /// From a client event: relayed as the client sent it.
    Json(&'a Value),
}

impl Serialize for EventData<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            EventData::Text(t) => s.serialize_str(t),
            EventData::Json(v) => v.serialize(s),
        }
    }
}

impl EventData<'_> {
    /// Size of the payload as Pusher's limits count it.
    pub fn len(&self) -> usize {
        match self {
            EventData::Text(t) => t.len(),
            EventData::Json(Value::String(s)) => s.len(),
            EventData::Json(v) => v.to_string().len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Serialize)]
struct EventFrame<'a> {
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    data: EventData<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
}

/// Any event frame: `{"event","channel"?,"data","user_id"?}`.
pub fn event(name: &str, channel: Option<&str>, data: EventData<'_>, user_id: Option<&str>) -> String {
    serde_json::to_string(&EventFrame { event: name, channel, data, user_id }).expect("event frames always serialize")
}

pub fn connection_established(socket_id: SocketId, activity_timeout_secs: u64) -> String {
    let data = json!({"socket_id": socket_id.to_string(), "activity_timeout": activity_timeout_secs}).to_string();
    event("pusher:connection_established", None, EventData::Text(&data), None)
}

/// `pusher:error` with an object `data` (`code` may be null for warnings).
pub fn error(code: Option<ErrorCode>, message: &str) -> String {
    json!({"event": "pusher:error", "data": {"message": message, "code": code.map(ErrorCode::as_u16)}}).to_string()
}

pub fn ping() -> String {
    r#"{"event":"pusher:ping","data":{}}"#.to_string()
}

pub fn pong() -> String {
    r#"{"event":"pusher:pong","data":{}}"#.to_string()
}

pub fn subscription_succeeded(channel: &str, data: &str) -> String {
    event("pusher_internal:subscription_succeeded", Some(channel), EventData::Text(data), None)
}

/// The `data` of a presence channel's `subscription_succeeded`.
pub fn presence_data<'a>(members: impl IntoIterator<Item = (&'a str, &'a Value)>) -> String {
    let mut ids = Vec::new();
    let mut hash = Map::new();
    for (id, info) in members {
        ids.push(Value::String(id.to_string()));
        hash.insert(id.to_string(), info.clone());
    }
    json!({"presence": {"count": ids.len(), "ids": ids, "hash": hash}}).to_string()
}

/// `pusher:subscription_error`, with the HTTP-like status pusher-js reports.
pub fn subscription_error(channel: &str, error_type: &str, error: &str, status: u16) -> String {
    json!({
        "event": "pusher:subscription_error",
        "channel": channel,
        "data": {"type": error_type, "error": error, "status": status},
    })
    .to_string()
}

pub fn member_added(channel: &str, user_id: &str, user_info: &Value) -> String {
    let data = json!({"user_id": user_id, "user_info": user_info}).to_string();
    event("pusher_internal:member_added", Some(channel), EventData::Text(&data), None)
}

pub fn member_removed(channel: &str, user_id: &str) -> String {
    let data = json!({"user_id": user_id}).to_string();
    event("pusher_internal:member_removed", Some(channel), EventData::Text(&data), None)
}

pub fn cache_miss(channel: &str) -> String {
    event("pusher:cache_miss", Some(channel), EventData::Text("{}"), None)
}

pub fn signin_success(user_data: &str) -> String {
    let data = json!({"user_data": user_data}).to_string();
    event("pusher:signin_success", None, EventData::Text(&data), None)
}

/// Whether watched users came online or went offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchlistEvent {
    Online,
    Offline,
}

/// `pusher_internal:watchlist_events` with one entry per non-empty group.
pub fn watchlist_events(groups: &[(WatchlistEvent, Vec<String>)]) -> String {
    let events: Vec<Value> = groups
        .iter()
        .filter(|(_, ids)| !ids.is_empty())
        .map(|(kind, ids)| {
            let name = match kind {
                WatchlistEvent::Online => "online",
                WatchlistEvent::Offline => "offline",
            };
            json!({"name": name, "user_ids": ids})
        })
        .collect();
    let data = json!({"events": events}).to_string();
    event("pusher_internal:watchlist_events", None, EventData::Text(&data), None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_every_client_event() {
        assert_eq!(ClientMessage::parse(r#"{"event":"pusher:ping","data":{}}"#), Ok(ClientMessage::Ping));
        assert_eq!(
            ClientMessage::parse(
                r#"{"event":"pusher:subscribe","data":{"channel":"presence-a","auth":"k:s","channel_data":"{}"}}"#
            ),
            Ok(ClientMessage::Subscribe {
                channel: "presence-a".into(),
                auth: Some("k:s".into()),
                channel_data: Some("{}".into())
            })
        );
        assert_eq!(
            ClientMessage::parse(r#"{"event":"pusher:subscribe","data":"{\"channel\":\"a\"}"}"#),
            Ok(ClientMessage::Subscribe { channel: "a".into(), auth: None, channel_data: None })
        );
        assert_eq!(
            ClientMessage::parse(r#"{"event":"client-x","channel":"private-a","data":{"n":1}}"#),
            Ok(ClientMessage::ClientEvent {
                event: "client-x".into(),
                channel: "private-a".into(),
                data: json!({"n":1})
            })
        );
        assert_eq!(
            ClientMessage::parse(r#"{"event":"pusher:signin","data":{"auth":"a","user_data":"{}"}}"#),
            Ok(ClientMessage::Signin { auth: "a".into(), user_data: "{}".into() })
        );
    }

    #[test]
    fn bad_frames_are_errors() {
        assert_eq!(ClientMessage::parse("{"), Err(FrameError::InvalidJson));
        assert_eq!(ClientMessage::parse("[]"), Err(FrameError::InvalidJson));
        assert_eq!(ClientMessage::parse(r#"{"data":1}"#), Err(FrameError::MissingEvent));
        assert_eq!(ClientMessage::parse(r#"{"event":"client-x"}"#), Err(FrameError::MissingChannel));
        assert!(matches!(ClientMessage::parse(r#"{"event":"foo"}"#), Err(FrameError::UnknownEvent(_))));
        assert!(matches!(
            ClientMessage::parse(r#"{"event":"pusher:subscribe","data":{}}"#),
            Err(FrameError::MissingField(_, "channel"))
        ));
    }

    #[test]
    fn server_frames_have_pusher_shapes() {
        let id = SocketId { major: 1, minor: 2 };
        let v: Value = serde_json::from_str(&connection_established(id, 120)).unwrap();
        assert_eq!(v["event"], "pusher:connection_established");
        let data: Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
        assert_eq!(data, json!({"socket_id":"1.2","activity_timeout":120}));

        let v: Value = serde_json::from_str(&error(Some(ErrorCode::UNAUTHORIZED), "no")).unwrap();
        assert_eq!(v["data"], json!({"message":"no","code":4009}));

        let v: Value = serde_json::from_str(&cache_miss("cache-a")).unwrap();
        assert_eq!(v["data"], "{}");

        let info = json!({"n":1});
        let p: Value = serde_json::from_str(&presence_data([("1", &info)])).unwrap();
        assert_eq!(p, json!({"presence":{"count":1,"ids":["1"],"hash":{"1":{"n":1}}}}));

        let e = event("client-x", Some("presence-a"), EventData::Json(&info), Some("7"));
        assert_eq!(e, r#"{"event":"client-x","channel":"presence-a","data":{"n":1},"user_id":"7"}"#);
        let e = event("e", Some("a"), EventData::Text("{\"a\":1}"), None);
        assert_eq!(e, r#"{"event":"e","channel":"a","data":"{\"a\":1}"}"#);

        let w: Value = serde_json::from_str(&watchlist_events(&[
            (WatchlistEvent::Online, vec!["u2".into()]),
            (WatchlistEvent::Offline, vec![]),
        ]))
        .unwrap();
        let data: Value = serde_json::from_str(w["data"].as_str().unwrap()).unwrap();
        assert_eq!(data, json!({"events":[{"name":"online","user_ids":["u2"]}]}));
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            // Any finite float must come back exactly (serde_json's
            // float_roundtrip feature, set in the workspace).
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
            "[a-z:{}\"\\\\ -]{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A field: usually a string, sometimes any other JSON, sometimes absent.
    fn field() -> impl Strategy<Value = Option<Value>> {
        prop_oneof![
            3 => "[a-z0-9:{}-]{0,16}".prop_map(|s| Some(Value::from(s))),
            1 => json_value().prop_map(Some),
            1 => Just(None),
        ]
    }

    fn event_name() -> impl Strategy<Value = Option<Value>> {
        prop_oneof![
            4 => prop::sample::select(vec![
                "pusher:ping", "pusher:pong", "pusher:subscribe", "pusher:unsubscribe", "pusher:signin",
            ])
            .prop_map(|e| Some(Value::from(e))),
            3 => "client-[a-z.-]{0,10}".prop_map(|e| Some(Value::from(e))),
            1 => "(pusher:|client|pusher_internal:)?[a-z]{0,8}".prop_map(|e| Some(Value::from(e))),
            1 => json_value().prop_map(Some),
            1 => Just(None),
        ]
    }

    /// `data`: an object of the fields the events read, the same object
    /// encoded as a JSON string (as some clients send it), or anything.
    fn data() -> impl Strategy<Value = Option<Value>> {
        let fields = || {
            (field(), field(), field(), field(), field()).prop_map(|(channel, auth, cd, ud, extra)| {
                let mut map = Map::new();
                for (key, value) in
                    [("channel", channel), ("auth", auth), ("channel_data", cd), ("user_data", ud), ("x", extra)]
                {
                    if let Some(value) = value {
                        map.insert(key.into(), value);
                    }
                }
                map
            })
        };
        prop_oneof![
            3 => fields().prop_map(|m| Some(Value::Object(m))),
            2 => fields().prop_map(|m| Some(Value::String(Value::Object(m).to_string()))),
            1 => json_value().prop_map(Some),
            1 => Just(None),
        ]
    }

    /// What the protocol says a frame of these parts means (an oracle
    /// written from the Pusher protocol, not from `parse`).
    fn meaning(
        event: &Option<Value>,
        channel: &Option<Value>,
        data: &Option<Value>,
    ) -> Result<ClientMessage, FrameError> {
        let Some(Value::String(event)) = event else { return Err(FrameError::MissingEvent) };
        let fields = match data {
            Some(Value::Object(map)) => map.clone(),
            Some(Value::String(text)) => match serde_json::from_str(text) {
                Ok(Value::Object(map)) => map,
                _ => Map::new(),
            },
            _ => Map::new(),
        };
        let text = |key: &str| fields.get(key).and_then(Value::as_str).map(str::to_owned);
        match event.as_str() {
            "pusher:ping" => Ok(ClientMessage::Ping),
            "pusher:pong" => Ok(ClientMessage::Pong),
            "pusher:subscribe" => match text("channel") {
                Some(channel) => {
                    Ok(ClientMessage::Subscribe { channel, auth: text("auth"), channel_data: text("channel_data") })
                }
                None => Err(FrameError::MissingField("pusher:subscribe", "channel")),
            },
            "pusher:unsubscribe" => match text("channel") {
                Some(channel) => Ok(ClientMessage::Unsubscribe { channel }),
                None => Err(FrameError::MissingField("pusher:unsubscribe", "channel")),
            },
            "pusher:signin" => match (text("auth"), text("user_data")) {
                (Some(auth), Some(user_data)) => Ok(ClientMessage::Signin { auth, user_data }),
                (None, _) => Err(FrameError::MissingField("pusher:signin", "auth")),
                (Some(_), None) => Err(FrameError::MissingField("pusher:signin", "user_data")),
            },
            name if name.starts_with("client-") => match channel {
                Some(Value::String(channel)) => Ok(ClientMessage::ClientEvent {
                    event: name.to_owned(),
                    channel: channel.clone(),
                    data: data.clone().unwrap_or(Value::Null),
                }),
                _ => Err(FrameError::MissingChannel),
            },
            other => Err(FrameError::UnknownEvent(other.to_owned())),
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,200}") {
            let _ = ClientMessage::parse(&s);
        }

        /// Structured frames: the JSON objects clients send (and near misses),
        /// each parsed to what it means.
        #[test]
        fn frames_parse_to_what_they_mean(event in event_name(), channel in field(), data in data(), cut in any::<prop::sample::Index>(), noise in any::<char>()) {
            let mut frame = Map::new();
            for (key, value) in [("event", &event), ("channel", &channel), ("data", &data)] {
                if let Some(value) = value {
                    frame.insert(key.into(), value.clone());
                }
            }
            let text = Value::Object(frame).to_string();
            prop_assert_eq!(ClientMessage::parse(&text), meaning(&event, &channel, &data), "{}", text);

            // Mutations: a cut-off frame is never JSON; a frame not an object is refused; noise never panics.
            let at = text.char_indices().map(|(i, _)| i).nth(cut.index(text.chars().count())).unwrap_or(0);
            prop_assert_eq!(ClientMessage::parse(&text[..at]), Err(FrameError::InvalidJson), "{}", &text[..at]);
            prop_assert_eq!(ClientMessage::parse(&format!("[{text}]")), Err(FrameError::InvalidJson));
            prop_assert_eq!(ClientMessage::parse(&Value::String(text.clone()).to_string()), Err(FrameError::InvalidJson));
            let mut noisy = text.clone();
            noisy.insert(at, noise);
            let _ = ClientMessage::parse(&noisy);
        }
    }
}
