//! How a connection's outbound queue is finished: the goodbye frames on a
//! close request, drained within a short deadline, then FIN.
//!
//! While a connection is served, what the flusher could not write
//! (`socket.rs`, `flush.rs`) is drained by the session's own loop
//! (`session.rs`), so there is no writer task per connection. When a close
//! is requested the loop ends and [`goodbye`] sends `pusher:error` and a
//! close frame with the same code, then ends the stream; a connection refused
//! before its session starts gets the same goodbye at once.

use std::time::Duration;

use bytes::Bytes;
use herald_adapter::{close_frame, text_frame, Connection};
use herald_protocol::{message, ErrorCode};

use super::socket::{Drained, Outbound};

/// How long a closing handshake may take.
const CLOSE_DEADLINE: Duration = Duration::from_secs(2);

/// Seals the queue and sends the closing frames: with a requested close
/// code, what was waiting is dropped (a partly written frame is finished)
/// and `pusher:error` + a close frame with the code follow; without one
/// (the client left) what is queued is still sent. Drained within
/// [`CLOSE_DEADLINE`], then FIN.
pub(super) async fn goodbye(out: &Outbound, conn: &Connection) {
    let code = conn.close_requested();
    let goodbye: Vec<Bytes> = match code {
        Some(code) => {
            let error = text_frame(message::error(Some(code), close_message(code)));
            vec![error.wire().clone(), close_frame(code.as_u16(), close_message(code))]
        }
        None => Vec::new(),
    };
    out.seal(code, &goodbye);
    let flush = async {
        loop {
            match out.drain() {
                Drained::Empty | Drained::Dead => break,
                Drained::Blocked => {
                    if out.writable().await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_DEADLINE, flush).await;
    out.shutdown();
}

/// The human text sent with a close code.
pub fn close_message(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::APP_NOT_FOUND => "Application does not exist",
        ErrorCode::APP_DISABLED => "Application is disabled",
        ErrorCode::OVER_CONNECTION_QUOTA => "Application is over its connection quota",
        ErrorCode::INVALID_VERSION => "Invalid version string format",
        ErrorCode::UNSUPPORTED_PROTOCOL => "Unsupported protocol version",
        ErrorCode::UNAUTHORIZED => "Connection is unauthorized",
        ErrorCode::OVER_CAPACITY => "Connection is too slow: its outbound buffer is full",
        ErrorCode::FRAME_RATE_EXCEEDED => "Client is sending frames faster than allowed; back off",
        ErrorCode::RECONNECT => "Server is shutting down; please reconnect",
        ErrorCode::PONG_NOT_RECEIVED => "Pong reply not received",
        ErrorCode::INACTIVITY => "Closed after inactivity",
        ErrorCode::MESSAGE_TOO_BIG => "Message is larger than the server accepts",
        _ => "Connection closed",
    }
}
