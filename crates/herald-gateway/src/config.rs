//! Configuration: defaults, then a TOML file, then `HERALD_*` environment
//! variables, then CLI flags — later sources win. With nothing given Herald
//! serves one default app so `herald` alone just works.
//!
//! Every node setting is one row of the `settings!` table below: its doc,
//! file key (the flag is the key in kebab case, `--key-name`), environment
//! variable, default, the resolved [`Config`] field and the range it must be
//! in. The macro generates the clap [`Cli`] flags, the file's serde shape,
//! [`Config`] with its `Default`, the layering and the per-value checks, so a
//! setting is known to all three sources by construction.
//!
//! Unknown keys are refused (the error names them) and every value is
//! checked before the server starts.

use std::collections::HashSet;
use std::fmt::Display;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde::Deserialize;

/// Longest accepted duration of any timeout or interval (one year), so that
/// `Instant::now() + d` can never overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// Largest accepted queue length.
const MAX_QUEUE: usize = 1 << 24;
/// Largest accepted frame or request size, bytes (1 GiB).
const MAX_BYTES: usize = 1 << 30;

/// The first of its token trees: `first!($($override)? $fallback)`.
macro_rules! first {
    ($a:tt $($rest:tt)*) => {
        $a
    };
}

/// One row per node setting:
///
/// ```text
/// /// Doc, shown in --help and on the Config field.
/// key: RawType = "default" [as "shown in help"], "HERALD_KEY"
///     => field: FieldType [= convert] [, check validator];
/// ```
///
/// The raw value is the flag `--key` (clap), else `HERALD_KEY` (`FromStr`),
/// else the file key `key` (serde), else `default` (`FromStr`); `convert`
/// (identity when absent) makes the `Config` field of it, and `validator`
/// (a `Fn(&FieldType) -> Result<(), String>`) is run by `Config::validate`
/// with the key named in the error.
macro_rules! settings {
    ($(
        $(#[doc = $doc:tt])*
        $key:ident: $raw:ty = $default:tt $(as $shown:tt)?, $env:tt
            => $field:ident: $ty:ty $(= $conv:expr)? $(, check $check:expr)?;
    )*) => {
        /// Command-line flags. [`Config::load`] reads the matching `HERALD_*`
        /// environment variables (named in `--help`) beneath them.
        #[derive(Debug, Clone, Default, Parser)]
        #[command(name = "herald", version, about = "Herald: a Pusher-compatible WebSocket server")]
        pub struct Cli {
            #[arg(long, help = help_text(&["TOML config file (see docs/configuration.md)"], "HERALD_CONFIG", "none"))]
            pub config: Option<PathBuf>,
            $(
                #[arg(long, help = help_text(&[$($doc),*], $env, first!($($shown)? $default)))]
                pub $key: Option<$raw>,
            )*
        }

        /// The config file's shape (every key optional).
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct FileConfig {
            $($key: Option<$raw>,)*
            #[serde(default)]
            apps: Vec<AppConfig>,
        }

        /// The resolved configuration the server runs with.
        #[derive(Debug, Clone)]
        pub struct Config {
            $($(#[doc = $doc])* pub $field: $ty,)*
            /// The apps served.
            pub apps: Vec<AppConfig>,
        }

        impl Default for Config {
            fn default() -> Self {
                Self {
                    $($field: (first!($($conv)? same))(default_of::<$raw>(stringify!($key), $default)),)*
                    apps: vec![AppConfig::default()],
                }
            }
        }

        /// Every node setting: file key, environment variable, default as shown.
        #[cfg(test)]
        const SETTINGS: &[(&str, &str, &str)] = &[$((stringify!($key), $env, first!($($shown)? $default))),*];

        /// Every node setting's file key and `Config` field type.
        #[cfg(test)]
        const FIELD_TYPES: &[(&str, &str)] = &[$((stringify!($key), stringify!($ty))),*];

        impl Config {
            fn resolve(cli: &Cli, env: &dyn Fn(&str) -> Option<String>, file: FileConfig) -> Result<Self, ConfigError> {
                Ok(Self {
                    $($field: (first!($($conv)? same))(
                        layer(cli.$key.clone(), env, $env, file.$key, stringify!($key), $default)?,
                    ),)*
                    apps: file.apps,
                })
            }

            fn check_ranges(&self) -> Result<(), ConfigError> {
                $($(($check)(&self.$field).map_err(|message| invalid(stringify!($key), message))?;)?)*
                Ok(())
            }
        }
    };
}

settings! {
    /// Address to listen on.
    host: IpAddr = "0.0.0.0", "HERALD_HOST" => host: IpAddr;
    /// WebSocket + REST port (0 = any free port).
    port: u16 = "6001", "HERALD_PORT" => port: u16;
    /// Prometheus `/metrics` port.
    metrics_port: u16 = "9601", "HERALD_METRICS_PORT" => metrics_port: u16;
    /// This node's name in metrics and logs; empty means the host name.
    node_id: String = "" as "the host name", "HERALD_NODE_ID" => node_id: String = or_host_name;
    /// Log format.
    log_format: LogFormat = "text", "HERALD_LOG_FORMAT" => log_format: LogFormat;
    /// Log filter, tracing `EnvFilter` syntax.
    log_level: String = "info", "HERALD_LOG_LEVEL" => log_level: String, check log_filter;
    /// Seconds of client silence before the server pings (also sent to clients).
    activity_timeout: u64 = "120", "HERALD_ACTIVITY_TIMEOUT"
        => activity_timeout: Duration = Duration::from_secs, check seconds(1);
    /// Seconds to wait for any frame after a ping before closing with 4201.
    pong_timeout: u64 = "30", "HERALD_PONG_TIMEOUT" => pong_timeout: Duration = Duration::from_secs, check seconds(1);
    /// Frames a connection may have queued before it is closed with 4100.
    outbound_queue: usize = "1024", "HERALD_OUTBOUND_QUEUE" => outbound_queue: usize, check range(1, MAX_QUEUE);
    /// Largest WebSocket message accepted from a client, bytes; larger closes with 1009.
    max_frame_bytes: usize = "65536", "HERALD_MAX_FRAME_BYTES"
        => max_frame_bytes: usize, check range(1024, MAX_BYTES);
    /// Largest REST request body, bytes (413 beyond).
    max_request_bytes: usize = "262144", "HERALD_MAX_REQUEST_BYTES"
        => max_request_bytes: usize, check range(1, MAX_BYTES);
    /// Seconds SIGTERM waits for clients to leave before closing them.
    shutdown_grace: u64 = "10", "HERALD_SHUTDOWN_GRACE"
        => shutdown_grace: Duration = Duration::from_secs, check seconds(0);
    /// Seconds over which SIGTERM spreads the 4200 closes of the connected clients; at most shutdown_grace.
    drain_window: OptSeconds = "" as "half of shutdown_grace", "HERALD_DRAIN_WINDOW"
        => drain_window: Option<Duration> = OptSeconds::duration,
        check |d: &Option<Duration>| d.as_ref().map_or(Ok(()), seconds(0));
    /// Cleanup worker tasks; 0 = one per core.
    cleanup_workers: usize = "0", "HERALD_CLEANUP_WORKERS" => cleanup_workers: usize, check range(0, 1024);
    /// Departures each cleanup worker may have queued; beyond, cleanup runs synchronously.
    cleanup_queue: usize = "4096", "HERALD_CLEANUP_QUEUE" => cleanup_queue: usize, check range(1, MAX_QUEUE);
    /// Most departures cleaned in one batch (one lock round).
    cleanup_batch_size: usize = "128", "HERALD_CLEANUP_BATCH_SIZE"
        => cleanup_batch_size: usize, check range(1, 65536);
    /// Milliseconds a cleanup worker waits to fill a batch.
    cleanup_batch_timeout_ms: u64 = "5", "HERALD_CLEANUP_BATCH_TIMEOUT_MS"
        => cleanup_batch_timeout: Duration = Duration::from_millis, check millis(0);
    /// Milliseconds in which webhook events are gathered into one request.
    webhook_batch_ms: u64 = "50", "HERALD_WEBHOOK_BATCH_MS"
        => webhook_batch: Duration = Duration::from_millis, check millis(0);
    /// Milliseconds one webhook request may take.
    webhook_timeout_ms: u64 = "5000", "HERALD_WEBHOOK_TIMEOUT_MS"
        => webhook_timeout: Duration = Duration::from_millis, check millis(1);
    /// Retries of a failed webhook request (non-2xx or error).
    webhook_retries: u32 = "3", "HERALD_WEBHOOK_RETRIES" => webhook_retries: u32;
    /// Milliseconds before the first webhook retry; doubles each time.
    webhook_backoff_ms: u64 = "500", "HERALD_WEBHOOK_BACKOFF_MS"
        => webhook_backoff: Duration = Duration::from_millis, check millis(0);
    /// Webhook events each target may have queued; beyond, dropped and counted.
    webhook_queue: usize = "10000", "HERALD_WEBHOOK_QUEUE" => webhook_queue: usize, check range(1, MAX_QUEUE);
    /// Cache channels per app whose last event is kept; beyond, the least recently written is forgotten.
    cache_channels: usize = "10000", "HERALD_CACHE_CHANNELS" => cache_channels: usize, check range(1, MAX_QUEUE);
    /// Seconds a cache channel's last event stays valid for new subscribers.
    cache_ttl: u64 = "1800", "HERALD_CACHE_TTL" => cache_ttl: Duration = Duration::from_secs, check seconds(1);
    /// How nodes of a cluster reach each other; `local` is a single node.
    adapter: AdapterKind = "local", "HERALD_ADAPTER" => adapter: AdapterKind;
    /// Redis URL for the `redis` adapter.
    redis_url: String = "redis://127.0.0.1:6379", "HERALD_REDIS_URL" => redis_url: String, check redis_url;
    /// Comma-separated Redis Cluster node URLs; required by the `redis-cluster` adapter.
    redis_cluster_nodes: List = "" as "none", "HERALD_REDIS_CLUSTER_NODES"
        => redis_cluster_nodes: Vec<String> = Vec::from, check |urls: &Vec<String>| urls.iter().try_for_each(|url| redis_url(url));
    /// Comma-separated NATS server URLs for the `nats` adapter.
    nats_servers: List = "nats://127.0.0.1:4222", "HERALD_NATS_SERVERS" => nats_servers: Vec<String> = Vec::from;
    /// Prefix of every fabric key and subject, to separate clusters sharing one Redis or NATS.
    adapter_prefix: String = "herald", "HERALD_ADAPTER_PREFIX" => adapter_prefix: String, check prefix;
    /// Milliseconds a node waits for other nodes' answers (subscription counts, channel lists, cache values).
    request_timeout_ms: u64 = "1000", "HERALD_REQUEST_TIMEOUT_MS"
        => request_timeout: Duration = Duration::from_millis, check millis(1);
    /// Milliseconds between this node's heartbeats to the cluster.
    heartbeat_interval_ms: u64 = "1000", "HERALD_HEARTBEAT_INTERVAL_MS"
        => heartbeat_interval: Duration = Duration::from_millis, check millis(1);
    /// Milliseconds without a heartbeat before a node is considered gone; more than twice the interval.
    node_timeout_ms: u64 = "10000", "HERALD_NODE_TIMEOUT_MS"
        => node_timeout: Duration = Duration::from_millis, check millis(1);
    /// Messages received from the fabric that may wait for this node.
    fabric_queue: usize = "65536", "HERALD_FABRIC_QUEUE" => fabric_queue: usize, check range(1, MAX_QUEUE);
    /// Frames per second one client connection may send, sustained (any kind); apps may override.
    client_frame_rate: u32 = "50", "HERALD_CLIENT_FRAME_RATE"
        => client_frame_rate: u32, check range(1, 1_000_000);
    /// Frames one client connection may send at once before the rate applies; apps may override.
    client_frame_burst: u32 = "300", "HERALD_CLIENT_FRAME_BURST"
        => client_frame_burst: u32, check range(1, 1_000_000);
    /// Over-limit frames (each answered with 4301) a connection may send before it is closed with 4101.
    client_frame_strikes: u32 = "20", "HERALD_CLIENT_FRAME_STRIKES"
        => client_frame_strikes: u32, check range(1, 1_000_000);
    /// Milliseconds a client has to send a complete HTTP request head (also bounds idle keep-alive and the WebSocket handshake).
    http_head_timeout_ms: u64 = "10000", "HERALD_HTTP_HEAD_TIMEOUT_MS"
        => http_head_timeout: Duration = Duration::from_millis, check millis(1);
    /// Milliseconds a client has to send a REST request body.
    http_body_timeout_ms: u64 = "30000", "HERALD_HTTP_BODY_TIMEOUT_MS"
        => http_body_timeout: Duration = Duration::from_millis, check millis(1);
    /// Open connections one client IP may hold; 0 = no cap.
    max_connections_per_ip: usize = "0", "HERALD_MAX_CONNECTIONS_PER_IP"
        => max_connections_per_ip: usize, check range(0, MAX_QUEUE);
    /// Take the client IP from the last X-Forwarded-For entry (only behind a proxy that sets it).
    trust_forwarded_for: bool = "false", "HERALD_TRUST_FORWARDED_FOR" => trust_forwarded_for: bool;
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// How the nodes of a cluster exchange messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum AdapterKind {
    /// One node, nothing shared.
    #[default]
    Local,
    /// Redis pub/sub at `redis_url`.
    Redis,
    /// Redis Cluster at `redis_cluster_nodes`.
    RedisCluster,
    /// NATS at `nats_servers`.
    Nats,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        value_enum(s)
    }
}

impl FromStr for AdapterKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        value_enum(s)
    }
}

