//! One worker process: opens its share of the clients, subscribes them, then
//! records every broadcast it receives until the coordinator says "done" on
//! stdin. Talks to the coordinator in JSON lines on stdout.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpSocket;
use tokio::sync::watch;

use crate::hist::Histogram;
use crate::lean::{Incoming, LeanWs};
use crate::RunArgs;

/// The event name every loadgen broadcast uses.
pub const EVENT: &str = "loadgen";

/// What a worker reports at the end.
#[derive(Default, Serialize, Deserialize)]
pub struct Summary {
    pub received: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub latency: Histogram,
    /// Per round: the latest receipt (unix ns) of any message of that round.
    pub round_last_ns: Vec<u64>,
    /// Per round: messages received.
    pub round_received: Vec<u64>,
}

impl Summary {
    fn new(rounds: usize) -> Self {
        Self { round_last_ns: vec![0; rounds], round_received: vec![0; rounds], ..Default::default() }
    }

    pub fn merge(&mut self, other: &Summary) {
        self.received += other.received;
        self.duplicated += other.duplicated;
        self.out_of_order += other.out_of_order;
        self.latency.merge(&other.latency);
        for (a, b) in self.round_last_ns.iter_mut().zip(&other.round_last_ns) {
            *a = (*a).max(*b);
        }
        for (a, b) in self.round_received.iter_mut().zip(&other.round_received) {
            *a += b;
        }
    }
}

pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn emit(line: Value) {
    println!("{line}");
}

type Ws = LeanWs;

/// Connects `n` newcomers (ids from `first`) and times each until
/// `connection_established`; returns the histogram (µs) and the sockets.
async fn newcomers(args: &RunArgs, first: usize, n: usize) -> (Histogram, Vec<Ws>) {
    let results: Vec<Result<(u64, Ws), String>> = stream::iter(first..first + n)
        .map(|i| async move {
            let started = Instant::now();
            let ws = handshake(args, i).await?;
            Ok((started.elapsed().as_micros() as u64, ws))
        })
        .buffer_unordered(100)
        .collect()
        .await;
    let mut hist = Histogram::default();
    let mut sockets = Vec::new();
    for (us, ws) in results.into_iter().flatten() {
        hist.record(us);
        sockets.push(ws);
    }
    (hist, sockets)
}

pub async fn run(args: RunArgs, index: usize, count: usize) -> Result<(), String> {
    let churn_share = (index..args.churn).step_by(count).count();
    let churn_first = args.clients + index * churn_share;
    if churn_share > 0 {
        let (idle, sockets) = newcomers(&args, churn_first, churn_share).await;
        drop(sockets);
        emit(json!({"baseline": idle}));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let started = Instant::now();
    let connected = Arc::new(AtomicUsize::new(0));
    let progress = {
        let connected = connected.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                emit(json!({"progress": connected.load(Ordering::Relaxed)}));
            }
        })
    };
    let mine: Vec<usize> = (index..args.clients).step_by(count).collect();
    let results: Vec<Result<Ws, String>> = stream::iter(mine)
        .map(|i| {
            let args = &args;
            let connected = connected.clone();
            async move {
                let ws = open(args, i).await?;
                connected.fetch_add(1, Ordering::Relaxed);
                Ok(ws)
            }
        })
        .buffer_unordered(args.connect_concurrency.max(1))
        .collect()
        .await;
    progress.abort();
    let secs = started.elapsed().as_secs_f64();
    let mut sockets = Vec::new();
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(ws) => sockets.push(ws),
            Err(e) => errors.push(e),
        }
    }
    emit(
        json!({"ready": {"connected": sockets.len(), "failed": errors.len(), "secs": secs, "first_error": errors.first()}}),
    );

    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    if args.churn > 0 {
        while let Ok(Some(line)) = stdin.next_line().await {
            if line.trim() == "churn" {
                break;
            }
        }
        drop(sockets);
        let (during, arrived) = newcomers(&args, churn_first, churn_share).await;
        emit(json!({"churn": during}));
        while let Ok(Some(line)) = stdin.next_line().await {
            if line.trim() == "done" {
                break;
            }
        }
        drop(arrived);
        emit(json!({"summary": Summary::new(args.rounds)}));
        return Ok(());
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let readers: Vec<_> =
        sockets.into_iter().map(|ws| tokio::spawn(receive(ws, args.rounds, args.burst, stop_rx.clone()))).collect();
    while let Ok(Some(line)) = stdin.next_line().await {
        if line.trim() == "done" {
            break;
        }
    }
    let _ = stop_tx.send(true);
    let mut summary = Summary::new(args.rounds);
    for reader in readers {
        if let Ok(s) = reader.await {
            summary.merge(&s);
        }
    }
    emit(json!({"summary": summary}));
    Ok(())
}

