use std::sync::Arc;
use herald_adapter::{Adapter, LocalAdapter, NamespaceSpec};
use herald_metrics::Metrics;
use crate::config::Config;
pub fn build_adapter(_config: &Config, specs: Vec<NamespaceSpec>, _metrics: &Metrics) -> Arc<dyn Adapter> {
    Arc::new(LocalAdapter::new(specs))
}
