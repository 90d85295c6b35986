//! What every request and connection handler shares: config, apps, the
//! adapter, metrics, the drain, and the shutdown token and task tracker that
//! own every task the server spawns.

use std::sync::{Arc, Weak};

use async_trait::async_trait;
use herald_adapter::{Adapter, Departure};
use herald_cleanup::metrics_handles::CleanupMetrics;
use herald_cleanup::{Announcer, CleanupConfig, CleanupPool};
use herald_metrics::Metrics;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::apps::Apps;
use crate::config::Config;
use crate::drain::Drain;
use crate::webhooks;

pub struct State {
    pub config: Config,
    pub apps: Apps,
    pub adapter: Arc<dyn Adapter>,
    pub metrics: Arc<Metrics>,
    /// Cancelled at the very end of shutdown, after the drain: the HTTP
    /// listeners stop. (The drain itself is [`State::drain`].)
    pub shutdown: CancellationToken,
    /// Started by SIGTERM: `/ready` 503, upgrades refused, connections
    /// closed one by one over `drain_window`.
    pub drain: Drain,
    /// Every connection task; shutdown waits on it.
    pub tracker: TaskTracker,
    /// The flusher tasks that write broadcasts to the sockets; stopped at
    /// shutdown once the connection tasks are done.
    pub flushers: crate::ws::Flushers,
    /// Departures are cleaned here, off the connection's task.
    pub cleanup: CleanupPool,
    /// Webhook delivery tasks and their stop signal.
    pub webhooks: webhooks::Runtime,
    /// Open connections per client IP (`max_connections_per_ip`).
    pub ip_limits: Arc<crate::http::IpLimits>,
}

impl State {
    /// Builds the node's state: apps (with their webhook targets), the
    /// adapter and the cleanup pool. Needs a Tokio runtime.
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Arc<Self> {
        let webhooks = webhooks::Runtime {
            client: reqwest::Client::new(),
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
        };
        let (apps, specs) = Apps::build(&config.apps, &metrics, webhooks::Settings::from_config(&config), &webhooks);
        let adapter = crate::cluster::build_adapter(&config, specs, &metrics);
        let cleanup_config = CleanupConfig {
            workers: config.cleanup_workers,
            queue_size: config.cleanup_queue,
            batch_size: config.cleanup_batch_size,
            batch_timeout: config.cleanup_batch_timeout,
        };
        let cleanup_metrics = CleanupMetrics::from_node(metrics.node());
        let drain = Drain::new(config.effective_drain_window());
        let ip_limits = crate::http::IpLimits::new(config.max_connections_per_ip);
        Arc::new_cyclic(|state: &Weak<State>| Self {
            cleanup: CleanupPool::start(
                cleanup_config,
                adapter.clone(),
                Arc::new(HubAnnouncer(state.clone())),
                cleanup_metrics,
            ),
            config,
            apps,
            adapter,
            metrics,
            shutdown: CancellationToken::new(),
            drain,
            tracker: TaskTracker::new(),
            flushers: crate::ws::Flushers::start(),
            webhooks,
            ip_limits,
        })
    }

    pub fn is_draining(&self) -> bool {
        self.drain.is_draining()
    }

    /// Starts the drain: `/ready` answers 503, new upgrades are refused and
    /// every connection is closed with 4200 at its turn within
    /// `drain_window`. The listeners keep serving. Returns how many
    /// connections the closes are spread over.
    pub fn start_drain(&self) -> usize {
        self.drain.start()
    }
}

/// Counts cleaned-up departures through the hub.
struct HubAnnouncer(Weak<State>);

#[async_trait]
impl Announcer for HubAnnouncer {
    async fn announce(&self, app_id: &str, departure: Departure) {
        let Some(state) = self.0.upgrade() else { return };
        if let Some(app) = state.apps.by_id(app_id) {
            crate::hub::departed(app, &departure);
        }
    }
}
