//! Herald's metrics facade.
//!
//! Every metric handle is registered once — per node, or per app when the app
//! is loaded — directly on a Prometheus recorder this crate owns (no global
//! recorder), so a hot-path update is one atomic operation on a stored
//! handle: no lock, no map lookup, no allocation, no `.await`. Deliveries are
//! recorded as one batched `increment(n)` per broadcast, never per recipient.

use std::sync::Arc;
use std::time::Duration;

pub use metrics::{Counter, Gauge, Histogram};
use metrics::{Key, Label, Level, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

mod names;
pub use names::*;

/// Bucket bounds (seconds) for the broadcast fan-out histogram.
const FANOUT_BUCKETS: &[f64] =
    &[0.000_01, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25];
/// Bucket bounds (seconds) for webhook and REST latencies.
const REQUEST_BUCKETS: &[f64] = &[0.000_5, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// Why a request or frame was refused (a label of `herald_rejections_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    UnknownApp,
    AppDisabled,
    OverConnectionQuota,
    BadProtocolVersion,
    BadSignature,
    SubscriptionAuth,
    BadFrame,
    PayloadTooLarge,
    ClientEventRateLimited,
    ClientEventRefused,
    PresenceLimit,
    SlowConsumer,
    BadRequest,
    FrameRateLimited,
}

impl Rejection {
    pub const ALL: [Rejection; 14] = [
        Rejection::UnknownApp,
        Rejection::AppDisabled,
        Rejection::OverConnectionQuota,
        Rejection::BadProtocolVersion,
        Rejection::BadSignature,
        Rejection::SubscriptionAuth,
        Rejection::BadFrame,
        Rejection::PayloadTooLarge,
        Rejection::ClientEventRateLimited,
        Rejection::ClientEventRefused,
        Rejection::PresenceLimit,
        Rejection::SlowConsumer,
        Rejection::BadRequest,
        Rejection::FrameRateLimited,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Rejection::UnknownApp => "unknown_app",
            Rejection::AppDisabled => "app_disabled",
            Rejection::OverConnectionQuota => "over_connection_quota",
            Rejection::BadProtocolVersion => "bad_protocol_version",
            Rejection::BadSignature => "bad_signature",
            Rejection::SubscriptionAuth => "subscription_auth",
            Rejection::BadFrame => "bad_frame",
            Rejection::PayloadTooLarge => "payload_too_large",
            Rejection::ClientEventRateLimited => "client_event_rate_limited",
            Rejection::ClientEventRefused => "client_event_refused",
            Rejection::PresenceLimit => "presence_limit",
            Rejection::SlowConsumer => "slow_consumer",
            Rejection::BadRequest => "bad_request",
            Rejection::FrameRateLimited => "frame_rate_limited",
        }
    }
}

/// REST endpoints, a label of `herald_rest_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Events,
    BatchEvents,
    Channels,
    Channel,
    Users,
    TerminateConnections,
}

impl Endpoint {
    pub const ALL: [Endpoint; 6] = [
        Endpoint::Events,
        Endpoint::BatchEvents,
        Endpoint::Channels,
        Endpoint::Channel,
        Endpoint::Users,
        Endpoint::TerminateConnections,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Events => "events",
            Endpoint::BatchEvents => "batch_events",
            Endpoint::Channels => "channels",
            Endpoint::Channel => "channel",
            Endpoint::Users => "users",
            Endpoint::TerminateConnections => "terminate_connections",
        }
    }
}

/// Status codes the REST API answers with, each a pre-registered label.
const STATUSES: [u16; 8] = [200, 400, 401, 403, 404, 405, 413, 500];

/// Channel kinds, a label of subscription metrics (same order as the
/// protocol crate's `ChannelKind::ALL`; this crate depends on no Herald crate).
pub const CHANNEL_KINDS: [&str; 5] = ["public", "private", "private-encrypted", "presence", "server-to-user"];

/// The node's metrics registry: owns the recorder and hands out handles.
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    node: NodeMetrics,
}