fn value_enum<E: ValueEnum>(s: &str) -> Result<E, String> {
    E::from_str(s, false).map_err(|_| {
        let names: Vec<_> =
            E::value_variants().iter().filter_map(|v| v.to_possible_value()).map(|v| v.get_name().to_owned()).collect();
        format!("expected one of {}", names.join(", "))
    })
}

/// A list of strings: comma-separated in flags and environment variables;
/// in the file an array of strings or a comma-separated string.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "ListRepr")]
pub struct List(pub Vec<String>);

#[derive(Deserialize)]
#[serde(untagged, expecting = "an array of strings or a comma-separated string")]
enum ListRepr {
    Many(Vec<String>),
    One(String),
}

impl From<ListRepr> for List {
    fn from(repr: ListRepr) -> Self {
        match repr {
            ListRepr::Many(items) => List(items.iter().flat_map(|s| s.split(',')).filter_map(non_empty).collect()),
            ListRepr::One(s) => List(s.split(',').filter_map(non_empty).collect()),
        }
    }
}

fn non_empty(s: &str) -> Option<String> {
    Some(s.trim()).filter(|s| !s.is_empty()).map(str::to_owned)
}

impl FromStr for List {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(ListRepr::One(s.to_owned()).into())
    }
}

impl From<List> for Vec<String> {
    fn from(list: List) -> Self {
        list.0
    }
}

