//! The REST endpoints themselves, once the request is routed and its
//! signature verified. Every input is validated before anything is
//! delivered, so a bad request changes nothing.

use std::collections::BTreeMap;

use herald_adapter::text_frame;
use herald_protocol::message::{self, EventData};
use herald_protocol::{ChannelKind, ChannelName, SocketId};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use warp::http::StatusCode;

use super::ApiError;
use crate::apps::App;
use crate::state::State;

/// One event as `events` and each `batch_events` item carry it.
#[derive(Debug, Deserialize)]
struct EventBody {
    name: Option<String>,
    data: Option<Value>,
    channels: Option<Vec<String>>,
    channel: Option<String>,
    socket_id: Option<String>,
    info: Option<String>,
}

#[derive(Debug, Deserialize)]
struct BatchBody {
    batch: Vec<EventBody>,
}

/// An event that passed validation.
struct Trigger {
    name: String,
    data: String,
    channels: Vec<String>,
    except: Option<SocketId>,
    info: Vec<String>,
}

fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("body is not the expected JSON: {e}")))
}

fn info_list(info: Option<&str>) -> Vec<String> {
    info.unwrap_or("").split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

fn validate(app: &App, body: EventBody) -> Result<Trigger, ApiError> {
    let config = &app.config;
    let name = body.name.filter(|n| !n.is_empty()).ok_or_else(|| ApiError::bad_request("missing event name"))?;
    if name.len() > config.max_event_name_len {
        return Err(ApiError::bad_request(format!(
            "event name is longer than {} characters",
            config.max_event_name_len
        )));
    }
    let data = match body.data {
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => return Err(ApiError::bad_request("missing event data")),
    };
    if data.len() > config.max_event_payload_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("event data is larger than {} bytes", config.max_event_payload_bytes),
        ));
    }
    let channels = match (body.channels, body.channel) {
        (Some(list), _) if !list.is_empty() => list,
        (_, Some(one)) => vec![one],
        _ => return Err(ApiError::bad_request("missing channels")),
    };
    if channels.len() > config.max_event_channels {
        return Err(ApiError::bad_request(format!("more than {} channels", config.max_event_channels)));
    }
    let mut encrypted = false;
    for channel in &channels {
        let parsed = ChannelName::parse(channel)
            .map_err(|e| ApiError::bad_request(format!("invalid channel {channel:?}: {e}")))?;
        encrypted |= parsed.kind() == ChannelKind::PrivateEncrypted;
    }
    if encrypted && channels.len() > 1 {
        return Err(ApiError::bad_request("an event to an encrypted channel must target that channel alone"));
    }
    let except = match body.socket_id {
        Some(id) => Some(id.parse().map_err(|_| ApiError::bad_request(format!("invalid socket_id {id:?}")))?),
        None => None,
    };
    let info = info_list(body.info.as_deref());
    Ok(Trigger { name, data, channels, except, info })
}

/// Delivers a validated event; returns the per-channel info asked for.
async fn deliver(state: &State, app: &App, trigger: &Trigger) -> Result<Map<String, Value>, ApiError> {
    for channel in &trigger.channels {
        let frame = text_frame(message::event(&trigger.name, Some(channel), EventData::Text(&trigger.data), None));
        let remember = ChannelName::parse(channel).is_ok_and(|n| n.is_cache());
        state.adapter.broadcast(&app.config.id, channel, frame, trigger.except, remember).await.map_err(internal)?;
    }
    app.metrics.events_triggered.increment(trigger.channels.len() as u64);
    let mut out = Map::new();
    if !trigger.info.is_empty() {
        for channel in &trigger.channels {
            out.insert(channel.clone(), Value::Object(channel_attributes(state, app, channel, &trigger.info).await?));
        }
    }
    Ok(out)
}

/// `user_count` (presence only) and `subscription_count`, as requested.
async fn channel_attributes(
    state: &State,
    app: &App,
    channel: &str,
    info: &[String],
) -> Result<Map<String, Value>, ApiError> {
    let mut attrs = Map::new();
    let is_presence = ChannelName::parse(channel).is_ok_and(|n| n.kind() == ChannelKind::Presence);
    if info.iter().any(|i| i == "user_count") && is_presence {
        let members = state.adapter.members(&app.config.id, channel).await.map_err(internal)?;
        attrs.insert("user_count".into(), json!(members.len()));
    }
    if info.iter().any(|i| i == "subscription_count") {
        let count = state.adapter.subscription_count(&app.config.id, channel).await.map_err(internal)?;
        attrs.insert("subscription_count".into(), json!(count));
    }
    Ok(attrs)
}

