//! One client connection: the reader loop that understands the client's
//! frames, and the bookkeeping around it (keep-alive, sign-in deadline,
//! frame and client-event rate limits, departure).
//!
//! The reader never writes to the socket directly: every reply is sent like a
//! broadcast (`Connection::send`: queued behind what is waiting, written by
//! the flusher), so replies and broadcasts keep their order. When the
//! kernel refuses part of the queue, the reader loop itself waits for the
//! socket to become writable and drains it (`Outbound::drain`), so a
//! connection is one task, not a reader and a writer; the goodbye frames
//! are sent by `writer::goodbye` once the loop ends.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use herald_adapter::{send_counted, text_frame, AdapterError, Connection, PresenceFull, Pushed, Subscription};
use herald_metrics::Rejection;
use herald_protocol::message::{self, ClientMessage, EventData};
use herald_protocol::presence::{parse_channel_data, parse_user_data};
use herald_protocol::{sign, ChannelKind, ChannelName, ErrorCode, SocketId};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use super::socket::{Drained, Outbound, SocketIo};
use super::upgrade::Admission;
use super::writer;
use crate::apps::App;
use crate::hub;
use crate::state::State;

/// Serves one upgraded WebSocket until it closes. `early` holds the
/// bytes read past the handshake (the client's first frames); `preface`,
/// when not empty, is the handshake's 101, not yet written: it goes out in
/// the same write as the first frame (it has room for that frame).
pub(super) async fn run(
    state: Arc<State>,
    sock: TcpStream,
    early: Bytes,
    config: WebSocketConfig,
    admission: Admission,
    mut preface: BytesMut,
) {
    let sock = Arc::new(sock);
    let socket_id = SocketId::random();
    let out = Outbound::new(sock.clone(), state.config.outbound_queue, state.flushers.for_socket(socket_id));
    let conn = Connection::with_outlet(socket_id, out.clone());
    let io = SocketIo::new(sock, early, out.clone(), conn.clone());
    let stream = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    let app = match admission {
        Admission::Accept(app) => app,
        Admission::Refuse(code) => {
            tracing::debug!(code = code.as_u16(), "connection refused");
            refuse(&out, &conn, preface, code).await;
            return;
        }
    };
    let _open = state.drain.open();
    tracing::debug!(app = %app.config.id, %socket_id, "connection opened");
    // The quota is checked and reserved in one step (a burst of connects
    // cannot all pass a separate count).
    match state.adapter.add_connection(&app.config.id, conn.clone(), app.config.max_connections) {
        Ok(()) => {}
        Err(AdapterError::OverQuota(_)) => {
            app.metrics.rejected(Rejection::OverConnectionQuota);
            refuse(&out, &conn, preface, ErrorCode::OVER_CONNECTION_QUOTA).await;
            return;
        }
        Err(e) => {
            tracing::error!(app = %app.config.id, error = %e, "cannot register connection");
            refuse(&out, &conn, preface, ErrorCode::APP_NOT_FOUND).await;
            return;
        }
    }
    app.metrics.connection_opened();
    let activity_timeout = state.config.activity_timeout;
    let established = text_frame(message::connection_established(socket_id, activity_timeout.as_secs()));
    if preface.is_empty() {
        send_counted(&conn, established, &app.metrics);
    } else {
        // The 101 and `connection_established` in one write: the client
        // is woken once for both. (Taken by value: the session's future
        // does not keep the bytes for the connection's life.)
        preface.extend_from_slice(established.wire());
        if out.push_preface(preface) == Pushed::Accepted {
            app.metrics.delivered(1, established.len());
        }
    }

    let mut session = Session {
        state: state.clone(),
        app: app.clone(),
        conn: conn.clone(),
        out: out.clone(),
        presence_users: HashMap::new(),
        rate: RateLimiter::new(app.config.client_event_rate, app.config.client_event_rate),
        frames: FrameLimiter::for_app(&state.config, &app.config),
    };
    session.read(stream).await;

    let close_code = conn.close_requested().map(|c| c.as_u16());
    tracing::debug!(app = %app.config.id, %socket_id, ?close_code, "connection closed");
    // Side by side: the goodbye (up to 2 s for a slow client) must not hold
    // up the departure, nor a departure that falls back to synchronous
    // cleanup (a full queue, a slow fabric) hold up the close frame.
    tokio::join!(state.cleanup.depart(&app.id, conn.clone()), writer::goodbye(&out, &conn));
    app.metrics.connection_closed();
}

