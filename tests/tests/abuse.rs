//! Abuse from anyone holding the public app key: frame floods on one
//! connection (subscribe/unsubscribe loops), and slow or piled-up HTTP
//! connections against the real binary.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald_e2e::{metric_value, Client, Closed, TestServer, WebhookReceiver, WAIT};
use herald_gateway::{Config, WebhookConfig};
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

fn subscribe(channel: &str) -> String {
    json!({"event": "pusher:subscribe", "data": {"channel": channel}}).to_string()
}

fn unsubscribe(channel: &str) -> String {
    json!({"event": "pusher:unsubscribe", "data": {"channel": channel}}).to_string()
}

/// Floods `client` with subscribe/unsubscribe pairs of `channel`: first in
/// small rounds, each ended by a ping and read back, until a 4301 comes
/// back (so the refusal is seen while the connection is still open); then
/// flat out while reading. Returns every frame received and how the
/// connection ended.
async fn flood_subscribe_loop(mut client: Client, channel: &str, pairs: usize) -> (Vec<Value>, Closed) {
    let (sub, unsub) = (subscribe(channel), unsubscribe(channel));
    let ping = json!({"event": "pusher:ping", "data": {}}).to_string();
    let mut frames = Vec::new();
    let mut sent = 0;
    'rounds: while sent < pairs {
        for _ in 0..5 {
            client.send_text(&sub).await;
            client.send_text(&unsub).await;
        }
        sent += 5;
        client.send_text(&ping).await;
        loop {
            let frame = client.recv().await;
            frames.push(frame.clone());
            if frame["event"] == "pusher:pong" {
                break;
            }
            if frame["event"] == "pusher:error" && frame["data"]["code"] == 4301 {
                break 'rounds;
            }
        }
    }
    let (mut sink, mut stream) = client.ws.split();
    let sender = async move {
        for _ in sent..pairs {
            if sink.send(Message::Text(sub.as_str().into())).await.is_err()
                || sink.send(Message::Text(unsub.as_str().into())).await.is_err()
            {
                break;
            }
        }
        sink
    };
    let reader = async move {
        loop {
            match tokio::time::timeout(WAIT * 4, stream.next()).await.expect("the server ends the flood") {
                Some(Ok(Message::Text(t))) => frames.push(serde_json::from_str::<Value>(t.as_str()).unwrap()),
                Some(Ok(Message::Close(frame))) => {
                    return (frames, frame.map_or(Closed::NoCode, |f| Closed::Code(f.code.into())))
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return (frames, Closed::NoCode),
            }
        }
    };
    // The sender stops when the socket fails or it has sent everything (the
    // kernel buffers much of it); the reader waits for the server's close.
    let (result, _) = tokio::join!(reader, sender);
    result
}

fn error_codes(frames: &[Value]) -> Vec<u64> {
    frames.iter().filter(|f| f["event"] == "pusher:error").filter_map(|f| f["data"]["code"].as_u64()).collect()
}

