//! Several `herald` processes joined by a real fabric — Redis, Redis Cluster
//! (3 masters, sharded pub/sub) and NATS — driven by real WebSocket and REST
//! clients: what a client on one node sees must be what it would see if
//! every client were on one node. The same scenarios run on every fabric.

use std::time::{Duration, Instant};

use herald_e2e::cluster::{eventually, next, trigger, webhook_facts, Cluster, Fabric, Kind};
use herald_e2e::{data, Closed, HeraldProcess, WebhookReceiver};
use herald_test_servers::{NatsServer, RedisCluster, RedisServer};
use serde_json::json;

// ---------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------

/// Events reach every node both ways; `socket_id` exclusion and client
/// events work across nodes.
async fn delivery(kind: Kind) {
    let cluster = Cluster::start(kind, 3, &[]).await;
    let mut a = cluster.node(0).connect().await;
    let mut b = cluster.node(1).connect().await;
    a.subscribe("news").await;
    b.subscribe("news").await;
    // Each event is triggered once the previous one has reached both
    // clients: events from different nodes have no order of their own
    // (the fabric hop is not raced against the next REST call), only
    // cause and effect does.
    for (via, name) in [(2, "e1"), (0, "e2"), (1, "e3")] {
        trigger(&cluster, via, "news", name, "x").await;
        for client in [&mut a, &mut b] {
            assert_eq!(next(client).await["event"], name, "each event once, in order");
        }
    }
    // Exclusion of a socket on another node than the one triggering.
    let body = json!({"name": "skip", "channels": ["news"], "data": "x", "socket_id": a.socket_id});
    assert_eq!(cluster.node(2).rest().post("/events", &body).await.0, 200);
    trigger(&cluster, 2, "news", "after", "y").await;
    assert_eq!(next(&mut b).await["event"], "skip");
    assert_eq!(next(&mut b).await["event"], "after");
    assert_eq!(next(&mut a).await["event"], "after", "the excluded socket skipped exactly one event");
    // Client events from node 0 reach node 1, not the sender.
    a.subscribe("private-chat").await;
    b.subscribe("private-chat").await;
    a.send(json!({"event": "client-typing", "channel": "private-chat", "data": {"who": "a"}})).await;
    let f = next(&mut b).await;
    assert_eq!((f["event"].clone(), data(&f)["who"].clone()), (json!("client-typing"), json!("a")));
    trigger(&cluster, 1, "private-chat", "marker", "m").await;
    assert_eq!(next(&mut a).await["event"], "marker", "the sender did not get its own client event");
    drop(cluster.fabric);
}

/// The same user on two nodes is one member: one member_added, one
/// member_removed, everywhere; lists and counts are the cluster's.
async fn presence(kind: Kind) {
    let cluster = Cluster::start(kind, 3, &[]).await;
    let ch = "presence-room";
    let mut watcher = cluster.node(2).connect().await;
    watcher.subscribe_presence(ch, "w", json!({"name": "W"})).await;
    let mut u1 = cluster.node(0).connect().await;
    u1.subscribe_presence(ch, "u", json!({"name": "U"})).await;
    let added = next(&mut watcher).await;
    assert_eq!(added["event"], "pusher_internal:member_added");
    assert_eq!(data(&added)["user_id"], "u");
    let mut u2 = cluster.node(1).connect().await;
    let ok = u2.subscribe_presence(ch, "u", json!({"name": "U"})).await;
    let members = data(&ok)["presence"].clone();
    assert_eq!(members["count"], 2, "{members}");
    assert_eq!(members["hash"]["w"]["name"], "W", "a member on another node is listed");
    let mut v = cluster.node(1).connect().await;
    v.subscribe_presence(ch, "v", json!({})).await;
    let f = next(&mut watcher).await;
    assert_eq!(data(&f)["user_id"], "v", "no second member_added for u, then v: {f}");
    // Presence is replicated: every node's answer converges within moments.
    for i in 0..3 {
        eventually("every node lists u, v and w once", || async {
            let rest = cluster.node(i).rest();
            let (status, users) = rest.get(&format!("/channels/{ch}/users"), &[]).await;
            let mut ids: Vec<String> =
                users["users"].as_array().unwrap().iter().map(|u| u["id"].as_str().unwrap().to_string()).collect();
            ids.sort();
            let (_, info) = rest.get(&format!("/channels/{ch}"), &[("info", "user_count,subscription_count")]).await;
            status == 200
                && ids == ["u", "v", "w"]
                && info == json!({"occupied": true, "user_count": 3, "subscription_count": 4})
        })
        .await;
    }
    drop(u1);
    v.send(json!({"event": "pusher:unsubscribe", "data": {"channel": ch}})).await;
    let f = next(&mut watcher).await;
    assert_eq!(
        (f["event"].clone(), data(&f)["user_id"].clone()),
        (json!("pusher_internal:member_removed"), json!("v")),
        "u still has a socket on node 1, so only v left: {f}"
    );
    drop(u2);
    let f = next(&mut watcher).await;
    assert_eq!(
        (f["event"].clone(), data(&f)["user_id"].clone()),
        (json!("pusher_internal:member_removed"), json!("u"))
    );
}

