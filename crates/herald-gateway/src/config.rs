//! Configuration: defaults, then a TOML file, then `HERALD_*` environment
//! variables, then CLI flags — later sources win. With nothing given Herald
//! serves one default app so `herald` alone just works.
//!
//! Unknown keys are refused (the error names them) and every value is
//! checked before the server starts.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

/// Command-line flags; each also reads the environment variable it names.
#[derive(Debug, Clone, Default, Parser)]
#[command(name = "herald", version, about = "Herald: a Pusher-compatible WebSocket server")]
pub struct Cli {
    /// TOML config file (see docs/configuration.md).
    #[arg(long, env = "HERALD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 0.0.0.0].
    #[arg(long, env = "HERALD_HOST")]
    pub host: Option<IpAddr>,
    /// WebSocket + REST port [default: 6001].
    #[arg(long, env = "HERALD_PORT")]
    pub port: Option<u16>,
    /// Prometheus `/metrics` port [default: 9601].
    #[arg(long, env = "HERALD_METRICS_PORT")]
    pub metrics_port: Option<u16>,
    /// This node's name in metrics and logs [default: the host name].
    #[arg(long, env = "HERALD_NODE_ID")]
    pub node_id: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "HERALD_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Log filter, tracing syntax [default: info].
    #[arg(long, env = "HERALD_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Seconds of client silence before the server pings [default: 120].
    #[arg(long, env = "HERALD_ACTIVITY_TIMEOUT")]
    pub activity_timeout: Option<u64>,
    /// Seconds to wait for a pong before closing with 4201 [default: 30].
    #[arg(long, env = "HERALD_PONG_TIMEOUT")]
    pub pong_timeout: Option<u64>,
    /// Frames a connection may have queued before it is cut off with 4100 [default: 1024].
    #[arg(long, env = "HERALD_OUTBOUND_QUEUE")]
    pub outbound_queue: Option<usize>,
    /// Largest WebSocket message accepted from a client, bytes [default: 65536].
    #[arg(long, env = "HERALD_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// Largest REST request body, bytes [default: 262144].
    #[arg(long, env = "HERALD_MAX_REQUEST_BYTES")]
    pub max_request_bytes: Option<usize>,
    /// Seconds SIGTERM waits for clients to leave before closing them [default: 10].
    #[arg(long, env = "HERALD_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<u64>,
    /// Cleanup worker tasks; 0 = one per core [default: 0].
    #[arg(long, env = "HERALD_CLEANUP_WORKERS")]
    pub cleanup_workers: Option<usize>,
    /// Departures each cleanup worker may have queued [default: 4096].
    #[arg(long, env = "HERALD_CLEANUP_QUEUE")]
    pub cleanup_queue: Option<usize>,
    /// Most departures cleaned in one batch [default: 128].
    #[arg(long, env = "HERALD_CLEANUP_BATCH_SIZE")]
    pub cleanup_batch_size: Option<usize>,
    /// Milliseconds a cleanup worker waits to fill a batch [default: 5].
    #[arg(long, env = "HERALD_CLEANUP_BATCH_TIMEOUT_MS")]
    pub cleanup_batch_timeout_ms: Option<u64>,
    /// Milliseconds webhook events are gathered into one request [default: 50].
    #[arg(long, env = "HERALD_WEBHOOK_BATCH_MS")]
    pub webhook_batch_ms: Option<u64>,
    /// Milliseconds one webhook request may take [default: 5000].
    #[arg(long, env = "HERALD_WEBHOOK_TIMEOUT_MS")]
    pub webhook_timeout_ms: Option<u64>,
    /// Retries of a failed webhook request [default: 3].
    #[arg(long, env = "HERALD_WEBHOOK_RETRIES")]
    pub webhook_retries: Option<u32>,
    /// Milliseconds before the first retry; doubles each time [default: 500].
    #[arg(long, env = "HERALD_WEBHOOK_BACKOFF_MS")]
    pub webhook_backoff_ms: Option<u64>,
    /// Webhook events each target may have queued [default: 10000].
    #[arg(long, env = "HERALD_WEBHOOK_QUEUE")]
    pub webhook_queue: Option<usize>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The config file's shape (every key optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    host: Option<IpAddr>,
    port: Option<u16>,
    metrics_port: Option<u16>,
    node_id: Option<String>,
    log_format: Option<LogFormat>,
    log_level: Option<String>,
    activity_timeout: Option<u64>,
    pong_timeout: Option<u64>,
    outbound_queue: Option<usize>,
    max_frame_bytes: Option<usize>,
    max_request_bytes: Option<usize>,
    shutdown_grace: Option<u64>,
    cleanup_workers: Option<usize>,
    cleanup_queue: Option<usize>,
    cleanup_batch_size: Option<usize>,
    cleanup_batch_timeout_ms: Option<u64>,
    webhook_batch_ms: Option<u64>,
    webhook_timeout_ms: Option<u64>,
    webhook_retries: Option<u32>,
    webhook_backoff_ms: Option<u64>,
    webhook_queue: Option<usize>,
    #[serde(default)]
    apps: Vec<AppConfig>,
}

