//! A cluster that survives its failures, proven on real processes: a node
//! killed or frozen, the fabric restarted under running nodes. No ghost
//! members, no silent loss, no REST call hanging on a stalled peer.

use std::time::{Duration, Instant};

use herald_e2e::cluster::{eventually, next, trigger, webhook_facts, Cluster, Fabric, Kind};
use herald_e2e::{data, metric_value, WebhookReceiver};
use serde_json::{json, Value};

async fn ready(cluster: &Cluster, i: usize) -> u16 {
    match reqwest::get(format!("http://{}/ready", cluster.node(i).addr)).await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

async fn user_ids(cluster: &Cluster, i: usize, channel: &str) -> Vec<String> {
    let (status, users) = cluster.node(i).rest().get(&format!("/channels/{channel}/users"), &[]).await;
    assert_eq!(status, 200, "{users}");
    let mut ids: Vec<String> =
        users["users"].as_array().unwrap().iter().map(|u| u["id"].as_str().unwrap().to_string()).collect();
    ids.sort();
    ids
}

fn event_and_user(f: &Value) -> (String, String) {
    (f["event"].as_str().unwrap_or("").to_string(), data(f)["user_id"].as_str().unwrap_or("").to_string())
}

/// The fabric stops under three running nodes: every node goes unready
/// within 3 s and says so once, local clients stay connected, REST events
/// are refused (503); the fabric comes back: every node recovers by itself,
/// cross-node delivery resumes and presence is whole again — none lost,
/// none duplicated.
async fn fabric_restart(kind: Kind) {
    let mut cluster = Cluster::start(kind, 3, &[]).await;
    let ch = "presence-survivors";
    let mut clients = Vec::new();
    for (node, user) in [(0, "u0"), (1, "u1"), (2, "u2")] {
        let mut c = cluster.node(node).connect().await;
        c.subscribe_presence(ch, user, json!({})).await;
        clients.push(c);
    }
    let mut watcher = cluster.node(2).connect().await;
    watcher.subscribe("plain").await;
    let mut speaker = cluster.node(0).connect().await;
    speaker.subscribe("plain").await;
    speaker.subscribe("private-local").await;
    let mut neighbour = cluster.node(0).connect().await;
    neighbour.subscribe("private-local").await;
    let stopped = Instant::now();
    match &mut cluster.fabric {
        Fabric::Redis(r) => r.stop(),
        Fabric::Nats(n) => n.stop(),
        // One master of three: its slots are gone, the cluster is down.
        Fabric::RedisCluster(c) => c.kill_node(0),
    }
    for i in 0..3 {
        eventually("unready without the fabric", || async { ready(&cluster, i).await == 503 }).await;
    }
    assert!(stopped.elapsed() < Duration::from_secs(3), "every node unready within 3 s ({:?})", stopped.elapsed());
    for i in 0..3 {
        let m = cluster.node(i).metrics().await;
        assert_eq!(metric_value(&m, "herald_fabric_up", &[]), Some(0.0), "node {i}");
        let (status, body) = cluster.node(i).rest().trigger(&["plain"], "lost", "x").await;
        assert_eq!(status, 503, "node {i}: never a 200 while cut off: {body}");
    }
    // Clients of the same node still talk to each other meanwhile.
    speaker.send(json!({"event": "client-hi", "channel": "private-local", "data": {}})).await;
    assert_eq!(next(&mut neighbour).await["event"], "client-hi", "local delivery works without the fabric");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    match &mut cluster.fabric {
        Fabric::Redis(r) => r.restart(),
        Fabric::Nats(n) => n.restart(),
        Fabric::RedisCluster(c) => c.restart_node(0),
    }
    let back = Instant::now();
    for i in 0..3 {
        eventually("ready again", || async { ready(&cluster, i).await == 200 }).await;
    }
    // Delivery across nodes resumes within 5 s of the fabric's return.
    let mut n = 0;
    loop {
        n += 1;
        let (status, _) = cluster.node(0).rest().trigger(&["plain"], "again", &n.to_string()).await;
        if status == 200 {
            let f = next(&mut watcher).await;
            assert_eq!(f["event"], "again");
            break;
        }
        assert!(back.elapsed() < Duration::from_secs(5), "delivery did not resume within 5 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back.elapsed() < Duration::from_secs(5));
    assert_eq!(next(&mut speaker).await["event"], "again", "the local clients stayed connected");
    for i in 0..3 {
        eventually("presence rebuilt", || async { user_ids(&cluster, i, ch).await == ["u0", "u1", "u2"] }).await;
    }
    for i in 0..3 {
        let errors = cluster.node(i).logged("\"level\":\"ERROR\"").len();
        assert!(
            (1..=3).contains(&errors),
            "node {i}: the outage is logged once per connection, not per message ({errors})"
        );
    }
}

/// A frozen node (SIGSTOP) never holds up another node's REST answers
/// beyond the request timeout; once declared dead its members leave, and
/// when it wakes (SIGCONT) it rejoins with them intact — and its own
/// clients saw no spurious departures of the others.
async fn stalled_peer(kind: Kind) {
    let cluster = Cluster::start(kind, 3, &[]).await;
    let ch = "presence-frozen";
    let mut watcher = cluster.node(0).connect().await;
    watcher.subscribe_presence(ch, "w0", json!({})).await;
    let mut frozen_member = cluster.node(2).connect().await;
    frozen_member.subscribe_presence(ch, "f2", json!({})).await;
    assert_eq!(event_and_user(&next(&mut watcher).await), ("pusher_internal:member_added".into(), "f2".into()));
    let mut other = cluster.node(1).connect().await;
    other.subscribe("plain").await;
    // Before the stall, read the frozen node's client up to a marker (its
    // member list may have got w0 by a member_added, replication being
    // asynchronous): after the stall nothing may come before the next one.
    eventually("w0 known on node 2", || async { user_ids(&cluster, 2, ch).await == ["f2", "w0"] }).await;
    trigger(&cluster, 1, ch, "before", "b").await;
    while frozen_member.recv().await["event"] != "before" {}
    assert_eq!(next(&mut watcher).await["event"], "before");
    cluster.node(2).pause();
    let asked = Instant::now();
    let (status, list) = cluster.node(0).rest().get("/channels", &[("info", "subscription_count")]).await;
    let took = asked.elapsed();
    assert_eq!(status, 200);
    assert!(took < Duration::from_millis(1800), "bounded by request_timeout_ms (1 s): {took:?}");
    assert_eq!(list["channels"]["plain"]["subscription_count"], 1, "the live nodes' part: {list}");
    let m = cluster.node(0).metrics().await;
    assert_eq!(metric_value(&m, "herald_fabric_partial_answers_total", &[]), Some(1.0), "marked partial");
    assert_eq!(cluster.node(0).logged("cluster question answered without every node").len(), 1);
    // Declared dead after node_timeout (2 s): its member leaves.
    let f = next(&mut watcher).await;
    assert_eq!(event_and_user(&f), ("pusher_internal:member_removed".into(), "f2".into()));
    eventually("declared dead on the other survivor too", || async { user_ids(&cluster, 1, ch).await == ["w0"] }).await;
    cluster.node(2).resume();
    let f = next(&mut watcher).await;
    assert_eq!(event_and_user(&f), ("pusher_internal:member_added".into(), "f2".into()), "it rejoined");
    for i in 0..3 {
        eventually("members intact everywhere", || async { user_ids(&cluster, i, ch).await == ["f2", "w0"] }).await;
    }
    // The frozen node's client saw nothing spurious: the next frame it gets
    // is this marker, not a member_removed / member_added of w0.
    trigger(&cluster, 1, ch, "marker", "m").await;
    let f = next(&mut frozen_member).await;
    assert_eq!(f["event"], "marker", "no spurious presence frames on the node that stalled: {f}");
}

/// A killed node's members and channels leave with webhooks, each fact
/// once, even with two survivors posting to the same receiver.
async fn death_webhooks(kind: Kind) {
    let mut receiver = WebhookReceiver::start(200).await;
    let events = "channel_vacated,member_removed";
    let env = [("HERALD_APP_WEBHOOK_URL", receiver.url.as_str()), ("HERALD_APP_WEBHOOK_EVENTS", events)];
    let mut cluster = Cluster::start(kind, 3, &env).await;
    let mut doomed = Vec::new();
    for ch in ["presence-d1", "presence-d2", "presence-d3", "presence-d4"] {
        let mut c = cluster.node(1).connect().await;
        c.subscribe_presence(ch, "gone", json!({})).await;
        doomed.push(c);
    }
    // Wait until the survivors know the members before the kill.
    for i in [0, 2] {
        eventually("members replicated", || async { user_ids(&cluster, i, "presence-d4").await == ["gone"] }).await;
    }
    cluster.nodes[1].kill();
    let got = receiver.events_until(|events| events.len() >= 8).await;
    receiver.expect_none(Duration::from_millis(700)).await;
    let facts = webhook_facts(&got);
    let mut expected = Vec::new();
    for ch in ["presence-d1", "presence-d2", "presence-d3", "presence-d4"] {
        expected.push(format!("channel_vacated {ch} "));
        expected.push(format!("member_removed {ch} gone"));
    }
    expected.sort();
    assert_eq!(facts, expected);
}

herald_e2e::on_every_fabric!(fabric_restart, stalled_peer, death_webhooks);
