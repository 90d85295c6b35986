//! Soak: three nodes on Redis, clients joining and leaving presence and
//! public channels on random nodes all the time, and Redis restarted every
//! 15 s. At the end, with every client gone, every node must agree the
//! cluster is empty (no ghost member, channel or connection) and no node's
//! memory may have grown past a bound. `SOAK_SECS` sets the length (the
//! test command runs it for 40 s; `test/soak.sh` runs it for hours).

use std::time::{Duration, Instant};

use herald_e2e::cluster::{eventually, Cluster, Fabric, Kind};
use herald_e2e::metric_value;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_and_fabric_restarts_leave_nothing_behind() {
    let secs: u64 = std::env::var("SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(40);
    let mut cluster = Cluster::start(Kind::Redis, 3, &[]).await;
    let started = Instant::now();
    let mut rss_after_warmup: Option<Vec<u64>> = None;
    let mut next_restart = Instant::now() + Duration::from_secs(15);
    let mut round: u64 = 0;
    let mut restarts = 0;
    let mut clients = Vec::new();
    while started.elapsed() < Duration::from_secs(secs) {
        round += 1;
        // Join: a few clients on every node, presence and public.
        for node in 0..3 {
            for k in 0..4u64 {
                let mut c = cluster.node(node).connect().await;
                let user = format!("u{}", (round * 7 + k) % 23);
                c.subscribe_presence(&format!("presence-soak-{}", k % 3), &user, json!({"r": round})).await;
                c.subscribe(&format!("soak-{}", (round + k) % 5)).await;
                clients.push(c);
            }
        }
        // Leave: half of everyone, oldest first (some mid-outage).
        let leave = clients.len() / 2;
        clients.drain(..leave);
        if Instant::now() >= next_restart {
            if let Fabric::Redis(r) = &mut cluster.fabric {
                r.restart();
                restarts += 1;
            }
            next_restart = Instant::now() + Duration::from_secs(15);
            for i in 0..3 {
                eventually("ready after the restart", || async {
                    reqwest::get(format!("http://{}/ready", cluster.node(i).addr))
                        .await
                        .is_ok_and(|r| r.status() == 200)
                })
                .await;
            }
        }
        if rss_after_warmup.is_none() && started.elapsed() > Duration::from_secs(5) {
            rss_after_warmup = Some(cluster.nodes.iter().map(|n| n.rss_bytes()).collect());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    clients.clear();
    for i in 0..3 {
        eventually("no channel, member or connection left anywhere", || async {
            let rest = cluster.node(i).rest();
            let (_, channels) = rest.get("/channels", &[]).await;
            let metrics = cluster.node(i).metrics().await;
            let connections = metric_value(&metrics, "herald_connections", &[]);
            channels == json!({"channels": {}}) && connections == Some(0.0)
        })
        .await;
        let (_, users) = cluster.node(i).rest().get("/channels/presence-soak-0/users", &[]).await;
        assert_eq!(users, json!({"users": []}), "node {i}");
        let metrics = cluster.node(i).metrics().await;
        assert_eq!(metric_value(&metrics, "herald_cluster_nodes", &[]), Some(3.0), "node {i}");
    }
    let before = rss_after_warmup.expect("ran past the warm-up");
    for (i, node) in cluster.nodes.iter().enumerate() {
        let now = node.rss_bytes();
        eprintln!("node {i}: RSS {} KiB after warm-up, {} KiB at the end", before[i] / 1024, now / 1024);
        assert!(now < 200 << 20, "node {i}: RSS {now} bytes");
        assert!(now < before[i] + (64 << 20), "node {i}: RSS grew from {} to {now} bytes", before[i]);
    }
    eprintln!("soak: {round} rounds, {restarts} Redis restarts in {:?}", started.elapsed());
    assert!(secs < 30 || restarts >= 1, "the soak restarted Redis at least once");
}