/// Connects client `i` from its source address, reads
/// `connection_established` and subscribes to its channel.
async fn open(args: &RunArgs, i: usize) -> Result<Ws, String> {
    let mut ws = handshake(args, i).await?;
    let channel = format!("{}{}", args.channel_prefix, i % args.channels.max(1));
    let subscribe = json!({"event": "pusher:subscribe", "data": {"channel": channel}});
    ws.send_text(&subscribe.to_string()).await?;
    next_json(&mut ws, "pusher_internal:subscription_succeeded").await?;
    Ok(ws)
}

/// Connects client `i` and reads `connection_established`.
async fn handshake(args: &RunArgs, i: usize) -> Result<Ws, String> {
    let base = &args.url[i % args.url.len()];
    let path = format!("/app/{}?protocol=7&client=herald-loadgen&version=0.1", args.app_key);
    let host = base.trim_start_matches("ws://").trim_end_matches('/');
    let addr: SocketAddr = tokio::net::lookup_host(host)
        .await
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("server address did not resolve")?;
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    let source = Ipv4Addr::new(127, 0, 0, 1 + (i % args.source_addrs.max(1) as usize) as u8);
    if addr.ip().is_loopback() {
        socket.bind(SocketAddr::new(IpAddr::V4(source), 0)).map_err(|e| e.to_string())?;
    }
    let stream = socket.connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut ws = LeanWs::handshake(stream, host, &path).await.map_err(|e| format!("handshake: {e}"))?;
    next_json(&mut ws, "pusher:connection_established").await?;
    Ok(ws)
}

/// Reads frames until one with `event` arrives (an error event fails).
async fn next_json(ws: &mut Ws, event: &str) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let incoming =
            tokio::time::timeout_at(deadline, ws.next()).await.map_err(|_| format!("no {event} within 30 s"))??;
        let Incoming::Text(text) = incoming else { return Err("closed".into()) };
        let frame: Frame = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if frame.event == event {
            return Ok(());
        }
        if frame.event == "pusher:error" || frame.event == "pusher:subscription_error" {
            return Err(format!("server said {text}"));
        }
    }
}

/// The parts of a frame the receiver looks at (borrowed: no copies).
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(borrow)]
    event: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    data: Option<std::borrow::Cow<'a, str>>,
}

/// What every loadgen broadcast carries: round, index in the burst, send time.
#[derive(Deserialize)]
struct Stamp {
    r: u64,
    b: u64,
    t: u64,
}

/// Records one client's receipts until told to stop.
async fn receive(mut ws: Ws, rounds: usize, burst: usize, mut stop: watch::Receiver<bool>) -> Summary {
    let mut summary = Summary::new(rounds);
    let mut last_seq: Option<u64> = None;
    let mut seen = vec![false; rounds * burst.max(1)];
    loop {
        let incoming = tokio::select! {
            incoming = ws.next() => incoming,
            _ = stop.changed() => break,
        };
        let Ok(Incoming::Text(text)) = incoming else { break };
        let now = now_ns();
        let Ok(frame) = serde_json::from_str::<Frame>(text) else { continue };
        match frame.event.as_ref() {
            EVENT => {}
            "pusher:ping" => {
                let _ = ws.send_text(r#"{"event":"pusher:pong","data":{}}"#).await;
                continue;
            }
            _ => continue,
        }
        let Some(Ok(Stamp { r, b, t })) = frame.data.as_deref().map(serde_json::from_str::<Stamp>) else {
            continue;
        };
        let seq = r * burst as u64 + b;
        if (seq as usize) < seen.len() && seen[seq as usize] {
            summary.duplicated += 1;
            continue;
        }
        if let Some(slot) = seen.get_mut(seq as usize) {
            *slot = true;
        }
        if last_seq.is_some_and(|last| seq < last) {
            summary.out_of_order += 1;
        }
        last_seq = Some(seq);
        summary.received += 1;
        summary.latency.record(now.saturating_sub(t) / 1000);
        if let Some(slot) = summary.round_last_ns.get_mut(r as usize) {
            *slot = (*slot).max(now);
            summary.round_received[r as usize] += 1;
        }
    }
    summary
}