impl Metrics {
    /// A registry whose every series carries `node="{node}"`.
    pub fn new(node: &str) -> Self {
        let builder = PrometheusBuilder::new()
            .add_global_label("node", node)
            .set_buckets_for_metric(Matcher::Full(BROADCAST_FANOUT_SECONDS.into()), FANOUT_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(WEBHOOK_DURATION_SECONDS.into()), REQUEST_BUCKETS))
            .expect("bucket lists are non-empty");
        let recorder = Arc::new(builder.build_recorder());
        let handle = recorder.handle();
        describe_all(&recorder);
        let node = NodeMetrics::register(&recorder);
        Self { recorder, handle, node }
    }

    /// Pre-registers every handle of one app. Call once when the app loads.
    pub fn app(&self, app_id: &str) -> AppMetrics {
        AppMetrics(Arc::new(AppHandles::register(&self.recorder, app_id)))
    }

    /// Handles not tied to an app (cleanup, fabric).
    pub fn node(&self) -> &NodeMetrics {
        &self.node
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Housekeeping for histograms; call every few seconds.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep()
    }

    /// How often [`Metrics::run_upkeep`] should run.
    pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);
}

fn metadata() -> Metadata<'static> {
    Metadata::new(module_path!(), Level::INFO, None)
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    let labels: Vec<Label> = labels.iter().map(|(k, v)| Label::new(*k, v.to_string())).collect();
    Key::from_parts(name, labels)
}

fn counter(r: &PrometheusRecorder, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
    r.register_counter(&key(name, labels), &metadata())
}

fn gauge(r: &PrometheusRecorder, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
    r.register_gauge(&key(name, labels), &metadata())
}

fn histogram(r: &PrometheusRecorder, name: &'static str, labels: &[(&'static str, &str)]) -> Histogram {
    r.register_histogram(&key(name, labels), &metadata())
}

fn describe_all(r: &PrometheusRecorder) {
    for (name, kind, unit, help) in names::DESCRIPTIONS {
        let name: metrics::KeyName = (*name).into();
        let help: SharedString = (*help).into();
        match kind {
            Kind::Counter => r.describe_counter(name, *unit, help),
            Kind::Gauge => r.describe_gauge(name, *unit, help),
            Kind::Histogram => r.describe_histogram(name, *unit, help),
        }
    }
}

/// The kind of a described metric.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Per-app handles, cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct AppMetrics(Arc<AppHandles>);

impl AppMetrics {
    /// Handles that record nothing: the baseline for "metrics off" benchmarks.
    pub fn noop() -> Self {
        use std::array::from_fn;
        Self(Arc::new(AppHandles {
            connections_opened: Counter::noop(),
            connections_closed: Counter::noop(),
            connections: Gauge::noop(),
            ws_messages_received: Counter::noop(),
            ws_bytes_received: Counter::noop(),
            ws_messages_sent: Counter::noop(),
            ws_bytes_sent: Counter::noop(),
            events_triggered: Counter::noop(),
            client_events: Counter::noop(),
            broadcast_fanout_seconds: Histogram::noop(),
            subscriptions: from_fn(|_| Counter::noop()),
            unsubscriptions: from_fn(|_| Counter::noop()),
            rejections: from_fn(|_| Counter::noop()),
            rest: from_fn(|_| from_fn(|_| Counter::noop())),
            webhooks_sent: Counter::noop(),
            webhooks_failed: Counter::noop(),
            webhooks_retried: Counter::noop(),
            webhook_events_dropped: Counter::noop(),
            webhook_duration_seconds: Histogram::noop(),
        }))
    }
}

impl std::ops::Deref for AppMetrics {
    type Target = AppHandles;
    fn deref(&self) -> &AppHandles {
        &self.0
    }
}