/// One app: credentials, switches and limits.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppConfig {
    pub id: String,
    pub key: String,
    pub secret: String,
    pub enabled: bool,
    /// Whether clients may send `client-*` events.
    pub client_events: bool,
    /// Most simultaneous connections; 0 means unlimited.
    pub max_connections: usize,
    /// Client events a connection may send per second.
    pub client_event_rate: u32,
    /// Distinct users a presence channel may hold.
    pub max_presence_members: usize,
    /// Largest presence `user_info`, bytes of JSON.
    pub max_presence_user_info_bytes: usize,
    /// Largest event `data` (REST or client event), bytes.
    pub max_event_payload_bytes: usize,
    /// Longest event name.
    pub max_event_name_len: usize,
    /// Most channels one REST event may target.
    pub max_event_channels: usize,
    /// Most events in one `batch_events` call.
    pub max_batch_size: usize,
    /// Seconds a connection has to sign in; 0 means sign-in is optional.
    pub user_authentication_timeout: u64,
    /// Channels one connection may be subscribed to at once.
    pub max_channels_per_connection: usize,
    /// Where this app's webhooks go.
    pub webhooks: Vec<WebhookConfig>,
}

/// One webhook target.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// Event names to send; all when absent.
    pub events: Option<Vec<String>>,
}

impl Default for AppConfig {
    fn default() -> Self {
        Self {
            id: "app-id".into(),
            key: "app-key".into(),
            secret: "app-secret".into(),
            enabled: true,
            client_events: true,
            max_connections: 0,
            client_event_rate: 10,
            max_presence_members: 100,
            max_presence_user_info_bytes: 1024,
            max_event_payload_bytes: 10 * 1024,
            max_event_name_len: 200,
            max_event_channels: 100,
            max_batch_size: 10,
            user_authentication_timeout: 0,
            max_channels_per_connection: 1000,
            webhooks: Vec::new(),
        }
    }
}

/// The resolved configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub host: IpAddr,
    pub port: u16,
    pub metrics_port: u16,
    pub node_id: String,
    pub log_format: LogFormat,
    pub log_level: String,
    pub activity_timeout: Duration,
    pub pong_timeout: Duration,
    pub outbound_queue: usize,
    pub max_frame_bytes: usize,
    pub max_request_bytes: usize,
    pub shutdown_grace: Duration,
    pub cleanup_workers: usize,
    pub cleanup_queue: usize,
    pub cleanup_batch_size: usize,
    pub cleanup_batch_timeout: Duration,
    pub webhook_batch: Duration,
    pub webhook_timeout: Duration,
    pub webhook_retries: u32,
    pub webhook_backoff: Duration,
    pub webhook_queue: usize,
    pub apps: Vec<AppConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            host: IpAddr::from([0, 0, 0, 0]),
            port: 6001,
            metrics_port: 9601,
            node_id: default_node_id(),
            log_format: LogFormat::Text,
            log_level: "info".into(),
            activity_timeout: Duration::from_secs(120),
            pong_timeout: Duration::from_secs(30),
            outbound_queue: 1024,
            max_frame_bytes: 64 * 1024,
            max_request_bytes: 256 * 1024,
            shutdown_grace: Duration::from_secs(10),
            cleanup_workers: 0,
            cleanup_queue: 4096,
            cleanup_batch_size: 128,
            cleanup_batch_timeout: Duration::from_millis(5),
            webhook_batch: Duration::from_millis(50),
            webhook_timeout: Duration::from_secs(5),
            webhook_retries: 3,
            webhook_backoff: Duration::from_millis(500),
            webhook_queue: 10_000,
            apps: vec![AppConfig::default()],
        }
    }
}

