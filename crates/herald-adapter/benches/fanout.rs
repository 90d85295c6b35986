//! The fan-out itself, with no sockets: one broadcast to N in-memory
//! subscribers (each a real `Connection` with its bounded queue), for one
//! channel of N and for 50 channels of N/50, with metrics on and off; and
//! (`fanout_outlet`) the server's path up to the kernel write: serialize,
//! encode the frame once, hand its bytes to every subscriber's outlet (an
//! outlet that takes them without a syscall; `fanout_outlets`: one outlet
//! per connection, spread in memory as in the server). Reported per
//! recipient (criterion's "elements").

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures_util::FutureExt;
use herald_adapter::{text_frame, Connection, Frame, Namespace, NoLifecycle, Outlet, Pushed, SingleNode, Subscription};
use herald_metrics::{AppMetrics, Metrics};
use herald_protocol::message::{self, EventData};
use herald_protocol::SocketId;
use tokio::sync::mpsc::Receiver;

struct Setup {
    ns: Namespace,
    channels: Vec<String>,
    frames: Vec<Frame>,
    queues: Vec<Receiver<Frame>>,
    _conns: Vec<Arc<Connection>>,
}

fn setup(metrics: AppMetrics, subscribers: usize, channels: usize) -> Setup {
    let ns = Namespace::new("bench", metrics, Arc::new(NoLifecycle), Arc::new(SingleNode));
    let names: Vec<String> = (0..channels).map(|c| format!("bench-{c}")).collect();
    let mut queues = Vec::new();
    let mut conns = Vec::new();
    for i in 0..subscribers {
        let (conn, rx) = Connection::new(SocketId { major: 1, minor: i as u64 }, 64);
        let request =
            Subscription { channel: names[i % channels].clone(), member: None, max_members: 100, is_cache: false };
        ns.subscribe(&conn, &request, false).unwrap();
        queues.push(rx);
        conns.push(conn);
    }
    let payload = "x".repeat(100);
    let frames = names
        .iter()
        .map(|n| text_frame(message::event("bench-event", Some(n), EventData::Text(&payload), None)))
        .collect();
    let mut setup = Setup { ns, channels: names, frames, queues, _conns: conns };
    drain(&mut setup.queues);
    setup
}

fn drain(queues: &mut [Receiver<Frame>]) {
    for q in queues {
        while q.try_recv().is_ok() {}
    }
}

fn fanout(c: &mut Criterion) {
    let registry = Metrics::new("bench");
    let mut group = c.benchmark_group("fanout");
    group.measurement_time(Duration::from_secs(3));
    for subscribers in [10_000usize, 19_000] {
        group.throughput(Throughput::Elements(subscribers as u64));
        for channels in [1usize, 50] {
            for (label, metrics) in [("metrics_on", registry.app("bench")), ("metrics_off", AppMetrics::noop())] {
                let mut s = setup(metrics, subscribers, channels);
                let id = BenchmarkId::new(format!("{channels}ch_{label}"), subscribers);
                group.bench_function(id, |b| {
                    b.iter_custom(|iters| {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            let started = Instant::now();
                            for (name, frame) in s.channels.iter().zip(&s.frames) {
                                black_box(s.ns.fan_out(name, frame, None, false).now_or_never().unwrap());
                            }
                            total += started.elapsed();
                            drain(&mut s.queues);
                        }
                        total
                    })
                });
            }
        }
    }
    group.finish();
}

/// An outlet that takes every frame (the server's enqueue, minus the
/// queue and the flusher's later `writev`).
struct Taken(std::sync::atomic::AtomicUsize);

impl Outlet for Taken {
    fn push(&self, frame: &Frame) -> Pushed {
        self.0.fetch_add(frame.wire().len(), std::sync::atomic::Ordering::Relaxed);
        Pushed::Accepted
    }
}

