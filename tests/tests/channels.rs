//! Subscriptions to every channel kind, presence membership, cache
//! channels, and delivery of REST-triggered events.

use std::time::Duration;

use herald_e2e::{data, TestServer};
use serde_json::json;

#[tokio::test]
async fn public_channel_receives_rest_events() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    let ok = client.subscribe("news").await;
    assert_eq!(ok, json!({"event": "pusher_internal:subscription_succeeded", "channel": "news", "data": "{}"}));
    let (status, body) = server.rest().trigger(&["news"], "update", r#"{"n":1}"#).await;
    assert_eq!((status, body), (200, json!({})));
    assert_eq!(client.recv().await, json!({"event": "update", "channel": "news", "data": r#"{"n":1}"#}));
}

#[tokio::test]
async fn private_channels_need_a_valid_signature() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    assert_eq!(client.subscribe("private-a").await["event"], "pusher_internal:subscription_succeeded");

    for auth in [json!(null), json!("app-key:deadbeef"), json!("other-key:00"), json!(42)] {
        client.send(json!({"event": "pusher:subscribe", "data": {"channel": "private-b", "auth": auth}})).await;
        let error = client.recv_for_channel("private-b").await;
        assert_eq!(error["event"], "pusher:subscription_error", "{auth}");
        assert_eq!(error["data"]["status"], 401);
    }
    // A signature for another socket is refused too.
    let mut other = server.connect().await;
    other.socket_id = client.socket_id.clone();
    let forged = other.subscribe("private-c").await;
    assert_eq!(forged["event"], "pusher:subscription_error");
}

#[tokio::test]
async fn encrypted_channels_relay_payloads_untouched_and_refuse_client_events() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    assert_eq!(client.subscribe("private-encrypted-x").await["event"], "pusher_internal:subscription_succeeded");
    let payload = r#"{"nonce":"bm9uY2U=","ciphertext":"Y2lwaGVy"}"#;
    server.rest().trigger(&["private-encrypted-x"], "secret", payload).await;
    assert_eq!(client.recv().await["data"], payload);
    client.send(json!({"event": "client-x", "channel": "private-encrypted-x", "data": {}})).await;
    assert_eq!(client.recv().await["data"]["code"], 4301);
    let (status, _) = server.rest().trigger(&["private-encrypted-x", "news"], "e", "{}").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn invalid_channel_names_are_refused() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    for name in ["bad name", &"x".repeat(201), "#server-to"] {
        let error = client.subscribe(name).await;
        assert_eq!(error["event"], "pusher:subscription_error", "{name}");
        assert_eq!(error["data"]["status"], 400);
    }
}

#[tokio::test]
async fn subscribing_twice_is_harmless() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    client.subscribe("twice").await;
    client.subscribe("twice").await;
    let (_, info) = server.rest().get("/channels/twice", &[("info", "subscription_count")]).await;
    assert_eq!(info["subscription_count"], 1);
    server.rest().trigger(&["twice"], "once", "{}").await;
    assert_eq!(client.recv().await["event"], "once");
    // A second copy would have been queued with the first, ahead of this.
    server.rest().trigger(&["twice"], "marker", "{}").await;
    assert_eq!(client.recv().await["event"], "marker", "delivered twice");
}

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    client.subscribe("a").await;
    client.send(json!({"event": "pusher:unsubscribe", "data": {"channel": "a"}})).await;
    client.subscribe("b").await;
    server.rest().trigger(&["a"], "dropped", "{}").await;
    server.rest().trigger(&["b"], "kept", "{}").await;
    assert_eq!(client.recv().await["event"], "kept");
}

