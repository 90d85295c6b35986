//! Client events: where they are allowed, who receives them, and limits.

use std::time::Instant;

use herald_e2e::TestServer;
use serde_json::json;

#[tokio::test]
async fn delivered_to_others_never_echoed() {
    let server = TestServer::start().await;
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    a.subscribe("private-chat").await;
    b.subscribe("private-chat").await;
    a.send(json!({"event": "client-typing", "channel": "private-chat", "data": {"who": "a"}})).await;
    assert_eq!(b.recv().await, json!({"event": "client-typing", "channel": "private-chat", "data": {"who": "a"}}));
    // An echo would be queued to `a` while its event was relayed, ahead of
    // the pong to the ping it sends next (one connection's frames keep order).
    a.send(json!({"event": "pusher:ping", "data": {}})).await;
    assert_eq!(a.recv().await["event"], "pusher:pong");
}

#[tokio::test]
async fn presence_client_events_carry_the_sender_user_id() {
    let server = TestServer::start().await;
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    a.subscribe_presence("presence-c", "ua", json!({})).await;
    b.subscribe_presence("presence-c", "ub", json!({})).await;
    a.recv_event("pusher_internal:member_added").await;
    b.send(json!({"event": "client-hi", "channel": "presence-c", "data": "x"})).await;
    let got = a.recv().await;
    assert_eq!(got, json!({"event": "client-hi", "channel": "presence-c", "data": "x", "user_id": "ub"}));
}

#[tokio::test]
async fn refused_where_not_allowed() {
    let server = TestServer::start().await;
    let mut a = server.connect().await;
    a.subscribe("public").await;
    for (channel, why) in [("public", "public channel"), ("private-unjoined", "not subscribed")] {
        a.send(json!({"event": "client-x", "channel": channel, "data": {}})).await;
        let error = a.recv().await;
        assert_eq!(error["event"], "pusher:error", "{why}");
        assert_eq!(error["data"]["code"], 4301, "{why}");
    }
    a.subscribe("private-p").await;
    let long_name = format!("client-{}", "x".repeat(200));
    a.send(json!({"event": long_name, "channel": "private-p", "data": {}})).await;
    assert_eq!(a.recv().await["data"]["code"], 4301);
    a.send(json!({"event": "client-big", "channel": "private-p", "data": "x".repeat(11 * 1024)})).await;
    assert_eq!(a.recv().await["data"]["code"], 4301);
}

#[tokio::test]
async fn disabled_for_the_app() {
    let server = TestServer::with(|c| c.apps[0].client_events = false).await;
    let mut a = server.connect().await;
    a.subscribe("private-p").await;
    a.send(json!({"event": "client-x", "channel": "private-p", "data": {}})).await;
    let error = a.recv().await;
    assert_eq!(error["data"]["code"], 4301);
    assert!(error["data"]["message"].as_str().unwrap().contains("disabled"));
}

#[tokio::test]
async fn rate_limited_per_connection() {
    const RATE: u32 = 5;
    const SENT: usize = 30;
    let server = TestServer::with(|c| c.apps[0].client_event_rate = RATE).await;
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    a.subscribe("private-r").await;
    b.subscribe("private-r").await;
    let started = Instant::now();
    for i in 0..SENT {
        a.send(json!({"event": "client-n", "channel": "private-r", "data": {"i": i}})).await;
    }
    // The pong comes after the server has handled every event before the ping.
    a.send(json!({"event": "pusher:ping", "data": {}})).await;
    let mut errors = 0;
    loop {
        let frame = a.recv().await;
        if frame["event"] == "pusher:pong" {
            break;
        }
        assert_eq!(frame["data"]["code"], 4301, "{frame}");
        errors += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Every relayed event reached `b` before this marker.
    server.rest().trigger(&["private-r"], "marker", "{}").await;
    let mut delivered = Vec::new();
    loop {
        let frame = b.recv().await;
        if frame["event"] == "marker" {
            break;
        }
        assert_eq!(frame["event"], "client-n", "{frame}");
        delivered.push(frame["data"]["i"].as_u64().unwrap());
    }
    assert_eq!(errors + delivered.len(), SENT, "each event is relayed or refused");
    // A full bucket lets a burst of RATE through, then RATE per second.
    assert!(delivered.len() >= RATE as usize, "a burst of {RATE} is allowed: {delivered:?}");
    assert_eq!(delivered[..RATE as usize], [0, 1, 2, 3, 4], "the burst");
    let allowed = RATE as usize + (elapsed * f64::from(RATE)).ceil() as usize;
    assert!(delivered.len() <= allowed, "{} relayed in {elapsed:.2}s, at most {allowed} allowed", delivered.len());
    assert!(delivered.windows(2).all(|w| w[0] < w[1]), "in order: {delivered:?}");
}