#[tokio::test]
async fn subscribe_loop_gets_4301_then_a_4101_close_and_bounded_webhooks() {
    let mut receiver = WebhookReceiver::start(200).await;
    let url = receiver.url.clone();
    let server = TestServer::with(|c| {
        c.webhook_batch = Duration::from_millis(10);
        c.apps[0].webhooks = vec![WebhookConfig { url, events: None }];
    })
    .await;
    let defaults = Config::default();
    let started = Instant::now();
    let client = server.connect().await;
    let (frames, closed) = flood_subscribe_loop(client, "loop", 20_000).await;
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(closed, Closed::Code(4101));
    let codes = error_codes(&frames);
    assert!(codes.contains(&4301), "no 4301 before the close: {codes:?}");
    assert_eq!(codes.last(), Some(&4101), "{codes:?}");
    let metrics = server.metrics().await;
    let limited = metric_value(&metrics, "herald_rejections_total", &[("reason", "frame_rate_limited")]).unwrap();
    assert!(limited >= f64::from(defaults.client_frame_strikes), "{limited}");

    // Everything about "loop" is delivered before a later channel's webhook:
    // wait for the flooder's departure, then occupy a sentinel channel.
    let rest = server.rest();
    let deadline = Instant::now() + WAIT;
    while rest.get("/channels/loop", &[]).await.1["occupied"] == true {
        assert!(Instant::now() < deadline, "the flooder never left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut sentinel = server.connect().await;
    sentinel.subscribe("sentinel").await;
    let events = receiver
        .events_until(|events| events.iter().any(|e| e["name"] == "channel_occupied" && e["channel"] == "sentinel"))
        .await;
    let occupied = events.iter().filter(|e| e["name"] == "channel_occupied" && e["channel"] == "loop").count();
    // Each occupied costs one subscribe: at most the burst plus what the rate
    // refilled while the test ran (a generous bound: half the frames are
    // unsubscribes). Without a frame budget all 20,000 would pass.
    let bound = f64::from(defaults.client_frame_burst) + f64::from(defaults.client_frame_rate) * elapsed;
    eprintln!("loop: {occupied} channel_occupied, bound {bound}");
    assert!(occupied >= 1 && (occupied as f64) <= bound, "{occupied} channel_occupied for the loop (bound {bound})");
}

#[tokio::test]
async fn a_client_subscribing_to_100_channels_at_connect_is_untouched() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    // As pusher-js does at (re)connect: every subscribe back to back, and a ping.
    for i in 0..100 {
        client.send_text(&subscribe(&format!("room-{i}"))).await;
    }
    client.send(json!({"event": "pusher:ping", "data": {}})).await;
    let mut succeeded = 0;
    let mut pong = false;
    while succeeded < 100 || !pong {
        let frame = client.recv().await;
        match frame["event"].as_str().unwrap() {
            "pusher_internal:subscription_succeeded" => succeeded += 1,
            "pusher:pong" => pong = true,
            other => panic!("unexpected {other}: {frame}"),
        }
    }
    client.send(json!({"event": "pusher:ping", "data": {}})).await;
    assert_eq!(client.recv().await["event"], "pusher:pong");
    let metrics = server.metrics().await;
    assert_eq!(metric_value(&metrics, "herald_rejections_total", &[("reason", "frame_rate_limited")]), Some(0.0));
}

/// Sends `n` pings back to back; returns how many got a pong and how many a
/// 4301.
async fn ping_burst(client: &mut Client, n: usize) -> (usize, usize) {
    for _ in 0..n {
        client.send(json!({"event": "pusher:ping", "data": {}})).await;
    }
    let (mut pongs, mut refused) = (0, 0);
    while pongs + refused < n {
        let frame = client.recv().await;
        match frame["event"].as_str().unwrap() {
            "pusher:pong" => pongs += 1,
            "pusher:error" if frame["data"]["code"] == 4301 => refused += 1,
            other => panic!("unexpected {other}: {frame}"),
        }
    }
    (pongs, refused)
}

#[tokio::test]
async fn an_app_overrides_the_node_frame_budget() {
    let server = TestServer::with(|c| {
        // Node default: a small budget. The default app keeps it; "roomy"
        // raises it, "tight" lowers it further.
        c.client_frame_burst = 10;
        c.client_frame_rate = 1;
        c.client_frame_strikes = 1000;
        let mut roomy = c.apps[0].clone();
        roomy.id = "roomy".into();
        roomy.key = "roomy-key".into();
        roomy.client_frame_burst = Some(200);
        let mut tight = c.apps[0].clone();
        tight.id = "tight".into();
        tight.key = "tight-key".into();
        tight.client_frame_burst = Some(3);
        c.apps.push(roomy);
        c.apps.push(tight);
    })
    .await;
    let app = |key: &str| herald_gateway::AppConfig { key: key.into(), ..server.app.clone() };
    let mut default = server.connect().await;
    let mut roomy = Client::connect(&server.ws_url("roomy-key"), &app("roomy-key")).await;
    let mut tight = Client::connect(&server.ws_url("tight-key"), &app("tight-key")).await;
    // Each burst is sent well within a second; a refill of 1/s adds at most
    // a few tokens on a slow machine, so compare with margins.
    let (pongs, refused) = ping_burst(&mut default, 40).await;
    assert!((10..=15).contains(&pongs) && refused >= 25, "default: {pongs} pongs, {refused} refused");
    let (pongs, refused) = ping_burst(&mut roomy, 40).await;
    assert_eq!((pongs, refused), (40, 0), "roomy");
    let (pongs, refused) = ping_burst(&mut tight, 40).await;
    assert!((3..=8).contains(&pongs) && refused >= 32, "tight: {pongs} pongs, {refused} refused");
}

/// Sends `request` on a fresh connection and reads the answer to the end.
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("tcp connects");
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await.expect("the server answers and closes");
    String::from_utf8_lossy(&answer).into_owned()
}

const UP: &[u8] = b"GET /up HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

