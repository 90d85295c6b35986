//! The apps this node serves, looked up by id (REST) or key (WebSocket).
//! Built once at start; lookups take no lock.

use std::collections::HashMap;
use std::sync::Arc;

use herald_adapter::{LocalAdapter, Namespace};
use herald_metrics::{AppMetrics, Metrics};

use crate::config::AppConfig;

/// One app with its state and metric handles.
pub struct App {
    pub config: AppConfig,
    pub namespace: Arc<Namespace>,
    pub metrics: AppMetrics,
}

/// Every app, by id and by key.
pub struct Apps {
    by_id: HashMap<String, Arc<App>>,
    by_key: HashMap<String, Arc<App>>,
}

impl Apps {
    /// Registers each app's metrics and builds the local adapter's namespaces.
    pub fn build(configs: &[AppConfig], metrics: &Metrics) -> (Self, LocalAdapter) {
        let handles: Vec<(String, AppMetrics)> = configs
            .iter()
            .map(|c| (c.id.clone(), metrics.app(&c.id)))
            .collect();
        let local = LocalAdapter::new(handles.clone());
        let mut by_id = HashMap::new();
        let mut by_key = HashMap::new();
        for (config, (id, metrics)) in configs.iter().zip(handles) {
            let namespace = local
                .namespace(&id)
                .expect("namespace built for every app")
                .clone();
            let app = Arc::new(App {
                config: config.clone(),
                namespace,
                metrics,
            });
            by_key.insert(config.key.clone(), app.clone());
            by_id.insert(id, app);
        }
        (Self { by_id, by_key }, local)
    }

    pub fn by_id(&self, id: &str) -> Option<&Arc<App>> {
        self.by_id.get(id)
    }

    pub fn by_key(&self, key: &str) -> Option<&Arc<App>> {
        self.by_key.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<App>> {
        self.by_id.values()
    }
}