/// `GET /channels` and subscription counts add up over the nodes.
async fn counts(kind: Kind) {
    let cluster = Cluster::start(kind, 3, &[]).await;
    let mut clients = Vec::new();
    for (node, channel) in [(0, "alpha"), (1, "alpha"), (2, "alpha"), (1, "beta"), (2, "presence-p")] {
        let mut c = cluster.node(node).connect().await;
        if channel.starts_with("presence-") {
            c.subscribe_presence(channel, "p1", json!({})).await;
        } else {
            c.subscribe(channel).await;
        }
        clients.push(c);
    }
    for i in 0..3 {
        let rest = cluster.node(i).rest();
        let (_, list) = rest.get("/channels", &[("info", "subscription_count")]).await;
        assert_eq!(
            list,
            json!({"channels": {"alpha": {"subscription_count": 3}, "beta": {"subscription_count": 1},
                                "presence-p": {"subscription_count": 1}}}),
            "node {i}"
        );
        let (_, one) = rest.get("/channels/alpha", &[("info", "subscription_count")]).await;
        assert_eq!(one, json!({"occupied": true, "subscription_count": 3}));
        // user_count comes from the replicated presence: it converges.
        eventually("user_count of presence-p", || async {
            let (_, p) = rest.get("/channels", &[("filter_by_prefix", "presence-"), ("info", "user_count")]).await;
            p == json!({"channels": {"presence-p": {"user_count": 1}}})
        })
        .await;
    }
    clients.clear();
    eventually("every channel vacated everywhere", || async {
        let mut empty = true;
        for i in 0..3 {
            empty &= cluster.node(i).rest().get("/channels", &[]).await.1 == json!({"channels": {}});
        }
        empty
    })
    .await;
}