/// A number of seconds that may be left unset: empty in flags and
/// environment variables; in the file an integer (or a string holding one,
/// or empty).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "OptSecondsRepr")]
pub struct OptSeconds(pub Option<u64>);

#[derive(Deserialize)]
#[serde(untagged, expecting = "a whole number of seconds")]
enum OptSecondsRepr {
    Number(u64),
    Text(String),
}

impl TryFrom<OptSecondsRepr> for OptSeconds {
    type Error = String;
    fn try_from(repr: OptSecondsRepr) -> Result<Self, String> {
        match repr {
            OptSecondsRepr::Number(n) => Ok(OptSeconds(Some(n))),
            OptSecondsRepr::Text(text) => text.parse(),
        }
    }
}

impl FromStr for OptSeconds {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "" => Ok(OptSeconds(None)),
            s => s.parse().map(|n| OptSeconds(Some(n))).map_err(|e| format!("{s:?}: {e}")),
        }
    }
}

impl OptSeconds {
    fn duration(self) -> Option<Duration> {
        self.0.map(Duration::from_secs)
    }
}

/// `--help` text: the doc, then where else the value comes from.
fn help_text(doc: &[&str], env: &str, default: &str) -> String {
    let doc: Vec<&str> = doc.iter().map(|line| line.trim()).collect();
    format!("{} [env: {env}] [default: {default}]", doc.join(" ").trim_end_matches('.'))
}

/// A built-in default; the table's defaults are tested to parse.
fn default_of<T: FromStr>(key: &str, text: &str) -> T
where
    T::Err: Display,
{
    text.parse().unwrap_or_else(|e| panic!("built-in default {text:?} of {key} does not parse: {e}"))
}

/// One setting's value: the flag, else the environment variable (empty
/// counts as unset), else the file, else the default.
fn layer<T: FromStr>(
    cli: Option<T>,
    env: &dyn Fn(&str) -> Option<String>,
    var: &str,
    file: Option<T>,
    key: &str,
    default: &str,
) -> Result<T, ConfigError>
where
    T::Err: Display,
{
    if let Some(value) = cli {
        return Ok(value);
    }
    if let Some(text) = env(var).filter(|v| !v.trim().is_empty()) {
        return text.trim().parse().map_err(|e| invalid(var, format!("{text:?}: {e}")));
    }
    Ok(file.unwrap_or_else(|| default_of(key, default)))
}

