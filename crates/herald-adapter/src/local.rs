//! The single-node adapter: a fixed map from app id to [`Namespace`].
//!
//! Apps are known at start, so the map is built once and never locked.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use herald_protocol::{ErrorCode, SocketId};
use serde_json::Value;

use crate::adapter::{Adapter, AdapterError, ChannelSummary};
use crate::connection::Frame;
use crate::namespace::Namespace;

/// This node's state for every app.
pub struct LocalAdapter {
    namespaces: HashMap<Arc<str>, Arc<Namespace>>,
}

impl LocalAdapter {
    /// One namespace per app (built with its metrics and lifecycle sink).
    pub fn new(namespaces: impl IntoIterator<Item = Arc<Namespace>>) -> Self {
        let namespaces = namespaces.into_iter().map(|ns| (ns.app_id.clone(), ns)).collect();
        Self { namespaces }
    }

    pub fn namespace(&self, app_id: &str) -> Option<&Arc<Namespace>> {
        self.namespaces.get(app_id)
    }

    fn ns(&self, app_id: &str) -> Result<&Arc<Namespace>, AdapterError> {
        self.namespace(app_id).ok_or_else(|| AdapterError::UnknownApp(app_id.to_string()))
    }
}

#[async_trait]
impl Adapter for LocalAdapter {
    fn local(&self) -> &LocalAdapter {
        self
    }

    async fn broadcast(
        &self,
        app_id: &str,
        channel: &str,
        frame: Frame,
        except: Option<SocketId>,
    ) -> Result<usize, AdapterError> {
        Ok(self.ns(app_id)?.broadcast(channel, &frame, except))
    }

    async fn subscription_count(&self, app_id: &str, channel: &str) -> Result<usize, AdapterError> {
        Ok(self.ns(app_id)?.subscription_count(channel))
    }

    async fn members(&self, app_id: &str, channel: &str) -> Result<Vec<(String, Value)>, AdapterError> {
        Ok(self.ns(app_id)?.members(channel))
    }

    async fn channels(&self, app_id: &str) -> Result<Vec<ChannelSummary>, AdapterError> {
        Ok(self
            .ns(app_id)?
            .channels()
            .into_iter()
            .map(|(name, subscription_count, user_count)| ChannelSummary { name, subscription_count, user_count })
            .collect())
    }

    async fn terminate_user_connections(&self, app_id: &str, user_id: &str) -> Result<usize, AdapterError> {
        let connections = self.ns(app_id)?.user_connections(user_id);
        for conn in &connections {
            conn.close(ErrorCode::UNAUTHORIZED);
        }
        Ok(connections.len())
    }
}
