//! Parsing of the JSON documents clients hand us for presence channels
//! (`channel_data`) and user sign-in (`user_data`).

use serde_json::Value;

/// Most users a watchlist may name.
pub const MAX_WATCHLIST: usize = 100;

/// A presence member as announced in `channel_data`.
#[derive(Debug, Clone, PartialEq)]
pub struct PresenceMember {
    pub user_id: String,
    pub user_info: Value,
}

/// A signed-in user as described in `user_data`.
#[derive(Debug, Clone, PartialEq)]
pub struct SignedInUser {
    pub id: String,
    pub watchlist: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresenceDataError {
    #[error("channel_data is not a JSON object")]
    NotAnObject,
    #[error("channel_data has no user_id")]
    MissingUserId,
    #[error("user_data is not a JSON object")]
    UserDataNotAnObject,
    #[error("user_data has no non-empty string id")]
    MissingUserDataId,
    #[error("watchlist must be an array of at most {MAX_WATCHLIST} user ids")]
    BadWatchlist,
}

/// Parses presence `channel_data`; `user_id` may be a string or a number.
pub fn parse_channel_data(channel_data: &str) -> Result<PresenceMember, PresenceDataError> {
    let value: Value = serde_json::from_str(channel_data).map_err(|_| PresenceDataError::NotAnObject)?;
    let object = value.as_object().ok_or(PresenceDataError::NotAnObject)?;
    let user_id = match object.get("user_id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(PresenceDataError::MissingUserId),
    };
    let user_info = object.get("user_info").cloned().unwrap_or(Value::Null);
    Ok(PresenceMember { user_id, user_info })
}

/// Parses sign-in `user_data`: `id` must be a non-empty string.
pub fn parse_user_data(user_data: &str) -> Result<SignedInUser, PresenceDataError> {
    let value: Value = serde_json::from_str(user_data).map_err(|_| PresenceDataError::UserDataNotAnObject)?;
    let object = value.as_object().ok_or(PresenceDataError::UserDataNotAnObject)?;
    let id = match object.get("id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(PresenceDataError::MissingUserDataId),
    };
    let watchlist = match object.get("watchlist") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) if items.len() <= MAX_WATCHLIST => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                _ => Err(PresenceDataError::BadWatchlist),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(PresenceDataError::BadWatchlist),
    };
    Ok(SignedInUser { id, watchlist })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn channel_data_accepts_string_and_number_ids() {
        let m = parse_channel_data(r#"{"user_id":"u1","user_info":{"name":"A"}}"#).unwrap();
        assert_eq!(m.user_id, "u1");
        assert_eq!(m.user_info, json!({"name":"A"}));
        assert_eq!(parse_channel_data(r#"{"user_id":7}"#).unwrap().user_id, "7");
        assert_eq!(parse_channel_data(r#"{"user_id":7}"#).unwrap().user_info, Value::Null);
    }

    #[test]
    fn channel_data_errors() {
        assert_eq!(parse_channel_data("nope"), Err(PresenceDataError::NotAnObject));
        assert_eq!(parse_channel_data("[1]"), Err(PresenceDataError::NotAnObject));
        assert_eq!(parse_channel_data("{}"), Err(PresenceDataError::MissingUserId));
        assert_eq!(parse_channel_data(r#"{"user_id":""}"#), Err(PresenceDataError::MissingUserId));
    }

    #[test]
    fn user_data_rules() {
        let u = parse_user_data(r#"{"id":"u1","watchlist":["u2",3]}"#).unwrap();
        assert_eq!(u.id, "u1");
        assert_eq!(u.watchlist, vec!["u2".to_string(), "3".to_string()]);
        assert_eq!(parse_user_data(r#"{"id":5}"#), Err(PresenceDataError::MissingUserDataId));
        assert_eq!(parse_user_data(r#"{}"#), Err(PresenceDataError::MissingUserDataId));
        let too_many: Vec<String> = (0..101).map(|i| i.to_string()).collect();
        let data = json!({"id":"a","watchlist":too_many}).to_string();
        assert_eq!(parse_user_data(&data), Err(PresenceDataError::BadWatchlist));
    }
}