/// Why the configuration was refused; names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value for {key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), message: message.into() }
}

impl Config {
    /// Resolves defaults ← file ← env ← CLI. `env` is the process
    /// environment (passed in so tests need not mutate it).
    pub fn load(cli: &Cli, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let file = match &cli.config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| ConfigError::Parse { path: path.clone(), message: e.to_string() })?
            }
            None => FileConfig::default(),
        };
        let d = Config::default();
        let secs = |v: Option<u64>, default: Duration| v.map(Duration::from_secs).unwrap_or(default);
        let millis = |v: Option<u64>, default: Duration| v.map(Duration::from_millis).unwrap_or(default);
        let mut config = Config {
            host: cli.host.or(file.host).unwrap_or(d.host),
            port: cli.port.or(file.port).unwrap_or(d.port),
            metrics_port: cli.metrics_port.or(file.metrics_port).unwrap_or(d.metrics_port),
            node_id: cli.node_id.clone().or(file.node_id).unwrap_or(d.node_id),
            log_format: cli.log_format.or(file.log_format).unwrap_or(d.log_format),
            log_level: cli.log_level.clone().or(file.log_level).unwrap_or(d.log_level),
            activity_timeout: secs(cli.activity_timeout.or(file.activity_timeout), d.activity_timeout),
            pong_timeout: secs(cli.pong_timeout.or(file.pong_timeout), d.pong_timeout),
            outbound_queue: cli.outbound_queue.or(file.outbound_queue).unwrap_or(d.outbound_queue),
            max_frame_bytes: cli.max_frame_bytes.or(file.max_frame_bytes).unwrap_or(d.max_frame_bytes),
            max_request_bytes: cli.max_request_bytes.or(file.max_request_bytes).unwrap_or(d.max_request_bytes),
            shutdown_grace: secs(cli.shutdown_grace.or(file.shutdown_grace), d.shutdown_grace),
            cleanup_workers: cli.cleanup_workers.or(file.cleanup_workers).unwrap_or(d.cleanup_workers),
            cleanup_queue: cli.cleanup_queue.or(file.cleanup_queue).unwrap_or(d.cleanup_queue),
            cleanup_batch_size: cli.cleanup_batch_size.or(file.cleanup_batch_size).unwrap_or(d.cleanup_batch_size),
            cleanup_batch_timeout: millis(
                cli.cleanup_batch_timeout_ms.or(file.cleanup_batch_timeout_ms),
                d.cleanup_batch_timeout,
            ),
            webhook_batch: millis(cli.webhook_batch_ms.or(file.webhook_batch_ms), d.webhook_batch),
            webhook_timeout: millis(cli.webhook_timeout_ms.or(file.webhook_timeout_ms), d.webhook_timeout),
            webhook_retries: cli.webhook_retries.or(file.webhook_retries).unwrap_or(d.webhook_retries),
            webhook_backoff: millis(cli.webhook_backoff_ms.or(file.webhook_backoff_ms), d.webhook_backoff),
            webhook_queue: cli.webhook_queue.or(file.webhook_queue).unwrap_or(d.webhook_queue),
            apps: file.apps,
        };
        if config.apps.is_empty() {
            config.apps.push(default_app_from_env(&env)?);
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.port != 0 && self.port == self.metrics_port {
            return Err(invalid("metrics_port", "must differ from port"));
        }
        if self.activity_timeout.is_zero() {
            return Err(invalid("activity_timeout", "must be at least 1 second"));
        }
        if self.pong_timeout.is_zero() {
            return Err(invalid("pong_timeout", "must be at least 1 second"));
        }
        if self.outbound_queue == 0 {
            return Err(invalid("outbound_queue", "must be at least 1"));
        }
        if self.cleanup_queue == 0 {
            return Err(invalid("cleanup_queue", "must be at least 1"));
        }
        if self.cleanup_batch_size == 0 {
            return Err(invalid("cleanup_batch_size", "must be at least 1"));
        }
        if self.webhook_queue == 0 {
            return Err(invalid("webhook_queue", "must be at least 1"));
        }
        if self.webhook_timeout.is_zero() {
            return Err(invalid("webhook_timeout_ms", "must be at least 1"));
        }
        if self.max_frame_bytes < 1024 {
            return Err(invalid("max_frame_bytes", "must be at least 1024"));
        }
        let mut ids = HashSet::new();
        let mut keys = HashSet::new();
        for (i, app) in self.apps.iter().enumerate() {
            let key = |field: &str| format!("apps[{i}].{field}");
            for (field, value) in [("id", &app.id), ("key", &app.key), ("secret", &app.secret)] {
                if value.is_empty() {
                    return Err(invalid(key(field), "must not be empty"));
                }
            }
            if !ids.insert(app.id.as_str()) {
                return Err(invalid(key("id"), format!("duplicate app id {:?}", app.id)));
            }
            if !keys.insert(app.key.as_str()) {
                return Err(invalid(key("key"), format!("duplicate app key {:?}", app.key)));
            }
            if app.client_event_rate == 0 && app.client_events {
                return Err(invalid(key("client_event_rate"), "must be at least 1 when client_events is on"));
            }
            for (j, hook) in app.webhooks.iter().enumerate() {
                let field = |f: &str| key(&format!("webhooks[{j}].{f}"));
                if !(hook.url.starts_with("http://") || hook.url.starts_with("https://")) {
                    return Err(invalid(field("url"), "must be an http:// or https:// URL"));
                }
                for event in hook.events.iter().flatten() {
                    if !crate::webhooks::EVENT_NAMES.contains(&event.as_str()) {
                        let known = crate::webhooks::EVENT_NAMES.join(", ");
                        return Err(invalid(field("events"), format!("unknown event {event:?} (known: {known})")));
                    }
                }
            }
            if app.max_event_payload_bytes + 1024 > self.max_frame_bytes {
                return Err(invalid(
                    key("max_event_payload_bytes"),
                    format!("must be at least 1 KiB below max_frame_bytes ({})", self.max_frame_bytes),
                ));
            }
        }
        Ok(())
    }
}