/// `sendToUser` and `terminate_connections` reach the user on every node;
/// watchers see the cluster's online/offline.
async fn users(kind: Kind) {
    let cluster = Cluster::start(kind, 3, &[]).await;
    let mut watcher = cluster.node(2).connect().await;
    let ok = watcher.sign_in(json!({"id": "w", "watchlist": ["u"]})).await;
    assert_eq!(ok["event"], "pusher:signin_success");
    let snapshot = next(&mut watcher).await;
    assert!(snapshot.to_string().contains("offline"), "{snapshot}");
    let mut u1 = cluster.node(0).connect().await;
    u1.sign_in(json!({"id": "u"})).await;
    let online = next(&mut watcher).await;
    assert_eq!(data(&online)["events"], json!([{"name": "online", "user_ids": ["u"]}]));
    let mut u2 = cluster.node(1).connect().await;
    u2.sign_in(json!({"id": "u"})).await;
    u1.subscribe("#server-to-user-u").await;
    u2.subscribe("#server-to-user-u").await;
    trigger(&cluster, 2, "#server-to-user-u", "to-u", "hi").await;
    assert_eq!(next(&mut u1).await["event"], "to-u");
    assert_eq!(next(&mut u2).await["event"], "to-u");
    let (status, _) = cluster.node(2).rest().post("/users/u/terminate_connections", &json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(u1.expect_close().await.0, Closed::Code(4009));
    assert_eq!(u2.expect_close().await.0, Closed::Code(4009));
    let offline = next(&mut watcher).await;
    assert_eq!(
        data(&offline)["events"],
        json!([{"name": "offline", "user_ids": ["u"]}]),
        "one offline, after the user's last connection anywhere closed (no online/offline per node)"
    );
}

/// The last event of a cache channel, triggered through one node, is
/// replayed to a subscriber on another; a miss only when no node has one.
async fn cache(kind: Kind) {
    let cluster = Cluster::start(kind, 2, &[]).await;
    trigger(&cluster, 0, "cache-prices", "tick", "42").await;
    let mut b = cluster.node(1).connect().await;
    let ok = b.subscribe("cache-prices").await;
    assert_eq!(ok["event"], "pusher_internal:subscription_succeeded");
    let replay = next(&mut b).await;
    assert_eq!((replay["event"].clone(), replay["data"].clone()), (json!("tick"), json!("42")));
    b.subscribe("cache-empty").await;
    assert_eq!(next(&mut b).await["event"], "pusher:cache_miss");
}

/// Webhooks are cluster facts: with every node posting to one receiver,
/// each occupied / vacated / member_added / member_removed arrives once.
async fn webhooks(kind: Kind) {
    let mut receiver = WebhookReceiver::start(200).await;
    let events = "channel_occupied,channel_vacated,member_added,member_removed";
    let env = [("HERALD_APP_WEBHOOK_URL", receiver.url.as_str()), ("HERALD_APP_WEBHOOK_EVENTS", events)];
    let cluster = Cluster::start(kind, 2, &env).await;
    let mut clients = Vec::new();
    for name in ["presence-h1", "presence-h2", "presence-h3"] {
        for node in 0..2 {
            let mut c = cluster.node(node).connect().await;
            c.subscribe_presence(name, "same-user", json!({})).await;
            clients.push(c);
        }
    }
    clients.clear();
    let mut got =
        receiver.events_until(|events| events.iter().filter(|e| e["name"] == "channel_vacated").count() >= 3).await;
    // Anything duplicated would arrive within the batching window; wait one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Ok(Some(hook)) = tokio::time::timeout(Duration::from_millis(300), receiver.next_opt()).await {
        got.extend(hook.json()["events"].as_array().cloned().unwrap_or_default());
    }
    let facts = webhook_facts(&got);
    let mut expected = Vec::new();
    for ch in ["presence-h1", "presence-h2", "presence-h3"] {
        expected.push(format!("channel_occupied {ch} "));
        expected.push(format!("channel_vacated {ch} "));
        expected.push(format!("member_added {ch} same-user"));
        expected.push(format!("member_removed {ch} same-user"));
    }
    expected.sort();
    assert_eq!(facts, expected);
}