/// A namespace with `subscribers` connections spread over `channels`
/// channels, connection `i`'s frames going to `outlet(i)`; returns the
/// namespace, the channel names and the connections (kept alive).
fn subscribed_outlets(
    metrics: AppMetrics,
    subscribers: usize,
    channels: usize,
    mut outlet: impl FnMut(usize) -> Arc<dyn Outlet>,
) -> (Namespace, Vec<String>, Vec<Arc<Connection>>) {
    let ns = Namespace::new("bench", metrics, Arc::new(NoLifecycle), Arc::new(SingleNode));
    let names: Vec<String> = (0..channels).map(|c| format!("bench-{c}")).collect();
    let conns = (0..subscribers)
        .map(|i| {
            let conn = Connection::with_outlet(SocketId { major: 1, minor: i as u64 }, outlet(i));
            let request =
                Subscription { channel: names[i % channels].clone(), member: None, max_members: 100, is_cache: false };
            ns.subscribe(&conn, &request, false).unwrap();
            conn
        })
        .collect();
    (ns, names, conns)
}

/// One broadcast to every channel, as a REST call makes it: serialize the
/// event, encode the frame once, `fan_out`.
fn broadcast_each(runtime: &tokio::runtime::Runtime, ns: &Namespace, names: &[String], payload: &str) {
    runtime.block_on(async {
        for name in names {
            let json = message::event("bench-event", Some(name), EventData::Text(payload), None);
            black_box(ns.fan_out(name, &text_frame(json), None, false).await);
        }
    })
}

/// Everything a broadcast costs before the kernel's writes, as the server
/// runs it: serialize the event, encode the frame once, `fan_out` (the
/// yielding loop) to N connections whose outlet takes the bytes.
fn fanout_outlet(c: &mut Criterion) {
    let registry = Metrics::new("bench");
    let mut group = c.benchmark_group("fanout_outlet");
    group.measurement_time(Duration::from_secs(3));
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let payload = "x".repeat(100);
    for subscribers in [10_000usize, 19_000] {
        group.throughput(Throughput::Elements(subscribers as u64));
        for channels in [1usize, 50] {
            let outlet = Arc::new(Taken(Default::default()));
            let (ns, names, _conns) =
                subscribed_outlets(registry.app("bench"), subscribers, channels, |_| outlet.clone());
            group.bench_function(BenchmarkId::new(format!("{channels}ch"), subscribers), |b| {
                b.iter(|| broadcast_each(&runtime, &ns, &names, &payload))
            });
        }
    }
    group.finish();
}

/// A connection's own outlet, shaped like the gateway's `Outbound`: a lock
/// around an inline queue slot and a ready mark; the first frame puts the
/// connection on a shared ready list (the flusher's).
struct Queued {
    pending: parking_lot::Mutex<(Option<bytes::Bytes>, usize, bool)>,
    ready: Arc<parking_lot::Mutex<Vec<Arc<Queued>>>>,
    me: std::sync::Weak<Queued>,
}

impl Outlet for Queued {
    fn push(&self, frame: &Frame) -> Pushed {
        let mut pending = self.pending.lock();
        let idle = pending.0.is_none() && !pending.2;
        if pending.0.is_none() {
            pending.0 = Some(frame.wire().clone());
        } else {
            pending.1 += 1;
        }
        if idle {
            pending.2 = true;
            drop(pending);
            if let Some(me) = self.me.upgrade() {
                self.ready.lock().push(me);
            }
        }
        Pushed::Accepted
    }

    fn prefetch(&self) {
        herald_adapter::prefetch(&self.pending);
    }
}

