//! The apps this node serves, looked up by id (REST) or key (WebSocket).
//! Built once at start; lookups take no lock.

use std::collections::HashMap;
use std::sync::Arc;

use herald_adapter::{LocalAdapter, Namespace};
use herald_metrics::{AppMetrics, Metrics};

use crate::config::AppConfig;
use crate::webhooks::{self, AppWebhooks};

/// One app with its state and metric handles.
pub struct App {
    pub config: AppConfig,
    pub namespace: Arc<Namespace>,
    pub metrics: AppMetrics,
    pub webhooks: Arc<AppWebhooks>,
}

/// Every app, by id and by key.
pub struct Apps {
    by_id: HashMap<String, Arc<App>>,
    by_key: HashMap<String, Arc<App>>,
}

impl Apps {
    /// Registers each app's metrics, starts its webhook targets and builds
    /// the local adapter's namespaces.
    pub fn build(
        configs: &[AppConfig],
        metrics: &Metrics,
        settings: webhooks::Settings,
        runtime: &webhooks::Runtime,
    ) -> (Self, LocalAdapter) {
        let mut by_id = HashMap::new();
        let mut by_key = HashMap::new();
        let mut namespaces = Vec::new();
        for config in configs {
            let metrics = metrics.app(&config.id);
            let webhooks = AppWebhooks::start(config, settings, metrics.clone(), runtime);
            let namespace = Arc::new(Namespace::new(&config.id, metrics.clone(), webhooks.clone()));
            namespaces.push(namespace.clone());
            let app = Arc::new(App { config: config.clone(), namespace, metrics, webhooks });
            by_key.insert(config.key.clone(), app.clone());
            by_id.insert(config.id.clone(), app);
        }
        (Self { by_id, by_key }, LocalAdapter::new(namespaces))
    }

    pub fn by_id(&self, id: &str) -> Option<&Arc<App>> {
        self.by_id.get(id)
    }

    pub fn by_key(&self, key: &str) -> Option<&Arc<App>> {
        self.by_key.get(key)
    }
}