/// The handles themselves; fields are public so callers update them directly.
pub struct AppHandles {
    pub connections_opened: Counter,
    pub connections_closed: Counter,
    pub connections: Gauge,
    pub ws_messages_received: Counter,
    pub ws_bytes_received: Counter,
    pub ws_messages_sent: Counter,
    pub ws_bytes_sent: Counter,
    pub events_triggered: Counter,
    pub client_events: Counter,
    pub broadcast_fanout_seconds: Histogram,
    subscriptions: [Counter; 5],
    unsubscriptions: [Counter; 5],
    rejections: [Counter; Rejection::ALL.len()],
    rest: [[Counter; STATUSES.len() + 1]; Endpoint::ALL.len()],
    pub webhooks_sent: Counter,
    pub webhooks_failed: Counter,
    pub webhooks_retried: Counter,
    pub webhook_events_dropped: Counter,
    pub webhook_duration_seconds: Histogram,
}

impl AppHandles {
    fn register(r: &PrometheusRecorder, app: &str) -> Self {
        let app_label = [("app_id", app)];
        let c = |name| counter(r, name, &app_label);
        Self {
            connections_opened: c(CONNECTIONS_OPENED_TOTAL),
            connections_closed: c(CONNECTIONS_CLOSED_TOTAL),
            connections: gauge(r, CONNECTIONS, &app_label),
            ws_messages_received: c(WS_MESSAGES_RECEIVED_TOTAL),
            ws_bytes_received: c(WS_BYTES_RECEIVED_TOTAL),
            ws_messages_sent: c(WS_MESSAGES_SENT_TOTAL),
            ws_bytes_sent: c(WS_BYTES_SENT_TOTAL),
            events_triggered: c(EVENTS_TRIGGERED_TOTAL),
            client_events: c(CLIENT_EVENTS_TOTAL),
            broadcast_fanout_seconds: histogram(r, BROADCAST_FANOUT_SECONDS, &app_label),
            subscriptions: CHANNEL_KINDS.map(|k| counter(r, SUBSCRIPTIONS_TOTAL, &[("app_id", app), ("kind", k)])),
            unsubscriptions: CHANNEL_KINDS.map(|k| counter(r, UNSUBSCRIPTIONS_TOTAL, &[("app_id", app), ("kind", k)])),
            rejections: Rejection::ALL
                .map(|why| counter(r, REJECTIONS_TOTAL, &[("app_id", app), ("reason", why.label())])),
            rest: Endpoint::ALL.map(|e| {
                let mut statuses = STATUSES.map(|s| s.to_string()).to_vec();
                statuses.push("other".into());
                let counters: Vec<Counter> = statuses
                    .iter()
                    .map(|s| {
                        counter(r, REST_REQUESTS_TOTAL, &[("app_id", app), ("endpoint", e.label()), ("status", s)])
                    })
                    .collect();
                counters.try_into().unwrap_or_else(|_| unreachable!("one counter per status"))
            }),
            webhooks_sent: c(WEBHOOKS_SENT_TOTAL),
            webhooks_failed: c(WEBHOOKS_FAILED_TOTAL),
            webhooks_retried: c(WEBHOOKS_RETRIED_TOTAL),
            webhook_events_dropped: c(WEBHOOK_EVENTS_DROPPED_TOTAL),
            webhook_duration_seconds: histogram(r, WEBHOOK_DURATION_SECONDS, &app_label),
        }
    }

    /// A connection opened: counter and gauge together.
    pub fn connection_opened(&self) {
        self.connections_opened.increment(1);
        self.connections.increment(1.0);
    }

    /// A connection closed: counter and gauge together.
    pub fn connection_closed(&self) {
        self.connections_closed.increment(1);
        self.connections.decrement(1.0);
    }

    /// One broadcast delivered `recipients` copies of a `frame_len`-byte frame.
    pub fn delivered(&self, recipients: u64, frame_len: usize) {
        if recipients > 0 {
            self.ws_messages_sent.increment(recipients);
            self.ws_bytes_sent.increment(recipients * frame_len as u64);
        }
    }

    /// A subscription to a channel of kind index `kind` (see [`CHANNEL_KINDS`]).
    pub fn subscribed(&self, kind: usize) {
        self.subscriptions[kind].increment(1);
    }

    pub fn unsubscribed(&self, kind: usize) {
        self.unsubscriptions[kind].increment(1);
    }

    pub fn rejected(&self, why: Rejection) {
        self.rejections[why as usize].increment(1);
    }