/// `fanout_outlet` with one outlet per connection, each a separate
/// allocation between ≈ 6 KB of other per-connection memory (a live
/// connection's footprint), so the recipients' state is spread as in the
/// server and its cache misses are paid: the fan-out up to the kernel write
/// (serialize, frame once, enqueue and mark ready). Only the broadcast is
/// timed; the ready list is emptied between broadcasts, as the flusher does.
fn fanout_outlets(c: &mut Criterion) {
    let registry = Metrics::new("bench");
    let mut group = c.benchmark_group("fanout_outlets");
    group.measurement_time(Duration::from_secs(3));
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let payload = "x".repeat(100);
    for subscribers in [10_000usize, 19_000] {
        group.throughput(Throughput::Elements(subscribers as u64));
        for channels in [1usize, 50] {
            let ready = Arc::new(parking_lot::Mutex::new(Vec::new()));
            let mut footprint = Vec::new();
            let mut outlets = Vec::new();
            let (ns, names, _conns) = subscribed_outlets(registry.app("bench"), subscribers, channels, |_| {
                footprint.push(vec![1u8; 6 * 1024]);
                let outlet = Arc::new_cyclic(|me| Queued {
                    pending: parking_lot::Mutex::new((None, 0, false)),
                    ready: ready.clone(),
                    me: me.clone(),
                });
                outlets.push(outlet.clone());
                outlet
            });
            group.bench_function(BenchmarkId::new(format!("{channels}ch"), subscribers), |b| {
                b.iter_custom(|iters| {
                    let mut timed = Duration::ZERO;
                    for _ in 0..iters {
                        let started = Instant::now();
                        broadcast_each(&runtime, &ns, &names, &payload);
                        timed += started.elapsed();
                        for out in std::mem::take(&mut *ready.lock()) {
                            *out.pending.lock() = (None, 0, false);
                        }
                    }
                    timed
                })
            });
            black_box(&footprint);
            black_box(&outlets);
        }
    }
    group.finish();
}

/// The same fan-out with a task awaiting every queue, as in the server: each
/// enqueue now also wakes and schedules that connection's task.
fn fanout_waking(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout_waking");
    group.measurement_time(Duration::from_secs(3));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for subscribers in [10_000usize, 19_000] {
        group.throughput(Throughput::Elements(subscribers as u64));
        let mut s = setup(AppMetrics::noop(), subscribers, 1);
        let queues = std::mem::take(&mut s.queues);
        let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        runtime.block_on(async {
            for mut q in queues {
                let received = received.clone();
                tokio::spawn(async move {
                    while q.recv().await.is_some() {
                        received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                });
            }
            tokio::task::yield_now().await;
        });
        group.bench_function(BenchmarkId::new("1ch", subscribers), |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let before = received.load(std::sync::atomic::Ordering::Relaxed);
                        let started = Instant::now();
                        black_box(s.ns.fan_out(&s.channels[0], &s.frames[0], None, false).await);
                        total += started.elapsed();
                        while received.load(std::sync::atomic::Ordering::Relaxed) < before + subscribers {
                            tokio::task::yield_now().await;
                        }
                    }
                    total
                })
            })
        });
    }
    group.finish();
}

/// The design choice behind the local fan-out, measured: a synchronous
/// `try_send` into every bounded queue (what `Namespace::fan_out` does between its yields)
/// against awaiting `send` per recipient through a `buffer_unordered(64)`
/// stream (the per-recipient future some servers use). Same 19,000 bounded
/// queues, same shared frame, queues drained between iterations.
fn fanout_strategies(c: &mut Criterion) {
    use futures_util::StreamExt;
    let mut group = c.benchmark_group("fanout_strategies");
    group.measurement_time(Duration::from_secs(3));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let subscribers = 19_000usize;
    group.throughput(Throughput::Elements(subscribers as u64));
    let (senders, mut receivers): (Vec<_>, Vec<_>) =
        (0..subscribers).map(|_| tokio::sync::mpsc::channel::<Frame>(64)).unzip();
    let frame = text_frame("x".repeat(180));
    group.bench_function(BenchmarkId::new("try_send_loop", subscribers), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let started = Instant::now();
                let mut queued = 0usize;
                for tx in &senders {
                    queued += usize::from(tx.try_send(frame.clone()).is_ok());
                }
                total += started.elapsed();
                black_box(queued);
                drain(&mut receivers);
            }
            total
        })
    });
    group.bench_function(BenchmarkId::new("buffer_unordered_64", subscribers), |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let started = Instant::now();
                    let queued = futures_util::stream::iter(&senders)
                        .map(|tx| {
                            let frame = frame.clone();
                            async move { tx.send(frame).await.is_ok() }
                        })
                        .buffer_unordered(64)
                        .fold(0usize, |n, ok| async move { n + usize::from(ok) })
                        .await;
                    total += started.elapsed();
                    black_box(queued);
                    drain(&mut receivers);
                }
                total
            })
        })
    });
    group.finish();
}

criterion_group!(benches, fanout, fanout_outlet, fanout_outlets, fanout_waking, fanout_strategies);
criterion_main!(benches);
