//! What every request and connection handler shares: config, apps, the
//! adapter, metrics, and the shutdown token and task tracker that own every
//! task the server spawns.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use herald_adapter::Adapter;
use herald_metrics::Metrics;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::apps::Apps;
use crate::config::Config;

pub struct State {
    pub config: Config,
    pub apps: Apps,
    pub adapter: Arc<dyn Adapter>,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the server starts draining.
    pub shutdown: CancellationToken,
    /// Every connection task; shutdown waits on it.
    pub tracker: TaskTracker,
    draining: AtomicBool,
}

impl State {
    pub fn new(
        config: Config,
        apps: Apps,
        adapter: Arc<dyn Adapter>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            config,
            apps,
            adapter,
            metrics,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            draining: AtomicBool::new(false),
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Stops accepting work and tells every connection to leave.
    pub fn start_drain(&self) {
        self.draining.store(true, Ordering::Release);
        self.shutdown.cancel();
    }
}