#[tokio::test]
async fn half_sent_request_heads_are_closed_after_the_head_timeout_while_others_are_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const HELD: usize = 1000;
    // Long enough that opening the sockets and the checks below fit in it
    // on a loaded machine; short enough for a test.
    const HEAD_TIMEOUT: Duration = Duration::from_secs(6);
    herald_e2e::raise_fd_limit();
    let proc = herald_e2e::HeraldProcess::start(&[("HERALD_HTTP_HEAD_TIMEOUT_MS", "6000")]);
    let mut held = Vec::with_capacity(HELD);
    for _ in 0..HELD {
        let mut s = tokio::net::TcpStream::connect(proc.addr).await.expect("tcp connects");
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        held.push(s);
    }
    // A few that send nothing at all: the same timeout closes them.
    for _ in 0..10 {
        held.push(tokio::net::TcpStream::connect(proc.addr).await.expect("tcp connects"));
    }
    let held_since = Instant::now();

    // While they are held, WebSocket clients and REST calls are served.
    let mut client = proc.connect().await;
    client.subscribe("live").await;
    let (status, _) = proc.rest().trigger(&["live"], "e", "{}").await;
    assert_eq!(status, 200);
    assert_eq!(client.recv_event("e").await["channel"], "live");
    assert!(raw_exchange(proc.addr, UP).await.starts_with("HTTP/1.1 200"));
    // ...and the half-sent heads are all still open: not closed early.
    let mut buf = [0u8; 256];
    assert!(held_since.elapsed() < HEAD_TIMEOUT, "setup took longer than the head timeout");
    for (i, s) in held.iter().enumerate() {
        let open = matches!(s.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        assert!(open, "held connection {i} closed before the head timeout");
    }

    // Then the server closes every one of them.
    let deadline = held_since + HEAD_TIMEOUT + Duration::from_secs(30);
    for (i, s) in held.iter_mut().enumerate() {
        loop {
            match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                Err(_) => panic!("held connection {i} still open {:?} after its head", held_since.elapsed()),
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => continue,
            }
        }
    }
    assert!(held_since.elapsed() >= HEAD_TIMEOUT);
    let metrics = proc.metrics().await;
    let timeouts = metric_value(&metrics, "herald_rejections_total", &[("reason", "http_timeout")]).unwrap();
    // Counted: the half-sent heads (the silent ones close without a count).
    assert!(timeouts >= HELD as f64, "{timeouts}");
    // The WebSocket opened while they were held is not subject to the head
    // timeout: it outlived it and still answers.
    client.send(json!({"event": "pusher:ping", "data": {}})).await;
    assert_eq!(client.recv_event("pusher:pong").await["event"], "pusher:pong");
    assert!(raw_exchange(proc.addr, UP).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn the_per_ip_cap_refuses_the_next_connection_with_429() {
    let server = TestServer::with(|c| c.max_connections_per_ip = 3).await;
    let mut clients = vec![server.connect().await, server.connect().await, server.connect().await];
    let refused = raw_exchange(server.addr, UP).await;
    assert!(refused.starts_with("HTTP/1.1 429"), "{refused}");
    assert!(refused.contains("too many connections from this address"), "{refused}");
    match tokio_tungstenite::connect_async(server.ws_url("app-key")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 429),
        other => panic!("a 4th WebSocket from 127.0.0.1 was not refused: {:?}", other.map(|_| ())),
    }
    // The ones holding slots are unaffected.
    clients[0].send(json!({"event": "pusher:ping", "data": {}})).await;
    assert_eq!(clients[0].recv().await["event"], "pusher:pong");
    let metrics = server.metrics().await;
    let refusals = metric_value(&metrics, "herald_rejections_total", &[("reason", "ip_connection_limit")]).unwrap();
    assert!(refusals >= 2.0, "{refusals}");
    // A slot is freed when its connection ends.
    clients.pop();
    let deadline = Instant::now() + WAIT;
    loop {
        let answer = raw_exchange(server.addr, UP).await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "no slot freed: {answer}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn there_is_no_per_ip_cap_by_default() {
    assert_eq!(Config::default().max_connections_per_ip, 0);
    assert!(!Config::default().trust_forwarded_for);
    let server = TestServer::start().await;
    let mut clients = Vec::new();
    for _ in 0..50 {
        clients.push(server.connect().await);
    }
    assert!(raw_exchange(server.addr, UP).await.starts_with("HTTP/1.1 200"));
    let (status, _) = server.rest().trigger(&["x"], "e", "{}").await;
    assert_eq!(status, 200);
}

async fn connect_forwarded_for(url: &str, ip: &str) -> Result<(), u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert("x-forwarded-for", format!("198.51.100.1, {ip}").parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => {
            // Keep it open: the test holds the slot until it drops the task.
            tokio::spawn(async move {
                let mut ws = ws;
                while let Some(Ok(_)) = ws.next().await {}
            });
            Ok(())
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn behind_a_trusted_proxy_websockets_are_capped_by_the_forwarded_address() {
    let server = TestServer::with(|c| {
        c.max_connections_per_ip = 2;
        c.trust_forwarded_for = true;
    })
    .await;
    let url = server.ws_url("app-key");
    assert_eq!(connect_forwarded_for(&url, "203.0.113.7").await, Ok(()));
    assert_eq!(connect_forwarded_for(&url, "203.0.113.7").await, Ok(()));
    assert_eq!(connect_forwarded_for(&url, "203.0.113.7").await, Err(429));
    // Every connection comes from 127.0.0.1, yet other clients still get in,
    // and REST calls (the app's backend) are not capped.
    assert_eq!(connect_forwarded_for(&url, "203.0.113.8").await, Ok(()));
    assert_eq!(connect_forwarded_for(&url, "203.0.113.9").await, Ok(()));
    for _ in 0..5 {
        assert!(raw_exchange(server.addr, UP).await.starts_with("HTTP/1.1 200"));
    }
}

#[tokio::test]
async fn a_rest_body_that_never_arrives_gets_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::with(|c| c.http_body_timeout = Duration::from_millis(300)).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = "POST /apps/app-id/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"name\":";
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await.expect("the server gives up on the body");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let metrics = server.metrics().await;
    assert_eq!(metric_value(&metrics, "herald_rejections_total", &[("reason", "http_timeout")]), Some(1.0));
}
