//! A connection's writer task: the only code that writes to its socket.
//!
//! It drains the connection's bounded queue, feeding every frame already
//! waiting before one flush, so back-to-back broadcasts leave in one write.
//! When a close is requested it sends `pusher:error` and a close frame with
//! the same code, within a short deadline.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{Sink, SinkExt};
use herald_adapter::{Connection, Frame};
use herald_protocol::{message, ErrorCode};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

/// Most frames gathered into one flush.
const MAX_BATCH: usize = 256;
/// How long a closing handshake may take.
const CLOSE_DEADLINE: Duration = Duration::from_secs(2);

pub async fn run<S>(mut sink: S, mut queue: mpsc::Receiver<Frame>, conn: Arc<Connection>)
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    let closing = conn.closing();
    tokio::pin!(closing);
    loop {
        let first = tokio::select! {
            biased;
            _ = &mut closing => break,
            frame = queue.recv() => match frame {
                Some(frame) => frame,
                None => break,
            },
        };
        let write = async {
            sink.feed(message(first)).await?;
            for _ in 1..MAX_BATCH {
                match queue.try_recv() {
                    Ok(frame) => sink.feed(message(frame)).await?,
                    Err(_) => break,
                }
            }
            sink.flush().await
        };
        let written = tokio::select! {
            result = write => result.is_ok(),
            _ = &mut closing => false,
        };
        if !written {
            break;
        }
    }
    let goodbye = async {
        if let Some(code) = conn.close_requested() {
            let error = message::error(Some(code), close_message(code));
            sink.send(Message::Text(error.into())).await?;
            let frame = CloseFrame { code: CloseCode::from(code.as_u16()), reason: close_message(code).into() };
            sink.send(Message::Close(Some(frame))).await?;
        }
        sink.close().await
    };
    let _ = tokio::time::timeout(CLOSE_DEADLINE, goodbye).await;
}

/// A queued frame as tungstenite's message (its payload, not copied).
fn message(frame: Frame) -> Message {
    Message::Text(Utf8Bytes::try_from(frame.payload_bytes()).unwrap_or_default())
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