/// Refuses a connection before its session starts: the handshake's 101
/// (when not yet written) goes first, then `pusher:error` and the close.
async fn refuse(out: &Outbound, conn: &Connection, preface: BytesMut, code: ErrorCode) {
    out.push_preface(preface);
    conn.close(code);
    writer::goodbye(out, conn).await;
}

struct Session {
    state: Arc<State>,
    app: Arc<App>,
    conn: Arc<Connection>,
    /// The connection's outbound queue: the reader loop also drains what
    /// the kernel refused to the flusher (no writer task per connection).
    out: Arc<Outbound>,
    /// Presence channels joined: channel → the user id joined as.
    presence_users: HashMap<String, Arc<str>>,
    rate: RateLimiter,
    frames: FrameLimiter,
}

impl Session {
    async fn read<S>(&mut self, mut stream: S)
    where
        S: Stream<Item = Result<Message, WsError>> + Unpin,
    {
        let activity = self.state.config.activity_timeout;
        let pong_timeout = self.state.config.pong_timeout;
        let signin_timeout = self.app.config.user_authentication_timeout;
        let signin_deadline = Instant::now() + Duration::from_secs(signin_timeout);
        let mut last_seen = Instant::now();
        let mut ping_sent = false;
        let conn = self.conn.clone();
        let closing = conn.closing();
        tokio::pin!(closing);
        let state = self.state.clone();
        let drain_turn = state.drain.turn();
        tokio::pin!(drain_turn);
        let mut drain_seen = false;
        // The kernel refused part of the queue: wait until it takes more.
        let mut blocked = false;
        let out = self.out.clone();
        // Two timers for the connection's life, not one per frame: the idle
        // timer is re-armed only when it fires early (a frame arrived since
        // it was set), so reading a frame costs a clock read, not a timer
        // wheel insertion and removal.
        let idle = tokio::time::sleep_until(last_seen + activity);
        tokio::pin!(idle);
        let signin = tokio::time::sleep_until(signin_deadline);
        tokio::pin!(signin);
        loop {
            let awaiting_signin = signin_timeout > 0 && self.conn.user_id().is_none();
            tokio::select! {
                biased;
                _ = &mut closing => break,
                _ = &mut drain_turn, if !drain_seen => {
                    drain_seen = true;
                    self.conn.close(ErrorCode::RECONNECT);
                }
                _ = out.queued(), if !blocked => match out.drain() {
                    Drained::Empty => {}
                    Drained::Blocked => blocked = true,
                    Drained::Dead => break,
                },
                ready = out.writable(), if blocked => {
                    if ready.is_err() {
                        break;
                    }
                    match out.drain() {
                        Drained::Empty => blocked = false,
                        Drained::Blocked => {}
                        Drained::Dead => break,
                    }
                }
                frame = stream.next() => {
                    last_seen = Instant::now();
                    if ping_sent {
                        // The timer was armed for the pong deadline, which
                        // may be later than the next activity deadline.
                        ping_sent = false;
                        idle.as_mut().reset(last_seen + activity);
                    }
                    if matches!(frame, Some(Ok(ref m)) if !m.is_close()) && !self.frame_allowed() {
                        continue;
                    }
                    match frame {
                        Some(Ok(Message::Text(text))) => {
                            self.app.metrics.ws_messages_received.increment(1);
                            self.app.metrics.ws_bytes_received.increment(text.len() as u64);
                            self.handle_text(text.as_str()).await;
                        }
                        Some(Ok(Message::Binary(_))) => {
                            self.app.metrics.rejected(Rejection::BadFrame);
                            self.error(ErrorCode::BAD_FRAME, "binary frames are not part of the Pusher protocol");
                        }
                        Some(Ok(Message::Close(_))) | None => break,
                        Some(Ok(_)) => {}
                        Some(Err(WsError::Capacity(_))) => {
                            self.app.metrics.rejected(Rejection::PayloadTooLarge);
                            self.conn.close(ErrorCode::MESSAGE_TOO_BIG);
                        }
                        Some(Err(_)) => break,
                    }
                }
                _ = &mut idle => {
                    let due = if ping_sent { last_seen + activity + pong_timeout } else { last_seen + activity };
                    if Instant::now() < due {
                        idle.as_mut().reset(due);
                    } else if ping_sent {
                        self.conn.close(ErrorCode::PONG_NOT_RECEIVED);
                    } else {
                        self.reply(text_frame(message::ping()));
                        ping_sent = true;
                        idle.as_mut().reset(last_seen + activity + pong_timeout);
                    }
                }
                _ = &mut signin, if awaiting_signin => {
                    self.conn.close(ErrorCode::UNAUTHORIZED);
                }
            }
        }
    }

