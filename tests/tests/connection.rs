//! Connecting: handshake, keep-alive, refusals with Pusher close codes, bad
//! input, and graceful drain.

use std::time::Duration;

use futures_util::SinkExt;
use herald_e2e::{data, Client, Closed, TestServer, WAIT};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn connection_established_carries_socket_id_and_activity_timeout() {
    let server = TestServer::start().await;
    let mut client = Client::open(&server.ws_url("app-key")).await;
    let frame = client.recv().await;
    assert_eq!(frame["event"], "pusher:connection_established");
    let d = data(&frame);
    let socket_id = d["socket_id"].as_str().unwrap();
    // Pusher's format, checked here rather than by the server's own parser:
    // two runs of decimal digits joined by a dot.
    let parts: Vec<&str> = socket_id.split('.').collect();
    assert!(
        parts.len() == 2 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())),
        "{socket_id}"
    );
    assert_eq!(d["activity_timeout"], 120);
}

#[tokio::test]
async fn ping_gets_pong() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    client.send(json!({"event": "pusher:ping", "data": {}})).await;
    assert_eq!(client.recv().await, json!({"event": "pusher:pong", "data": {}}));
}

#[tokio::test]
async fn refusals_use_pusher_close_codes() {
    let server = TestServer::with(|c| {
        let mut disabled = c.apps[0].clone();
        disabled.id = "off".into();
        disabled.key = "off-key".into();
        disabled.enabled = false;
        c.apps.push(disabled);
    })
    .await;
    let cases = [
        (format!("ws://{}/app/nope?protocol=7", server.addr), 4001),
        (format!("ws://{}/app/off-key?protocol=7", server.addr), 4003),
        (format!("ws://{}/app/app-key", server.addr), 4007),
        (format!("ws://{}/app/app-key?protocol=6", server.addr), 4007),
        (format!("ws://{}/app/app-key?protocol=x", server.addr), 4006),
    ];
    for (url, code) in cases {
        let mut client = Client::open(&url).await;
        let (closed, error) = client.expect_close().await;
        assert_eq!(closed, Closed::Code(code), "{url}");
        assert_eq!(error.unwrap()["data"]["code"], code, "{url}");
    }
}

#[tokio::test]
async fn connection_quota_refuses_with_4004() {
    let server = TestServer::with(|c| c.apps[0].max_connections = 2).await;
    let _a = server.connect().await;
    let _b = server.connect().await;
    let mut c = Client::open(&server.ws_url("app-key")).await;
    assert_eq!(c.expect_close().await.0, Closed::Code(4004));
}

/// Simultaneous connects cannot all pass a "count, then add" check: the
/// quota is reserved atomically, so at most `max_connections` are admitted
/// and every other one is refused with 4004. Every handshake request is
/// written before any answer is read, so the server sees them at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_connects_cannot_exceed_the_quota() {
    use futures_util::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::WebSocketStream;

    const MAX: usize = 3;
    const BURST: usize = 60;
    let server = TestServer::with(|c| c.apps[0].max_connections = MAX).await;
    let request = format!(
        "GET /app/app-key?protocol=7&client=js&version=8.6.0 HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        server.addr
    );
    let mut sockets = Vec::new();
    for _ in 0..BURST {
        sockets.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    for socket in &mut sockets {
        socket.write_all(request.as_bytes()).await.unwrap();
    }
    let mut admitted = Vec::new();
    let mut refused = 0;
    for mut socket in sockets {
        // The 101 response, byte by byte so no frame is read past it.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(tokio::time::timeout(WAIT, socket.read_u8()).await.expect("101 in time").unwrap());
        }
        assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
        let mut ws = WebSocketStream::from_raw_socket(socket, Role::Client, None).await;
        let first = tokio::time::timeout(WAIT, ws.next()).await.expect("a first frame").unwrap().unwrap();
        let first: serde_json::Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
        match first["event"].as_str() {
            Some("pusher:connection_established") => admitted.push(ws),
            Some("pusher:error") => {
                assert_eq!(data(&first)["code"], 4004, "{first}");
                refused += 1;
            }
            _ => panic!("unexpected first frame {first}"),
        }
    }
    assert_eq!(admitted.len(), MAX, "admitted past the quota of {MAX}");
    assert_eq!(refused, BURST - MAX);
}

/// A server that pings after `activity` s of silence and closes with 4201
/// `pong` s after an unanswered ping.
async fn keep_alive_server(activity: u64, pong: u64) -> TestServer {
    TestServer::with(move |c| {
        c.activity_timeout = Duration::from_secs(activity);
        c.pong_timeout = Duration::from_secs(pong);
    })
    .await
}

