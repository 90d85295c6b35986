//! The HTTP API: signing, every endpoint, and every refusal.

use herald_e2e::{Rest, TestServer};
use herald_protocol::rest_auth;
use serde_json::json;

#[tokio::test]
async fn events_to_many_channels_with_exclusion_and_info() {
    let server = TestServer::start().await;
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    a.subscribe("one").await;
    b.subscribe("one").await;
    b.subscribe_presence("presence-two", "u", json!({})).await;
    let body = json!({
        "name": "e", "data": "{}", "channels": ["one", "presence-two"],
        "socket_id": a.socket_id, "info": "user_count,subscription_count"
    });
    let (status, reply) = server.rest().post("/events", &body).await;
    assert_eq!(status, 200);
    assert_eq!(
        reply,
        json!({"channels": {"one": {"subscription_count": 2}, "presence-two": {"user_count": 1, "subscription_count": 1}}})
    );
    assert_eq!(b.recv().await["channel"], "one");
    assert_eq!(b.recv().await["channel"], "presence-two");
    // A later event for everyone is the first thing `a` gets.
    server.rest().trigger(&["one"], "marker", "{}").await;
    assert_eq!(a.recv().await["event"], "marker", "the excluded socket got the event");
}

#[tokio::test]
async fn batch_events() {
    let server = TestServer::start().await;
    let mut a = server.connect().await;
    a.subscribe("x").await;
    let batch = json!({"batch": [
        {"channel": "x", "name": "first", "data": "1"},
        {"channel": "x", "name": "second", "data": "2", "info": "subscription_count"},
    ]});
    let (status, reply) = server.rest().post("/batch_events", &batch).await;
    assert_eq!((status, reply), (200, json!({"batch": [{}, {"subscription_count": 1}]})));
    assert_eq!(a.recv().await["event"], "first");
    assert_eq!(a.recv().await["event"], "second");

    let eleven: Vec<_> = (0..11).map(|i| json!({"channel": "x", "name": "n", "data": i.to_string()})).collect();
    assert_eq!(server.rest().post("/batch_events", &json!({"batch": eleven})).await.0, 400);
    let bad = json!({"batch": [{"channel": "x", "name": "ok", "data": "1"}, {"channel": "bad name", "name": "n", "data": "1"}]});
    let (status, reply) = server.rest().post("/batch_events", &bad).await;
    assert_eq!(status, 400);
    assert!(reply["error"].as_str().unwrap().contains("batch[1]"));
    // Neither refused batch delivered anything: a later event comes first.
    server.rest().trigger(&["x"], "marker", "{}").await;
    assert_eq!(a.recv().await["event"], "marker", "a refused batch delivered events");
}

#[tokio::test]
async fn channels_listing_and_info() {
    let server = TestServer::start().await;
    let mut a = server.connect().await;
    a.subscribe("public-1").await;
    a.subscribe_presence("presence-1", "u1", json!({})).await;
    let mut b = server.connect().await;
    b.subscribe_presence("presence-1", "u2", json!({})).await;
    let rest = server.rest();

    let (_, all) = rest.get("/channels", &[]).await;
    assert_eq!(all, json!({"channels": {"public-1": {}, "presence-1": {}}}));
    let (_, presence) = rest.get("/channels", &[("filter_by_prefix", "presence-"), ("info", "user_count")]).await;
    assert_eq!(presence, json!({"channels": {"presence-1": {"user_count": 2}}}));
    assert_eq!(rest.get("/channels", &[("info", "user_count")]).await.0, 400);

    let (_, info) = rest.get("/channels/public-1", &[("info", "subscription_count")]).await;
    assert_eq!(info, json!({"occupied": true, "subscription_count": 1}));
    let (_, empty) = rest.get("/channels/nobody-here", &[]).await;
    assert_eq!(empty, json!({"occupied": false}));
    assert_eq!(rest.get("/channels/public-1", &[("info", "user_count")]).await.0, 400);
    assert_eq!(rest.get("/channels/public-1/users", &[]).await.0, 400);
    assert_eq!(rest.get("/channels/bad%20name", &[]).await.0, 400);
}

#[tokio::test]
async fn signatures_are_checked() {
    let server = TestServer::start().await;
    let rest = server.rest();
    let body = json!({"name": "e", "channel": "c", "data": "{}"}).to_string();
    assert_eq!(rest.post_raw("/events", body.as_bytes(), "wrong-secret").await.0, 401);

    let client = reqwest::Client::new();
    let path = "/apps/app-id/events";
    let base = format!("http://{}", server.addr);
    let sign = |ts: u64, body: &[u8]| {
        let q = rest_auth::sign_request("POST", path, "app-key", "app-secret", ts, &[], body);
        format!("{base}{path}?{}", serde_urlencoded::to_string(&q).unwrap())
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    // Stale timestamp.
    let r = client.post(sign(now - 601, body.as_bytes())).body(body.clone()).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // Body changed after signing.
    let r = client.post(sign(now, body.as_bytes())).body(body.replace("e", "f")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // No signature at all.
    let r = client.post(format!("{base}{path}")).body(body.clone()).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // Unknown key.
    let other = Rest { app: herald_gateway::AppConfig { key: "nope".into(), ..rest.app.clone() }, ..server.rest() };
    assert_eq!(other.trigger(&["c"], "e", "{}").await.0, 401);
}

#[tokio::test]
async fn unknown_apps_routes_and_methods() {
    let server = TestServer::start().await;
    let other = Rest { app: herald_gateway::AppConfig { id: "nope".into(), ..server.app.clone() }, ..server.rest() };
    assert_eq!(other.trigger(&["c"], "e", "{}").await.0, 404);
    assert_eq!(server.rest().get("/nothing", &[]).await.0, 404);
    assert_eq!(server.rest().get("/events", &[]).await.0, 405);
}

#[tokio::test]
async fn invalid_events_are_400_or_413() {
    let server = TestServer::start().await;
    let rest = server.rest();
    let cases = [
        (json!({"channel": "c", "data": "{}"}), 400),
        (json!({"name": "e", "channel": "c"}), 400),
        (json!({"name": "e", "data": "{}"}), 400),
        (json!({"name": "x".repeat(201), "channel": "c", "data": "{}"}), 400),
        (json!({"name": "e", "channel": "bad name", "data": "{}"}), 400),
        (json!({"name": "e", "channels": (0..101).map(|i| format!("c{i}")).collect::<Vec<_>>(), "data": "{}"}), 400),
        (json!({"name": "e", "channel": "c", "data": "{}", "socket_id": "not-a-socket"}), 400),
        (json!({"name": "e", "channel": "c", "data": "x".repeat(10 * 1024 + 1)}), 413),
    ];
    for (body, status) in cases {
        let (got, reply) = rest.post("/events", &body).await;
        assert_eq!(got, status, "{reply}");
        assert!(reply["error"].is_string(), "{reply}");
    }
    assert_eq!(rest.post_raw("/events", b"{not json", "app-secret").await.0, 400);
    let huge = vec![b'x'; 300 * 1024];
    assert_eq!(rest.post_raw("/events", &huge, "app-secret").await.0, 413);
}

#[tokio::test]
async fn non_string_data_is_sent_as_json_text() {
    let server = TestServer::start().await;
    let mut a = server.connect().await;
    a.subscribe("c").await;
    server.rest().post("/events", &json!({"name": "e", "channel": "c", "data": {"k": 1}})).await;
    assert_eq!(a.recv().await["data"], r#"{"k":1}"#);
}
