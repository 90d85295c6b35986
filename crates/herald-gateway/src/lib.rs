//! Herald's gateway: the warp server that speaks Pusher protocol v7 over
//! WebSocket at `/app/{key}`, the Pusher HTTP API at `/apps/{id}/...`,
//! health endpoints, and Prometheus metrics on a port of its own.
//!
//! [`Server::start`] runs a node from a [`Config`]; the `herald` binary is a
//! thin wrapper that reads the config and waits for a signal.

pub mod apps;
mod cluster;
pub mod config;
pub mod drain;
mod http;
mod hub;
pub mod logging;
mod rest;
mod server;
pub mod state;
pub mod webhooks;
mod ws;

pub use config::{AdapterKind, AppConfig, Cli, Config, ConfigError, WebhookConfig};
pub use server::Server;
