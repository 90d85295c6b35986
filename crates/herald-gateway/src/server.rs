//! Starting and stopping a Herald node: builds the state, binds the public
//! and metrics listeners, and owns every task until shutdown drains them.

use std::net::SocketAddr;
use std::sync::Arc;

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

    /// Drains: stop accepting, tell every client to reconnect (4200), wait
    /// up to the grace period for connections to finish, then stop.
    pub async fn shutdown(self) {
        tracing::info!("draining connections");
        self.state.start_drain();
        self.state.tracker.close();
        let grace = self.state.config.shutdown_grace;
        if tokio::time::timeout(grace, self.state.tracker.wait()).await.is_err() {
            tracing::warn!("shutdown grace period ended with connections still open");
        }
        if !self.state.cleanup.shutdown(grace).await {
            tracing::warn!("cleanup queues not drained within the grace period");
        }
        // Departures are published; now say goodbye so peers update at once.
        self.state.adapter.shutdown().await;
        let hooks = &self.state.webhooks;
        hooks.stop.cancel();
        hooks.tasks.close();
        if tokio::time::timeout(grace, hooks.tasks.wait()).await.is_err() {
            tracing::warn!("webhook deliveries still pending at exit");
        }
        for task in self.http {
            task.abort();
            let _ = task.await;
        }
        tracing::info!("stopped");
    }
}

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
