//! Helpers for end-to-end tests: a real Herald node on loopback ports, real
//! WebSocket clients speaking the Pusher protocol, and a REST client that
//! signs requests the way the official server SDKs do.

pub mod cluster;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use herald_gateway::{AppConfig, Config, Server};
use herald_protocol::{rest_auth, sign};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for a frame it expects.
pub const WAIT: Duration = Duration::from_secs(5);

/// A Herald node started in-process on free loopback ports.
pub struct TestServer {
    server: Option<Server>,
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub app: AppConfig,
}

/// A config for tests: loopback, free ports, the default app.
pub fn test_config() -> Config {
    Config { host: [127, 0, 0, 1].into(), port: 0, metrics_port: 0, node_id: "test".into(), ..Config::default() }
}

impl TestServer {
    pub async fn start() -> Self {
        Self::with(|_| {}).await
    }

    /// Starts a node after `tweak` adjusts the test config.
    pub async fn with(tweak: impl FnOnce(&mut Config)) -> Self {
        let mut config = test_config();
        tweak(&mut config);
        config.validate().expect("test config is valid");
        let app = config.apps[0].clone();
        let server = Server::start(config).await.expect("server starts");
        Self { addr: server.addr(), metrics_addr: server.metrics_addr(), server: Some(server), app }
    }

    pub fn ws_url(&self, key: &str) -> String {
        format!("ws://{}/app/{key}?protocol=7&client=js&version=8.6.0&flash=false", self.addr)
    }

    /// Connects with the default app's key and reads `connection_established`.
    pub async fn connect(&self) -> Client {
        Client::connect(&self.ws_url(&self.app.key), &self.app).await
    }

    pub fn rest(&self) -> Rest {
        Rest::new(self.addr, &self.app)
    }

    /// The Prometheus exposition text.
    pub async fn metrics(&self) -> String {
        scrape(self.metrics_addr).await
    }

    /// Drains the node (as SIGTERM does).
    pub async fn shutdown(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("server running")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(server) = &self.server {
            // Drain and stop the listeners at once (no waiting in a drop).
            server.state().start_drain();
            server.state().shutdown.cancel();
        }
    }
}

/// A raw WebSocket client speaking the Pusher protocol.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub socket_id: String,
    pub app: AppConfig,
}

/// How a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    Code(u16),
    NoCode,
}

/// The Prometheus exposition text served at `addr`.
pub async fn scrape(addr: SocketAddr) -> String {
    reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap()
}

impl Client {
    /// Opens `url` as `app`'s client and reads `connection_established`.
    pub async fn connect(url: &str, app: &AppConfig) -> Self {
        let mut client = Client::open(url).await;
        let established = client.recv_event("pusher:connection_established").await;
        client.socket_id = data(&established)["socket_id"].as_str().unwrap().to_string();
        client.app = app.clone();
        client
    }

    pub async fn open(url: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("websocket connects");
        Self { ws, socket_id: String::new(), app: AppConfig::default() }
    }

    pub async fn send(&mut self, frame: Value) {
        self.send_text(&frame.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::Text(text.into())).await.expect("send");
    }