#[tokio::test]
async fn presence_tracks_members_per_user() {
    let server = TestServer::start().await;
    let mut alice = server.connect().await;
    let ok = alice.subscribe_presence("presence-room", "alice", json!({"name": "Alice"})).await;
    assert_eq!(data(&ok), json!({"presence": {"count": 1, "ids": ["alice"], "hash": {"alice": {"name": "Alice"}}}}));

    let mut bob = server.connect().await;
    let ok = bob.subscribe_presence("presence-room", "bob", json!({"name": "Bob"})).await;
    assert_eq!(data(&ok)["presence"]["count"], 2);
    let added = alice.recv().await;
    assert_eq!(added["event"], "pusher_internal:member_added");
    assert_eq!(data(&added), json!({"user_id": "bob", "user_info": {"name": "Bob"}}));

    // Bob's second socket: no second member_added. Its subscription has
    // succeeded, so a member_added would already be queued to Alice, ahead
    // of the marker event triggered now (one connection's frames keep order).
    let mut bob2 = server.connect().await;
    bob2.subscribe_presence("presence-room", "bob", json!({"name": "Bob"})).await;
    expect_next_is_marker(&server, &mut alice, "after-second-socket").await;

    let (_, users) = server.rest().get("/channels/presence-room/users", &[]).await;
    let mut ids: Vec<String> =
        users["users"].as_array().unwrap().iter().map(|u| u["id"].as_str().unwrap().into()).collect();
    ids.sort();
    assert_eq!(ids, ["alice", "bob"]);
    let (_, info) = server.rest().get("/channels/presence-room", &[("info", "user_count,subscription_count")]).await;
    assert_eq!(info, json!({"occupied": true, "user_count": 2, "subscription_count": 3}));

    // Bob leaves from one socket: still a member. Once the server has
    // removed that socket (the subscription count says so), a wrong
    // member_removed would be queued to Alice ahead of the marker.
    drop(bob);
    wait_for_subscriptions(&server, "presence-room", 2).await;
    expect_next_is_marker(&server, &mut alice, "after-one-socket-left").await;
    // From the last socket: removed, exactly once.
    bob2.send(json!({"event": "pusher:unsubscribe", "data": {"channel": "presence-room"}})).await;
    let removed = alice.recv().await;
    assert_eq!(removed["event"], "pusher_internal:member_removed");
    assert_eq!(data(&removed), json!({"user_id": "bob"}));
    expect_next_is_marker(&server, &mut alice, "after-last-socket-left").await;
}

/// Triggers `marker` on presence-room and asserts it is the next frame
/// `client` gets: nothing else was queued to it before.
async fn expect_next_is_marker(server: &TestServer, client: &mut herald_e2e::Client, marker: &str) {
    let (status, _) = server.rest().trigger(&["presence-room"], marker, "{}").await;
    assert_eq!(status, 200);
    let next = client.recv().await;
    assert_eq!(next["event"], marker, "expected only the marker, got {next}");
}