fn default_app_from_env(env: &impl Fn(&str) -> Option<String>) -> Result<AppConfig, ConfigError> {
    let mut app = AppConfig::default();
    if let Some(v) = env("HERALD_APP_ID") {
        app.id = v;
    }
    if let Some(v) = env("HERALD_APP_KEY") {
        app.key = v;
    }
    if let Some(v) = env("HERALD_APP_SECRET") {
        app.secret = v;
    }
    if let Some(v) = env("HERALD_APP_CLIENT_EVENTS") {
        app.client_events =
            parse_bool(&v).ok_or_else(|| invalid("HERALD_APP_CLIENT_EVENTS", "expected true or false"))?;
    }
    if let Some(v) = env("HERALD_APP_MAX_CONNECTIONS") {
        app.max_connections = v.parse().map_err(|_| invalid("HERALD_APP_MAX_CONNECTIONS", "expected a number"))?;
    }
    if let Some(url) = env("HERALD_APP_WEBHOOK_URL").filter(|u| !u.is_empty()) {
        let events = env("HERALD_APP_WEBHOOK_EVENTS")
            .filter(|e| !e.trim().is_empty())
            .map(|e| e.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect());
        app.webhooks.push(WebhookConfig { url, events });
    }
    Ok(app)
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

fn default_node_id() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("herald-{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::Write;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    fn file(text: &str) -> tempfile_path::TempPath {
        tempfile_path::write(text)
    }

    mod tempfile_path {
        use super::*;
        pub struct TempPath(pub PathBuf);
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        pub fn write(text: &str) -> TempPath {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static N: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "herald-config-{}-{}.toml",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::File::create(&path).unwrap().write_all(text.as_bytes()).unwrap();
            TempPath(path)
        }
    }

    #[test]
    fn defaults_serve_one_app() {
        let c = Config::load(&Cli::default(), env(&[])).unwrap();
        assert_eq!(c.port, 6001);
        assert_eq!(c.metrics_port, 9601);
        assert_eq!(c.apps, vec![AppConfig::default()]);
    }

    #[test]
    fn env_configures_the_default_app() {
        let c = Config::load(&Cli::default(), env(&[("HERALD_APP_KEY", "k"), ("HERALD_APP_CLIENT_EVENTS", "false")]))
            .unwrap();
        assert_eq!(c.apps[0].key, "k");
        assert!(!c.apps[0].client_events);
        let err = Config::load(&Cli::default(), env(&[("HERALD_APP_CLIENT_EVENTS", "maybe")])).unwrap_err();
        assert!(err.to_string().contains("HERALD_APP_CLIENT_EVENTS"));
        let c = Config::load(
            &Cli::default(),
            env(&[("HERALD_APP_WEBHOOK_URL", "http://h/x"), ("HERALD_APP_WEBHOOK_EVENTS", "member_added, cache_miss")]),
        )
        .unwrap();
        assert_eq!(c.apps[0].webhooks[0].events, Some(vec!["member_added".into(), "cache_miss".into()]));
        let err = Config::load(
            &Cli::default(),
            env(&[("HERALD_APP_WEBHOOK_URL", "http://h/x"), ("HERALD_APP_WEBHOOK_EVENTS", "nope")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("apps[0].webhooks[0].events"), "{err}");
    }

    #[test]
    fn cli_beats_file() {
        let f = file("port = 7000\nmetrics_port = 7001\n[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n");
        let cli = Cli { config: Some(f.0.clone()), port: Some(8000), ..Cli::default() };
        let c = Config::load(&cli, env(&[("HERALD_APP_KEY", "ignored")])).unwrap();
        assert_eq!(c.port, 8000);
        assert_eq!(c.metrics_port, 7001);
        assert_eq!(c.apps[0].key, "k");
        assert_eq!(c.apps[0].client_event_rate, 10);
    }

    #[test]
    fn bad_keys_are_named() {
        let f = file("prot = 1\n");
        let err = Config::load(&Cli { config: Some(f.0.clone()), ..Cli::default() }, env(&[])).unwrap_err();
        assert!(err.to_string().contains("prot"), "{err}");
        let f = file("[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"\"\n");
        let err = Config::load(&Cli { config: Some(f.0.clone()), ..Cli::default() }, env(&[])).unwrap_err();
        assert!(err.to_string().contains("apps[0].secret"), "{err}");
        let f = file(
            "[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n[[apps]]\nid = \"1\"\nkey = \"k2\"\nsecret = \"s\"\n",
        );
        let err = Config::load(&Cli { config: Some(f.0.clone()), ..Cli::default() }, env(&[])).unwrap_err();
        assert!(err.to_string().contains("apps[1].id"), "{err}");
        let f = file("[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\nclient_event = true\n");
        let err = Config::load(&Cli { config: Some(f.0.clone()), ..Cli::default() }, env(&[])).unwrap_err();
        assert!(err.to_string().contains("client_event"), "{err}");
    }
}