/// An adapter failure as an HTTP answer: the fabric being unavailable is a
/// 503 (retry, perhaps on another node), never a 200 for an event that went
/// nowhere.
fn internal(e: herald_adapter::AdapterError) -> ApiError {
    let status = if e.is_unavailable() { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::INTERNAL_SERVER_ERROR };
    ApiError::new(status, e.to_string())
}

/// `POST /apps/{id}/events`
pub async fn events(state: &State, app: &App, body: &[u8]) -> Result<Value, ApiError> {
    let trigger = validate(app, parse_json(body)?)?;
    let channels = deliver(state, app, &trigger).await?;
    Ok(if trigger.info.is_empty() { json!({}) } else { json!({ "channels": channels }) })
}

/// `POST /apps/{id}/batch_events`
pub async fn batch_events(state: &State, app: &App, body: &[u8]) -> Result<Value, ApiError> {
    let batch: BatchBody = parse_json(body)?;
    let max = app.config.max_batch_size;
    if batch.batch.len() > max {
        return Err(ApiError::bad_request(format!("batch has more than {max} events")));
    }
    let mut triggers = Vec::with_capacity(batch.batch.len());
    for (i, item) in batch.batch.into_iter().enumerate() {
        if item.channels.is_some() {
            return Err(ApiError::bad_request(format!("batch[{i}]: use \"channel\", not \"channels\"")));
        }
        triggers.push(validate(app, item).map_err(|e| ApiError::new(e.status, format!("batch[{i}]: {}", e.message)))?);
    }
    let mut results = Vec::with_capacity(triggers.len());
    for trigger in &triggers {
        let mut channels = deliver(state, app, trigger).await?;
        let attrs = trigger.channels.first().and_then(|c| channels.remove(c)).unwrap_or_else(|| json!({}));
        results.push(attrs);
    }
    let any_info = triggers.iter().any(|t| !t.info.is_empty());
    Ok(if any_info { json!({ "batch": results }) } else { json!({}) })
}

/// `GET /apps/{id}/channels`
pub async fn channels(state: &State, app: &App, prefix: Option<&str>, info: Option<&str>) -> Result<Value, ApiError> {
    let prefix = prefix.unwrap_or("");
    let info = info_list(info);
    let wants_users = info.iter().any(|i| i == "user_count");
    if wants_users && !prefix.starts_with("presence-") {
        return Err(ApiError::bad_request("user_count is only available with filter_by_prefix=presence-"));
    }
    let wants_subscriptions = info.iter().any(|i| i == "subscription_count");
    let all = state.adapter.channels(&app.config.id).await.map_err(internal)?;
    let mut out = BTreeMap::new();
    for channel in all {
        if !channel.name.starts_with(prefix) || channel.name.starts_with('#') {
            continue;
        }
        let mut attrs = Map::new();
        if wants_users {
            attrs.insert("user_count".into(), json!(channel.user_count));
        }
        if wants_subscriptions {
            attrs.insert("subscription_count".into(), json!(channel.subscription_count));
        }
        out.insert(channel.name, Value::Object(attrs));
    }
    Ok(json!({ "channels": out }))
}

/// `GET /apps/{id}/channels/{name}`
pub async fn channel(state: &State, app: &App, name: &str, info: Option<&str>) -> Result<Value, ApiError> {
    let parsed = ChannelName::parse(name).map_err(|e| ApiError::bad_request(format!("invalid channel: {e}")))?;
    let info = info_list(info);
    if info.iter().any(|i| i == "user_count") && parsed.kind() != ChannelKind::Presence {
        return Err(ApiError::bad_request("user_count is only available for presence channels"));
    }
    let mut out = channel_attributes(state, app, name, &info).await?;
    let count = match out.get("subscription_count").and_then(Value::as_u64) {
        Some(count) => count as usize,
        None => state.adapter.subscription_count(&app.config.id, name).await.map_err(internal)?,
    };
    out.insert("occupied".into(), json!(count > 0));
    Ok(Value::Object(out))
}

/// `GET /apps/{id}/channels/{name}/users`
pub async fn users(state: &State, app: &App, name: &str) -> Result<Value, ApiError> {
    let parsed = ChannelName::parse(name).map_err(|e| ApiError::bad_request(format!("invalid channel: {e}")))?;
    if parsed.kind() != ChannelKind::Presence {
        return Err(ApiError::bad_request("users are only available for presence channels"));
    }
    let members = state.adapter.members(&app.config.id, name).await.map_err(internal)?;
    let users: Vec<Value> = members.into_iter().map(|(id, _)| json!({ "id": id })).collect();
    Ok(json!({ "users": users }))
}

/// `POST /apps/{id}/users/{user_id}/terminate_connections`
pub async fn terminate(state: &State, app: &App, user_id: &str) -> Result<Value, ApiError> {
    state.adapter.terminate_user_connections(&app.config.id, user_id).await.map_err(internal)?;
    Ok(json!({}))
}