    /// Spends one frame of the connection's budget; over it, answers 4301
    /// and, once the client keeps going, closes with 4101 (back off).
    fn frame_allowed(&mut self) -> bool {
        let verdict = self.frames.check();
        if verdict == Verdict::Allow {
            return true;
        }
        self.app.metrics.rejected(Rejection::FrameRateLimited);
        if verdict == Verdict::Close {
            self.error(ErrorCode::CLIENT_EVENT_REJECTED, "frame rate limit exceeded, closing");
            self.conn.close(ErrorCode::FRAME_RATE_EXCEEDED);
        } else {
            self.error(ErrorCode::CLIENT_EVENT_REJECTED, "frame rate limit exceeded, frame dropped");
        }
        false
    }

    /// Queues a frame for this client (counted as sent).
    fn reply(&self, frame: herald_adapter::Frame) {
        send_counted(&self.conn, frame, &self.app.metrics);
    }

    fn error(&self, code: ErrorCode, text: &str) {
        self.reply(text_frame(message::error(Some(code), text)));
    }

    async fn handle_text(&mut self, text: &str) {
        let parsed = match ClientMessage::parse(text) {
            Ok(m) => m,
            Err(e) => {
                self.app.metrics.rejected(Rejection::BadFrame);
                return self.error(ErrorCode::BAD_FRAME, &e.to_string());
            }
        };
        match parsed {
            ClientMessage::Ping => {
                self.reply(text_frame(message::pong()));
            }
            ClientMessage::Pong => {}
            ClientMessage::Subscribe { channel, auth, channel_data } => {
                self.subscribe(&channel, auth.as_deref(), channel_data.as_deref()).await
            }
            ClientMessage::Unsubscribe { channel } => self.unsubscribe(&channel).await,
            ClientMessage::Signin { auth, user_data } => self.sign_in(&auth, &user_data).await,
            ClientMessage::ClientEvent { event, channel, data } => {
                self.client_event(&event, &channel, &data, text.len()).await
            }
        }
    }

    fn subscription_error(&self, channel: &str, kind: &str, text: &str, status: u16) {
        self.reply(text_frame(message::subscription_error(channel, kind, text, status)));
    }

    async fn subscribe(&mut self, channel: &str, auth: Option<&str>, channel_data: Option<&str>) {
        let name = match ChannelName::parse(channel) {
            Ok(name) => name,
            Err(e) => {
                self.app.metrics.rejected(Rejection::BadRequest);
                return self.subscription_error(channel, "InvalidChannel", &e.to_string(), 400);
            }
        };
        let config = &self.app.config;
        if self.conn.channel_count() >= config.max_channels_per_connection && !self.conn.is_subscribed(channel) {
            self.app.metrics.rejected(Rejection::BadRequest);
            let text = format!("a connection may join at most {} channels", config.max_channels_per_connection);
            return self.subscription_error(channel, "LimitReached", &text, 400);
        }
        if name.requires_auth() {
            let socket_id = self.conn.socket_id.to_string();
            let data = if name.kind() == ChannelKind::Presence { channel_data } else { None };
            let to_sign = sign::channel_string_to_sign(&socket_id, channel, data);
            let valid = auth.is_some_and(|auth| sign::verify_auth_token(&config.key, &config.secret, &to_sign, auth));
            if !valid || (name.kind() == ChannelKind::Presence && channel_data.is_none()) {
                self.app.metrics.rejected(Rejection::SubscriptionAuth);
                return self.subscription_error(channel, "AuthError", "Invalid signature", 401);
            }
        }
        if let Some(user) = name.target_user() {
            if self.conn.user_id().as_deref() != Some(user) {
                self.app.metrics.rejected(Rejection::SubscriptionAuth);
                return self.subscription_error(channel, "AuthError", "Sign in as this user first", 403);
            }
        }
        let member = match (name.kind(), channel_data) {
            (ChannelKind::Presence, Some(data)) => match parse_channel_data(data) {
                Ok(member) => Some(member),
                Err(e) => {
                    self.app.metrics.rejected(Rejection::BadRequest);
                    return self.subscription_error(channel, "InvalidChannelData", &e.to_string(), 400);
                }
            },
            _ => None,
        };
        if let Some(member) = &member {
            if member.user_info.to_string().len() > config.max_presence_user_info_bytes {
                self.app.metrics.rejected(Rejection::PresenceLimit);
                let text = format!("user_info is larger than {} bytes", config.max_presence_user_info_bytes);
                return self.subscription_error(channel, "LimitReached", &text, 400);
            }
        }
        let user_id = member.as_ref().map(|m| Arc::<str>::from(m.user_id.as_str()));
        let request = Subscription {
            channel: channel.to_string(),
            member,
            max_members: config.max_presence_members,
            is_cache: name.is_cache(),
        };
        let outcome = match self.state.adapter.subscribe(&self.app.config.id, &self.conn, request).await {
            Ok(outcome) => outcome,
            Err(AdapterError::PresenceFull(PresenceFull(max))) => {
                self.app.metrics.rejected(Rejection::PresenceLimit);
                let text = format!("presence channel already has {max} members");
                return self.subscription_error(channel, "LimitReached", &text, 403);
            }
            Err(e) => {
                tracing::warn!(app = %self.app.config.id, channel, error = %e, "subscribe failed");
                return self.subscription_error(channel, "ServiceUnavailable", &e.to_string(), 503);
            }
        };
        if outcome.cache_miss {
            self.app.webhooks.cache_miss(channel);
        }
        if outcome.already_subscribed {
            return;
        }
        self.app.metrics.subscribed(name.kind().index());
        if let Some(user_id) = user_id {
            self.presence_users.insert(channel.to_string(), user_id);
        }
    }

