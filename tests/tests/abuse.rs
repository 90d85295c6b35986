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
