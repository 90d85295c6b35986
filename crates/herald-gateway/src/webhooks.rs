//! Webhooks: telling an app's backend what happened, in Pusher's format,
//! signed with the app secret.
//!
//! Each target (URL + event filter) has its own bounded queue and its own
//! task that batches events for a short window and delivers them with a
//! timeout and retries with exponential backoff. A target that keeps failing
//! only fills its own queue (then its events are dropped and counted); it
//! never delays other targets, connections or the REST API. Producers only
//! ever `try_send`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_adapter::Lifecycle;
use herald_metrics::AppMetrics;
use herald_protocol::sign;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{AppConfig, Config};

/// Every webhook event Herald sends.
pub const EVENT_NAMES: [&str; 6] =
    ["channel_occupied", "channel_vacated", "member_added", "member_removed", "client_event", "cache_miss"];

/// Most events in one webhook request.
const MAX_BATCH: usize = 100;

/// Delivery settings shared by every target.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub batch_window: Duration,
    pub timeout: Duration,
    pub retries: u32,
    pub backoff: Duration,
    pub queue: usize,
}

impl Settings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            batch_window: config.webhook_batch,
            timeout: config.webhook_timeout,
            retries: config.webhook_retries,
            backoff: config.webhook_backoff,
            queue: config.webhook_queue,
        }
    }
}

/// Who runs the target tasks and stops them.
#[derive(Clone)]
pub struct Runtime {
    pub client: reqwest::Client,
    pub tasks: TaskTracker,
    pub stop: CancellationToken,
}

struct Target {
    /// Bit i set: EVENT_NAMES[i] is wanted.
    wants: u8,
    queue: mpsc::Sender<Value>,
}

/// One app's webhook targets.
pub struct AppWebhooks {
    targets: Vec<Target>,
    metrics: AppMetrics,
}

fn bit(name: &str) -> u8 {
    EVENT_NAMES.iter().position(|n| *n == name).map_or(0, |i| 1 << i)
}

impl AppWebhooks {
    /// Starts one delivery task per configured target.
    pub fn start(app: &AppConfig, settings: Settings, metrics: AppMetrics, runtime: &Runtime) -> Arc<Self> {
        let targets = app
            .webhooks
            .iter()
            .map(|hook| {
                let (tx, rx) = mpsc::channel(settings.queue.max(1));
                let wants = match &hook.events {
                    Some(events) => events.iter().fold(0, |acc, e| acc | bit(e)),
                    None => u8::MAX,
                };
                let delivery = Delivery {
                    url: hook.url.clone(),
                    key: app.key.clone(),
                    secret: app.secret.clone(),
                    settings,
                    metrics: metrics.clone(),
                    client: runtime.client.clone(),
                    stop: runtime.stop.clone(),
                };
                runtime.tasks.spawn(delivery.run(rx));
                Target { wants, queue: tx }
            })
            .collect();
        Arc::new(Self { targets, metrics })
    }

    fn wanted(&self, name: &str) -> bool {
        let b = bit(name);
        self.targets.iter().any(|t| t.wants & b != 0)
    }

    fn emit(&self, name: &str, event: Value) {
        let b = bit(name);
        for target in self.targets.iter().filter(|t| t.wants & b != 0) {
            if target.queue.try_send(event.clone()).is_err() {
                self.metrics.webhook_events_dropped.increment(1);
            }
        }
    }

    /// A client event was relayed.
    pub fn client_event(&self, channel: &str, event: &str, data: &Value, socket_id: &str, user_id: Option<&str>) {
        if !self.wanted("client_event") {
            return;
        }
        let data = match data {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let mut e =
            json!({"name": "client_event", "channel": channel, "event": event, "data": data, "socket_id": socket_id});
        if let Some(user_id) = user_id {
            e["user_id"] = json!(user_id);
        }
        self.emit("client_event", e);
    }

    /// A cache channel had nothing to replay to a new subscriber.
    pub fn cache_miss(&self, channel: &str) {
        if self.wanted("cache_miss") {
            self.emit("cache_miss", json!({"name": "cache_miss", "channel": channel}));
        }
    }
}

impl Lifecycle for AppWebhooks {
    fn channel_occupied(&self, channel: &str) {
        if self.wanted("channel_occupied") {
            self.emit("channel_occupied", json!({"name": "channel_occupied", "channel": channel}));
        }
    }

    fn channel_vacated(&self, channel: &str) {
        if self.wanted("channel_vacated") {
            self.emit("channel_vacated", json!({"name": "channel_vacated", "channel": channel}));
        }
    }

    fn member_added(&self, channel: &str, user_id: &str) {
        if self.wanted("member_added") {
            self.emit("member_added", json!({"name": "member_added", "channel": channel, "user_id": user_id}));
        }
    }

    fn member_removed(&self, channel: &str, user_id: &str) {
        if self.wanted("member_removed") {
            self.emit("member_removed", json!({"name": "member_removed", "channel": channel, "user_id": user_id}));
        }
    }
}

/// One target's delivery loop.
struct Delivery {
    url: String,
    key: String,
    secret: String,
    settings: Settings,
    metrics: AppMetrics,
    client: reqwest::Client,
    stop: CancellationToken,
}

impl Delivery {
    async fn run(self, mut queue: mpsc::Receiver<Value>) {
        loop {
            let first = tokio::select! {
                event = queue.recv() => event,
                _ = self.stop.cancelled() => None,
            };
            let Some(first) = first else { break };
            let mut events = vec![first];
            let deadline = Instant::now() + self.settings.batch_window;
            while events.len() < MAX_BATCH {
                tokio::select! {
                    event = queue.recv() => match event {
                        Some(event) => events.push(event),
                        None => break,
                    },
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = self.stop.cancelled() => break,
                }
            }
            self.deliver(events, self.settings.retries).await;
        }
        // Stopping: send what is already queued, one attempt per batch.
        let mut rest = Vec::new();
        while let Ok(event) = queue.try_recv() {
            rest.push(event);
        }
        for chunk in rest.chunks(MAX_BATCH) {
            self.deliver(chunk.to_vec(), 0).await;
        }
    }

    /// Posts one batch; returns whether a 2xx was received.
    async fn deliver(&self, events: Vec<Value>, retries: u32) -> bool {
        let time_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let body = json!({"time_ms": time_ms, "events": events}).to_string();
        let signature = sign::sign(&self.secret, &body);
        for attempt in 0..=retries {
            if attempt > 0 {
                self.metrics.webhooks_retried.increment(1);
                let backoff = self.settings.backoff * 2u32.saturating_pow(attempt - 1);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = self.stop.cancelled() => {}
                }
            }
            let started = Instant::now();
            let result = self
                .client
                .post(&self.url)
                .header("content-type", "application/json")
                .header("x-pusher-key", &self.key)
                .header("x-pusher-signature", &signature)
                .body(body.clone())
                .timeout(self.settings.timeout)
                .send()
                .await;
            self.metrics.webhook_duration_seconds.record(started.elapsed().as_secs_f64());
            match result {
                Ok(response) if response.status().is_success() => {
                    self.metrics.webhooks_sent.increment(1);
                    return true;
                }
                Ok(response) => {
                    tracing::warn!(url = %self.url, status = %response.status(), attempt, "webhook refused");
                }
                Err(e) => tracing::warn!(url = %self.url, error = %e, attempt, "webhook failed"),
            }
        }
        self.metrics.webhooks_failed.increment(1);
        tracing::error!(url = %self.url, events = events.len(), "webhook batch given up");
        false
    }
}
