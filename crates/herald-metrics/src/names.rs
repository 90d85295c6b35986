//! Every metric name Herald exports, with its help text, in one place: the
//! dashboards, `docs/metrics.md` and the tests all read from this list.

use metrics::Unit;

use crate::Kind;

pub const CONNECTIONS: &str = "herald_connections";
pub const CONNECTIONS_OPENED_TOTAL: &str = "herald_connections_opened_total";
pub const CONNECTIONS_CLOSED_TOTAL: &str = "herald_connections_closed_total";
pub const WS_MESSAGES_RECEIVED_TOTAL: &str = "herald_ws_messages_received_total";
pub const WS_BYTES_RECEIVED_TOTAL: &str = "herald_ws_bytes_received_total";
pub const WS_MESSAGES_SENT_TOTAL: &str = "herald_ws_messages_sent_total";
pub const WS_BYTES_SENT_TOTAL: &str = "herald_ws_bytes_sent_total";
pub const SUBSCRIPTIONS_TOTAL: &str = "herald_subscriptions_total";
pub const UNSUBSCRIPTIONS_TOTAL: &str = "herald_unsubscriptions_total";
pub const EVENTS_TRIGGERED_TOTAL: &str = "herald_events_triggered_total";
pub const CLIENT_EVENTS_TOTAL: &str = "herald_client_events_total";
pub const REJECTIONS_TOTAL: &str = "herald_rejections_total";
pub const REST_REQUESTS_TOTAL: &str = "herald_rest_requests_total";
pub const BROADCAST_FANOUT_SECONDS: &str = "herald_broadcast_fanout_seconds";
pub const WEBHOOKS_SENT_TOTAL: &str = "herald_webhooks_sent_total";
pub const WEBHOOKS_FAILED_TOTAL: &str = "herald_webhooks_failed_total";
pub const WEBHOOKS_RETRIED_TOTAL: &str = "herald_webhooks_retried_total";
pub const WEBHOOK_DURATION_SECONDS: &str = "herald_webhook_duration_seconds";
pub const WEBHOOK_EVENTS_DROPPED_TOTAL: &str = "herald_webhook_events_dropped_total";
pub const CLEANUP_QUEUE_DEPTH: &str = "herald_cleanup_queue_depth";
pub const CLEANUP_SYNC_FALLBACKS_TOTAL: &str = "herald_cleanup_sync_fallbacks_total";
pub const CLEANUP_PROCESSED_TOTAL: &str = "herald_cleanup_processed_total";
pub const FABRIC_MESSAGES_IN_TOTAL: &str = "herald_fabric_messages_in_total";
pub const FABRIC_MESSAGES_OUT_TOTAL: &str = "herald_fabric_messages_out_total";
pub const FABRIC_ERRORS_TOTAL: &str = "herald_fabric_errors_total";
pub const FABRIC_UP: &str = "herald_fabric_up";
pub const FABRIC_INBOUND_DROPPED_TOTAL: &str = "herald_fabric_inbound_dropped_total";
pub const FABRIC_PARTIAL_ANSWERS_TOTAL: &str = "herald_fabric_partial_answers_total";
pub const FABRIC_RESYNCS_TOTAL: &str = "herald_fabric_resyncs_total";
pub const CLUSTER_NODES: &str = "herald_cluster_nodes";

/// (name, kind, unit, help) of every metric.
pub const DESCRIPTIONS: &[(&str, Kind, Option<Unit>, &str)] = &[
    (CONNECTIONS, Kind::Gauge, None, "WebSocket connections currently open."),
    (CONNECTIONS_OPENED_TOTAL, Kind::Counter, None, "WebSocket connections accepted."),
    (CONNECTIONS_CLOSED_TOTAL, Kind::Counter, None, "WebSocket connections closed."),
    (WS_MESSAGES_RECEIVED_TOTAL, Kind::Counter, None, "WebSocket frames received from clients."),
    (WS_BYTES_RECEIVED_TOTAL, Kind::Counter, Some(Unit::Bytes), "Bytes of WebSocket frames received from clients."),
    (
        WS_MESSAGES_SENT_TOTAL,
        Kind::Counter,
        None,
        "WebSocket frames queued to clients (one batched count per broadcast).",
    ),
    (WS_BYTES_SENT_TOTAL, Kind::Counter, Some(Unit::Bytes), "Bytes of WebSocket frames queued to clients."),
    (SUBSCRIPTIONS_TOTAL, Kind::Counter, None, "Successful channel subscriptions, by channel kind."),
    (
        UNSUBSCRIPTIONS_TOTAL,
        Kind::Counter,
        None,
        "Channel unsubscriptions (explicit or by disconnect), by channel kind.",
    ),
    (EVENTS_TRIGGERED_TOTAL, Kind::Counter, None, "Events triggered through the REST API (one per channel)."),
    (CLIENT_EVENTS_TOTAL, Kind::Counter, None, "Client events relayed."),
    (REJECTIONS_TOTAL, Kind::Counter, None, "Requests, frames or connections refused, by reason."),
    (REST_REQUESTS_TOTAL, Kind::Counter, None, "REST API requests, by endpoint and HTTP status."),
    (
        BROADCAST_FANOUT_SECONDS,
        Kind::Histogram,
        Some(Unit::Seconds),
        "Time to queue one broadcast to every local subscriber (the socket writes happen after it, in the flushers).",
    ),
    (WEBHOOKS_SENT_TOTAL, Kind::Counter, None, "Webhook requests delivered (2xx)."),
    (WEBHOOKS_FAILED_TOTAL, Kind::Counter, None, "Webhook batches given up on after their retries."),
    (WEBHOOKS_RETRIED_TOTAL, Kind::Counter, None, "Webhook request retries."),
    (WEBHOOK_EVENTS_DROPPED_TOTAL, Kind::Counter, None, "Webhook events dropped because the target's queue was full."),
    (WEBHOOK_DURATION_SECONDS, Kind::Histogram, Some(Unit::Seconds), "Duration of webhook HTTP requests."),
    (CLEANUP_QUEUE_DEPTH, Kind::Gauge, None, "Disconnects waiting in the cleanup queues."),
    (
        CLEANUP_SYNC_FALLBACKS_TOTAL,
        Kind::Counter,
        None,
        "Disconnects cleaned synchronously because a cleanup queue was full.",
    ),
    (CLEANUP_PROCESSED_TOTAL, Kind::Counter, None, "Disconnects cleaned up."),
    (FABRIC_MESSAGES_IN_TOTAL, Kind::Counter, None, "Messages received from the cluster fabric."),
    (FABRIC_MESSAGES_OUT_TOTAL, Kind::Counter, None, "Messages published to the cluster fabric."),
    (FABRIC_ERRORS_TOTAL, Kind::Counter, None, "Cluster fabric errors (failed publishes, undecodable messages)."),
    (FABRIC_UP, Kind::Gauge, None, "1 while the cluster fabric is reachable and subscribed, 0 while it is not."),
    (
        FABRIC_INBOUND_DROPPED_TOTAL,
        Kind::Counter,
        None,
        "Fabric messages dropped because this node's inbound queue was full.",
    ),
    (
        FABRIC_PARTIAL_ANSWERS_TOTAL,
        Kind::Counter,
        None,
        "Cluster questions answered without every node (a node missed the request deadline).",
    ),
    (
        FABRIC_RESYNCS_TOTAL,
        Kind::Counter,
        None,
        "Snapshots requested from peers (new node, or a gap in its replicated changes).",
    ),
    (CLUSTER_NODES, Kind::Gauge, None, "Live nodes in the cluster as this node sees them, itself included."),
];
