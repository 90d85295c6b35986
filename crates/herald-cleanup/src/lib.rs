//! Departures off the hot path.
//!
//! When a connection ends, its task hands it to a [`CleanupPool`] and is done:
//! the connection is marked leaving at once (it receives nothing more) and a
//! worker removes it later, batching removals per app so each lock is taken
//! once per batch, never across an `.await`. The consequences (presence
//! `member_removed`, watchlist `offline`, webhooks) are handed to an
//! [`Announcer`] after the locks are released.
//!
//! Every queue is bounded. When a worker's queue is full the departure is
//! cleaned synchronously by the caller (counted as a fallback), so no path
//! leaves a connection marked leaving with nobody to clean it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_adapter::{Connection, Departure, Namespace};
use metrics_handles::CleanupMetrics;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub mod metrics_handles {
    //! The handles the pool updates (clones of the node's metrics).
    use herald_metrics::{Counter, Gauge, NodeMetrics};

    #[derive(Clone)]
    pub struct CleanupMetrics {
        pub queue_depth: Gauge,
        pub sync_fallbacks: Counter,
        pub processed: Counter,
    }

    impl CleanupMetrics {
        pub fn from_node(node: &NodeMetrics) -> Self {
            Self {
                queue_depth: node.cleanup_queue_depth.clone(),
                sync_fallbacks: node.cleanup_sync_fallbacks.clone(),
                processed: node.cleanup_processed.clone(),
            }
        }
    }
}

/// Tells the rest of the world what a departure changed.
#[async_trait]
pub trait Announcer: Send + Sync + 'static {
    async fn announce(&self, namespace: &Arc<Namespace>, departure: Departure);
}

/// Pool sizing.
#[derive(Debug, Clone, Copy)]
pub struct CleanupConfig {
    /// Worker tasks; 0 means one per CPU core.
    pub workers: usize,
    /// Departures each worker may have waiting.
    pub queue_size: usize,
    /// Most departures a worker removes in one batch.
    pub batch_size: usize,
    /// How long a worker waits to fill a batch once it has one departure.
    pub batch_timeout: Duration,
}

impl Default for CleanupConfig {
    fn default() -> Self {
        Self { workers: 0, queue_size: 4096, batch_size: 128, batch_timeout: Duration::from_millis(5) }
    }
}

/// One connection to remove from one namespace.
struct Job {
    namespace: Arc<Namespace>,
    conn: Arc<Connection>,
}

/// The workers and their bounded queues.
pub struct CleanupPool {
    queues: Vec<mpsc::Sender<Job>>,
    next: AtomicUsize,
    announcer: Arc<dyn Announcer>,
    metrics: CleanupMetrics,
    stop: CancellationToken,
    closed: AtomicBool,
    tasks: TaskTracker,
}

impl CleanupPool {
    /// Starts the workers (needs a Tokio runtime).
    pub fn start(config: CleanupConfig, announcer: Arc<dyn Announcer>, metrics: CleanupMetrics) -> Self {
        let workers = match config.workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let queues = (0..workers)
            .map(|_| {
                let (tx, rx) = mpsc::channel(config.queue_size.max(1));
                let worker = Worker {
                    queue: rx,
                    announcer: announcer.clone(),
                    metrics: metrics.clone(),
                    batch_size: config.batch_size.max(1),
                    batch_timeout: config.batch_timeout,
                    stop: stop.clone(),
                };
                tasks.spawn(worker.run());
                tx
            })
            .collect();
        tasks.close();
        Self { queues, next: AtomicUsize::new(0), announcer, metrics, stop, closed: AtomicBool::new(false), tasks }
    }

    /// Hands a departed connection to a worker. It is marked leaving now; if
    /// every place in its worker's queue is taken (or the pool is shutting
    /// down) it is cleaned right here instead.
    pub async fn depart(&self, namespace: &Arc<Namespace>, conn: Arc<Connection>) {
        conn.mark_leaving();
        let job = Job { namespace: namespace.clone(), conn };
        let job = if self.closed.load(Ordering::Acquire) {
            job
        } else {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % self.queues.len();
            self.metrics.queue_depth.increment(1.0);
            match self.queues[i].try_send(job) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(job)) | Err(mpsc::error::TrySendError::Closed(job)) => {
                    self.metrics.queue_depth.decrement(1.0);
                    job
                }
            }
        };
        self.metrics.sync_fallbacks.increment(1);
        let departure = job.namespace.remove_connection(&job.conn);
        self.metrics.processed.increment(1);
        self.announcer.announce(&job.namespace, departure).await;
    }

    /// Stops taking work, lets workers finish what is queued, and waits for
    /// them up to `deadline`. Returns false if the deadline passed first.
    pub async fn shutdown(&self, deadline: Duration) -> bool {
        self.closed.store(true, Ordering::Release);
        self.stop.cancel();
        tokio::time::timeout(deadline, self.tasks.wait()).await.is_ok()
    }
}

