//! One metrics update through the facade (a stored handle: one atomic add)
//! against the pattern the peers use (a counter in a `Mutex<HashMap>` looked
//! up by name on every update), on one and on two threads.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::thread;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use herald_metrics::Metrics;

const UPDATES_PER_THREAD: u64 = 100_000;

fn facade_vs_mutex(c: &mut Criterion) {
    let mut group = c.benchmark_group("metric_update");
    for threads in [1u64, 2] {
        group.throughput(Throughput::Elements(threads * UPDATES_PER_THREAD));
        let metrics = Metrics::new("bench");
        let app = metrics.app("bench-app");
        group.bench_with_input(BenchmarkId::new("facade_handle", threads), &threads, |b, &threads| {
            b.iter(|| {
                thread::scope(|s| {
                    for _ in 0..threads {
                        s.spawn(|| {
                            for _ in 0..UPDATES_PER_THREAD {
                                app.ws_messages_sent.increment(black_box(1));
                            }
                        });
                    }
                })
            })
        });
        let map: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
        group.bench_with_input(BenchmarkId::new("mutex_hashmap", threads), &threads, |b, &threads| {
            b.iter(|| {
                thread::scope(|s| {
                    for _ in 0..threads {
                        let map = map.clone();
                        s.spawn(move || {
                            for _ in 0..UPDATES_PER_THREAD {
                                let mut map = map.lock().unwrap();
                                match map.get_mut(black_box("ws_messages_sent")) {
                                    Some(n) => *n += 1,
                                    None => {
                                        map.insert("ws_messages_sent".into(), 1);
                                    }
                                }
                            }
                        });
                    }
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, facade_vs_mutex);
criterion_main!(benches);
