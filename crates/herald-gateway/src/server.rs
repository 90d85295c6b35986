//! Starting and stopping a Herald node: builds the state, binds the public
//! and metrics listeners, and owns every task until shutdown drains them.
//! The listeners outlive the drain: they stop last.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_metrics::Metrics;
use serde_json::json;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;
use warp::http::{Response, StatusCode};
use warp::Filter;

use crate::config::Config;
use crate::rest::json_reply;
use crate::state::State;

/// How long the listeners may take to finish the requests in flight once
/// they are told to stop.
const LISTENER_DEADLINE: Duration = Duration::from_secs(1);

/// A running node.
pub struct Server {
    state: Arc<State>,
    addr: SocketAddr,
    metrics_addr: SocketAddr,
    http: Vec<JoinHandle<()>>,
}

impl Server {
    /// Binds both listeners and starts serving.
    pub async fn start(config: Config) -> std::io::Result<Self> {
        let metrics = Arc::new(Metrics::new(&config.node_id));
        let state = State::new(config, metrics);

        let listener = bind(SocketAddr::new(state.config.host, state.config.port))?;
        let addr = listener.local_addr()?;
        let metrics_listener = bind(SocketAddr::new(state.config.host, state.config.metrics_port))?;
        let metrics_addr = metrics_listener.local_addr()?;

        let public = crate::ws::route(state.clone())
            .or(crate::rest::route(state.clone()))
            .unify()
            .or(health_routes(state.clone()))
            .unify()
            .or(warp::any().map(|| json_reply(StatusCode::NOT_FOUND, &json!({"error": "not found"}))))
            .unify();
        let settings = crate::http::Settings {
            head_timeout: state.config.http_head_timeout,
            ip_limits: state.ip_limits.clone(),
            cap_by_peer: !state.config.trust_forwarded_for,
            metrics: state.metrics.node().clone(),
            takeover: Some(crate::ws::FastHandshake::new(state.clone())),
        };
        let http = vec![
            tokio::spawn(crate::http::serve(listener, public, settings, state.shutdown.clone())),
            tokio::spawn(serve_metrics(state.clone(), metrics_listener)),
        ];
        tracing::info!(%addr, %metrics_addr, node = %state.config.node_id, adapter = state.adapter.kind(), "herald listening");
        Ok(Self { state, addr, metrics_addr, http })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// Drains, then stops. While the drain lasts the listeners keep
    /// serving: `/ready` answers 503, new WebSocket upgrades get HTTP 503,
    /// `/up`, `/metrics` and the REST API work as before, and every
    /// connection is closed with 4200 at its turn, spread over
    /// `drain_window`. Once the connections are gone (or `shutdown_grace`
    /// has passed) the departures are published, the node leaves the
    /// cluster, webhooks are flushed, and the listeners stop last.
    pub async fn shutdown(self) {
        // One deadline for the whole drain: the steps after the clients get
        // what is left of the grace, but never less than a short floor, so
        // departures are still published when the clients used it all.
        let deadline = tokio::time::Instant::now() + self.state.config.shutdown_grace;
        let left = || deadline.saturating_duration_since(tokio::time::Instant::now()).max(STEP_FLOOR);
        let sessions = self.state.start_drain();
        let window = self.state.drain.window();
        tracing::info!(sessions, window_ms = window.as_millis() as u64, "draining connections");
        self.state.tracker.close();
        if tokio::time::timeout_at(deadline, self.state.tracker.wait()).await.is_err() {
            tracing::warn!("shutdown grace period ended with connections still open");
        }
        self.state.flushers.stop().await;
        if !self.state.cleanup.shutdown(left()).await {
            tracing::warn!("cleanup queues not drained within the grace period");
        }
        // Departures are published; now say goodbye so peers update at once.
        self.state.adapter.shutdown().await;
        let hooks = &self.state.webhooks;
        hooks.stop.cancel();
        hooks.tasks.close();
        if tokio::time::timeout(left(), hooks.tasks.wait()).await.is_err() {
            tracing::warn!("webhook deliveries still pending at exit");
        }
        // Last, the listeners: requests in flight get a moment to finish.
        self.state.shutdown.cancel();
        for mut task in self.http {
            if tokio::time::timeout(LISTENER_DEADLINE, &mut task).await.is_err() {
                task.abort();
                let _ = task.await;
            }
        }
        tracing::info!("stopped");
    }
}

/// The least time cleanup and the webhook flush get after the clients, even
/// when they used the whole grace.
const STEP_FLOOR: Duration = Duration::from_secs(1);

/// A listener with TCP_NODELAY (inherited by accepted sockets on Linux),
/// address reuse and a deep backlog for connection storms.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// `/up`, `/up/{app_id}`, `/ready`.
fn health_routes(state: Arc<State>) -> impl Filter<Extract = (Response<Bytes>,), Error = warp::Rejection> + Clone {
    let up = warp::path!("up").and(warp::get()).map(|| text(StatusCode::OK, "OK"));
    let app_state = state.clone();
    let up_app = warp::path!("up" / String).and(warp::get()).map(move |id: String| match app_state.apps.by_id(&id) {
        Some(app) if app.config.enabled => text(StatusCode::OK, "OK"),
        Some(_) => text(StatusCode::SERVICE_UNAVAILABLE, "app disabled"),
        None => text(StatusCode::NOT_FOUND, "unknown app"),
    });
    let ready = warp::path!("ready").and(warp::get()).map(move || {
        if state.is_draining() {
            text(StatusCode::SERVICE_UNAVAILABLE, "draining")
        } else if !state.adapter.is_ready() {
            text(StatusCode::SERVICE_UNAVAILABLE, "cluster fabric unreachable")
        } else {
            text(StatusCode::OK, "READY")
        }
    });
    up.or(up_app).unify().or(ready).unify()
}

fn text(status: StatusCode, body: &'static str) -> Response<Bytes> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Bytes::from_static(body.as_bytes()))
        .expect("valid response")
}

/// The Prometheus endpoint on its own port, plus histogram upkeep.
async fn serve_metrics(state: Arc<State>, listener: TcpListener) {
    let render_state = state.clone();
    let route = warp::path!("metrics").and(warp::get()).map(move || {
        Response::builder()
            .header("content-type", "text/plain; version=0.0.4")
            .body(Bytes::from(render_state.metrics.render()))
            .expect("valid response")
    });
    let stop = state.shutdown.clone();
    let upkeep_state = state.clone();
    let upkeep = async move {
        let mut tick = tokio::time::interval(Metrics::UPKEEP_INTERVAL);
        loop {
            tick.tick().await;
            upkeep_state.metrics.run_upkeep();
        }
    };
    let server = warp::serve(route).incoming(listener).graceful(async move { stop.cancelled().await }).run();
    tokio::select! {
        _ = server => {}
        _ = upkeep => {}
    }
}