struct Worker {
    queue: mpsc::Receiver<Job>,
    announcer: Arc<dyn Announcer>,
    metrics: CleanupMetrics,
    batch_size: usize,
    batch_timeout: Duration,
    stop: CancellationToken,
}

impl Worker {
    async fn run(mut self) {
        let mut batch = Vec::with_capacity(self.batch_size);
        loop {
            let first = tokio::select! {
                job = self.queue.recv() => job,
                _ = self.stop.cancelled() => None,
            };
            let Some(first) = first else { break };
            batch.push(first);
            let deadline = tokio::time::Instant::now() + self.batch_timeout;
            while batch.len() < self.batch_size {
                match tokio::time::timeout_at(deadline, self.queue.recv()).await {
                    Ok(Some(job)) => batch.push(job),
                    _ => break,
                }
            }
            self.process(&mut batch).await;
        }
        // Shutting down: clean whatever is still queued.
        self.queue.close();
        while let Some(job) = self.queue.recv().await {
            batch.push(job);
            if batch.len() == self.batch_size {
                self.process(&mut batch).await;
            }
        }
        self.process(&mut batch).await;
    }

    /// Removes a batch, one lock round per app, then announces.
    async fn process(&self, batch: &mut Vec<Job>) {
        if batch.is_empty() {
            return;
        }
        self.metrics.queue_depth.decrement(batch.len() as f64);
        self.metrics.processed.increment(batch.len() as u64);
        batch.sort_by(|a, b| a.namespace.app_id.cmp(&b.namespace.app_id));
        let mut start = 0;
        while start < batch.len() {
            let ns = batch[start].namespace.clone();
            let end = start + batch[start..].iter().take_while(|j| Arc::ptr_eq(&j.namespace, &ns)).count();
            let conns: Vec<&Connection> = batch[start..end].iter().map(|j| &*j.conn).collect();
            let departures = ns.remove_connections(&conns);
            for departure in departures {
                self.announcer.announce(&ns, departure).await;
            }
            start = end;
        }
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_adapter::NoLifecycle;
    use herald_metrics::Metrics;
    use herald_protocol::SocketId;
    use std::sync::atomic::AtomicUsize;

    #[derive(Default)]
    struct Count(AtomicUsize);

    #[async_trait]
    impl Announcer for Count {
        async fn announce(&self, _: &Arc<Namespace>, departure: Departure) {
            self.0.fetch_add(departure.channels.len(), Ordering::Relaxed);
        }
    }

    fn namespace(metrics: &Metrics) -> Arc<Namespace> {
        Arc::new(Namespace::new("app", metrics.app("app"), Arc::new(NoLifecycle)))
    }

    async fn run(config: CleanupConfig, n: u64) -> (Arc<Namespace>, Arc<Count>, Metrics) {
        let metrics = Metrics::new("test");
        let ns = namespace(&metrics);
        let count = Arc::new(Count::default());
        let pool = CleanupPool::start(config, count.clone(), CleanupMetrics::from_node(metrics.node()));
        let mut conns = Vec::new();
        for i in 0..n {
            let (conn, rx) = Connection::new(SocketId { major: 9, minor: i }, 8);
            ns.add_connection(conn.clone());
            ns.subscribe(&conn, "c", None, 100, false).unwrap();
            conns.push((conn, rx));
        }
        for (conn, _) in &conns {
            pool.depart(&ns, conn.clone()).await;
            assert!(conn.is_closing());
        }
        assert!(pool.shutdown(Duration::from_secs(5)).await);
        (ns, count, metrics)
    }

    #[tokio::test]
    async fn workers_clean_everything() {
        let (ns, count, metrics) = run(CleanupConfig { workers: 2, ..Default::default() }, 1000).await;
        assert_eq!(ns.connection_count(), 0);
        assert!(ns.channels().is_empty());
        assert_eq!(count.0.load(Ordering::Relaxed), 1000);
        let text = metrics.render();
        assert!(text.contains("herald_cleanup_processed_total{node=\"test\"} 1000"), "{text}");
        assert!(text.contains("herald_cleanup_queue_depth{node=\"test\"} 0"), "{text}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn full_queue_falls_back_to_synchronous_cleanup() {
        let config = CleanupConfig { workers: 1, queue_size: 1, batch_size: 1, batch_timeout: Duration::ZERO };
        let (ns, count, metrics) = run(config, 200).await;
        assert_eq!(ns.connection_count(), 0);
        assert!(ns.channels().is_empty());
        assert_eq!(count.0.load(Ordering::Relaxed), 200);
        let text = metrics.render();
        let fallbacks: f64 = text
            .lines()
            .find(|l| l.starts_with("herald_cleanup_sync_fallbacks_total"))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap();
        assert!(fallbacks > 0.0, "{text}");
    }
}