    /// The next JSON frame (panics on close or after [`WAIT`]).
    pub async fn recv(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame within the wait")
                .expect("connection open")
                .expect("no websocket error");
            match msg {
                Message::Text(t) => return serde_json::from_str(t.as_str()).expect("server sends JSON"),
                Message::Close(c) => panic!("unexpected close: {c:?}"),
                _ => continue,
            }
        }
    }

    /// Skips frames until one with `event`.
    pub async fn recv_event(&mut self, event: &str) -> Value {
        loop {
            let frame = self.recv().await;
            if frame["event"] == event {
                return frame;
            }
        }
    }

    /// Asserts nothing but pings arrives within `within`.
    pub async fn expect_silence(&mut self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    assert_eq!(v["event"], "pusher:ping", "unexpected frame {v}");
                }
                Ok(Some(Ok(_))) => {}
                Ok(other) => panic!("connection ended: {other:?}"),
            }
        }
    }

    /// Reads until the server closes; returns the close code and the last
    /// `pusher:error` seen before it.
    pub async fn expect_close(&mut self) -> (Closed, Option<Value>) {
        let mut last_error = None;
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await.expect("close within the wait") {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    if v["event"] == "pusher:error" {
                        last_error = Some(v);
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.map_or(Closed::NoCode, |f| Closed::Code(f.code.into()));
                    return (code, last_error);
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return (Closed::NoCode, last_error),
            }
        }
    }

    fn channel_auth(&self, channel: &str, channel_data: Option<&str>) -> String {
        let to_sign = sign::channel_string_to_sign(&self.socket_id, channel, channel_data);
        sign::auth_token(&self.app.key, &self.app.secret, &to_sign)
    }

    /// Subscribes (signing private/presence auth as an app backend would)
    /// and returns the first reply for that channel.
    pub async fn subscribe(&mut self, channel: &str) -> Value {
        let mut data = json!({ "channel": channel });
        if channel.starts_with("private-") {
            data["auth"] = json!(self.channel_auth(channel, None));
        }
        self.send(json!({"event": "pusher:subscribe", "data": data})).await;
        self.recv_for_channel(channel).await
    }

    /// Subscribes to a presence channel as `user_id`.
    pub async fn subscribe_presence(&mut self, channel: &str, user_id: &str, info: Value) -> Value {
        let channel_data = json!({"user_id": user_id, "user_info": info}).to_string();
        let auth = self.channel_auth(channel, Some(&channel_data));
        self.send(json!({"event": "pusher:subscribe", "data": {"channel": channel, "auth": auth, "channel_data": channel_data}}))
            .await;
        self.recv_for_channel(channel).await
    }

    /// The next frame about `channel` (skipping others).
    pub async fn recv_for_channel(&mut self, channel: &str) -> Value {
        loop {
            let frame = self.recv().await;
            if frame["channel"] == channel {
                return frame;
            }
        }
    }

    /// Signs in as `user_data` (a JSON object with at least `id`).
    pub async fn sign_in(&mut self, user_data: Value) -> Value {
        let user_data = user_data.to_string();
        let to_sign = sign::user_string_to_sign(&self.socket_id, &user_data);
        let auth = sign::auth_token(&self.app.key, &self.app.secret, &to_sign);
        self.send(json!({"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}})).await;
        self.recv_event("pusher:signin_success").await
    }
}

/// Parses a frame's string `data` as JSON.
pub fn data(frame: &Value) -> Value {
    match &frame["data"] {
        Value::String(s) => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
        other => other.clone(),
    }
}

/// A REST client signing requests with the app's key and secret.
pub struct Rest {
    pub base: String,
    pub app: AppConfig,
    pub http: reqwest::Client,
}

impl Rest {
    pub fn new(addr: SocketAddr, app: &AppConfig) -> Self {
        Self { base: format!("http://{addr}"), app: app.clone(), http: reqwest::Client::new() }
    }

    fn now() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    fn url(&self, method: &str, path: &str, params: &[(&str, &str)], body: &[u8], secret: &str) -> String {
        let query = rest_auth::sign_request(method, path, &self.app.key, secret, Self::now(), params, body);
        format!("{}{}?{}", self.base, path, serde_urlencoded::to_string(&query).unwrap())
    }

    /// A signed GET of `/apps/{id}{path}`; returns (status, JSON body).
    pub async fn get(&self, path: &str, params: &[(&str, &str)]) -> (u16, Value) {
        let path = format!("/apps/{}{path}", self.app.id);
        let url = self.url("GET", &path, params, b"", &self.app.secret);
        Self::read(self.http.get(url).send().await.unwrap()).await
    }

    /// A signed POST of `body` to `/apps/{id}{path}`.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, body.to_string().as_bytes(), &self.app.secret).await
    }

    /// A POST signed with `secret` (use a wrong one to test refusals).
    pub async fn post_raw(&self, path: &str, body: &[u8], secret: &str) -> (u16, Value) {
        let path = format!("/apps/{}{path}", self.app.id);
        let url = self.url("POST", &path, &[], body, secret);
        let response =
            self.http.post(url).header("content-type", "application/json").body(body.to_vec()).send().await.unwrap();
        Self::read(response).await
    }

    /// Triggers `name` with string `data` on `channels`.
    pub async fn trigger(&self, channels: &[&str], name: &str, data: &str) -> (u16, Value) {
        self.post("/events", &json!({"name": name, "channels": channels, "data": data})).await
    }

    async fn read(response: reqwest::Response) -> (u16, Value) {
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }
}

/// The value of one series in a Prometheus exposition: `name` with every
/// label in `labels` (other labels, such as `node`, may be present).
pub fn metric_value(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    exposition.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let rest = series.strip_prefix(name)?;
        if !(rest.is_empty() || rest.starts_with('{')) {
            return None;
        }
        let all = labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        all.then(|| value.parse().ok()).flatten()
    })
}