    async fn unsubscribe(&mut self, channel: &str) {
        self.presence_users.remove(channel);
        match self.state.adapter.unsubscribe(&self.app.config.id, &self.conn, channel).await {
            Ok(Some(_)) => hub::channel_left(&self.app, channel),
            Ok(None) => {}
            Err(e) => tracing::warn!(app = %self.app.config.id, channel, error = %e, "unsubscribe failed"),
        }
    }

    async fn sign_in(&mut self, auth: &str, user_data: &str) {
        let config = &self.app.config;
        let to_sign = sign::user_string_to_sign(&self.conn.socket_id.to_string(), user_data);
        if !sign::verify_auth_token(&config.key, &config.secret, &to_sign, auth) {
            self.app.metrics.rejected(Rejection::SubscriptionAuth);
            return self.conn.close(ErrorCode::UNAUTHORIZED);
        }
        let user = match parse_user_data(user_data) {
            Ok(user) => user,
            Err(_) => {
                self.app.metrics.rejected(Rejection::BadRequest);
                return self.conn.close(ErrorCode::UNAUTHORIZED);
            }
        };
        let outcome = match self.state.adapter.sign_in(&self.app.config.id, &self.conn, &user.id, &user.watchlist).await
        {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::warn!(app = %self.app.config.id, error = %e, "sign-in failed");
                return self.error(ErrorCode::RECONNECT, "sign-in failed, reconnect");
            }
        };
        self.reply(text_frame(message::signin_success(user_data)));
        if let Some(frame) = hub::watchlist_snapshot(&user.watchlist, &outcome.online_watched) {
            self.reply(frame);
        }
    }

    async fn client_event(&mut self, event: &str, channel: &str, data: &Value, frame_len: usize) {
        let config = &self.app.config;
        let refuse = |s: &Self, why: Rejection, text: &str| {
            s.app.metrics.rejected(why);
            s.error(ErrorCode::CLIENT_EVENT_REJECTED, text);
        };
        if !config.client_events {
            return refuse(self, Rejection::ClientEventRefused, "client events are disabled for this app");
        }
        let allowed = ChannelName::parse(channel).is_ok_and(|n| n.allows_client_events());
        if !allowed {
            return refuse(
                self,
                Rejection::ClientEventRefused,
                "client events are only allowed on private and presence channels",
            );
        }
        if !self.conn.is_subscribed(channel) {
            return refuse(
                self,
                Rejection::ClientEventRefused,
                "subscribe to the channel before sending client events",
            );
        }
        if event.len() > config.max_event_name_len {
            return refuse(self, Rejection::ClientEventRefused, "event name is too long");
        }
        if EventData::Json(data).len() > config.max_event_payload_bytes || frame_len > self.state.config.max_frame_bytes
        {
            return refuse(self, Rejection::PayloadTooLarge, "event payload is too large");
        }
        if !self.rate.allow() {
            return refuse(self, Rejection::ClientEventRateLimited, "client event rate limit exceeded");
        }
        let user_id = self.presence_users.get(channel).cloned();
        let frame = text_frame(message::event(event, Some(channel), EventData::Json(data), user_id.as_deref()));
        self.app.metrics.client_events.increment(1);
        hub::broadcast(&self.state, &self.app, channel, frame, Some(self.conn.socket_id)).await;
        let socket_id = self.conn.socket_id.to_string();
        self.app.webhooks.client_event(channel, event, data, &socket_id, user_id.as_deref());
    }
}

