//! Concurrency tests of the namespace: the same operations the gateway and
//! the cleanup workers run, from several OS threads at once, repeated many
//! times, checking what a subscriber or watcher ends up being told.
//!
//! They exist because each of these once had a window between two locks
//! (or between a check and an update) that a burst could fall into.

use std::sync::{Arc, Barrier};
use std::thread;

use futures_util::FutureExt;
use herald_metrics::Metrics;
use herald_protocol::presence::PresenceMember;
use herald_protocol::SocketId;
use serde_json::{json, Value};
use tokio::sync::mpsc::Receiver;

use super::shards::Shards;
use super::{LocalAdapter, Namespace, NamespaceSpec};
use crate::adapter::{Adapter, Subscription};
use crate::connection::{Connection, Frame};
use crate::replica::SingleNode;

fn ns() -> Arc<Namespace> {
    Arc::new(Namespace::new("app", Metrics::new("test").app("app"), Arc::new(crate::NoLifecycle), Arc::new(SingleNode)))
}

fn adapter() -> Arc<LocalAdapter> {
    let spec = NamespaceSpec {
        app_id: "app".into(),
        metrics: Metrics::new("test").app("app"),
        lifecycle: Arc::new(crate::NoLifecycle),
        cache: Default::default(),
    };
    Arc::new(LocalAdapter::new([spec]))
}

fn conn(major: u64, minor: u64) -> (Arc<Connection>, Receiver<Frame>) {
    Connection::new(SocketId { major, minor }, 256)
}

fn drain(rx: &mut Receiver<Frame>) -> Vec<Value> {
    let mut out = Vec::new();
    while let Ok(f) = rx.try_recv() {
        out.push(serde_json::from_str(f.as_str()).unwrap_or_else(|_| json!(f.as_str())));
    }
    out
}

fn sub(channel: &str, user: Option<&str>) -> Subscription {
    Subscription {
        channel: channel.into(),
        member: user.map(|id| PresenceMember { user_id: id.into(), user_info: json!({}) }),
        max_members: 1000,
        is_cache: channel.starts_with("cache-"),
    }
}

/// The user id a presence frame names, if it is `member_added`/`removed`.
fn presence_change(frame: &Value) -> Option<(bool, String)> {
    let added = match frame["event"].as_str()? {
        "pusher_internal:member_added" => true,
        "pusher_internal:member_removed" => false,
        _ => return None,
    };
    let data: Value = serde_json::from_str(frame["data"].as_str()?).ok()?;
    Some((added, data["user_id"].as_str()?.to_string()))
}