/// One webhook request as a receiver saw it.
#[derive(Debug, Clone)]
pub struct Hook {
    pub key: String,
    pub signature: String,
    pub body: String,
}

impl Hook {
    /// The parsed body.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("webhook body is JSON")
    }

    /// Whether `X-Pusher-Signature` is the HMAC of the body with `secret`.
    pub fn signed_with(&self, secret: &str) -> bool {
        sign::verify(secret, &self.body, &self.signature)
    }
}

/// A real HTTP server that records webhook requests and answers `status`.
pub struct WebhookReceiver {
    pub url: String,
    requests: tokio::sync::mpsc::Receiver<Hook>,
    _server: tokio::task::JoinHandle<()>,
}

impl WebhookReceiver {
    pub async fn start(status: u16) -> Self {
        use warp::Filter;
        let (tx, rx) = tokio::sync::mpsc::channel(10_000);
        let route = warp::post()
            .and(warp::header::optional::<String>("x-pusher-key"))
            .and(warp::header::optional::<String>("x-pusher-signature"))
            .and(warp::body::bytes())
            .then(move |key: Option<String>, signature: Option<String>, body: bytes::Bytes| {
                let tx = tx.clone();
                async move {
                    let hook = Hook {
                        key: key.unwrap_or_default(),
                        signature: signature.unwrap_or_default(),
                        body: String::from_utf8_lossy(&body).into_owned(),
                    };
                    let _ = tx.send(hook).await;
                    warp::http::Response::builder().status(status).body(String::new()).unwrap()
                }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(warp::serve(route).incoming(listener).run());
        Self { url: format!("http://{addr}/hook"), requests: rx, _server: server }
    }

    /// The next request (panics after [`WAIT`]).
    pub async fn next(&mut self) -> Hook {
        tokio::time::timeout(WAIT, self.requests.recv()).await.expect("a webhook within the wait").unwrap()
    }

    /// The next request, waiting as long as it takes (wrap it in a timeout).
    pub async fn next_opt(&mut self) -> Option<Hook> {
        self.requests.recv().await
    }

    /// Collects events until `done` says enough; returns them in order.
    pub async fn events_until(&mut self, mut done: impl FnMut(&[Value]) -> bool) -> Vec<Value> {
        let mut events = Vec::new();
        while !done(&events) {
            let hook = self.next().await;
            events.extend(hook.json()["events"].as_array().cloned().unwrap_or_default());
        }
        events
    }

    /// Asserts no request arrives within `within`.
    pub async fn expect_none(&mut self, within: Duration) {
        if let Ok(Some(hook)) = tokio::time::timeout(within, self.requests.recv()).await {
            panic!("unexpected webhook {}", hook.body);
        }
    }
}

/// The real `herald` binary in a child process (for tests whose socket count
/// would exceed one process's descriptor limit if server and clients shared it).
pub struct HeraldProcess {
    child: std::process::Child,
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub app: AppConfig,
    /// Every line the process logged so far (JSON).
    pub logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl HeraldProcess {
    /// Starts `target/<profile>/herald` (building it if needed) on free
    /// loopback ports.
    pub fn start(extra_env: &[(&str, &str)]) -> Self {
        Self::start_on("127.0.0.1", extra_env)
    }

    /// Starts it listening on `host` (e.g. `0.0.0.0`); `addr` is still a
    /// loopback address to connect to.
    pub fn start_on(host: &str, extra_env: &[(&str, &str)]) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(herald_bin())
            .args(["--host", host, "--port", "0", "--metrics-port", "0", "--log-format", "json"])
            .env("HERALD_NODE_ID", "proc")
            .envs(extra_env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("herald starts");
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(stdout).lines();
        let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (addr, metrics_addr) = loop {
            let line = lines.next().expect("herald logs its address").unwrap();
            logs.lock().unwrap().push(line.clone());
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if let (Some(a), Some(m)) = (v["addr"].as_str(), v["metrics_addr"].as_str()) {
                    break (loopback(a.parse().unwrap()), loopback(m.parse().unwrap()));
                }
            }
        };
        // Keep draining its output so the child never blocks on a full pipe.
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Self { child, addr, metrics_addr, app: AppConfig::default(), logs }
    }

    /// Log lines containing `needle`.
    pub fn logged(&self, needle: &str) -> Vec<String> {
        self.logs.lock().unwrap().iter().filter(|l| l.contains(needle)).cloned().collect()
    }

    /// `kill -9`: the process dies without a word to anyone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM (a graceful drain) without waiting for the exit.
    pub fn terminate(&self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory, from /proc (bytes).
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    /// SIGSTOP: the process stands still (a long pause, a stalled host).
    pub fn pause(&self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGSTOP);
        }
        // kill(2) returns before the process has stopped: wait for the
        // kernel to report it stopped (`T` after the command in /proc/PID/stat).
        let stat = format!("/proc/{}/stat", self.child.id());
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while std::time::Instant::now() < deadline {
            let text = std::fs::read_to_string(&stat).unwrap_or_default();
            if text.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('T')) {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// SIGCONT after [`HeraldProcess::pause`].
    pub fn resume(&self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGCONT);
        }
    }

    /// Waits for the process to exit, up to `within`; returns whether it did.
    pub fn wait_exit(&mut self, within: Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Waits for the process to exit, up to `within`; returns its status.
    pub fn exit_status(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process has exited (without waiting).
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// The HTTP status of `GET path` on the public port (`None` when the
    /// connection is refused or fails).
    pub async fn get_status(&self, path: &str) -> Option<u16> {
        http_status(&format!("http://{}{path}", self.addr)).await
    }

    /// The HTTP status of `GET /metrics` on the metrics port.
    pub async fn metrics_status(&self) -> Option<u16> {
        http_status(&format!("http://{}/metrics", self.metrics_addr)).await
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/app/{}?protocol=7&client=test&version=1", self.addr, self.app.key)
    }

    /// Connects and reads `connection_established`.
    pub async fn connect(&self) -> Client {
        Client::connect(&self.ws_url(), &self.app).await
    }

    pub fn rest(&self) -> Rest {
        Rest::new(self.addr, &self.app)
    }

    pub async fn metrics(&self) -> String {
        scrape(self.metrics_addr).await
    }
}

/// `target/<profile>/herald`, brought up to date once per test process
/// (cargo builds no binary of another package for this one's tests, so a
/// stale one would test old code).
pub fn herald_bin() -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| built_bin("herald")).clone()
}

/// `target/<profile>/herald-loadgen`, built the same way as [`herald_bin`].
pub fn loadgen_bin() -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| built_bin("herald-loadgen")).clone()
}

fn built_bin(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir").to_path_buf();
    let mut build = std::process::Command::new(env!("CARGO"));
    // From the workspace root and without -p, exactly as scripts/test
    // builds it, so the features match and this is a no-op there.
    build.args(["build", "--bin", name]).current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    if dir.ends_with("release") {
        build.arg("--release");
    }
    let status = build.status().expect("cargo runs");
    assert!(status.success(), "cargo build --bin {name} failed");
    dir.join(name)
}

/// A listening address to connect to: the unspecified address becomes loopback.
fn loopback(addr: SocketAddr) -> SocketAddr {
    match addr.ip().is_unspecified() {
        true => SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port()),
        false => addr,
    }
}

impl Drop for HeraldProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status of `GET url`, or `None` when no answer came (refused, reset,
/// or nothing within [`WAIT`]).
pub async fn http_status(url: &str) -> Option<u16> {
    let request = reqwest::Client::new().get(url).timeout(WAIT).send();
    request.await.ok().map(|r| r.status().as_u16())
}

/// Raises this process's descriptor limit to its hard limit.
pub fn raise_fd_limit() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
}
