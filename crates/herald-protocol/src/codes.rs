//! The Pusher error and close codes, named once so no magic numbers leak into
//! the gateway. The ranges decide what pusher-js does after a close:
//! 4000–4099 do not reconnect, 4100–4199 back off, 4200–4299 reconnect now,
//! 4300–4399 are non-fatal errors sent without closing.

/// A Pusher protocol error code (also used as the WebSocket close code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    /// Application does not exist (unknown key).
    pub const APP_NOT_FOUND: Self = Self(4001);
    /// Application disabled.
    pub const APP_DISABLED: Self = Self(4003);
    /// Application over its connection quota.
    pub const OVER_CONNECTION_QUOTA: Self = Self(4004);
    /// Path not found.
    pub const PATH_NOT_FOUND: Self = Self(4005);
    /// Invalid version string format.
    pub const INVALID_VERSION: Self = Self(4006);
    /// Unsupported protocol version.
    pub const UNSUPPORTED_PROTOCOL: Self = Self(4007);
    /// No protocol version supplied.
    pub const NO_PROTOCOL: Self = Self(4008);
    /// Connection is unauthorized (sign-in failed or user terminated).
    pub const UNAUTHORIZED: Self = Self(4009);
    /// Over capacity: also used for a client too slow to read its frames.
    pub const OVER_CAPACITY: Self = Self(4100);
    /// Closed for sending frames faster than allowed (still in the back-off
    /// range, so pusher-js waits before reconnecting).
    pub const FRAME_RATE_EXCEEDED: Self = Self(4101);
    /// Generic reconnect (used when the server drains for shutdown).
    pub const RECONNECT: Self = Self(4200);
    /// Pong reply not received.
    pub const PONG_NOT_RECEIVED: Self = Self(4201);
    /// Closed after inactivity.
    pub const INACTIVITY: Self = Self(4202);
    /// Non-fatal: client event rejected (rate limit, disabled, too large).
    pub const CLIENT_EVENT_REJECTED: Self = Self(4301);
    /// Non-fatal: the frame could not be understood (bad JSON, unknown event).
    pub const BAD_FRAME: Self = Self(4302);
    /// WebSocket close code: a message exceeded the configured maximum.
    pub const MESSAGE_TOO_BIG: Self = Self(1009);

    /// The numeric value, as sent in `pusher:error` and as the close code.
    pub fn as_u16(self) -> u16 {
        self.0
    }

    /// True when the client should not reconnect with the same parameters.
    pub fn is_refusal(self) -> bool {
        (4000..4100).contains(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_match_pusher_js_close_actions() {
        assert!(ErrorCode::APP_NOT_FOUND.is_refusal());
        assert!(ErrorCode::UNAUTHORIZED.is_refusal());
        assert!(!ErrorCode::OVER_CAPACITY.is_refusal());
        assert!((4100..4200).contains(&ErrorCode::FRAME_RATE_EXCEEDED.as_u16()));
        assert!(!ErrorCode::RECONNECT.is_refusal());
        assert_eq!(ErrorCode::PONG_NOT_RECEIVED.as_u16(), 4201);
    }
}
