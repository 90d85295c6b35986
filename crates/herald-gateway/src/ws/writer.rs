//! A connection's writer task: it runs only when the socket refused part of
//! what the flusher wrote (`socket.rs`, `flush.rs`), and for the goodbye.
//!
//! Woken by the flusher when the kernel refused some of the queue (or the
//! socket failed), it waits until the socket is writable and drains the
//! queue with `writev`, so frames that piled up behind a busy socket leave
//! in one write. When a close is requested it sends `pusher:error` and a close
//! frame with the same code, within a short deadline, then ends the stream.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_adapter::{close_frame, text_frame, Connection};
use herald_protocol::{message, ErrorCode};

use super::socket::{Drained, Outbound};

/// How long a closing handshake may take.
const CLOSE_DEADLINE: Duration = Duration::from_secs(2);

pub(super) async fn run(out: Arc<Outbound>, conn: Arc<Connection>) {
    let closing = conn.closing();
    tokio::pin!(closing);
    'serve: loop {
        tokio::select! {
            biased;
            _ = &mut closing => break,
            _ = out.queued() => {}
        }
        loop {
            match out.drain() {
                Drained::Empty => break,
                Drained::Dead => break 'serve,
                Drained::Blocked => tokio::select! {
                    ready = out.writable() => if ready.is_err() { break 'serve },
                    _ = &mut closing => break 'serve,
                },
            }
        }
    }
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
