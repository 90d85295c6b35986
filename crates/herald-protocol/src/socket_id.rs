//! Socket ids: two unsigned integers joined by a dot (`123.456`).
//!
//! The official server SDKs reject any other shape when signing channel auth,
//! so this format is part of the protocol, not a detail.

use std::fmt;
use std::str::FromStr;

/// A connection's id, unique per server process with overwhelming probability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId {
    pub major: u64,
    pub minor: u64,
}

/// The text was not `<u64>.<u64>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid socket id: expected two integers joined by a dot")]
pub struct InvalidSocketId;

impl SocketId {
    /// A fresh random socket id (10-digit halves, like Pusher's).
    pub fn random() -> Self {
        use rand::Rng;
        let mut rng = rand::thread_rng();
        Self {
            major: rng.gen_range(1_000_000_000..10_000_000_000),
            minor: rng.gen_range(1_000_000_000..10_000_000_000),
        }
    }
}

impl fmt::Display for SocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl FromStr for SocketId {
    type Err = InvalidSocketId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, b) = s.split_once('.').ok_or(InvalidSocketId)?;
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit());
        if !digits(a) || !digits(b) {
            return Err(InvalidSocketId);
        }
        Ok(Self { major: a.parse().map_err(|_| InvalidSocketId)?, minor: b.parse().map_err(|_| InvalidSocketId)? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn random_ids_round_trip() {
        let id = SocketId::random();
        assert_eq!(id.to_string().parse::<SocketId>(), Ok(id));
    }

    #[test]
    fn rejects_other_shapes() {
        for bad in ["", "1", "1.", ".1", "a.b", "1.2.3", "-1.2", "1 .2", "+1.2"] {
            assert!(bad.parse::<SocketId>().is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn any_pair_round_trips(a: u64, b: u64) {
            let id = SocketId { major: a, minor: b };
            prop_assert_eq!(id.to_string().parse::<SocketId>(), Ok(id));
        }

        #[test]
        fn parse_never_panics(s in ".{0,40}") {
            let _ = s.parse::<SocketId>();
        }
    }
}
