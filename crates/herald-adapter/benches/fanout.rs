//! The fan-out itself, with no sockets: one broadcast to N in-memory
//! subscribers (each a real `Connection` with its bounded queue), for one
//! channel of N and for 50 channels of N/50, with metrics on and off.
//! Reported per recipient (criterion's "elements").

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use herald_adapter::{text_frame, Connection, Frame, Namespace, NoLifecycle};
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
    let ns = Namespace::new("bench", metrics, Arc::new(NoLifecycle));
    let names: Vec<String> = (0..channels).map(|c| format!("bench-{c}")).collect();
    let mut queues = Vec::new();
    let mut conns = Vec::new();
    for i in 0..subscribers {
        let (conn, rx) = Connection::new(SocketId { major: 1, minor: i as u64 }, 64);
        ns.subscribe(&conn, &names[i % channels], None, 100, false).unwrap();
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
                                black_box(s.ns.broadcast(name, frame, None));
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

criterion_group!(benches, fanout);
criterion_main!(benches);