    pub fn rest_request(&self, endpoint: Endpoint, status: u16) {
        let slot = STATUSES.iter().position(|s| *s == status).unwrap_or(STATUSES.len());
        self.rest[endpoint as usize][slot].increment(1);
    }
}

/// Handles for work that belongs to the node, not an app.
#[derive(Clone)]
pub struct NodeMetrics {
    pub cleanup_queue_depth: Gauge,
    pub cleanup_sync_fallbacks: Counter,
    pub cleanup_processed: Counter,
    pub fabric_messages_in: Counter,
    pub fabric_messages_out: Counter,
    pub fabric_errors: Counter,
    pub fabric_up: Gauge,
    pub fabric_inbound_dropped: Counter,
    pub fabric_partial_answers: Counter,
    pub fabric_resyncs: Counter,
    pub cluster_nodes: Gauge,
    pub unknown_app_rejections: Counter,
    /// HTTP connections refused because their source IP is at its cap.
    pub ip_limit_rejections: Counter,
    /// HTTP connections closed because a request head or body came too slowly.
    pub http_timeout_rejections: Counter,
}

impl NodeMetrics {
    fn register(r: &PrometheusRecorder) -> Self {
        Self {
            cleanup_queue_depth: gauge(r, CLEANUP_QUEUE_DEPTH, &[]),
            cleanup_sync_fallbacks: counter(r, CLEANUP_SYNC_FALLBACKS_TOTAL, &[]),
            cleanup_processed: counter(r, CLEANUP_PROCESSED_TOTAL, &[]),
            fabric_messages_in: counter(r, FABRIC_MESSAGES_IN_TOTAL, &[]),
            fabric_messages_out: counter(r, FABRIC_MESSAGES_OUT_TOTAL, &[]),
            fabric_errors: counter(r, FABRIC_ERRORS_TOTAL, &[]),
            fabric_up: gauge(r, FABRIC_UP, &[]),
            fabric_inbound_dropped: counter(r, FABRIC_INBOUND_DROPPED_TOTAL, &[]),
            fabric_partial_answers: counter(r, FABRIC_PARTIAL_ANSWERS_TOTAL, &[]),
            fabric_resyncs: counter(r, FABRIC_RESYNCS_TOTAL, &[]),
            cluster_nodes: gauge(r, CLUSTER_NODES, &[]),
            unknown_app_rejections: counter(r, REJECTIONS_TOTAL, &[("app_id", ""), ("reason", "unknown_app")]),
            ip_limit_rejections: counter(r, REJECTIONS_TOTAL, &[("app_id", ""), ("reason", "ip_connection_limit")]),
            http_timeout_rejections: counter(r, REJECTIONS_TOTAL, &[("app_id", ""), ("reason", "http_timeout")]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn handles_update_the_exposition() {
        let m = Metrics::new("n1");
        let app = m.app("a1");
        app.connection_opened();
        app.connection_opened();
        app.connection_closed();
        app.delivered(100, 50);
        app.rest_request(Endpoint::Events, 200);
        app.rest_request(Endpoint::Events, 418);
        app.rejected(Rejection::BadSignature);
        let text = m.render();
        assert_eq!(value(&text, r#"herald_connections{node="n1",app_id="a1"}"#), Some(1.0));
        assert_eq!(value(&text, r#"herald_ws_messages_sent_total{node="n1",app_id="a1"}"#), Some(100.0));
        assert_eq!(value(&text, r#"herald_ws_bytes_sent_total{node="n1",app_id="a1"}"#), Some(5000.0));
        assert_eq!(
            value(&text, r#"herald_rest_requests_total{node="n1",app_id="a1",endpoint="events",status="other"}"#),
            Some(1.0)
        );
        assert_eq!(value(&text, r#"herald_rejections_total{node="n1",app_id="a1",reason="bad_signature"}"#), Some(1.0));
        assert!(text.contains("# HELP herald_connections "));
    }

    #[test]
    fn every_described_metric_is_named_herald() {
        for (name, ..) in names::DESCRIPTIONS {
            assert!(name.starts_with("herald_"), "{name}");
        }
    }
}