fn same<T>(value: T) -> T {
    value
}

fn or_host_name(node_id: String) -> String {
    if node_id.is_empty() {
        default_node_id()
    } else {
        node_id
    }
}

/// Checks `min..=max`.
fn range<T: PartialOrd + Display + Copy>(min: T, max: T) -> impl Fn(&T) -> Result<(), String> {
    move |v| if (min..=max).contains(v) { Ok(()) } else { Err(format!("must be from {min} to {max}, got {v}")) }
}

/// Checks a duration given in seconds: at least `min`, at most a year.
fn seconds(min: u64) -> impl Fn(&Duration) -> Result<(), String> {
    move |d| range(min, MAX_DURATION.as_secs())(&d.as_secs()).map_err(|m| format!("{m} seconds (at most 1 year)"))
}

/// Checks a duration given in milliseconds: at least `min`, at most a year.
fn millis(min: u64) -> impl Fn(&Duration) -> Result<(), String> {
    move |d| {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        range(min, MAX_DURATION.as_secs() * 1000)(&ms).map_err(|m| format!("{m} ms (at most 1 year)"))
    }
}

fn log_filter(filter: &str) -> Result<(), String> {
    tracing_subscriber::EnvFilter::try_new(filter).map(drop).map_err(|e| e.to_string())
}

fn redis_url(url: &str) -> Result<(), String> {
    const SCHEMES: [&str; 4] = ["redis://", "rediss://", "redis+unix://", "unix://"];
    match SCHEMES.iter().any(|s| url.starts_with(s)) {
        true => Ok(()),
        false => Err(format!("{url:?} is not a redis://, rediss:// or unix:// URL")),
    }
}

fn prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() || prefix.len() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    match prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        true => Ok(()),
        false => Err(format!("{prefix:?} may only hold A-Z, a-z, 0-9, _ and -")),
    }
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
    /// Overrides the node's `client_frame_rate` for this app.
    pub client_frame_rate: Option<u32>,
    /// Overrides the node's `client_frame_burst` for this app.
    pub client_frame_burst: Option<u32>,
    /// Overrides the node's `client_frame_strikes` for this app.
    pub client_frame_strikes: Option<u32>,
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
            secret: DEFAULT_APP_SECRET.into(),
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
            client_frame_rate: None,
            client_frame_burst: None,
            client_frame_strikes: None,
            webhooks: Vec::new(),
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
        let path = cli.config.clone().or_else(|| env("HERALD_CONFIG").filter(|p| !p.is_empty()).map(PathBuf::from));
        let file = match path {
            Some(path) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|source| ConfigError::Read { path: path.clone(), source })?;
                toml::from_str::<FileConfig>(&text).map_err(|e| ConfigError::Parse { path, message: e.to_string() })?
            }
            None => FileConfig::default(),
        };
        let mut config = Self::resolve(cli, &env, file)?;
        if config.apps.is_empty() {
            config.apps.push(default_app_from_env(&env)?);
        }
        config.validate()?;
        Ok(config)
    }

    /// The drain window in effect: `drain_window`, or half of
    /// `shutdown_grace` when it is unset.
    pub fn effective_drain_window(&self) -> Duration {
        self.drain_window.unwrap_or(self.shutdown_grace / 2)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_ranges()?;
        if self.drain_window.is_some_and(|window| window > self.shutdown_grace) {
            let grace = self.shutdown_grace.as_secs();
            return Err(invalid("drain_window", format!("must be at most shutdown_grace ({grace} s)")));
        }
        if self.port != 0 && self.port == self.metrics_port {
            return Err(invalid("metrics_port", "must differ from port"));
        }
        if self.node_timeout <= self.heartbeat_interval * 2 {
            let heartbeat = self.heartbeat_interval.as_millis();
            return Err(invalid(
                "node_timeout_ms",
                format!("must be more than twice heartbeat_interval_ms ({heartbeat})"),
            ));
        }
        // The last webhook retry waits webhook_backoff_ms × 2^(retries − 1).
        let doublings = 2u32.saturating_pow(self.webhook_retries.saturating_sub(1));
        if self.webhook_retries > 0 && self.webhook_backoff.checked_mul(doublings).is_none_or(|d| d > MAX_DURATION) {
            return Err(invalid(
                "webhook_backoff_ms",
                format!(
                    "the last of webhook_retries ({}) waits webhook_backoff_ms × 2^(retries − 1), which must be at most 1 year",
                    self.webhook_retries
                ),
            ));
        }
        if self.adapter == AdapterKind::RedisCluster && self.redis_cluster_nodes.is_empty() {
            return Err(invalid("redis_cluster_nodes", "must list at least one node with adapter redis-cluster"));
        }
        if self.adapter == AdapterKind::Nats && self.nats_servers.is_empty() {
            return Err(invalid("nats_servers", "must list at least one server with adapter nats"));
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
            if app.user_authentication_timeout > MAX_DURATION.as_secs() {
                let max = MAX_DURATION.as_secs();
                let message =
                    format!("must be at most {max} seconds (1 year), got {}", app.user_authentication_timeout);
                return Err(invalid(key("user_authentication_timeout"), message));
            }
            if app.client_event_rate == 0 && app.client_events {
                return Err(invalid(key("client_event_rate"), "must be at least 1 when client_events is on"));
            }
            for (field, value) in [
                ("client_frame_rate", app.client_frame_rate),
                ("client_frame_burst", app.client_frame_burst),
                ("client_frame_strikes", app.client_frame_strikes),
            ] {
                if let Some(v) = value {
                    range(1, 1_000_000)(&v).map_err(|m| invalid(key(field), m))?;
                }
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
            if app.max_event_payload_bytes.saturating_add(1024) > self.max_frame_bytes {
                return Err(invalid(
                    key("max_event_payload_bytes"),
                    format!("must be at least 1 KiB below max_frame_bytes ({})", self.max_frame_bytes),
                ));
            }
        }
        Ok(())
    }
}

