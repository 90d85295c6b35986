//! Channel names and the kind of channel a name selects.
//!
//! A channel's behaviour is decided entirely by its name prefix, so parsing a
//! name once into a [`ChannelName`] lets the rest of Herald branch on a type
//! instead of on string prefixes scattered through the code.

use std::fmt;

/// Longest channel name accepted (what the official server SDK enforces).
pub const MAX_CHANNEL_NAME_LEN: usize = 200;

/// The prefix of the reserved channel that carries events sent to one user.
pub const SERVER_TO_USER_PREFIX: &str = "#server-to-user-";

/// What a channel's prefix says about authorization and delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelKind {
    Public,
    Private,
    PrivateEncrypted,
    Presence,
    /// `#server-to-user-{id}`: only that user's signed-in sockets may join.
    ServerToUser,
}

impl ChannelKind {
    /// Short label used in metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            ChannelKind::Public => "public",
            ChannelKind::Private => "private",
            ChannelKind::PrivateEncrypted => "private-encrypted",
            ChannelKind::Presence => "presence",
            ChannelKind::ServerToUser => "server-to-user",
        }
    }

    /// All kinds, in a fixed order (for pre-registering per-kind metrics).
    pub const ALL: [ChannelKind; 5] = [
        ChannelKind::Public,
        ChannelKind::Private,
        ChannelKind::PrivateEncrypted,
        ChannelKind::Presence,
        ChannelKind::ServerToUser,
    ];

    /// Position in [`ChannelKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Why a channel name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelNameError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is longer than {MAX_CHANNEL_NAME_LEN} characters")]
    TooLong,
    #[error("channel name contains an invalid character {0:?}")]
    InvalidCharacter(char),
}

/// A validated channel name together with its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelName<'a> {
    name: &'a str,
    kind: ChannelKind,
    cache: bool,
}

impl<'a> ChannelName<'a> {
    /// Validates `name` and works out its kind.
    pub fn parse(name: &'a str) -> Result<Self, ChannelNameError> {
        if name.is_empty() {
            return Err(ChannelNameError::Empty);
        }
        if name.len() > MAX_CHANNEL_NAME_LEN {
            return Err(ChannelNameError::TooLong);
        }
        let checked = name.strip_prefix(SERVER_TO_USER_PREFIX).unwrap_or(name);
        if let Some(bad) = checked.chars().find(|c| !is_allowed_char(*c)) {
            return Err(ChannelNameError::InvalidCharacter(bad));
        }
        let (kind, cache) = classify(name);
        Ok(Self { name, kind, cache })
    }

    pub fn as_str(&self) -> &'a str {
        self.name
    }

    pub fn kind(&self) -> ChannelKind {
        self.kind
    }

    /// Cache channels keep their last event for new subscribers.
    pub fn is_cache(&self) -> bool {
        self.cache
    }

    /// Private, private-encrypted and presence channels need a signed `auth`.
    pub fn requires_auth(&self) -> bool {
        matches!(self.kind, ChannelKind::Private | ChannelKind::PrivateEncrypted | ChannelKind::Presence)
    }

    /// Client events are allowed on private and presence channels only.
    pub fn allows_client_events(&self) -> bool {
        matches!(self.kind, ChannelKind::Private | ChannelKind::Presence)
    }

    /// For `#server-to-user-{id}`, the user id.
    pub fn target_user(&self) -> Option<&'a str> {
        self.name.strip_prefix(SERVER_TO_USER_PREFIX)
    }
}

impl fmt::Display for ChannelName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

fn is_allowed_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '=' | '@' | ',' | '.' | ';')
}