/// A backend publishes an envelope straight into the fabric with a plain
/// client (docs/fabric.md): `redis-cli PUBLISH`, `redis-cli -c SPUBLISH`,
/// or the NATS text protocol over a bare TCP socket.
async fn backend_publish(kind: Kind) {
    let cluster = Cluster::start(kind, 2, &[]).await;
    let mut a = cluster.node(0).connect().await;
    let mut b = cluster.node(1).connect().await;
    a.subscribe("orders").await;
    b.subscribe("orders").await;
    let header = r#"{"v":1,"t":"event","app":"app-id","channel":"orders"}"#;
    let frame = r#"{"event":"created","channel":"orders","data":"{\"id\":1}"}"#;
    let payload = format!("{header}\n{frame}");
    match &cluster.fabric {
        Fabric::Redis(r) => {
            let name = format!("{}:app:app-id", cluster.prefix);
            redis_cli(&["-p", &r.port().to_string(), "PUBLISH", &name, &payload]);
        }
        Fabric::RedisCluster(c) => {
            // The documented rule, computed independently of Herald's code.
            const TAGS: [&str; 16] = [
                "p0-0", "p1-3", "p2-11", "p3-12", "p4-41", "p5-42", "p6-61", "p7-62", "p8-11", "p9-12", "p10-12",
                "p11-11", "p12-20", "p13-23", "p14-2", "p15-1",
            ];
            let mut h: u32 = 0x811c9dc5;
            for b in "orders".bytes() {
                h = (h ^ u32::from(b)).wrapping_mul(16_777_619);
            }
            let name = format!("{}:app:app-id:{{{}}}", cluster.prefix, TAGS[(h % 16) as usize]);
            redis_cli(&["-c", "-p", &c.ports()[0].to_string(), "SPUBLISH", &name, &payload]);
        }
        Fabric::Nats(n) => nats_pub(n.port(), &format!("{}.app.app-id", cluster.prefix), &payload).await,
    }
    for client in [&mut a, &mut b] {
        let f = next(client).await;
        assert_eq!((f["event"].clone(), data(&f)["id"].clone()), (json!("created"), json!(1)));
    }
}

fn redis_cli(args: &[&str]) {
    let out = std::process::Command::new("redis-cli")
        .args(args)
        .output()
        .expect("redis-cli runs (Debian package redis-tools)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.trim() != "0", "redis-cli {args:?}: {text} (no subscriber received it)");
}

/// Publishes with the NATS text protocol: CONNECT, PUB, PING → PONG.
async fn nats_pub(port: u16, subject: &str, payload: &str) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    stream.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("INFO"), "{line}");
    let msg = format!("CONNECT {{\"verbose\":false}}\r\nPUB {subject} {}\r\n{payload}\r\nPING\r\n", payload.len());
    stream.get_mut().write_all(msg.as_bytes()).await.unwrap();
    line.clear();
    stream.read_line(&mut line).await.unwrap();
    assert_eq!(line.trim(), "PONG", "the server took the publish");
}

