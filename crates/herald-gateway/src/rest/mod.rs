//! The Pusher HTTP API under `/apps/{app_id}/...`.
//!
//! One filter captures method, path, query and a size-limited body; routing,
//! app lookup and signature checks then happen in plain code so that every
//! failure becomes a JSON error with the right status.

mod handlers;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use herald_metrics::{Endpoint, Rejection};
use herald_protocol::rest_auth::SignedRequest;
use percent_encoding::percent_decode_str;
use serde_json::{json, Value};
use warp::http::{Method, Response, StatusCode};
use warp::path::FullPath;
use warp::Filter;

use crate::apps::App;
use crate::state::State;

pub type Reply = Response<Bytes>;

/// An API failure: HTTP status plus a message saying what is wrong.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

/// The raw query string, empty when there is none.
pub fn raw_query() -> impl Filter<Extract = (String,), Error = std::convert::Infallible> + Clone {
    warp::query::raw().or(warp::any().map(String::new)).unify()
}

/// `/apps/...`: every REST endpoint.
pub fn route(state: Arc<State>) -> impl Filter<Extract = (Reply,), Error = warp::Rejection> + Clone {
    let limit = state.config.max_request_bytes;
    let body_timeout = state.config.http_body_timeout;
    warp::path("apps").and(warp::path::full()).and(warp::method()).and(raw_query()).and(warp::body::stream()).then(
        move |path: FullPath, method: Method, query: String, body| {
            let state = state.clone();
            async move {
                match tokio::time::timeout(body_timeout, read_limited(body, limit)).await {
                    Ok(Some(body)) => handle(&state, &method, path.as_str(), &query, &body).await,
                    Err(_) => {
                        state.metrics.node().http_timeout_rejections.increment(1);
                        let mut reply = json_reply(
                            StatusCode::REQUEST_TIMEOUT,
                            &json!({"error": "request body not received in time"}),
                        );
                        reply.headers_mut().insert("connection", warp::http::HeaderValue::from_static("close"));
                        reply
                    }
                    Ok(None) => json_reply(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &json!({"error": format!("request body is larger than {limit} bytes")}),
                    ),
                }
            }
        },
    )
}

/// Reads a body, giving up (None) as soon as it passes `limit` bytes.
async fn read_limited<S, B>(body: S, limit: usize) -> Option<Bytes>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let mut body = std::pin::pin!(body);
    let mut out = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.ok()?;
        if out.len() + chunk.remaining() > limit {
            return None;
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            out.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Some(out.freeze())
}

/// Which endpoint a path names, with its decoded parameters.
enum Route {
    Events,
    BatchEvents,
    Channels,
    Channel(String),
    Users(String),
    Terminate(String),
}

impl Route {
    fn endpoint(&self) -> Endpoint {
        match self {
            Route::Events => Endpoint::Events,
            Route::BatchEvents => Endpoint::BatchEvents,
            Route::Channels => Endpoint::Channels,
            Route::Channel(_) => Endpoint::Channel,
            Route::Users(_) => Endpoint::Users,
            Route::Terminate(_) => Endpoint::TerminateConnections,
        }
    }

    fn method(&self) -> Method {
        match self {
            Route::Events | Route::BatchEvents | Route::Terminate(_) => Method::POST,
            _ => Method::GET,
        }
    }
}

fn parse_path(path: &str) -> Option<(String, Route)> {
    let rest = path.strip_prefix("/apps/")?;
    let segments: Vec<String> =
        rest.split('/').map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned()).collect();
    let parts: Vec<&str> = segments.iter().map(String::as_str).collect();
    let route = match parts.as_slice() {
        [_, "events"] => Route::Events,
        [_, "batch_events"] => Route::BatchEvents,
        [_, "channels"] => Route::Channels,
        [_, "channels", name] => Route::Channel(name.to_string()),
        [_, "channels", name, "users"] => Route::Users(name.to_string()),
        [_, "users", user, "terminate_connections"] => Route::Terminate(user.to_string()),
        _ => return None,
    };
    Some((segments[0].clone(), route))
}

async fn handle(state: &State, method: &Method, path: &str, query: &str, body: &[u8]) -> Reply {
    let Some((app_id, route)) = parse_path(path) else {
        return json_reply(StatusCode::NOT_FOUND, &json!({"error": "no such endpoint"}));
    };
    let Some(app) = state.apps.by_id(&app_id) else {
        state.metrics.node().unknown_app_rejections.increment(1);
        return json_reply(StatusCode::NOT_FOUND, &json!({"error": format!("unknown app {app_id}")}));
    };
    let endpoint = route.endpoint();
    let result = authorize_and_run(state, app, method, path, query, body, route).await;
    let (status, value) = match result {
        Ok(value) => (StatusCode::OK, value),
        Err(e) => (e.status, json!({"error": e.message})),
    };
    app.metrics.rest_request(endpoint, status.as_u16());
    json_reply(status, &value)
}

async fn authorize_and_run(
    state: &State,
    app: &App,
    method: &Method,
    path: &str,
    query: &str,
    body: &[u8],
    route: Route,
) -> Result<Value, ApiError> {
    if *method != route.method() {
        return Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, format!("use {}", route.method())));
    }
    let params: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|_| ApiError::bad_request("query string is not valid form encoding"))?;
    let request = SignedRequest { method: method.as_str(), path, query: &params, body };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if let Err(e) = request.verify(&app.config.key, &app.config.secret, now) {
        app.metrics.rejected(Rejection::BadSignature);
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, e.to_string()));
    }
    if !app.config.enabled {
        app.metrics.rejected(Rejection::AppDisabled);
        return Err(ApiError::new(StatusCode::FORBIDDEN, "application is disabled"));
    }
    let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let result = match route {
        Route::Events => handlers::events(state, app, body).await,
        Route::BatchEvents => handlers::batch_events(state, app, body).await,
        Route::Channels => handlers::channels(state, app, param("filter_by_prefix"), param("info")).await,
        Route::Channel(name) => handlers::channel(state, app, &name, param("info")).await,
        Route::Users(name) => handlers::users(state, app, &name).await,
        Route::Terminate(user) => handlers::terminate(state, app, &user).await,
    };
    if let Err(e) = &result {
        let why = match e.status {
            StatusCode::PAYLOAD_TOO_LARGE => Rejection::PayloadTooLarge,
            _ => Rejection::BadRequest,
        };
        app.metrics.rejected(why);
    }
    result
}

pub fn json_reply(status: StatusCode, value: &Value) -> Reply {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Bytes::from(value.to_string()))
        .expect("valid response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_route_and_decode() {
        assert!(matches!(parse_path("/apps/1/events"), Some((id, Route::Events)) if id == "1"));
        assert!(matches!(
            parse_path("/apps/1/channels/%23server-to-user-7"),
            Some((_, Route::Channel(n))) if n == "#server-to-user-7"
        ));
        assert!(matches!(parse_path("/apps/1/channels/presence-a/users"), Some((_, Route::Users(_)))));
        assert!(matches!(
            parse_path("/apps/1/users/u1/terminate_connections"),
            Some((_, Route::Terminate(u))) if u == "u1"
        ));
        assert!(parse_path("/apps/1/nothing").is_none());
        assert!(parse_path("/apps/1/channels/a/b/c").is_none());
    }
}