fn classify(name: &str) -> (ChannelKind, bool) {
    // Longest prefixes first: "private-encrypted-" also starts with "private-".
    const PREFIXES: [(&str, ChannelKind, bool); 8] = [
        (SERVER_TO_USER_PREFIX, ChannelKind::ServerToUser, false),
        ("private-encrypted-cache-", ChannelKind::PrivateEncrypted, true),
        ("private-encrypted-", ChannelKind::PrivateEncrypted, false),
        ("private-cache-", ChannelKind::Private, true),
        ("private-", ChannelKind::Private, false),
        ("presence-cache-", ChannelKind::Presence, true),
        ("presence-", ChannelKind::Presence, false),
        ("cache-", ChannelKind::Public, true),
    ];
    PREFIXES
        .iter()
        .find(|(prefix, _, _)| name.starts_with(prefix))
        .map(|(_, kind, cache)| (*kind, *cache))
        .unwrap_or((ChannelKind::Public, false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kind(name: &str) -> (ChannelKind, bool) {
        let parsed = ChannelName::parse(name).unwrap();
        (parsed.kind(), parsed.is_cache())
    }

    #[test]
    fn prefixes_select_kinds() {
        assert_eq!(kind("news"), (ChannelKind::Public, false));
        assert_eq!(kind("cache-news"), (ChannelKind::Public, true));
        assert_eq!(kind("private-a"), (ChannelKind::Private, false));
        assert_eq!(kind("private-cache-a"), (ChannelKind::Private, true));
        assert_eq!(kind("private-encrypted-a"), (ChannelKind::PrivateEncrypted, false));
        assert_eq!(kind("private-encrypted-cache-a"), (ChannelKind::PrivateEncrypted, true));
        assert_eq!(kind("presence-room"), (ChannelKind::Presence, false));
        assert_eq!(kind("presence-cache-room"), (ChannelKind::Presence, true));
        assert_eq!(kind("#server-to-user-42"), (ChannelKind::ServerToUser, false));
        assert_eq!(ChannelName::parse("#server-to-user-42").unwrap().target_user(), Some("42"));
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!(ChannelName::parse(""), Err(ChannelNameError::Empty));
        assert_eq!(ChannelName::parse(&"a".repeat(201)), Err(ChannelNameError::TooLong));
        assert!(ChannelName::parse(&"a".repeat(200)).is_ok());
        assert_eq!(ChannelName::parse("a b"), Err(ChannelNameError::InvalidCharacter(' ')));
        assert!(ChannelName::parse("#other").is_err());
        assert!(ChannelName::parse("a=b@c,d.e;f_g-h").is_ok());
    }

    #[test]
    fn client_events_only_on_private_and_presence() {
        assert!(!ChannelName::parse("x").unwrap().allows_client_events());
        assert!(ChannelName::parse("private-x").unwrap().allows_client_events());
        assert!(ChannelName::parse("presence-x").unwrap().allows_client_events());
        assert!(!ChannelName::parse("private-encrypted-x").unwrap().allows_client_events());
    }

    /// The alphabet Pusher allows in channel names, written out here rather
    /// than taken from the code under test.
    const ALPHABET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-=@,.;";

    /// Names that are mostly valid, with an occasional character just
    /// outside the alphabet, a reserved prefix, or anything at all.
    fn names() -> impl Strategy<Value = String> {
        prop_oneof![
            ".{0,220}",
            "(#server-to-user-|private-|presence-cache-)?[A-Za-z0-9_=@,.;-]{0,205}",
            "(#server-to-user-)?[A-Za-z0-9_=@,.; :#/+*!?é\t\x00-]{0,205}",
        ]
    }

    proptest! {
        #[test]
        fn parse_accepts_exactly_the_alphabet(name in names()) {
            let body = name.strip_prefix("#server-to-user-").unwrap_or(&name);
            let first_bad = body.chars().find(|c| !ALPHABET.contains(*c));
            let expected = if name.is_empty() {
                Err(ChannelNameError::Empty)
            } else if name.len() > 200 {
                Err(ChannelNameError::TooLong)
            } else if let Some(bad) = first_bad {
                Err(ChannelNameError::InvalidCharacter(bad))
            } else {
                Ok(name.as_str())
            };
            prop_assert_eq!(ChannelName::parse(&name).map(|n| n.as_str()), expected);
        }

        #[test]
        fn valid_alphabet_is_accepted(name in "[A-Za-z0-9_=@,.;-]{1,200}") {
            prop_assert!(ChannelName::parse(&name).is_ok());
        }
    }
}
