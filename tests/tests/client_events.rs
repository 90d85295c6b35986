//! Client events: where they are allowed, who receives them, and limits.

use std::time::Duration;

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
    a.expect_silence(Duration::from_millis(200)).await;
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
    let server = TestServer::with(|c| c.apps[0].client_event_rate = 5).await;
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    a.subscribe("private-r").await;
    b.subscribe("private-r").await;
    for i in 0..8 {
        a.send(json!({"event": "client-n", "channel": "private-r", "data": {"i": i}})).await;
    }
    let mut errors = 0;
    for _ in 0..3 {
        let error = a.recv().await;
        assert_eq!(error["data"]["code"], 4301);
        errors += 1;
    }
    assert_eq!(errors, 3);
    for i in 0..5 {
        assert_eq!(b.recv().await["data"]["i"], i);
    }
    b.expect_silence(Duration::from_millis(200)).await;
}
