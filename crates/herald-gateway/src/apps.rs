//! The apps this node serves, looked up by id (REST) or key (WebSocket).
//! Built once at start; lookups take no lock.

use std::collections::HashMap;
use std::sync::Arc;

use herald_adapter::NamespaceSpec;
use herald_metrics::{AppMetrics, Metrics};

use crate::config::AppConfig;
use crate::webhooks::{self, AppWebhooks};

/// One app with its metric handles and webhook targets. Its state lives in
/// the adapter, under `id`.
pub struct App {
    pub id: Arc<str>,
    pub config: AppConfig,
    pub metrics: AppMetrics,
    pub webhooks: Arc<AppWebhooks>,
}

/// Every app, by id and by key.
pub struct Apps {
    by_id: HashMap<String, Arc<App>>,
    by_key: HashMap<String, Arc<App>>,
}

impl Apps {
    /// Registers each app's metrics and starts its webhook targets; returns
    /// the apps and what the adapter needs to build their namespaces.
    pub fn build(
        configs: &[AppConfig],
        metrics: &Metrics,
        settings: webhooks::Settings,
        runtime: &webhooks::Runtime,
    ) -> (Self, Vec<NamespaceSpec>) {
        let mut by_id = HashMap::new();
        let mut by_key = HashMap::new();
        let mut specs = Vec::new();
        for config in configs {
            let metrics = metrics.app(&config.id);
            let webhooks = AppWebhooks::start(config, settings, metrics.clone(), runtime);
            specs.push(NamespaceSpec {
                app_id: config.id.clone(),
                metrics: metrics.clone(),
                lifecycle: webhooks.clone(),
                // Bounded by the node's settings in `cluster::build_adapter`.
                cache: Default::default(),
            });
            let app = Arc::new(App { id: config.id.as_str().into(), config: config.clone(), metrics, webhooks });
            by_key.insert(config.key.clone(), app.clone());
            by_id.insert(config.id.clone(), app);
        }
        (Self { by_id, by_key }, specs)
    }

    pub fn by_id(&self, id: &str) -> Option<&Arc<App>> {
        self.by_id.get(id)
    }

    pub fn by_key(&self, key: &str) -> Option<&Arc<App>> {
        self.by_key.get(key)
    }
}
