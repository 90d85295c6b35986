//! The coordinator of a run: starts worker processes, shows progress, drives
//! the broadcast rounds through the REST API, samples the server, and merges
//! the workers' summaries into one report.

use std::process::Stdio;
use std::time::{Duration, Instant};

use herald_protocol::rest_auth::sign_request;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::hist::Histogram;
use crate::procstat::{self, Sample};
use crate::worker::{now_ns, Summary, EVENT};
use crate::RunArgs;

#[derive(Serialize, Default)]
struct Report {
    clients: usize,
    channels: usize,
    workers: usize,
    connected: usize,
    connect_failures: usize,
    connect_secs: f64,
    connections_per_sec: f64,
    rounds: usize,
    burst: usize,
    frame_payload_bytes: usize,
    expected_deliveries: u64,
    received: u64,
    lost: i64,
    duplicated: u64,
    out_of_order: u64,
    latency_us: Percentiles,
    round_completion_ms: Percentiles,
    server: Option<ServerCost>,
    churn: Option<Churn>,
    ping_probe: Option<PingProbe>,
}

#[derive(Serialize)]
struct PingProbe {
    interval_ms: u64,
    pings: u64,
    lost: u64,
    rtt_us: Percentiles,
}

#[derive(Serialize)]
struct Churn {
    departures: usize,
    newcomers: u64,
    cleaned_ms: f64,
    idle_newcomer_ms: Percentiles,
    churn_newcomer_ms: Percentiles,
}

#[derive(Serialize, Default)]
struct Percentiles {
    p50: f64,
    p95: f64,
    p99: f64,
    max: f64,
}

#[derive(Serialize)]
struct ServerCost {
    rss_bytes_per_connection: f64,
    cpu_secs_connect: f64,
    cpu_secs_broadcast: f64,
    cpu_us_per_delivery: f64,
}

enum FromWorker {
    Progress(usize, usize),
    Ready(Value),
    Summary(Box<Summary>),
    Baseline(Box<Histogram>),
    Churn(Box<Histogram>),
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
}