#[tokio::test]
async fn silent_client_is_pinged_then_closed_with_4201() {
    let server = keep_alive_server(1, 1).await;
    let mut client = server.connect().await;
    assert_eq!(client.recv().await["event"], "pusher:ping");
    assert_eq!(client.expect_close().await.0, Closed::Code(4201));
}

#[tokio::test]
async fn answering_pings_keeps_the_connection() {
    let server = keep_alive_server(1, 1).await;
    let mut client = server.connect().await;
    for _ in 0..3 {
        assert_eq!(client.recv().await["event"], "pusher:ping");
        client.send(json!({"event": "pusher:pong", "data": {}})).await;
    }
    client.send(json!({"event": "pusher:ping", "data": {}})).await;
    assert_eq!(client.recv_event("pusher:pong").await["event"], "pusher:pong");
}

#[tokio::test]
async fn a_client_that_keeps_talking_is_never_pinged() {
    let server = keep_alive_server(1, 1).await;
    let mut client = server.connect().await;
    // 2.4 s of a frame every 300 ms: the server's idle timer (1 s) keeps
    // being pushed back, so every frame that arrives is our pong, never a
    // ping of the server's, and the connection stays open past the 2 s a
    // silent client gets.
    for _ in 0..8 {
        client.send(json!({"event": "pusher:ping", "data": {}})).await;
        assert_eq!(client.recv().await["event"], "pusher:pong");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(client.subscribe("still-open").await["event"], "pusher_internal:subscription_succeeded");
}

#[tokio::test]
async fn after_a_pong_the_next_ping_comes_one_activity_timeout_later_even_with_a_longer_pong_timeout() {
    let server = keep_alive_server(1, 4).await;
    let mut client = server.connect().await;
    assert_eq!(client.recv().await["event"], "pusher:ping");
    client.send(json!({"event": "pusher:pong", "data": {}})).await;
    let answered = std::time::Instant::now();
    assert_eq!(client.recv().await["event"], "pusher:ping");
    // Due 1 s after the pong; the pong deadline (4 s) must not stand in for it.
    let waited = answered.elapsed();
    assert!(waited < Duration::from_millis(2500), "the next ping came {waited:?} after the pong");
}

#[tokio::test]
async fn bad_frames_get_errors_and_the_connection_survives() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    for bad in ["{", "[]", "42", r#"{"data":{}}"#, r#"{"event":"nope"}"#, r#"{"event":"pusher:subscribe","data":{}}"#] {
        client.send_text(bad).await;
        let error = client.recv().await;
        assert_eq!(error["event"], "pusher:error", "{bad}");
        assert_eq!(error["data"]["code"], 4302, "{bad}");
    }
    client.ws.send(Message::Binary(vec![1, 2, 3].into())).await.unwrap();
    assert_eq!(client.recv().await["data"]["code"], 4302);
    assert_eq!(client.subscribe("still-alive").await["event"], "pusher_internal:subscription_succeeded");
}

#[tokio::test]
async fn oversized_frames_close_with_1009_without_harming_others() {
    let server = TestServer::start().await;
    let mut other = server.connect().await;
    other.subscribe("room").await;
    let mut client = server.connect().await;
    let huge = "x".repeat(100 * 1024);
    client.send(json!({"event": "client-x", "channel": "private-a", "data": huge})).await;
    assert_eq!(client.expect_close().await.0, Closed::Code(1009));
    server.rest().trigger(&["room"], "still", "{}").await;
    assert_eq!(other.recv_event("still").await["channel"], "room");
}

#[tokio::test]
async fn plain_http_on_the_websocket_path_is_a_400() {
    let server = TestServer::start().await;
    let response = reqwest::get(format!("http://{}/app/app-key?protocol=7", server.addr)).await.unwrap();
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn health_endpoints() {
    let mut server = TestServer::start().await;
    let get = |path: &str| {
        let url = format!("http://{}{path}", server.addr);
        async move { reqwest::get(url).await.unwrap().status().as_u16() }
    };
    assert_eq!(get("/up").await, 200);
    assert_eq!(get("/up/app-id").await, 200);
    assert_eq!(get("/up/nope").await, 404);
    assert_eq!(get("/ready").await, 200);
    assert_eq!(get("/no/such/route").await, 404);
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_tells_clients_to_reconnect_with_4200() {
    let mut server = TestServer::start().await;
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    b.subscribe("x").await;
    let drain = tokio::spawn(async move {
        server.shutdown().await;
    });
    for client in [&mut a, &mut b] {
        let (closed, error) = client.expect_close().await;
        assert_eq!(closed, Closed::Code(4200));
        assert_eq!(error.unwrap()["data"]["code"], 4200);
    }
    tokio::time::timeout(Duration::from_secs(5), drain).await.unwrap().unwrap();
}