/// A node whose fabric cannot be reached says so, is not ready, refuses to
/// accept events it could not spread (503), and recovers by itself when
/// the fabric appears.
async fn unreachable_fabric(kind: Kind) {
    let ports = match kind {
        Kind::RedisCluster => herald_test_servers::free_cluster_ports(3),
        _ => vec![herald_test_servers::free_port()],
    };
    let port = ports[0];
    let urls = |scheme: &str| ports.iter().map(|p| format!("{scheme}://127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
    let (adapter, key, url) = match kind {
        Kind::Nats => ("nats", "HERALD_NATS_SERVERS", urls("nats")),
        Kind::Redis => ("redis", "HERALD_REDIS_URL", urls("redis")),
        Kind::RedisCluster => ("redis-cluster", "HERALD_REDIS_CLUSTER_NODES", urls("redis")),
    };
    let node = HeraldProcess::start(&[("HERALD_ADAPTER", adapter), (key, &url), ("HERALD_ADAPTER_PREFIX", "u")]);
    let ready = || async { reqwest::get(format!("http://{}/ready", node.addr)).await.unwrap().status().as_u16() };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ready().await, 503);
    let (status, body) = node.rest().trigger(&["c"], "e", "d").await;
    assert_eq!(status, 503, "never a 200 for an event that went nowhere: {body}");
    eventually("an error naming the URL", || async {
        node.logged("\"level\":\"ERROR\"").iter().any(|l| l.contains(&format!("127.0.0.1:{port}")))
    })
    .await;
    let _server: Box<dyn std::any::Any> = match kind {
        Kind::Nats => Box::new(NatsServer::start_on(port)),
        Kind::Redis => Box::new(RedisServer::start_on(port)),
        Kind::RedisCluster => Box::new(RedisCluster::start_on(&ports)),
    };
    eventually("ready once the fabric is up", || async { ready().await == 200 }).await;
    assert_eq!(node.rest().trigger(&["c"], "e", "d").await.0, 200);
}

/// A node killed with SIGKILL leaves no ghost: after the node timeout its
/// members are removed everywhere; a SIGTERM'd node says goodbye at once.
async fn node_death(kind: Kind) {
    let mut cluster = Cluster::start(kind, 3, &[("HERALD_SHUTDOWN_GRACE", "1")]).await;
    let ch = "presence-lobby";
    let mut watcher = cluster.node(0).connect().await;
    watcher.subscribe_presence(ch, "watcher", json!({})).await;
    // Each join is seen by the watcher before the next one: joins on two
    // different nodes have no order of their own over the fabric.
    let mut doomed = cluster.node(1).connect().await;
    doomed.subscribe_presence(ch, "ghost", json!({})).await;
    assert_eq!(data(&next(&mut watcher).await)["user_id"], "ghost");
    let mut polite = cluster.node(2).connect().await;
    polite.subscribe_presence(ch, "polite", json!({})).await;
    assert_eq!(data(&next(&mut watcher).await)["user_id"], "polite");
    let killed = Instant::now();
    cluster.nodes[1].kill();
    let f = next(&mut watcher).await;
    assert_eq!(
        (f["event"].clone(), data(&f)["user_id"].clone()),
        (json!("pusher_internal:member_removed"), json!("ghost"))
    );
    let took = killed.elapsed();
    assert!(took >= Duration::from_millis(1500), "removed only once declared dead ({took:?})");
    assert!(took < Duration::from_secs(4), "within node_timeout + 2 s ({took:?})");
    let said_bye = Instant::now();
    cluster.nodes[2].terminate();
    let f = next(&mut watcher).await;
    assert_eq!(
        (f["event"].clone(), data(&f)["user_id"].clone()),
        (json!("pusher_internal:member_removed"), json!("polite"))
    );
    assert!(said_bye.elapsed() < Duration::from_millis(1500), "a goodbye is not a timeout ({:?})", said_bye.elapsed());
    let (_, users) = cluster.node(0).rest().get(&format!("/channels/{ch}/users"), &[]).await;
    assert_eq!(users, json!({"users": [{"id": "watcher"}]}));
    assert!(cluster.nodes[2].wait_exit(Duration::from_secs(5)));
}

/// A node delivers across the cluster from its first second: no waiting
/// for a discovery heartbeat before its publishes reach the others.
async fn first_second(kind: Kind) {
    let extra = [("HERALD_HEARTBEAT_INTERVAL_MS", "5000"), ("HERALD_NODE_TIMEOUT_MS", "20000")];
    let mut cluster = Cluster::start(kind, 1, &extra).await;
    let mut a = cluster.node(0).connect().await;
    a.subscribe("early").await;
    let started = Instant::now();
    let b = cluster.add_node();
    let rest = b.rest();
    let mut attempt = 0;
    let accepted = loop {
        attempt += 1;
        let (status, _) = rest.trigger(&["early"], "hello", &attempt.to_string()).await;
        if status == 200 {
            break attempt;
        }
        assert_eq!(status, 503, "before its fabric is up a node refuses events");
        assert!(started.elapsed() < Duration::from_secs(1), "no 200 within the first second");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let f = next(&mut a).await;
    assert_eq!((f["event"].clone(), f["data"].clone()), (json!("hello"), json!(accepted.to_string())));
}

herald_e2e::on_every_fabric!(
    delivery,
    presence,
    counts,
    users,
    cache,
    webhooks,
    backend_publish,
    unreachable_fabric,
    node_death,
    first_second
);