/// The built-in default app secret: fine for a local try-out, public knowledge anywhere else.
pub const DEFAULT_APP_SECRET: &str = "app-secret";

impl Config {
    /// The apps that keep the built-in default secret although this node
    /// listens beyond loopback, each with the setting that changes it. Anyone
    /// who can reach such a node can sign channel auth and call its REST API.
    pub fn default_secrets_exposed(&self) -> Vec<(&str, String)> {
        if self.host.is_loopback() {
            return Vec::new();
        }
        let from_env = self.apps.len() == 1 && self.apps[0].id == AppConfig::default().id;
        self.apps
            .iter()
            .enumerate()
            .filter(|(_, app)| app.secret == DEFAULT_APP_SECRET)
            .map(|(i, app)| {
                // The default app comes from the environment or a file's one `[[apps]]`.
                let setting = match from_env {
                    true => "HERALD_APP_SECRET (or apps[0].secret in a config file)".to_string(),
                    false => format!("apps[{i}].secret"),
                };
                (app.id.as_str(), setting)
            })
            .collect()
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
    use clap::CommandFactory;
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

    #[test]
    fn frame_budget_defaults_and_app_overrides() {
        let c = Config::default();
        assert_eq!((c.client_frame_rate, c.client_frame_burst, c.client_frame_strikes), (50, 300, 20));
        assert_eq!(c.max_connections_per_ip, 0);
        assert!(!c.trust_forwarded_for);
        let f =
            file("client_frame_burst = 7\n[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\nclient_frame_burst = 9\n");
        let c = Config::load(&Cli { config: Some(f.0.clone()), ..Cli::default() }, env(&[])).unwrap();
        assert_eq!(
            (c.client_frame_burst, c.apps[0].client_frame_burst, c.apps[0].client_frame_rate),
            (7, Some(9), None)
        );
        let f = file("[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\nclient_frame_rate = 0\n");
        let err = Config::load(&Cli { config: Some(f.0.clone()), ..Cli::default() }, env(&[])).unwrap_err();
        assert!(err.to_string().contains("apps[0].client_frame_rate"), "{err}");
        let err = Config::load(&Cli::default(), env(&[("HERALD_CLIENT_FRAME_STRIKES", "0")])).unwrap_err();
        assert!(err.to_string().contains("client_frame_strikes"), "{err}");
    }

    fn load_file(text: &str, vars: &[(&str, &str)], flags: &[&str]) -> Result<Config, ConfigError> {
        let f = file(text);
        let mut args = vec!["herald", "--config", f.0.to_str().unwrap()];
        args.extend_from_slice(flags);
        Config::load(&Cli::try_parse_from(args).unwrap(), env(vars))
    }

    #[test]
    fn drain_window_defaults_to_half_the_grace_and_may_not_exceed_it() {
        let c = Config::load(&Cli::default(), env(&[])).unwrap();
        assert_eq!((c.drain_window, c.effective_drain_window()), (None, Duration::from_secs(5)));
        let c =
            Config::load(&Cli::default(), env(&[("HERALD_SHUTDOWN_GRACE", "3"), ("HERALD_DRAIN_WINDOW", "")])).unwrap();
        assert_eq!(c.effective_drain_window(), Duration::from_millis(1500));
        let c = load_file("shutdown_grace = 30\ndrain_window = 30\n", &[], &[]).unwrap();
        assert_eq!(c.effective_drain_window(), Duration::from_secs(30));
        let c = load_file("drain_window = 7\n", &[("HERALD_DRAIN_WINDOW", "2")], &["--drain-window=0"]).unwrap();
        assert_eq!(c.drain_window, Some(Duration::ZERO));
        let refused = [
            load_file("drain_window = 11\n", &[], &[]),
            load_file("shutdown_grace = 4\n", &[("HERALD_DRAIN_WINDOW", "5")], &[]),
            load_file("", &[("HERALD_SHUTDOWN_GRACE", "1")], &["--drain-window=2"]),
        ];
        for err in refused.map(Result::unwrap_err) {
            assert!(matches!(&err, ConfigError::Invalid { key, .. } if key == "drain_window"), "{err}");
            assert!(err.to_string().contains("shutdown_grace"), "{err}");
        }
        let err = Config::load(&Cli::default(), env(&[("HERALD_DRAIN_WINDOW", "soon")])).unwrap_err();
        assert!(err.to_string().contains("HERALD_DRAIN_WINDOW"), "{err}");
        let err = load_file("drain_window = -1\n", &[], &[]).unwrap_err();
        assert!(err.to_string().contains("drain_window"), "{err}");
    }

    #[test]
    fn cluster_defaults() {
        let c = Config::default();
        assert_eq!(c.adapter, AdapterKind::Local);
        assert_eq!(c.redis_url, "redis://127.0.0.1:6379");
        assert!(c.redis_cluster_nodes.is_empty());
        assert_eq!(c.nats_servers, vec!["nats://127.0.0.1:4222".to_string()]);
        assert_eq!(c.adapter_prefix, "herald");
        assert_eq!(c.request_timeout, Duration::from_millis(1000));
        assert_eq!(c.heartbeat_interval, Duration::from_millis(1000));
        assert_eq!(c.node_timeout, Duration::from_millis(10_000));
        assert_eq!(c.fabric_queue, 65536);
        assert!(!c.node_id.is_empty());
        c.validate().unwrap();
    }

    #[test]
    fn cluster_settings_from_file_env_and_cli() {
        let text = "adapter = \"redis-cluster\"\nredis_url = \"redis://file:1\"\n\
                    redis_cluster_nodes = [\"redis://f1:1\", \"redis://f2:2\"]\nnats_servers = \"nats://f1:1, nats://f2:2\"\n\
                    adapter_prefix = \"file\"\nrequest_timeout_ms = 11\nheartbeat_interval_ms = 12\n\
                    node_timeout_ms = 13000\nfabric_queue = 14\n";
        let vars = [
            ("HERALD_ADAPTER", "nats"),
            ("HERALD_REDIS_URL", "redis://env:1"),
            ("HERALD_REDIS_CLUSTER_NODES", "redis://e1:1,redis://e2:2,redis://e3:3"),
            ("HERALD_NATS_SERVERS", "nats://e1:1"),
            ("HERALD_ADAPTER_PREFIX", "env"),
            ("HERALD_REQUEST_TIMEOUT_MS", "21"),
            ("HERALD_HEARTBEAT_INTERVAL_MS", "22"),
            ("HERALD_NODE_TIMEOUT_MS", "23000"),
            ("HERALD_FABRIC_QUEUE", "24"),
        ];
        let flags = [
            "--adapter=redis",
            "--redis-url=rediss://cli:1",
            "--redis-cluster-nodes=redis://c1:1",
            "--nats-servers=nats://c1:1,nats://c2:2",
            "--adapter-prefix=cli_1-x",
            "--request-timeout-ms=31",
            "--heartbeat-interval-ms=32",
            "--node-timeout-ms=33000",
            "--fabric-queue=34",
        ];

        let c = load_file(text, &[], &[]).unwrap();
        assert_eq!(c.adapter, AdapterKind::RedisCluster);
        assert_eq!(c.redis_url, "redis://file:1");
        assert_eq!(c.redis_cluster_nodes, ["redis://f1:1", "redis://f2:2"]);
        assert_eq!(c.nats_servers, ["nats://f1:1", "nats://f2:2"]);
        assert_eq!(c.adapter_prefix, "file");
        assert_eq!(c.request_timeout, Duration::from_millis(11));
        assert_eq!(c.heartbeat_interval, Duration::from_millis(12));
        assert_eq!(c.node_timeout, Duration::from_millis(13_000));
        assert_eq!(c.fabric_queue, 14);

        let c = load_file(text, &vars, &[]).unwrap();
        assert_eq!(c.adapter, AdapterKind::Nats);
        assert_eq!(c.redis_url, "redis://env:1");
        assert_eq!(c.redis_cluster_nodes, ["redis://e1:1", "redis://e2:2", "redis://e3:3"]);
        assert_eq!(c.nats_servers, ["nats://e1:1"]);
        assert_eq!(c.adapter_prefix, "env");
        assert_eq!(c.request_timeout, Duration::from_millis(21));
        assert_eq!(c.heartbeat_interval, Duration::from_millis(22));
        assert_eq!(c.node_timeout, Duration::from_millis(23_000));
        assert_eq!(c.fabric_queue, 24);

        let c = load_file(text, &vars, &flags).unwrap();
        assert_eq!(c.adapter, AdapterKind::Redis);
        assert_eq!(c.redis_url, "rediss://cli:1");
        assert_eq!(c.redis_cluster_nodes, ["redis://c1:1"]);
        assert_eq!(c.nats_servers, ["nats://c1:1", "nats://c2:2"]);
        assert_eq!(c.adapter_prefix, "cli_1-x");
        assert_eq!(c.request_timeout, Duration::from_millis(31));
        assert_eq!(c.heartbeat_interval, Duration::from_millis(32));
        assert_eq!(c.node_timeout, Duration::from_millis(33_000));
        assert_eq!(c.fabric_queue, 34);

        // Env alone, without a file; HERALD_CONFIG names the file.
        let c = Config::load(&Cli::default(), env(&vars)).unwrap();
        assert_eq!((c.adapter, c.fabric_queue), (AdapterKind::Nats, 24));
        let f = file("fabric_queue = 5\n");
        let c = Config::load(&Cli::default(), env(&[("HERALD_CONFIG", f.0.to_str().unwrap())])).unwrap();
        assert_eq!(c.fabric_queue, 5);
    }

    #[test]
    fn redis_cluster_needs_nodes() {
        let err = Config::load(&Cli::default(), env(&[("HERALD_ADAPTER", "redis-cluster")])).unwrap_err();
        assert!(matches!(&err, ConfigError::Invalid { key, .. } if key == "redis_cluster_nodes"), "{err}");
        let err = load_file("redis_cluster_nodes = []\n", &[("HERALD_ADAPTER", "redis-cluster")], &[]).unwrap_err();
        assert!(err.to_string().contains("redis_cluster_nodes"), "{err}");
        let c = Config::load(
            &Cli::default(),
            env(&[("HERALD_ADAPTER", "redis-cluster"), ("HERALD_REDIS_CLUSTER_NODES", "redis://a:1")]),
        )
        .unwrap();
        assert_eq!(c.redis_cluster_nodes, ["redis://a:1"]);
        let err = Config::load(&Cli::default(), env(&[("HERALD_REDIS_CLUSTER_NODES", "http://a:1")])).unwrap_err();
        assert!(err.to_string().contains("redis_cluster_nodes"), "{err}");
        let err = Config::load(&Cli::default(), env(&[("HERALD_ADAPTER", "nats"), ("HERALD_NATS_SERVERS", ",")]))
            .unwrap_err();
        assert!(err.to_string().contains("nats_servers"), "{err}");
        let err = Config::load(&Cli::default(), env(&[("HERALD_ADAPTER", "zookeeper")])).unwrap_err();
        assert!(err.to_string().contains("HERALD_ADAPTER"), "{err}");
        assert!(err.to_string().contains("redis-cluster"), "{err}");
        assert!(Cli::try_parse_from(["herald", "--adapter", "zookeeper"]).is_err());
    }

    #[test]
    fn bad_prefix_is_refused() {
        for bad in ["", "a b", "a.b", "a:b", "ü", &"x".repeat(65)] {
            let cli = Cli { adapter_prefix: Some(bad.to_string()), ..Cli::default() };
            let err = Config::load(&cli, env(&[])).unwrap_err();
            assert!(matches!(&err, ConfigError::Invalid { key, .. } if key == "adapter_prefix"), "{bad:?}: {err}");
        }
        let err = load_file("adapter_prefix = \"a/b\"\n", &[], &[]).unwrap_err();
        assert!(err.to_string().contains("adapter_prefix"), "{err}");
        let c = Config::load(&Cli::default(), env(&[("HERALD_ADAPTER_PREFIX", "Prod_eu-1")])).unwrap();
        assert_eq!(c.adapter_prefix, "Prod_eu-1");
    }

    #[test]
    fn nonsense_values_are_refused_by_key() {
        let cases: &[(&str, &str, &str)] = &[
            ("HERALD_ACTIVITY_TIMEOUT", "18446744073709551615", "activity_timeout"),
            ("HERALD_ACTIVITY_TIMEOUT", "0", "activity_timeout"),
            ("HERALD_SHUTDOWN_GRACE", "31536001", "shutdown_grace"),
            ("HERALD_WEBHOOK_BACKOFF_MS", "18446744073709551615", "webhook_backoff_ms"),
            ("HERALD_REQUEST_TIMEOUT_MS", "0", "request_timeout_ms"),
            ("HERALD_HEARTBEAT_INTERVAL_MS", "0", "heartbeat_interval_ms"),
            ("HERALD_NODE_TIMEOUT_MS", "2000", "node_timeout_ms"),
            ("HERALD_NODE_TIMEOUT_MS", "99999999999999", "node_timeout_ms"),
            ("HERALD_FABRIC_QUEUE", "0", "fabric_queue"),
            ("HERALD_FABRIC_QUEUE", "18446744073709551615", "fabric_queue"),
            ("HERALD_OUTBOUND_QUEUE", "0", "outbound_queue"),
            ("HERALD_MAX_FRAME_BYTES", "100", "max_frame_bytes"),
            ("HERALD_CLEANUP_BATCH_SIZE", "18446744073709551615", "cleanup_batch_size"),
            ("HERALD_REDIS_URL", "localhost:6379", "redis_url"),
            ("HERALD_LOG_LEVEL", "[[", "log_level"),
            ("HERALD_PORT", "70000", "HERALD_PORT"),
            ("HERALD_HOST", "nowhere", "HERALD_HOST"),
        ];
        for (var, value, key) in cases {
            let err = Config::load(&Cli::default(), env(&[(var, value)])).unwrap_err();
            assert!(matches!(&err, ConfigError::Invalid { key: k, .. } if k == key), "{var}={value}: {err}");
        }
        let err = load_file("activity_timeout = 40000000\n", &[], &[]).unwrap_err();
        assert!(err.to_string().contains("activity_timeout") && err.to_string().contains("1 year"), "{err}");
        let c = Config::load(&Cli::default(), env(&[("HERALD_ACTIVITY_TIMEOUT", "31536000")])).unwrap();
        assert_eq!(c.activity_timeout, MAX_DURATION);
        let err = Config { node_timeout: Duration::MAX, ..Config::default() }.validate().unwrap_err();
        assert!(err.to_string().contains("node_timeout_ms"), "{err}");
        let err = Config { heartbeat_interval: Duration::MAX, ..Config::default() }.validate().unwrap_err();
        assert!(err.to_string().contains("heartbeat_interval_ms"), "{err}");
    }

    /// Every value that becomes a `Duration` (or is added to an `Instant`)
    /// is refused above one year, by key, before anything starts.
    #[test]
    fn huge_durations_are_refused_by_key() {
        let huge = u64::MAX.to_string();
        let seconds = ["activity_timeout", "pong_timeout", "shutdown_grace", "cache_ttl"];
        let millis = [
            "cleanup_batch_timeout_ms",
            "webhook_batch_ms",
            "webhook_timeout_ms",
            "webhook_backoff_ms",
            "request_timeout_ms",
            "heartbeat_interval_ms",
            "node_timeout_ms",
            "http_head_timeout_ms",
            "http_body_timeout_ms",
        ];
        let year = MAX_DURATION.as_secs();
        for (key, over) in seconds.iter().map(|k| (k, year + 1)).chain(millis.iter().map(|k| (k, year * 1000 + 1))) {
            for value in [huge.clone(), over.to_string()] {
                let var = format!("HERALD_{}", key.to_uppercase());
                let flag = format!("--{}={value}", key.replace('_', "-"));
                let errors = [
                    Config::load(&Cli::default(), env(&[(&var, &value)])).unwrap_err(),
                    Config::load(&Cli::try_parse_from(["herald", &flag]).unwrap(), env(&[])).unwrap_err(),
                ];
                for err in errors {
                    assert!(matches!(&err, ConfigError::Invalid { key: k, .. } if k == key), "{key}={value}: {err}");
                    assert!(err.to_string().contains("1 year"), "{key}={value}: {err}");
                }
                // TOML integers are i64: u64::MAX is already a parse error, which quotes the line.
                match load_file(&format!("{key} = {value}\n"), &[], &[]).unwrap_err() {
                    ConfigError::Invalid { key: k, message } => assert!(k == *key && message.contains("1 year")),
                    ConfigError::Parse { message, .. } => assert!(message.contains(key), "{message}"),
                    err => panic!("{key}={value}: {err}"),
                }
            }
        }
        // Every setting that becomes a Duration is in the lists above.
        let listed: HashSet<&str> = seconds.iter().chain(&millis).copied().collect();
        let durations: HashSet<&str> =
            FIELD_TYPES.iter().filter(|(_, ty)| *ty == "Duration").map(|(k, _)| *k).collect();
        assert_eq!(durations, listed);

        let app = |timeout: u64| {
            format!("[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\nuser_authentication_timeout = {timeout}\n")
        };
        for timeout in [i64::MAX as u64, year + 1] {
            let err = load_file(&app(timeout), &[], &[]).unwrap_err();
            assert!(
                matches!(&err, ConfigError::Invalid { key, .. } if key == "apps[0].user_authentication_timeout"),
                "{err}"
            );
        }
        assert_eq!(load_file(&app(year), &[], &[]).unwrap().apps[0].user_authentication_timeout, year);

        // The doubling retry wait stays within a year too.
        for retries in ["40", "4294967295"] {
            let err = Config::load(&Cli::default(), env(&[("HERALD_WEBHOOK_RETRIES", retries)])).unwrap_err();
            assert!(matches!(&err, ConfigError::Invalid { key, .. } if key == "webhook_backoff_ms"), "{err}");
        }
        let c = Config::load(
            &Cli::default(),
            env(&[("HERALD_WEBHOOK_RETRIES", "0"), ("HERALD_WEBHOOK_BACKOFF_MS", "31536000000")]),
        );
        assert_eq!(c.unwrap().webhook_backoff, MAX_DURATION);
        Config::load(&Cli::default(), env(&[("HERALD_WEBHOOK_RETRIES", "20")])).unwrap();
    }

    #[test]
    fn default_secret_exposed_beyond_loopback() {
        let on = |host: &str, c: Config| Config { host: host.parse().unwrap(), ..c };
        assert_eq!(
            on("0.0.0.0", Config::default()).default_secrets_exposed(),
            [("app-id", "HERALD_APP_SECRET (or apps[0].secret in a config file)".into())]
        );
        assert_eq!(on("10.1.2.3", Config::default()).default_secrets_exposed().len(), 1);
        for loopback in ["127.0.0.1", "::1"] {
            assert!(on(loopback, Config::default()).default_secrets_exposed().is_empty(), "{loopback}");
        }
        let c = Config::load(&Cli::default(), env(&[("HERALD_APP_SECRET", "real")])).unwrap();
        assert!(c.default_secrets_exposed().is_empty());
        let f = "[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n[[apps]]\nid = \"2\"\nkey = \"k2\"\nsecret = \"app-secret\"\n";
        assert_eq!(load_file(f, &[], &[]).unwrap().default_secrets_exposed(), [("2", "apps[1].secret".into())]);
    }

    #[test]
    fn cache_settings() {
        let c = Config::default();
        assert_eq!((c.cache_channels, c.cache_ttl), (10_000, Duration::from_secs(1800)));
        let c =
            Config::load(&Cli::default(), env(&[("HERALD_CACHE_CHANNELS", "5"), ("HERALD_CACHE_TTL", "7")])).unwrap();
        assert_eq!((c.cache_channels, c.cache_ttl), (5, Duration::from_secs(7)));
        for (var, value, key) in
            [("HERALD_CACHE_CHANNELS", "0", "cache_channels"), ("HERALD_CACHE_TTL", "0", "cache_ttl")]
        {
            let err = Config::load(&Cli::default(), env(&[(var, value)])).unwrap_err();
            assert!(matches!(&err, ConfigError::Invalid { key: k, .. } if k == key), "{err}");
        }
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
        let help = Cli::command().render_long_help().to_string();
        for (key, var, default) in SETTINGS {
            let flag = format!("--{}", key.replace('_', "-"));
            assert!(help.contains(&flag), "{flag} missing from --help");
            assert!(help.contains(&format!("[env: {var}] [default: {default}]")), "{key} help lacks env or default");
        }
    }

    /// The settings table makes each setting a flag, env var and file key by
    /// construction; this checks that they are unique, follow the naming
    /// rule, and that each source accepts every setting's default.
    #[test]
    fn every_setting_in_every_source() {
        let command = Cli::command();
        let flags: Vec<&str> =
            command.get_arguments().filter_map(|a| a.get_long()).filter(|l| *l != "config").collect();
        let keys: Vec<&str> = SETTINGS.iter().map(|s| s.0).collect();
        let vars: Vec<&str> = SETTINGS.iter().map(|s| s.1).collect();
        for list in [&flags, &keys, &vars] {
            assert_eq!(list.iter().collect::<HashSet<_>>().len(), list.len(), "duplicate in {list:?}");
        }
        assert_eq!(flags, keys.iter().map(|k| k.replace('_', "-")).collect::<Vec<_>>());
        assert!(!vars.contains(&"HERALD_CONFIG") && !keys.contains(&"config"));
        for (key, var, _) in SETTINGS {
            assert_eq!(*var, format!("HERALD_{}", key.to_uppercase()));
        }
        let docs = include_str!("../../../docs/configuration.md");
        let defaults = Config::default();
        for (key, var, shown) in SETTINGS {
            let row = format!("| `{key}` | `{var}` | `--{}` |", key.replace('_', "-"));
            let line = docs.lines().find(|l| l.starts_with(&row));
            assert!(line.is_some_and(|l| l.contains(shown)), "docs/configuration.md lacks the row {row} with {shown}");
            // The default must be accepted by each source under its name.
            let unset = ["the host name", "none", "half of shutdown_grace"];
            let value = if unset.contains(shown) { "" } else { shown };
            let as_file = [format!("{key} = {value}"), format!("{key} = {value:?}")];
            assert!(as_file.iter().any(|t| toml::from_str::<FileConfig>(t).is_ok()), "file refuses {key} = {value}");
            let cli = Cli::try_parse_from(["herald", &format!("--{}={value}", key.replace('_', "-"))]).unwrap();
            let from_flag = Config::load(&cli, env(&[])).unwrap();
            let from_env = Config::load(&Cli::default(), env(&[(var, value)])).unwrap();
            assert_eq!(
                format!("{from_flag:?}"),
                format!("{defaults:?}").replace(&defaults.node_id, &from_flag.node_id)
            );
            assert_eq!(format!("{from_env:?}"), format!("{from_flag:?}"));
        }
    }
}