/// Polls the channel's subscription count (generous deadline) until it is `count`.
async fn wait_for_subscriptions(server: &TestServer, channel: &str, count: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, info) = server.rest().get(&format!("/channels/{channel}"), &[("info", "subscription_count")]).await;
        if info["subscription_count"] == count {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{channel} never reached {count} subscriptions: {info}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn presence_needs_channel_data_and_respects_limits() {
    let server = TestServer::with(|c| {
        c.apps[0].max_presence_members = 1;
        c.apps[0].max_presence_user_info_bytes = 20;
    })
    .await;
    let mut client = server.connect().await;
    // Signed without channel_data: refused.
    let error = client.subscribe("private-x").await;
    assert_eq!(error["event"], "pusher_internal:subscription_succeeded");
    client.send(json!({"event": "pusher:subscribe", "data": {"channel": "presence-x", "auth": "app-key:00"}})).await;
    assert_eq!(client.recv_for_channel("presence-x").await["data"]["status"], 401);

    let big = client.subscribe_presence("presence-x", "u1", json!({"bio": "x".repeat(50)})).await;
    assert_eq!(big["event"], "pusher:subscription_error");
    assert_eq!(big["data"]["type"], "LimitReached");

    assert_eq!(
        client.subscribe_presence("presence-x", "u1", json!({})).await["event"],
        "pusher_internal:subscription_succeeded"
    );
    let mut other = server.connect().await;
    let full = other.subscribe_presence("presence-x", "u2", json!({})).await;
    assert_eq!(full["event"], "pusher:subscription_error");
    assert_eq!(full["data"]["type"], "LimitReached");
    // The same user may still join from another socket.
    assert_eq!(
        other.subscribe_presence("presence-x", "u1", json!({})).await["event"],
        "pusher_internal:subscription_succeeded"
    );
}

#[tokio::test]
async fn cache_channels_replay_the_last_event_or_report_a_miss() {
    let server = TestServer::start().await;
    let mut first = server.connect().await;
    first.subscribe("cache-prices").await;
    assert_eq!(first.recv().await, json!({"event": "pusher:cache_miss", "channel": "cache-prices", "data": "{}"}));

    server.rest().trigger(&["cache-prices"], "price", r#"{"v":1}"#).await;
    server.rest().trigger(&["cache-prices"], "price", r#"{"v":2}"#).await;
    assert_eq!(first.recv().await["data"], r#"{"v":1}"#);
    assert_eq!(first.recv().await["data"], r#"{"v":2}"#);

    let mut second = server.connect().await;
    assert_eq!(second.subscribe("cache-prices").await["event"], "pusher_internal:subscription_succeeded");
    assert_eq!(second.recv().await, json!({"event": "price", "channel": "cache-prices", "data": r#"{"v":2}"#}));

    let mut private = server.connect().await;
    private.subscribe("private-cache-p").await;
    assert_eq!(private.recv().await["event"], "pusher:cache_miss");
}

#[tokio::test]
async fn cache_store_is_bounded_and_expires_as_configured() {
    let server = TestServer::with(|c| {
        c.cache_channels = 2;
        c.cache_ttl = Duration::from_secs(1);
    })
    .await;
    for name in ["cache-a", "cache-b", "cache-c"] {
        assert_eq!(server.rest().trigger(&[name], "e", name).await.0, 200);
    }
    let mut client = server.connect().await;
    // cache-a, written longest ago, made room for cache-c.
    client.subscribe("cache-a").await;
    assert_eq!(client.recv().await["event"], "pusher:cache_miss");
    client.subscribe("cache-c").await;
    assert_eq!(client.recv().await, json!({"event": "e", "channel": "cache-c", "data": "cache-c"}));
    // After cache_ttl the last event is no longer replayed (polled, generous deadline).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        client.send(json!({"event": "pusher:unsubscribe", "data": {"channel": "cache-c"}})).await;
        client.subscribe("cache-c").await;
        if client.recv().await["event"] == "pusher:cache_miss" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "cache-c still replayed long after its TTL");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn disconnect_leaves_nothing_behind() {
    let server = TestServer::start().await;
    let mut watcher = server.connect().await;
    watcher.subscribe_presence("presence-z", "w", json!({})).await;
    for i in 0..20 {
        let mut c = server.connect().await;
        c.subscribe(&format!("ch-{i}")).await;
        c.subscribe_presence("presence-z", &format!("u{i}"), json!({})).await;
    }
    // All twenty dropped: twenty member_removed for the watcher.
    for _ in 0..20 {
        assert_eq!(watcher.recv_event("pusher_internal:member_removed").await["channel"], "presence-z");
    }
    let (_, channels) = server.rest().get("/channels", &[]).await;
    assert_eq!(channels, json!({"channels": {"presence-z": {}}}));
    let (_, users) = server.rest().get("/channels/presence-z/users", &[]).await;
    assert_eq!(users, json!({"users": [{"id": "w"}]}));
}

#[tokio::test]
async fn a_connection_may_join_a_bounded_number_of_channels() {
    let server = TestServer::with(|c| c.apps[0].max_channels_per_connection = 3).await;
    let mut client = server.connect().await;
    for i in 0..3 {
        assert_eq!(client.subscribe(&format!("c{i}")).await["event"], "pusher_internal:subscription_succeeded");
    }
    let refused = client.subscribe("c3").await;
    assert_eq!(refused["event"], "pusher:subscription_error");
    assert_eq!(refused["data"]["type"], "LimitReached");
    // Re-subscribing to a joined channel is still harmless, and leaving frees a place.
    assert_eq!(client.subscribe("c0").await["event"], "pusher_internal:subscription_succeeded");
    client.send(json!({"event": "pusher:unsubscribe", "data": {"channel": "c1"}})).await;
    assert_eq!(client.subscribe("c3").await["event"], "pusher_internal:subscription_succeeded");
}
