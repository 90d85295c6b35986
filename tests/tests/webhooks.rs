//! Webhooks against a real HTTP receiver: every event type, signatures,
//! batching, filters, and a failing target that is retried and given up on
//! without affecting another target.

use std::time::Duration;

use herald_e2e::{metric_value, TestServer, WebhookReceiver, WAIT};
use herald_gateway::WebhookConfig;
use serde_json::{json, Value};

fn hook(url: &str, events: Option<&[&str]>) -> WebhookConfig {
    WebhookConfig { url: url.into(), events: events.map(|e| e.iter().map(|s| s.to_string()).collect()) }
}

fn names(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| e["name"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn every_event_type_arrives_signed() {
    let mut receiver = WebhookReceiver::start(200).await;
    let url = receiver.url.clone();
    let server = TestServer::with(|c| {
        c.webhook_batch = Duration::from_millis(10);
        c.apps[0].webhooks = vec![hook(&url, None)];
    })
    .await;
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    a.subscribe_presence("presence-w", "ua", json!({})).await;
    b.subscribe_presence("presence-w", "ub", json!({})).await;
    a.recv_event("pusher_internal:member_added").await;
    b.send(json!({"event": "client-ping", "channel": "presence-w", "data": {"x": 1}})).await;
    a.recv_event("client-ping").await;
    a.subscribe("cache-w").await;
    drop(b);
    a.recv_event("pusher_internal:member_removed").await;
    drop(a);

    let mut hooks = Vec::new();
    let mut events = Vec::new();
    while names(&events).iter().filter(|n| *n == "channel_vacated").count() < 2 {
        let h = receiver.next().await;
        events.extend(h.json()["events"].as_array().cloned().unwrap());
        hooks.push(h);
    }
    for h in &hooks {
        assert_eq!(h.key, "app-key");
        assert!(h.signed_with("app-secret"), "bad signature on {}", h.body);
        assert!(!h.signed_with("other-secret"));
        assert!(h.json()["time_ms"].as_u64().unwrap() > 1_600_000_000_000);
    }
    let find = |name: &str, channel: &str| {
        events.iter().find(|e| e["name"] == name && e["channel"] == channel).cloned().unwrap_or_else(|| {
            panic!("no {name} for {channel} in {events:?}");
        })
    };
    find("channel_occupied", "presence-w");
    assert_eq!(find("member_added", "presence-w")["user_id"], "ua");
    let client = find("client_event", "presence-w");
    assert_eq!(client["event"], "client-ping");
    assert_eq!(client["data"], r#"{"x":1}"#);
    assert_eq!(client["user_id"], "ub");
    assert!(client["socket_id"].as_str().unwrap().contains('.'));
    find("cache_miss", "cache-w");
    assert!(events.iter().any(|e| e["name"] == "member_removed" && e["user_id"] == "ub"));
    find("channel_vacated", "cache-w");
    // Occupied always precedes vacated for the same channel.
    let pos = |name: &str| events.iter().position(|e| e["name"] == name && e["channel"] == "presence-w").unwrap();
    assert!(pos("channel_occupied") < pos("channel_vacated"));
}

#[tokio::test]
async fn events_are_batched_within_the_window() {
    let mut receiver = WebhookReceiver::start(200).await;
    let url = receiver.url.clone();
    // A window far longer than five subscriptions take even on a loaded
    // machine (checked below, so a slow run says so instead of flaking).
    const WINDOW: Duration = Duration::from_secs(3);
    let server = TestServer::with(|c| {
        c.webhook_batch = WINDOW;
        c.apps[0].webhooks = vec![hook(&url, Some(&["channel_occupied"]))];
    })
    .await;
    let mut a = server.connect().await;
    let started = std::time::Instant::now();
    for i in 0..5 {
        a.subscribe(&format!("batch-{i}")).await;
    }
    let took = started.elapsed();
    assert!(took < WINDOW, "five subscriptions took {took:?}, longer than the {WINDOW:?} window");
    let h = tokio::time::timeout(WINDOW + WAIT, receiver.next_opt()).await.expect("the batch").unwrap();
    let events = h.json()["events"].as_array().cloned().unwrap();
    assert_eq!(names(&events), vec!["channel_occupied"; 5]);
    let channels: Vec<&str> = events.iter().map(|e| e["channel"].as_str().unwrap()).collect();
    assert_eq!(channels, ["batch-0", "batch-1", "batch-2", "batch-3", "batch-4"]);
}

#[tokio::test]
async fn filters_select_event_types_per_target() {
    let mut members = WebhookReceiver::start(200).await;
    let mut channels = WebhookReceiver::start(200).await;
    let (m, c) = (members.url.clone(), channels.url.clone());
    let server = TestServer::with(|cfg| {
        cfg.webhook_batch = Duration::from_millis(10);
        cfg.apps[0].webhooks = vec![hook(&m, Some(&["member_added"])), hook(&c, Some(&["channel_occupied"]))];
    })
    .await;
    let mut a = server.connect().await;
    a.subscribe_presence("presence-f", "u", json!({})).await;
    assert_eq!(names(&members.events_until(|e| !e.is_empty()).await), ["member_added"]);
    assert_eq!(names(&channels.events_until(|e| !e.is_empty()).await), ["channel_occupied"]);
    // A second channel: each target's next events are its own kind only, so
    // nothing of the other kind was queued to it for the first channel.
    a.subscribe_presence("presence-g", "u", json!({})).await;
    let next = members.events_until(|e| !e.is_empty()).await;
    assert_eq!((names(&next), next[0]["channel"].as_str()), (vec!["member_added".to_string()], Some("presence-g")));
    let next = channels.events_until(|e| !e.is_empty()).await;
    assert_eq!((names(&next), next[0]["channel"].as_str()), (vec!["channel_occupied".to_string()], Some("presence-g")));
}

#[tokio::test]
async fn a_failing_target_is_retried_then_given_up_without_affecting_others() {
    let mut failing = WebhookReceiver::start(500).await;
    let mut healthy = WebhookReceiver::start(200).await;
    let (f, h) = (failing.url.clone(), healthy.url.clone());
    let server = TestServer::with(|c| {
        c.webhook_batch = Duration::from_millis(10);
        c.webhook_retries = 2;
        c.webhook_backoff = Duration::from_millis(50);
        c.apps[0].webhooks = vec![hook(&f, None), hook(&h, None)];
    })
    .await;
    let mut a = server.connect().await;
    a.subscribe("flaky").await;
    // The healthy target gets it at once, whatever the other does.
    assert_eq!(names(&healthy.events_until(|e| !e.is_empty()).await), ["channel_occupied"]);
    // The failing one: first attempt plus two retries, then nothing more.
    let first = failing.next().await;
    for _ in 0..2 {
        assert_eq!(failing.next().await.body, first.body);
    }
    // Given up once the last attempt is answered (polled: the count follows the response).
    let app = ("app_id", "app-id");
    let deadline = tokio::time::Instant::now() + WAIT;
    let text = loop {
        let text = server.metrics().await;
        if metric_value(&text, "herald_webhooks_failed_total", &[app]) == Some(1.0) {
            break text;
        }
        assert!(tokio::time::Instant::now() < deadline, "never given up:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(metric_value(&text, "herald_webhooks_retried_total", &[app]), Some(2.0));
    assert_eq!(metric_value(&text, "herald_webhooks_sent_total", &[app]), Some(1.0));
    // The next request to the failing target is the next batch, not a fourth
    // attempt at the first; and the healthy target keeps receiving.
    a.subscribe("second").await;
    let next = failing.next().await;
    assert_eq!(next.json()["events"][0]["channel"], "second", "{}", next.body);
    let events = healthy.events_until(|e| !e.is_empty()).await;
    assert_eq!((names(&events), events[0]["channel"].as_str()), (vec!["channel_occupied".to_string()], Some("second")));
}