/// Runs `f(i)` on `n` threads released together.
fn at_once<T: Send + 'static>(n: usize, f: impl Fn(usize) -> T + Send + Sync + 'static) -> Vec<T> {
    let barrier = Arc::new(Barrier::new(n));
    let f = Arc::new(f);
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (barrier, f) = (barrier.clone(), f.clone());
            thread::spawn(move || {
                barrier.wait();
                f(i)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// A user leaves (disconnect, removed by a cleanup batch) while the same
/// user rejoins on a new connection: whatever the interleaving, the other
/// subscribers' last word about the user is "present" (or nothing at all).
#[test]
fn a_quick_rejoin_is_never_shown_as_gone() {
    for round in 0..300u64 {
        let ns = ns();
        let (watcher, mut rw) = conn(round, 0);
        ns.subscribe(&watcher, &sub("presence-x", Some("w")), false).unwrap();
        let (old, _ro) = conn(round, 1);
        ns.subscribe(&old, &sub("presence-x", Some("u")), false).unwrap();
        drain(&mut rw);
        let (new, _rn) = conn(round, 2);
        let (ns2, old2, new2) = (ns.clone(), old.clone(), new.clone());
        at_once(2, move |i| {
            if i == 0 {
                old2.mark_leaving();
                ns2.remove_connections(std::slice::from_ref(&old2));
            } else {
                ns2.subscribe(&new2, &sub("presence-x", Some("u")), false).unwrap();
            }
        });
        let told: Vec<bool> =
            drain(&mut rw).iter().filter_map(presence_change).filter(|(_, u)| u == "u").map(|(a, _)| a).collect();
        assert!(told.last().copied().unwrap_or(true), "round {round}: watcher last heard u left: {told:?}");
        assert!(ns.members("presence-x").iter().any(|(id, _)| id == "u"), "round {round}");
    }
}

/// Subscribers arriving on a cache channel while an event is triggered on
/// it get that event exactly once: live, or as the replay.
#[test]
fn a_cache_subscriber_racing_a_trigger_gets_the_event_once() {
    const SUBSCRIBERS: usize = 3;
    let mut twice = 0;
    let mut never = 0;
    for round in 0..600u64 {
        let adapter = adapter();
        adapter
            .broadcast("app", "cache-x", crate::text_frame("\"old\"".into()), None, true)
            .now_or_never()
            .unwrap()
            .unwrap();
        let a = adapter.clone();
        let received = at_once(SUBSCRIBERS + 1, move |i| {
            if i == 0 {
                let frame = crate::text_frame("\"new\"".into());
                a.broadcast("app", "cache-x", frame, None, true).now_or_never().unwrap().unwrap();
                return Vec::new();
            }
            let (c, mut rx) = conn(round, i as u64);
            a.subscribe("app", &c, sub("cache-x", None)).now_or_never().unwrap().unwrap();
            // The event may still be on its way from the broadcaster thread.
            let mut frames = drain(&mut rx);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while !frames.contains(&json!("new")) && std::time::Instant::now() < deadline {
                thread::yield_now();
                frames.extend(drain(&mut rx));
            }
            frames
        });
        for frames in received.into_iter().skip(1) {
            match frames.iter().filter(|f| **f == json!("new")).count() {
                1 => {}
                0 => never += 1,
                _ => twice += 1,
            }
        }
    }
    assert_eq!((twice, never), (0, 0), "subscribers that got the racing event (twice, never)");
}

/// Re-signing in as the same user changes nothing for watchers: no
/// `offline`, no `online`.
#[test]
fn re_signing_in_as_the_same_user_is_silent() {
    let ns = ns();
    let (watcher, mut rw) = conn(1, 0);
    ns.sign_in(&watcher, "w", &["u".to_string()]);
    let (c, _rc) = conn(1, 1);
    assert!(ns.sign_in(&c, "u", &[]).came_online);
    assert_eq!(drain(&mut rw).len(), 1, "online");
    let again = ns.sign_in(&c, "u", &["w".to_string()]);
    assert!(!again.came_online);
    assert_eq!(again.online_watched, vec!["w".to_string()]);
    assert_eq!(drain(&mut rw), Vec::<Value>::new(), "re-signing as u told its watchers something");
    assert_eq!(ns.user_connections("u").len(), 1);
}

/// A second sign-in as another user takes the first one offline for its
/// watchers (when it was its last connection) and brings the new one online.
#[test]
fn signing_in_as_another_user_takes_the_old_one_offline() {
    let ns = ns();
    let (watcher, mut rw) = conn(1, 0);
    ns.sign_in(&watcher, "w", &["u".to_string(), "v".to_string()]);
    let (c, _rc) = conn(1, 1);
    ns.sign_in(&c, "u", &[]);
    drain(&mut rw);
    assert!(ns.sign_in(&c, "v", &[]).came_online);
    let events: Vec<String> = drain(&mut rw).iter().map(|f| f["data"].as_str().unwrap().to_string()).collect();
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events[0].contains("offline") && events[0].contains("\"u\""), "{events:?}");
    assert!(events[1].contains("online") && events[1].contains("\"v\""), "{events:?}");
    assert!(ns.user_connections("u").is_empty());
}

/// Two connections of one user re-sign and sign in at once: the user never
/// looks offline to a watcher while one of them is signed in.
#[test]
fn concurrent_sign_ins_of_one_user_never_flicker_offline() {
    for round in 0..300u64 {
        let ns = ns();
        let (watcher, mut rw) = conn(round, 0);
        ns.sign_in(&watcher, "w", &["u".to_string()]);
        let (a, _ra) = conn(round, 1);
        ns.sign_in(&a, "u", &[]);
        drain(&mut rw);
        let (b, _rb) = conn(round, 2);
        let (ns2, a2, b2) = (ns.clone(), a.clone(), b.clone());
        at_once(2, move |i| {
            if i == 0 {
                ns2.sign_in(&a2, "u", &[]);
            } else {
                ns2.sign_in(&b2, "u", &[]);
            }
        });
        let frames = drain(&mut rw);
        assert!(frames.is_empty(), "round {round}: u was online throughout, watcher heard {frames:?}");
    }
}

/// Many connections of one app registering at once never exceed its
/// connection quota, and the quota is filled exactly.
#[test]
fn a_burst_of_connections_cannot_overshoot_the_quota() {
    const MAX: usize = 3;
    const BURST: usize = 12;
    for round in 0..300u64 {
        let adapter = adapter();
        let a = adapter.clone();
        let admitted = at_once(BURST, move |i| {
            let (c, _rx) = conn(round, i as u64);
            a.add_connection("app", c, MAX).is_ok()
        });
        let admitted = admitted.into_iter().filter(|ok| *ok).count();
        assert_eq!(admitted, MAX, "round {round}: admitted {admitted} of {BURST} with a quota of {MAX}");
        assert_eq!(adapter.connection_count("app").unwrap(), MAX);
    }
}

/// While one channel's state is locked (a hot channel rebuilding its
/// snapshot, a cleanup batch, a snapshot being applied), the app's other
/// channels keep serving subscribes, broadcasts and queries.
#[test]
fn a_busy_channel_does_not_stall_the_others() {
    let ns = ns();
    let hot = "hot";
    let other = (0..1000)
        .map(|i| format!("other-{i}"))
        .find(|c| Shards::index(c) != Shards::index(hot))
        .unwrap_or_else(|| "other".into());
    let (a, mut ra) = conn(1, 1);
    ns.subscribe(&a, &sub(&other, None), false).unwrap();
    drain(&mut ra);
    let busy = ns.channels.lock(hot);
    let (done, finished) = std::sync::mpsc::channel();
    let worker = {
        let ns = ns.clone();
        let other = other.clone();
        thread::spawn(move || {
            let (b, _rb) = conn(1, 2);
            ns.subscribe(&b, &sub(&other, None), false).unwrap();
            let delivered = ns.fan_out(&other, &crate::text_frame("\"x\"".into()), None, false).now_or_never().unwrap();
            let count = ns.subscription_count(&other);
            let _ = done.send((delivered, count));
        })
    };
    let result = finished.recv_timeout(std::time::Duration::from_secs(10));
    drop(busy);
    worker.join().unwrap();
    assert_eq!(result.ok(), Some((2, 2)), "work on {other} waited for {hot}'s lock");
    assert_eq!(drain(&mut ra), vec![json!("x")]);
}

/// Counts how often another task got the worker while `work` ran on a
/// single-threaded runtime (so the two really share one worker).
async fn others_ran_during<F: std::future::Future + Send + 'static>(work: F) -> (usize, F::Output)
where
    F::Output: Send,
{
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let ran = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let ticker = tokio::spawn({
        let (ran, stop) = (ran.clone(), stop.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                ran.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        }
    });
    tokio::task::yield_now().await;
    let counted = ran.clone();
    let worker = tokio::spawn(async move {
        let before = counted.load(Ordering::Relaxed);
        let out = work.await;
        (counted.load(Ordering::Relaxed) - before, out)
    });
    let result = worker.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    ticker.await.unwrap();
    result
}

fn subscribers(adapter: &LocalAdapter, channel: &str, n: u64, major: u64) -> Vec<Receiver<Frame>> {
    (0..n)
        .map(|i| {
            let (c, mut rx) = Connection::new(SocketId { major, minor: i }, 16);
            adapter.subscribe("app", &c, sub(channel, None)).now_or_never().unwrap().unwrap();
            drain(&mut rx);
            rx
        })
        .collect()
}

/// One broadcast to 20,000 subscribers gives the worker back several
/// times while it runs, and two consecutive broadcasts still reach every
/// subscriber in order.
#[tokio::test(flavor = "current_thread")]
async fn a_large_fan_out_gives_the_worker_back_and_keeps_order() {
    const N: u64 = 20_000;
    let adapter = adapter();
    let mut rxs = subscribers(&adapter, "big", N, 7);
    let a = adapter.clone();
    let (others, delivered) = others_ran_during(async move {
        let first = a.broadcast("app", "big", crate::text_frame("1".into()), None, false).await.unwrap();
        let second = a.broadcast("app", "big", crate::text_frame("2".into()), None, true).await.unwrap();
        (first, second)
    })
    .await;
    assert_eq!(delivered, (N as usize, N as usize));
    assert!(others >= 4, "another task ran {others} times during two fan-outs to {N}");
    for rx in &mut rxs {
        assert_eq!(drain(rx), vec![json!(1), json!(2)]);
    }
}

/// A REST batch (many broadcasts to small channels in one task) gives the
/// worker back too.
#[tokio::test(flavor = "current_thread")]
async fn a_batch_of_broadcasts_gives_the_worker_back() {
    let adapter = adapter();
    let _rxs: Vec<_> = (0..100).flat_map(|c| subscribers(&adapter, &format!("c{c}"), 100, c)).collect();
    let a = adapter.clone();
    let (others, delivered) = others_ran_during(async move {
        let mut delivered = 0;
        for event in 0..10 {
            for c in 0..100 {
                let frame = crate::text_frame(format!("{event}"));
                delivered += a.broadcast("app", &format!("c{c}"), frame, None, false).await.unwrap();
            }
        }
        delivered
    })
    .await;
    assert_eq!(delivered, 100_000);
    assert!(others >= 4, "another task ran {others} times during 10 events × 100 channels of 100");
}

/// Cluster: a cache subscriber missed here and asked the peers; the event
/// reached this node live before their answer (which is the same event).
/// It got the event live, so the answer sends nothing more.
#[tokio::test]
async fn a_live_event_before_the_peers_answer_is_not_replayed_again() {
    let ns = ns();
    let subscribed_at = std::time::Instant::now();
    let (s, mut rs) = conn(1, 1);
    assert!(ns.subscribe(&s, &sub("cache-x", None), true).unwrap().cache_miss);
    let event = crate::text_frame("\"e\"".into());
    assert_eq!(ns.fan_out("cache-x", &event, None, true).await, 1);
    assert!(ns.finish_replay(&s, "cache-x", Some((event, std::time::Duration::ZERO)), subscribed_at));
    let frames = drain(&mut rs);
    assert_eq!(frames.iter().filter(|f| **f == json!("e")).count(), 1, "{frames:?}");
}

/// Cluster: the peers' answer (the event being triggered) arrives before
/// the event itself reaches this node live: the subscriber that got it as
/// a replay does not get it again; the others get it once, and the next
/// event reaches everybody.
#[tokio::test]
async fn a_peers_answer_before_the_live_event_is_not_delivered_again() {
    let ns = ns();
    let (earlier, mut re) = conn(1, 1);
    ns.subscribe(&earlier, &sub("cache-x", None), false).unwrap();
    let subscribed_at = std::time::Instant::now();
    let (s, mut rs) = conn(1, 2);
    assert!(ns.subscribe(&s, &sub("cache-x", None), true).unwrap().cache_miss);
    let event = crate::text_frame("\"e\"".into());
    assert!(ns.finish_replay(&s, "cache-x", Some((event.clone(), std::time::Duration::ZERO)), subscribed_at));
    assert_eq!(ns.fan_out("cache-x", &event, None, true).await, 1, "only the earlier subscriber needed it");
    ns.fan_out("cache-x", &crate::text_frame("\"next\"".into()), None, true).await;
    let (got_s, got_earlier) = (drain(&mut rs), drain(&mut re));
    assert_eq!(got_s.iter().filter(|f| **f == json!("e")).count(), 1, "{got_s:?}");
    assert_eq!(got_earlier.iter().filter(|f| **f == json!("e")).count(), 1, "{got_earlier:?}");
    assert_eq!(got_s.last(), Some(&json!("next")));
    assert_eq!(got_earlier.last(), Some(&json!("next")));
}
