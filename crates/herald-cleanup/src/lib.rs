//! Departures off the hot path.
//!
//! When a connection ends, its task hands it to a [`CleanupPool`] and is done:
//! the connection is marked leaving at once (it receives nothing more) and a
//! worker removes it later through the [`Adapter`], batching removals per
//! app so each of the adapter's locks is taken once per batch, never across
//! an `.await`. The adapter announces the cluster-wide consequences
//! (presence `member_removed`, watchlist `offline`, webhooks) itself; what
//! each departure changed is then handed to an [`Announcer`] (metrics).
//!
//! Every queue is bounded. When a worker's queue is full the departure is
//! cleaned synchronously by the caller (counted as a fallback), so no path
//! leaves a connection marked leaving with nobody to clean it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_adapter::{Adapter, Connection, Departure};
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
    async fn announce(&self, app_id: &str, departure: Departure);
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

/// One connection of one app to remove.
struct Job {
    app_id: Arc<str>,
    conn: Arc<Connection>,
}

/// The workers and their bounded queues.
pub struct CleanupPool {
    queues: Vec<mpsc::Sender<Job>>,
    next: AtomicUsize,
    adapter: Arc<dyn Adapter>,
    announcer: Arc<dyn Announcer>,
    metrics: CleanupMetrics,
    stop: CancellationToken,
    closed: AtomicBool,
    tasks: TaskTracker,
}

impl CleanupPool {
    /// Starts the workers (needs a Tokio runtime).
    pub fn start(
        config: CleanupConfig,
        adapter: Arc<dyn Adapter>,
        announcer: Arc<dyn Announcer>,
        metrics: CleanupMetrics,
    ) -> Self {
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
                    adapter: adapter.clone(),
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
        Self {
            queues,
            next: AtomicUsize::new(0),
            adapter,
            announcer,
            metrics,
            stop,
            closed: AtomicBool::new(false),
            tasks,
        }
    }

    /// Hands a departed connection to a worker. It is marked leaving now; if
    /// every place in its worker's queue is taken (or the pool is shutting
    /// down) it is cleaned right here instead.
    pub async fn depart(&self, app_id: &Arc<str>, conn: Arc<Connection>) {
        conn.mark_leaving();
        let job = Job { app_id: app_id.clone(), conn };
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
        self.metrics.processed.increment(1);
        remove(&*self.adapter, &*self.announcer, &job.app_id, &[job.conn]).await;
    }

    /// Stops taking work, lets workers finish what is queued, and waits for
    /// them up to `deadline`. Returns false if the deadline passed first.
    pub async fn shutdown(&self, deadline: Duration) -> bool {
        self.closed.store(true, Ordering::Release);
        self.stop.cancel();
        tokio::time::timeout(deadline, self.tasks.wait()).await.is_ok()
    }
}

/// Removes one app's departed connections and announces each departure.
async fn remove(adapter: &dyn Adapter, announcer: &dyn Announcer, app_id: &str, conns: &[Arc<Connection>]) {
    match adapter.remove_connections(app_id, conns).await {
        Ok(departures) => {
            for departure in departures {
                announcer.announce(app_id, departure).await;
            }
        }
        Err(e) => tracing::error!(app = app_id, error = %e, "cleanup failed"),
    }
}

struct Worker {
    queue: mpsc::Receiver<Job>,
    adapter: Arc<dyn Adapter>,
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
        batch.sort_by(|a, b| a.app_id.cmp(&b.app_id));
        let mut start = 0;
        while start < batch.len() {
            let app_id = batch[start].app_id.clone();
            let end = start + batch[start..].iter().take_while(|j| j.app_id == app_id).count();
            let conns: Vec<Arc<Connection>> = batch[start..end].iter().map(|j| j.conn.clone()).collect();
            remove(&*self.adapter, &*self.announcer, &app_id, &conns).await;
            start = end;
        }
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_adapter::{LocalAdapter, NamespaceSpec, NoLifecycle, Subscription};
    use herald_metrics::Metrics;
    use herald_protocol::SocketId;
    use std::sync::atomic::AtomicUsize;

    #[derive(Default)]
    struct Count(AtomicUsize);

    #[async_trait]
    impl Announcer for Count {
        async fn announce(&self, _: &str, departure: Departure) {
            self.0.fetch_add(departure.channels.len(), Ordering::Relaxed);
        }
    }

    async fn run(config: CleanupConfig, n: u64) -> (Arc<LocalAdapter>, Arc<Count>, Metrics) {
        let metrics = Metrics::new("test");
        let spec = NamespaceSpec {
            app_id: "app".into(),
            metrics: metrics.app("app"),
            lifecycle: Arc::new(NoLifecycle),
            cache: Default::default(),
        };
        let adapter = Arc::new(LocalAdapter::new([spec]));
        let count = Arc::new(Count::default());
        let pool =
            CleanupPool::start(config, adapter.clone(), count.clone(), CleanupMetrics::from_node(metrics.node()));
        let app: Arc<str> = Arc::from("app");
        let mut conns = Vec::new();
        let request = Subscription { channel: "c".into(), member: None, max_members: 100, is_cache: false };
        for i in 0..n {
            let (conn, rx) = Connection::new(SocketId { major: 9, minor: i }, 8);
            adapter.add_connection("app", conn.clone(), 0).unwrap();
            adapter.subscribe("app", &conn, request.clone()).await.unwrap();
            conns.push((conn, rx));
        }
        for (conn, _) in &conns {
            pool.depart(&app, conn.clone()).await;
            assert!(conn.is_closing());
        }
        assert!(pool.shutdown(Duration::from_secs(5)).await);
        (adapter, count, metrics)
    }

    #[tokio::test]
    async fn workers_clean_everything() {
        let (adapter, count, metrics) = run(CleanupConfig { workers: 2, ..Default::default() }, 1000).await;
        assert_eq!(adapter.connection_count("app").unwrap(), 0);
        assert!(adapter.local_channels("app").unwrap().is_empty());
        assert_eq!(count.0.load(Ordering::Relaxed), 1000);
        let text = metrics.render();
        assert!(text.contains("herald_cleanup_processed_total{node=\"test\"} 1000"), "{text}");
        assert!(text.contains("herald_cleanup_queue_depth{node=\"test\"} 0"), "{text}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn full_queue_falls_back_to_synchronous_cleanup() {
        let config = CleanupConfig { workers: 1, queue_size: 1, batch_size: 1, batch_timeout: Duration::ZERO };
        let (adapter, count, metrics) = run(config, 200).await;
        assert_eq!(adapter.connection_count("app").unwrap(), 0);
        assert!(adapter.local_channels("app").unwrap().is_empty());
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
