//! Real traffic, then a scrape of `/metrics` with exact values, and a lint of
//! the exposition by `promtool check metrics`.

use std::io::Write;
use std::process::{Command, Stdio};

use herald_e2e::{metric_value, TestServer};
use serde_json::json;

const APP: (&str, &str) = ("app_id", "app-id");

#[tokio::test]
async fn connections_gauge_is_exact() {
    let server = TestServer::start().await;
    let mut clients = Vec::new();
    for _ in 0..7 {
        clients.push(server.connect().await);
    }
    let text = server.metrics().await;
    assert_eq!(metric_value(&text, "herald_connections", &[APP]), Some(7.0));
    assert_eq!(metric_value(&text, "herald_connections_opened_total", &[APP]), Some(7.0));
    clients.truncate(3);
    // Closing is asynchronous: poll until the server has seen the four leave.
    let mut value = None;
    for _ in 0..50 {
        value = metric_value(&server.metrics().await, "herald_connections", &[APP]);
        if value == Some(3.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(value, Some(3.0));
}

#[tokio::test]
async fn one_broadcast_to_100_subscribers_counts_100_messages_and_bytes() {
    let server = TestServer::start().await;
    let mut clients = Vec::new();
    for _ in 0..100 {
        let mut c = server.connect().await;
        c.subscribe("metered").await;
        clients.push(c);
    }
    let before = server.metrics().await;
    let sent = |t: &str| metric_value(t, "herald_ws_messages_sent_total", &[APP]).unwrap();
    let bytes = |t: &str| metric_value(t, "herald_ws_bytes_sent_total", &[APP]).unwrap();
    let (status, _) = server.rest().trigger(&["metered"], "tick", r#"{"n":1}"#).await;
    assert_eq!(status, 200);
    let after = server.metrics().await;
    // The frame each subscriber gets, byte for byte.
    let frame = r#"{"event":"tick","channel":"metered","data":"{\"n\":1}"}"#;
    let frame_len = frame.len();
    assert_eq!(sent(&after) - sent(&before), 100.0);
    assert_eq!(bytes(&after) - bytes(&before), 100.0 * frame_len as f64);
    assert_eq!(metric_value(&after, "herald_events_triggered_total", &[APP]), Some(1.0));
    assert_eq!(metric_value(&after, "herald_subscriptions_total", &[APP, ("kind", "public")]), Some(100.0));
    assert_eq!(
        metric_value(&after, "herald_rest_requests_total", &[APP, ("endpoint", "events"), ("status", "200")]),
        Some(1.0)
    );
    assert_eq!(metric_value(&after, "herald_broadcast_fanout_seconds_count", &[APP]), Some(1.0));
    let expected: serde_json::Value = serde_json::from_str(frame).unwrap();
    for c in &mut clients {
        assert_eq!(c.recv().await, expected);
    }
}

#[tokio::test]
async fn rejections_are_counted_by_reason() {
    let server = TestServer::start().await;
    let body = json!({"name": "e", "channel": "c", "data": "{}"}).to_string();
    assert_eq!(server.rest().post_raw("/events", body.as_bytes(), "wrong").await.0, 401);
    let mut c = server.connect().await;
    c.send_text("{nope").await;
    c.recv().await;
    let text = server.metrics().await;
    assert_eq!(metric_value(&text, "herald_rejections_total", &[APP, ("reason", "bad_signature")]), Some(1.0));
    assert_eq!(metric_value(&text, "herald_rejections_total", &[APP, ("reason", "bad_frame")]), Some(1.0));
    assert_eq!(
        metric_value(&text, "herald_rest_requests_total", &[APP, ("endpoint", "events"), ("status", "401")]),
        Some(1.0)
    );
}

#[tokio::test]
async fn exposition_passes_promtool() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    c.subscribe("x").await;
    server.rest().trigger(&["x"], "e", "{}").await;
    let text = server.metrics().await;
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        panic!("promtool is not installed: install the Debian package prometheus (scripts/test does)");
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