/// A token bucket: `rate` events per second, bursts of up to `burst`.
struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
}

impl RateLimiter {
    fn new(rate: u32, burst: u32) -> Self {
        let (rate, burst) = (f64::from(rate.max(1)), f64::from(burst.max(1)));
        Self { rate, burst, tokens: burst, refilled: Instant::now() }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What to do with one client frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Allow,
    /// Drop it and answer 4301.
    Refuse,
    /// The client kept going over the limit: close the connection.
    Close,
}

/// The budget every client frame (subscribe, unsubscribe, ping, client
/// event, anything) is charged to. Over-limit frames are strikes; a strike
/// count reaching `strikes` closes the connection (4101). Strikes are forgiven only
/// once the client is back under its rate (a token left over after an
/// allowed frame), so riding just above the rate still ends in a close.
struct FrameLimiter {
    bucket: RateLimiter,
    strikes: u32,
    max_strikes: u32,
}

impl FrameLimiter {
    /// The node's defaults, overridden by the app's own settings.
    fn for_app(node: &crate::config::Config, app: &crate::config::AppConfig) -> Self {
        let rate = app.client_frame_rate.unwrap_or(node.client_frame_rate);
        let burst = app.client_frame_burst.unwrap_or(node.client_frame_burst);
        let strikes = app.client_frame_strikes.unwrap_or(node.client_frame_strikes);
        Self { bucket: RateLimiter::new(rate, burst), strikes: 0, max_strikes: strikes.max(1) }
    }

    fn check(&mut self) -> Verdict {
        if self.bucket.allow() {
            if self.bucket.tokens >= 1.0 {
                self.strikes = 0;
            }
            return Verdict::Allow;
        }
        self.strikes += 1;
        if self.strikes >= self.max_strikes {
            Verdict::Close
        } else {
            Verdict::Refuse
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rate_limiter_allows_the_rate_then_refills() {
        let mut r = RateLimiter::new(10, 10);
        assert!((0..10).all(|_| r.allow()));
        assert!(!r.allow());
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(r.allow());
        assert!(!r.allow());
    }

    fn limiter(rate: u32, burst: u32, strikes: u32) -> FrameLimiter {
        FrameLimiter { bucket: RateLimiter::new(rate, burst), strikes: 0, max_strikes: strikes }
    }

    #[tokio::test(start_paused = true)]
    async fn frame_limiter_refuses_then_closes_a_flood() {
        let mut f = limiter(10, 100, 3);
        assert!((0..100).all(|_| f.check() == Verdict::Allow));
        assert_eq!(f.check(), Verdict::Refuse);
        assert_eq!(f.check(), Verdict::Refuse);
        assert_eq!(f.check(), Verdict::Close);
    }

    #[tokio::test(start_paused = true)]
    async fn frame_limiter_forgives_a_client_back_under_its_rate() {
        let mut f = limiter(10, 20, 3);
        assert!((0..20).all(|_| f.check() == Verdict::Allow));
        assert_eq!(f.check(), Verdict::Refuse);
        assert_eq!(f.check(), Verdict::Refuse);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(f.check(), Verdict::Allow);
        assert_eq!(f.strikes, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn frame_limiter_closes_a_client_riding_just_over_its_rate() {
        let mut f = limiter(10, 10, 3);
        assert!((0..10).all(|_| f.check() == Verdict::Allow));
        let mut verdicts = Vec::new();
        // Two frames every tenth of a second: twice the rate.
        for _ in 0..10 {
            tokio::time::advance(Duration::from_millis(100)).await;
            verdicts.push(f.check());
            verdicts.push(f.check());
        }
        assert!(verdicts.contains(&Verdict::Close), "{verdicts:?}");
    }
}