pub async fn run(args: RunArgs) -> Result<(), String> {
    let workers = args.workers.max(1);
    let spec = serde_json::to_string(&args).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let before = args.server_pid.and_then(procstat::sample);
    let (tx, mut rx) = mpsc::channel(1024);
    let mut children = Vec::new();
    let started = Instant::now();
    for index in 0..workers {
        let mut child = Command::new(&exe)
            .args(["worker", "--spec", &spec, "--index", &index.to_string(), "--count", &workers.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start worker: {e}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take().expect("piped stdin");
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
                let msg = if let Some(n) = v["progress"].as_u64() {
                    FromWorker::Progress(index, n as usize)
                } else if v.get("ready").is_some() {
                    FromWorker::Ready(v["ready"].clone())
                } else if let Some(h) = v.get("baseline").and_then(|h| serde_json::from_value(h.clone()).ok()) {
                    FromWorker::Baseline(Box::new(h))
                } else if let Some(h) = v.get("churn").and_then(|h| serde_json::from_value(h.clone()).ok()) {
                    FromWorker::Churn(Box::new(h))
                } else if let Some(s) = v.get("summary") {
                    match serde_json::from_value(s.clone()) {
                        Ok(s) => FromWorker::Summary(Box::new(s)),
                        Err(_) => continue,
                    }
                } else {
                    continue;
                };
                if tx.send(msg).await.is_err() {
                    break;
                }
            }
        });
        children.push(Worker { child, stdin });
    }
    drop(tx);

    let bar = bar(args.clients as u64, "connecting", args.json);
    let mut progress = vec![0usize; workers];
    let mut report = Report { clients: args.clients, channels: args.channels, workers, ..Default::default() };
    let mut ready = 0;
    let mut idle = Histogram::default();
    while ready < workers {
        match rx.recv().await.ok_or("a worker exited early")? {
            FromWorker::Baseline(h) => idle.merge(&h),
            FromWorker::Progress(i, n) => {
                progress[i] = n;
                bar.set_position(progress.iter().sum::<usize>() as u64);
            }
            FromWorker::Ready(v) => {
                ready += 1;
                report.connected += v["connected"].as_u64().unwrap_or(0) as usize;
                report.connect_failures += v["failed"].as_u64().unwrap_or(0) as usize;
                if let Some(e) = v["first_error"].as_str() {
                    eprintln!("connect error (first of a worker): {e}");
                }
            }
            FromWorker::Summary(_) | FromWorker::Churn(_) => {}
        }
    }
    report.connect_secs = started.elapsed().as_secs_f64();
    report.connections_per_sec = report.connected as f64 / report.connect_secs;
    bar.finish_and_clear();
    let after_connect = args.server_pid.and_then(procstat::sample);

    let mut sent_ns = Vec::new();
    let mut after_broadcast = after_connect;
    if args.churn > 0 {
        let started = Instant::now();
        for w in &mut children {
            let _ = w.stdin.write_all(b"churn\n").await;
            let _ = w.stdin.flush().await;
        }
        let cleaned = wait_until_no_channels(&args).await?;
        let cleaned_ms = cleaned.map_or(f64::NAN, |_| started.elapsed().as_secs_f64() * 1e3);
        let mut during = Histogram::default();
        let mut reported = 0;
        while reported < workers {
            if let FromWorker::Churn(h) = rx.recv().await.ok_or("a worker exited early")? {
                during.merge(&h);
                reported += 1;
            }
        }
        let ms = |h: &Histogram| Percentiles {
            p50: h.quantile(0.5) as f64 / 1e3,
            p95: h.quantile(0.95) as f64 / 1e3,
            p99: h.quantile(0.99) as f64 / 1e3,
            max: h.max_us as f64 / 1e3,
        };
        report.churn = Some(Churn {
            departures: report.connected,
            newcomers: during.total(),
            cleaned_ms,
            idle_newcomer_ms: ms(&idle),
            churn_newcomer_ms: ms(&during),
        });
    } else if args.broadcast {
        let probe = (args.ping_probe_ms > 0).then(|| {
            let url = format!(
                "{}/app/{}?protocol=7&client=herald-loadgen-probe&version=0.1",
                args.url[0].trim_end_matches('/'),
                args.app_key
            );
            let (stop, stopped) = tokio::sync::oneshot::channel();
            let task = tokio::spawn(crate::probe::run(url, Duration::from_millis(args.ping_probe_ms), stopped));
            (stop, task)
        });
        let sent = broadcast(&args).await;
        if let Some((stop, task)) = probe {
            let _ = stop.send(());
            let probe = task.await.map_err(|e| e.to_string())??;
            let h = &probe.rtt;
            report.ping_probe = Some(PingProbe {
                interval_ms: args.ping_probe_ms,
                pings: h.total(),
                lost: probe.lost,
                rtt_us: Percentiles {
                    p50: h.quantile(0.5) as f64,
                    p95: h.quantile(0.95) as f64,
                    p99: h.quantile(0.99) as f64,
                    max: h.max_us as f64,
                },
            });
        }
        sent_ns = sent?;
        tokio::time::sleep(Duration::from_millis(args.drain_ms)).await;
        after_broadcast = args.server_pid.and_then(procstat::sample);
    }
    for w in &mut children {
        let _ = w.stdin.write_all(b"done\n").await;
        let _ = w.stdin.flush().await;
    }
    let mut summary =
        Summary { round_last_ns: vec![0; args.rounds], round_received: vec![0; args.rounds], ..Default::default() };
    let mut summaries = 0;
    while summaries < workers {
        match rx.recv().await {
            Some(FromWorker::Summary(s)) => {
                summary.merge(&s);
                summaries += 1;
            }
            Some(_) => {}
            None => break,
        }
    }
    for mut w in children {
        let _ = w.child.wait().await;
    }
    fill(&mut report, &args, &summary, &sent_ns, before, after_connect, after_broadcast);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).expect("serializable"));
    } else {
        print_human(&report);
    }
    Ok(())
}

fn bar(len: u64, what: &'static str, hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what);
    bar
}

/// A signed REST URL for `method path` with `params` and `body`.
fn signed_url(
    args: &RunArgs,
    method: &str,
    path: &str,
    params: &[(&str, &str)],
    body: &[u8],
) -> Result<String, String> {
    let rest = args.rest_url.clone().unwrap_or_else(|| args.url[0].replacen("ws://", "http://", 1));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let query = sign_request(method, path, &args.app_key, &args.app_secret, now, params, body);
    Ok(format!("{rest}{path}?{}", serde_urlencoded::to_string(&query).map_err(|e| e.to_string())?))
}

