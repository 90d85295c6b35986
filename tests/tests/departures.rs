//! Mass departures: 10,000 subscribed clients drop at once while 1,000 new
//! clients connect; newcomers are served promptly and nothing leaks. And a
//! cleanup queue too small to keep up falls back to synchronous cleanup
//! without leaking either.

use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use herald_e2e::{metric_value, raise_fd_limit, HeraldProcess, TestServer};
use serde_json::json;

const APP: (&str, &str) = ("app_id", "app-id");

/// Polls `check` until it holds or 30 s pass.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long a newcomer may wait for `connection_established`: generous, so
/// a loaded 2-core machine does not flake; starving newcomers behind the
/// cleanup (what this guards against) takes far longer than 10k departures.
const NEWCOMER_DEADLINE: Duration = Duration::from_secs(30);

/// Connects `n` clients (100 at a time) and times each until `connection_established`.
async fn arrive(url: String, n: usize) -> Vec<(Duration, herald_e2e::Client)> {
    use tokio_tungstenite::tungstenite::Message;
    stream::iter(0..n)
        .map(|_| {
            let url = url.clone();
            async move {
                let started = Instant::now();
                let mut c = herald_e2e::Client::open(&url).await;
                let first = tokio::time::timeout(NEWCOMER_DEADLINE, c.ws.next())
                    .await
                    .unwrap_or_else(|_| panic!("no connection_established within {NEWCOMER_DEADLINE:?}"));
                match first {
                    Some(Ok(Message::Text(t))) => assert!(t.contains("pusher:connection_established"), "{t}"),
                    other => panic!("expected connection_established, got {other:?}"),
                }
                (started.elapsed(), c)
            }
        })
        .buffer_unordered(100)
        .collect()
        .await
}

fn sorted_latencies(clients: &[(Duration, herald_e2e::Client)]) -> Vec<Duration> {
    let mut latencies: Vec<Duration> = clients.iter().map(|(d, _)| *d).collect();
    latencies.sort();
    latencies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_leave_while_a_thousand_arrive() {
    raise_fd_limit();
    let herald = HeraldProcess::start(&[]);
    let herald = &herald;

    // Baseline: 1,000 newcomers on an idle server.
    let idle = arrive(herald.ws_url(), 1_000).await;
    let idle_latencies = sorted_latencies(&idle);
    drop(idle);
    eventually("the baseline clients to leave", || async {
        metric_value(&herald.metrics().await, "herald_connections", &[APP]) == Some(0.0)
    })
    .await;

    let leavers: Vec<_> = stream::iter(0..10_000)
        .map(|i| async move {
            let mut c = herald.connect().await;
            let ok = c.subscribe("storm").await;
            assert_eq!(ok["event"], "pusher_internal:subscription_succeeded");
            let presence = format!("presence-storm-{}", i % 100);
            let ok = c.subscribe_presence(&presence, &format!("u{i}"), json!({})).await;
            assert_eq!(ok["event"], "pusher_internal:subscription_succeeded");
            c
        })
        .buffer_unordered(200)
        .collect()
        .await;
    let (_, info) = herald.rest().get("/channels/storm", &[("info", "subscription_count")]).await;
    assert_eq!(info["subscription_count"], 10_000);

    let arrivals = tokio::spawn(arrive(herald.ws_url(), 1_000));
    let dropped = Instant::now();
    drop(leavers);
    let arrived = arrivals.await.unwrap();
    let latencies = sorted_latencies(&arrived);
    let max = latencies[999];
    println!(
        "newcomer connection_established, p50 / p99 / max: idle server {:?} / {:?} / {:?}; during 10k departures {:?} / {:?} / {:?}",
        idle_latencies[500], idle_latencies[990], idle_latencies[999], latencies[500], latencies[990], max
    );
    assert_eq!(arrived.len(), 1_000);
    assert!(max < NEWCOMER_DEADLINE, "a newcomer waited {max:?}");

    eventually("every departure to be cleaned", || async {
        let (_, channels) = herald.rest().get("/channels", &[]).await;
        channels == json!({"channels": {}})
    })
    .await;
    println!("10k departures cleaned within {:?}", dropped.elapsed());
    let text = herald.metrics().await;
    assert_eq!(metric_value(&text, "herald_connections", &[APP]), Some(1_000.0));
    assert_eq!(metric_value(&text, "herald_cleanup_queue_depth", &[]), Some(0.0));
    let (_, users) = herald.rest().get("/channels/presence-storm-7/users", &[]).await;
    assert_eq!(users, json!({"users": []}));

    drop(arrived);
    eventually("the newcomers to be gone too", || async {
        metric_value(&herald.metrics().await, "herald_connections", &[APP]) == Some(0.0)
    })
    .await;
}

#[tokio::test]
async fn a_tiny_queue_forces_synchronous_cleanup_and_leaks_nothing() {
    let server = TestServer::with(|c| {
        c.cleanup_workers = 1;
        c.cleanup_queue = 1;
        c.cleanup_batch_size = 1;
        c.cleanup_batch_timeout = Duration::from_millis(50);
    })
    .await;
    let mut watcher = server.connect().await;
    watcher.subscribe_presence("presence-tiny", "watcher", json!({})).await;
    let mut clients = Vec::new();
    for i in 0..300 {
        let mut c = server.connect().await;
        c.subscribe("tiny").await;
        c.subscribe_presence("presence-tiny", &format!("u{}", i % 50), json!({})).await;
        clients.push(c);
    }
    drop(clients);
    eventually("cleanup to finish", || async {
        let text = server.metrics().await;
        metric_value(&text, "herald_connections", &[APP]) == Some(1.0)
            && metric_value(&text, "herald_cleanup_queue_depth", &[]) == Some(0.0)
    })
    .await;
    let text = server.metrics().await;
    let fallbacks = metric_value(&text, "herald_cleanup_sync_fallbacks_total", &[]).unwrap();
    assert!(fallbacks > 0.0, "no synchronous fallback happened");
    let (_, channels) = server.rest().get("/channels", &[]).await;
    assert_eq!(channels, json!({"channels": {"presence-tiny": {}}}));
    let (_, users) = server.rest().get("/channels/presence-tiny/users", &[]).await;
    assert_eq!(users, json!({"users": [{"id": "watcher"}]}));
    // Every one of the 50 users left exactly once: all was cleaned, so every
    // member_removed is queued to the watcher ahead of this marker.
    server.rest().trigger(&["presence-tiny"], "marker", "{}").await;
    let mut removed = Vec::new();
    loop {
        let frame = watcher.recv().await;
        match frame["event"].as_str().unwrap() {
            "marker" => break,
            "pusher_internal:member_removed" => {
                removed.push(herald_e2e::data(&frame)["user_id"].as_str().unwrap().to_string())
            }
            "pusher_internal:member_added" => {}
            other => panic!("unexpected {other}: {frame}"),
        }
    }
    removed.sort();
    let mut expected: Vec<String> = (0..50).map(|i| format!("u{i}")).collect();
    expected.sort();
    assert_eq!(removed, expected);
}
