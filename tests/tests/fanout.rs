//! Fan-out correctness under load: exactly-once in-order delivery to many
//! subscribers, slow consumers cut off without hurting the others, and
//! subscribe/unsubscribe storms during broadcasts.

use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use futures_util::SinkExt;
use herald_e2e::{metric_value, raise_fd_limit, Client, TestServer};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_subscribers_get_twenty_broadcasts_exactly_once_in_order() {
    raise_fd_limit();
    let server = TestServer::start().await;
    let server = &server;
    let clients: Vec<Client> = stream::iter(0..2_000)
        .map(|_| async move {
            let mut c = server.connect().await;
            c.subscribe("crowd").await;
            c
        })
        .buffer_unordered(100)
        .collect()
        .await;
    for i in 0..20 {
        let (status, _) = server.rest().trigger(&["crowd"], "n", &i.to_string()).await;
        assert_eq!(status, 200);
    }
    // After the 20: no duplicate or stray frame may come before it.
    server.rest().trigger(&["crowd"], "marker", "{}").await;
    let received: Vec<Vec<String>> = stream::iter(clients)
        .map(|mut c| async move {
            let mut got = Vec::new();
            for _ in 0..20 {
                got.push(c.recv_event("n").await["data"].as_str().unwrap().to_string());
            }
            assert_eq!(c.recv().await["event"], "marker", "more than the 20 events");
            got
        })
        .buffer_unordered(200)
        .collect()
        .await;
    let expected: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    assert_eq!(received.len(), 2_000);
    assert!(received.iter().all(|got| *got == expected));
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_is_cut_off_and_the_others_keep_receiving() {
    let server = TestServer::with(|c| c.outbound_queue = 16).await;
    let mut healthy = server.connect().await;
    healthy.subscribe("firehose").await;

    // A client with a tiny receive window that never reads after subscribing.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let (mut stalled, _) = tokio_tungstenite::client_async(server.ws_url("app-key"), stream).await.unwrap();
    stalled.next().await.unwrap().unwrap();
    let sub = json!({"event": "pusher:subscribe", "data": {"channel": "firehose"}}).to_string();
    stalled.send(Message::Text(sub.into())).await.unwrap();
    stalled.next().await.unwrap().unwrap();

    let payload = "x".repeat(8 * 1024);
    let mut sent = 0;
    let app = ("app_id", "app-id");
    loop {
        server.rest().trigger(&["firehose"], "bulk", &payload).await;
        sent += 1;
        let text = server.metrics().await;
        if metric_value(&text, "herald_rejections_total", &[app, ("reason", "slow_consumer")]) == Some(1.0) {
            break;
        }
        assert!(sent < 5_000, "the stalled client was never cut off");
        // The healthy client reads as it goes.
        assert_eq!(healthy.recv_event("bulk").await["data"].as_str().unwrap().len(), payload.len());
    }
    assert_eq!(healthy.recv_event("bulk").await["event"], "bulk");
    // Once it reads again, the stalled client finds pusher:error 4100 and a 4100 close.
    let mut code = None;
    let mut error = None;
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(3), stalled.next()).await {
        match msg {
            Message::Text(t) if t.as_str().contains("pusher:error") => error = Some(t.to_string()),
            Message::Close(frame) => {
                code = frame.map(|f| u16::from(f.code));
                break;
            }
            _ => {}
        }
    }
    assert_eq!(code, Some(4100));
    assert!(error.is_some_and(|e| e.contains("4100")));
    // The stalled socket is gone from the channel; the healthy one is not.
    let mut count = 0;
    for _ in 0..50 {
        let (_, info) = server.rest().get("/channels/firehose", &[("info", "subscription_count")]).await;
        count = info["subscription_count"].as_u64().unwrap();
        if count == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(count, 1);
    server.rest().trigger(&["firehose"], "after", "{}").await;
    assert_eq!(healthy.recv_event("after").await["event"], "after");
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_storms_during_broadcasts_lose_nothing_for_steady_subscribers() {
    let server = TestServer::start().await;
    let server = &server;
    let mut steady = Vec::new();
    for _ in 0..200 {
        let mut c = server.connect().await;
        c.subscribe("storm").await;
        steady.push(c);
    }
    let churn = tokio::spawn({
        let url = server.ws_url("app-key");
        async move {
            let mut churners = Vec::new();
            for _ in 0..50 {
                let mut c = Client::open(&url).await;
                c.recv_event("pusher:connection_established").await;
                churners.push(c);
            }
            for round in 0..20 {
                for c in &mut churners {
                    let event = if round % 2 == 0 { "pusher:subscribe" } else { "pusher:unsubscribe" };
                    c.send(json!({"event": event, "data": {"channel": "storm"}})).await;
                }
                tokio::task::yield_now().await;
            }
            churners
        }
    });
    for i in 0..50 {
        server.rest().trigger(&["storm"], "s", &i.to_string()).await;
    }
    churn.await.unwrap();
    let expected: Vec<String> = (0..50).map(|i| i.to_string()).collect();
    for c in &mut steady {
        let mut got = Vec::new();
        for _ in 0..50 {
            got.push(c.recv_event("s").await["data"].as_str().unwrap().to_string());
        }
        assert_eq!(got, expected);
    }
}