/// Polls `GET /channels` until no channel of this run is occupied (60 s at most).
async fn wait_until_no_channels(args: &RunArgs) -> Result<Option<()>, String> {
    let http = reqwest::Client::new();
    let path = format!("/apps/{}/channels", args.app_id);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let url = signed_url(args, "GET", &path, &[("filter_by_prefix", &args.channel_prefix)], b"")?;
        let body: Value =
            http.get(url).send().await.map_err(|e| e.to_string())?.json().await.map_err(|e| e.to_string())?;
        if body["channels"].as_object().is_some_and(|c| c.is_empty()) {
            return Ok(Some(()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(None)
}

/// Triggers every round; returns the send time (unix ns) of each round's first message.
async fn broadcast(args: &RunArgs) -> Result<Vec<u64>, String> {
    let http = reqwest::Client::new();
    let channels: Vec<String> = (0..args.channels.max(1)).map(|c| format!("{}{c}", args.channel_prefix)).collect();
    let path = format!("/apps/{}/events", args.app_id);
    let bar = bar(args.rounds as u64, "broadcasting", args.json);
    let mut sent = Vec::with_capacity(args.rounds);
    for r in 0..args.rounds {
        let round_start = now_ns();
        sent.push(round_start);
        for b in 0..args.burst.max(1) {
            for chunk in channels.chunks(100) {
                let data = json!({"r": r, "b": b, "t": now_ns(), "pad": args.message}).to_string();
                let body = json!({"name": EVENT, "channels": chunk, "data": data}).to_string();
                let url = signed_url(args, "POST", &path, &[], body.as_bytes())?;
                let response = http
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| format!("trigger: {e}"))?;
                if !response.status().is_success() {
                    return Err(format!(
                        "trigger answered {}: {}",
                        response.status(),
                        response.text().await.unwrap_or_default()
                    ));
                }
            }
        }
        bar.inc(1);
        tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
    }
    bar.finish_and_clear();
    Ok(sent)
}

#[allow(clippy::too_many_arguments)]
fn fill(
    report: &mut Report,
    args: &RunArgs,
    summary: &Summary,
    sent_ns: &[u64],
    before: Option<Sample>,
    after_connect: Option<Sample>,
    after_broadcast: Option<Sample>,
) {
    report.rounds = if args.broadcast && args.churn == 0 { args.rounds } else { 0 };
    report.burst = args.burst.max(1);
    report.frame_payload_bytes = args.message.len();
    report.expected_deliveries = (report.connected * report.rounds * report.burst) as u64;
    report.received = summary.received;
    report.lost = report.expected_deliveries as i64 - summary.received as i64;
    report.duplicated = summary.duplicated;
    report.out_of_order = summary.out_of_order;
    let h = &summary.latency;
    report.latency_us = Percentiles {
        p50: h.quantile(0.50) as f64,
        p95: h.quantile(0.95) as f64,
        p99: h.quantile(0.99) as f64,
        max: h.max_us as f64,
    };
    let mut rounds: Vec<f64> = sent_ns
        .iter()
        .zip(&summary.round_last_ns)
        .filter(|(_, last)| **last > 0)
        .map(|(sent, last)| last.saturating_sub(*sent) as f64 / 1e6)
        .collect();
    rounds.sort_by(f64::total_cmp);
    if !rounds.is_empty() {
        let at = |q: f64| rounds[((rounds.len() - 1) as f64 * q).round() as usize];
        report.round_completion_ms = Percentiles { p50: at(0.5), p95: at(0.95), p99: at(0.99), max: at(1.0) };
    }
    if let (Some(b), Some(c), Some(d)) = (before, after_connect, after_broadcast) {
        let deliveries = summary.received.max(1) as f64;
        report.server = Some(ServerCost {
            rss_bytes_per_connection: (c.rss_bytes as f64 - b.rss_bytes as f64) / report.connected.max(1) as f64,
            cpu_secs_connect: c.cpu_secs - b.cpu_secs,
            cpu_secs_broadcast: d.cpu_secs - c.cpu_secs,
            cpu_us_per_delivery: (d.cpu_secs - c.cpu_secs) * 1e6 / deliveries,
        });
    }
}

fn print_human(r: &Report) {
    println!("clients {} over {} channel(s), {} worker(s)", r.clients, r.channels, r.workers);
    println!(
        "connect+subscribe: {} ok, {} failed in {:.2} s ({:.0} connections/s)",
        r.connected, r.connect_failures, r.connect_secs, r.connections_per_sec
    );
    if r.rounds > 0 {
        println!(
            "deliveries: {} of {} expected ({} lost, {} duplicated, {} out of order)",
            r.received, r.expected_deliveries, r.lost, r.duplicated, r.out_of_order
        );
        let l = &r.latency_us;
        println!("latency µs: p50 {} p95 {} p99 {} max {}", l.p50, l.p95, l.p99, l.max);
        let c = &r.round_completion_ms;
        println!("round completion ms: p50 {:.2} p95 {:.2} p99 {:.2} max {:.2}", c.p50, c.p95, c.p99, c.max);
    }
    if let Some(c) = &r.churn {
        println!(
            "churn: {} departures fully cleaned in {:.0} ms; {} newcomers, connection_established p50/p99/max {:.1}/{:.1}/{:.1} ms (idle server: {:.1}/{:.1}/{:.1} ms)",
            c.departures, c.cleaned_ms, c.newcomers,
            c.churn_newcomer_ms.p50, c.churn_newcomer_ms.p99, c.churn_newcomer_ms.max,
            c.idle_newcomer_ms.p50, c.idle_newcomer_ms.p99, c.idle_newcomer_ms.max
        );
    }
    if let Some(p) = &r.ping_probe {
        let l = &p.rtt_us;
        println!(
            "ping probe (idle connection, every {} ms): {} pongs, {} lost; round trip µs p50 {} p95 {} p99 {} max {}",
            p.interval_ms, p.pings, p.lost, l.p50, l.p95, l.p99, l.max
        );
    }
    if let Some(s) = &r.server {
        println!(
            "server: {:.0} bytes RSS per connection, {:.2} CPU s connecting, {:.2} CPU s broadcasting, {:.2} µs CPU per delivery",
            s.rss_bytes_per_connection, s.cpu_secs_connect, s.cpu_secs_broadcast, s.cpu_us_per_delivery
        );
    }
}
