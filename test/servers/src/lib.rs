//! Real `redis-server`, Redis Cluster and `nats-server` processes for tests.
//!
//! Herald's fabric transports are only worth something if they survive what
//! real servers do: refuse connections before they start, drop every
//! connection when they restart, stall when the machine is overloaded. Mocks
//! cannot show that, and no Docker engine runs on the build machines, so tests
//! spawn the server binaries themselves through this crate.
//!
//! Every server runs on 127.0.0.1 on a port picked here (never 6379 or 4222,
//! never a server that is already running), in its own temporary directory.
//! Each one is a guard: dropping it kills the process with SIGKILL, reaps it
//! and removes its directory, so a failing test leaves nothing behind.
//! `stop`/`restart` and `pause`/`resume` (SIGSTOP/SIGCONT) are there for fault
//! tests.
//!
//! Only `std` (and `libc` for signals) is used, so the tests of any crate can
//! use it, async or not. A missing binary is a panic naming the binary and the
//! Debian package that provides it: a test must fail, never pass quietly,
//! when its tools are missing.

use std::collections::hash_map::RandomState;
use std::fs::{self, File};
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};
use std::marker::PhantomData;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a server may take to answer after it was spawned.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Ports handed out by [`free_port`]: below the ephemeral range (32768+),
/// so an outgoing connection's source port never takes a port chosen here.
const PORT_RANGE: std::ops::Range<u16> = 20_000..30_000;
/// Ports that other services on a developer machine use: never chosen.
const RESERVED_PORTS: [u16; 2] = [6379, 4222];

// ---------------------------------------------------------------------------
// Ports, binaries, directories and processes
// ---------------------------------------------------------------------------

fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.finish()
}

fn bindable(port: u16) -> bool {
    !RESERVED_PORTS.contains(&port) && TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// A loopback port where nothing listens right now, chosen at random from
/// 20000..30000 (below the ephemeral range). Tests use it to point a client
/// at a server that does not exist yet, then start the server there with
/// `start_on`.
pub fn free_port() -> u16 {
    free_port_where(bindable)
}

fn free_port_where(ok: impl Fn(u16) -> bool) -> u16 {
    // Never hand the same port out twice in one process: tests running in
    // parallel may each hold a chosen port unbound for a while (a client
    // pointed at a server that starts later), and must not meet there.
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let span = u64::from(PORT_RANGE.end - PORT_RANGE.start);
    for _ in 0..1000 {
        let port = PORT_RANGE.start + (random_u64() % span) as u16;
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if !handed_out.contains(&port) && ok(port) {
            handed_out.push(port);
            return port;
        }
    }
    panic!("herald-test-servers: found no free loopback port in {PORT_RANGE:?}");
}

/// The path of `binary`, or a panic that names the Debian package to install.
fn find_binary(binary: &str, package: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    // Debian installs nats-server in /usr/sbin, which a non-root PATH may lack.
    dirs.extend(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(binary)).find(|p| p.is_file()).unwrap_or_else(|| {
        panic!(
            "herald-test-servers: `{binary}` is not installed (not on PATH nor in /usr/sbin); \
             install the Debian package `{package}` (apt-get install {package})"
        )
    })
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(kind: &str) -> TempDir {
        let path =
            std::env::temp_dir().join(format!("herald-test-{kind}-{}-{:016x}", std::process::id(), random_u64()));
        fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("herald-test-servers: cannot create {}: {e}", path.display()));
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// One server process, its output going to `log`. Killed and reaped on drop.
struct Proc {
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn spawn(binary: &Path, args: &[String], cwd: &Path, log: PathBuf) -> Proc {
        let out =
            File::create(&log).unwrap_or_else(|e| panic!("herald-test-servers: cannot create {}: {e}", log.display()));
        let err = out.try_clone().expect("clone log file handle");
        let child = Command::new(binary)
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("herald-test-servers: cannot run {}: {e}", binary.display()));
        Proc { child: Some(child), log }
    }

    fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// `None` while running, the exit status once it has exited.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(pid) = self.pid() {
            // SAFETY: plain kill(2) on our own child, which is not reaped yet
            // (we hold its `Child`), so the pid cannot have been reused.
            unsafe {
                libc::kill(pid, sig);
            }
            // kill(2) returns before the target has stopped: wait until the
            // kernel reports it stopped, so "paused" means paused.
            if sig == libc::SIGSTOP {
                let deadline = Instant::now() + Duration::from_secs(2);
                while Instant::now() < deadline && !stopped(pid) {
                    thread::sleep(Duration::from_millis(2));
                }
            }
        }
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGKILL (works on a stopped process too), then reap.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until `probe` succeeds against 127.0.0.1:`port`, or panics with the
/// server's log once the process exited or [`READY_TIMEOUT`] passed.
fn wait_ready(proc: &mut Proc, what: &str, port: u16, probe: fn(u16) -> bool) {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if probe(port) {
            return;
        }
        if let Some(status) = proc.exited() {
            panic!(
                "herald-test-servers: {what} on port {port} exited ({status}) before answering:\n{}",
                proc.log_tail()
            );
        }
        if Instant::now() > deadline {
            panic!(
                "herald-test-servers: {what} on port {port} did not answer within {READY_TIMEOUT:?}:\n{}",
                proc.log_tail()
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Spawns with `spawn(port)` on ports from `pick`, retrying on another port
/// when the process dies at once (another process took the port meanwhile).
fn start_on_some_port<T>(pick: impl Fn() -> u16, spawn: impl Fn(u16) -> Result<T, String>) -> T {
    let mut last = String::new();
    for _ in 0..5 {
        match spawn(pick()) {
            Ok(server) => return server,
            Err(e) => last = e,
        }
    }
    panic!("herald-test-servers: could not start a server on any of 5 ports; last error:\n{last}");
}

fn connect(port: u16) -> Option<TcpStream> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_millis(1000))).ok()?;
    stream.set_write_timeout(Some(Duration::from_millis(1000))).ok()?;
    Some(stream)
}

// ---------------------------------------------------------------------------
// A minimal RESP client, enough for PING and CLUSTER INFO
// ---------------------------------------------------------------------------

/// Sends one inline command and returns the reply's text (a simple string,
/// an error line or a bulk string), or `None` when there is no reply.
fn redis_command(port: u16, command: &str) -> Option<String> {
    let mut stream = connect(port)?;
    stream.write_all(format!("{command}\r\n").as_bytes()).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else { continue };
        let first = String::from_utf8_lossy(&buf[..eol]).into_owned();
        if let Some(len) = first.strip_prefix('$') {
            let len: usize = len.parse().ok()?;
            let start = eol + 2;
            if buf.len() >= start + len {
                return Some(String::from_utf8_lossy(&buf[start..start + len]).into_owned());
            }
            continue;
        }
        return Some(first);
    }
}

fn redis_pings(port: u16) -> bool {
    redis_command(port, "PING").as_deref() == Some("+PONG")
}

fn cluster_ok(port: u16) -> bool {
    redis_command(port, "CLUSTER INFO").is_some_and(|info| info.lines().any(|l| l.trim() == "cluster_state:ok"))
}

fn nats_greets(port: u16) -> bool {
    let Some(mut stream) = connect(port) else { return false };
    let mut buf = [0u8; 5];
    stream.read_exact(&mut buf).is_ok() && &buf == b"INFO "
}

// ---------------------------------------------------------------------------
// Single-process servers: Redis and NATS
// ---------------------------------------------------------------------------

fn redis_args(port: u16, dir: &Path, extra: &[String]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--bind".into(),
        "127.0.0.1".into(),
        "--port".into(),
        port.to_string(),
        "--save".into(),
        String::new(),
        "--appendonly".into(),
        "no".into(),
        "--daemonize".into(),
        "no".into(),
        "--dir".into(),
        dir.display().to_string(),
    ];
    args.extend_from_slice(extra);
    args
}

/// What differs between the single-process servers ([`RedisServer`],
/// [`NatsServer`]) run by [`Server`].
pub trait ServerKind: 'static {
    /// The binary, and the Debian package that provides it.
    const BINARY: &'static str;
    const PACKAGE: &'static str;
    /// The URL scheme clients use.
    const SCHEME: &'static str;
    /// Names the temporary directory and the log file (`{NAME}.log`).
    const NAME: &'static str;

    /// The command line of a server on `port` with its files in `dir`.
    fn args(port: u16, dir: &Path) -> Vec<String>;

    /// Whether the server on `port` answers (PING for Redis, the INFO
    /// greeting for NATS).
    fn answers(port: u16) -> bool;
}

/// `redis-server`: see [`RedisServer`].
pub struct Redis;

impl ServerKind for Redis {
    const BINARY: &'static str = "redis-server";
    const PACKAGE: &'static str = "redis-server";
    const SCHEME: &'static str = "redis";
    const NAME: &'static str = "redis";

    fn args(port: u16, dir: &Path) -> Vec<String> {
        redis_args(port, dir, &[])
    }

    fn answers(port: u16) -> bool {
        redis_pings(port)
    }
}

/// `nats-server`: see [`NatsServer`].
pub struct Nats;

impl ServerKind for Nats {
    const BINARY: &'static str = "nats-server";
    const PACKAGE: &'static str = "nats-server";
    const SCHEME: &'static str = "nats";
    const NAME: &'static str = "nats";

    fn args(port: u16, _dir: &Path) -> Vec<String> {
        vec!["-a".into(), "127.0.0.1".into(), "-p".into(), port.to_string()]
    }

    fn answers(port: u16) -> bool {
        nats_greets(port)
    }
}

/// A `redis-server` on 127.0.0.1, killed on drop.
pub type RedisServer = Server<Redis>;

/// A `nats-server` on 127.0.0.1, killed on drop.
pub type NatsServer = Server<Nats>;

/// A server process of kind `K` on 127.0.0.1, in its own temporary
/// directory, killed on drop.
pub struct Server<K: ServerKind> {
    proc: Proc,
    port: u16,
    binary: PathBuf,
    dir: TempDir,
    kind: PhantomData<fn() -> K>,
}

impl<K: ServerKind> Server<K> {
    /// Starts the server on a free port and waits until it answers (PING
    /// for Redis, the INFO greeting for NATS).
    pub fn start() -> Self {
        start_on_some_port(free_port, Self::try_start_on)
    }

    /// Starts the server on `port` (e.g. one from [`free_port`] a client
    /// already points at) and waits until it answers.
    pub fn start_on(port: u16) -> Self {
        Self::try_start_on(port).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_start_on(port: u16) -> Result<Self, String> {
        let binary = find_binary(K::BINARY, K::PACKAGE);
        let dir = TempDir::new(K::NAME);
        let proc = Proc { child: None, log: PathBuf::new() };
        let mut server = Server { proc, port, binary, dir, kind: PhantomData };
        server.spawn_and_wait()?;
        Ok(server)
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let (dir, port) = (self.dir.path(), self.port);
        let log = dir.join(format!("{}.log", K::NAME));
        self.proc = Proc::spawn(&self.binary, &K::args(port, dir), dir, log);
        let proc = &mut self.proc;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| wait_ready(proc, K::BINARY, port, K::answers)))
            .map_err(panic_text)
    }

    /// `redis://127.0.0.1:PORT` or `nats://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", K::SCHEME, self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid().map(|p| p as u32)
    }

    /// Kills the server (SIGKILL): every connection drops at once.
    pub fn stop(&mut self) {
        self.proc.kill();
    }

    /// Kills the server if it runs, starts it again on the same port and
    /// waits until it answers. Its data is gone (nothing is saved).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn_and_wait().unwrap_or_else(|e| panic!("{e}"));
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&mut self) {
        self.proc.signal(libc::SIGSTOP);
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&mut self) {
        self.proc.signal(libc::SIGCONT);
    }
}

/// Whether `pid` is in the stopped state (`T` in /proc/PID/stat).
fn stopped(pid: libc::pid_t) -> bool {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the parenthesised command name.
    stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('T'))
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "server failed to start".into())
}

// ---------------------------------------------------------------------------
// Redis Cluster
// ---------------------------------------------------------------------------

struct ClusterNode {
    proc: Proc,
    port: u16,
    dir: TempDir,
}

/// A Redis Cluster of `masters` masters (no replicas) on 127.0.0.1, every
/// node killed on drop.
pub struct RedisCluster {
    nodes: Vec<ClusterNode>,
    binary: PathBuf,
}

impl RedisCluster {
    /// Starts `masters` (≥ 3) cluster-enabled `redis-server`s, joins them
    /// with `redis-cli --cluster create` (slots split evenly, in order) and
    /// waits until every node reports `cluster_state:ok`.
    ///
    /// A node also listens on its port + 10000 (the cluster bus), so ports
    /// come from 20000..30000 with both ports free (never port 0: the bus
    /// port of an ephemeral port would not exist).
    pub fn start(masters: usize) -> RedisCluster {
        assert!(masters >= 3, "herald-test-servers: a Redis Cluster needs at least 3 masters, got {masters}");
        let mut cluster =
            RedisCluster { nodes: Vec::with_capacity(masters), binary: find_binary("redis-server", "redis-server") };
        for _ in 0..masters {
            let node = start_on_some_port(
                || free_port_where(|p| cluster_port_free(p) && !cluster.nodes.iter().any(|n| n.port == p)),
                |port| start_cluster_node(&cluster.binary, port),
            );
            cluster.nodes.push(node);
        }
        cluster.create();
        cluster
    }

    /// Like [`RedisCluster::start`], on the given ports (e.g. from
    /// [`free_cluster_ports`], which a client already points at).
    pub fn start_on(ports: &[u16]) -> RedisCluster {
        assert!(ports.len() >= 3, "herald-test-servers: a Redis Cluster needs at least 3 masters, got {}", ports.len());
        let mut cluster = RedisCluster {
            nodes: Vec::with_capacity(ports.len()),
            binary: find_binary("redis-server", "redis-server"),
        };
        for &port in ports {
            let node = start_cluster_node(&cluster.binary, port).unwrap_or_else(|e| panic!("{e}"));
            cluster.nodes.push(node);
        }
        cluster.create();
        cluster
    }

    /// `redis-cli --cluster create` over every node, then waits for `cluster_state:ok`.
    fn create(&self) {
        let cli = find_binary("redis-cli", "redis-tools");
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"].map(String::from));
        let out = Command::new(&cli)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("herald-test-servers: cannot run {}: {e}", cli.display()));
        if !out.status.success() {
            panic!(
                "herald-test-servers: redis-cli --cluster create failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.wait_cluster_ok();
    }

    fn wait_cluster_ok(&self) {
        let deadline = Instant::now() + READY_TIMEOUT * 3;
        while !self.nodes.iter().all(|n| cluster_ok(n.port)) {
            if Instant::now() > deadline {
                let states: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| {
                        format!(
                            "{}: {:?}",
                            n.port,
                            redis_command(n.port, "CLUSTER INFO").and_then(|i| i.lines().next().map(String::from))
                        )
                    })
                    .collect();
                panic!("herald-test-servers: Redis Cluster never reached cluster_state:ok: {states:?}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `redis://127.0.0.1:PORT` of every node, in order.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("redis://127.0.0.1:{}", n.port)).collect()
    }

    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// Kills node `i` (SIGKILL). Its slots are unserved until it restarts.
    pub fn kill_node(&mut self, i: usize) {
        self.nodes[i].proc.kill();
    }

    /// Starts node `i` again on its port with its cluster config (same node
    /// id, same slots) and waits until every node reports `cluster_state:ok`.
    pub fn restart_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.proc.kill();
        spawn_cluster_node(&self.binary, node).unwrap_or_else(|e| panic!("{e}"));
        self.wait_cluster_ok();
    }

    /// Freezes node `i` (SIGSTOP).
    pub fn pause_node(&mut self, i: usize) {
        self.nodes[i].proc.signal(libc::SIGSTOP);
    }

    /// Thaws node `i` (SIGCONT).
    pub fn resume_node(&mut self, i: usize) {
        self.nodes[i].proc.signal(libc::SIGCONT);
    }
}

fn cluster_port_free(port: u16) -> bool {
    // The cluster bus (port + 10000) must stay below the ephemeral range
    // (32768+), or an outgoing connection may take it before the node binds.
    port + 10_000 < 32_768 && bindable(port) && bindable(port + 10_000)
}

/// `n` distinct free ports for Redis Cluster nodes: each free, and free + 10000
/// (the cluster bus) too.
pub fn free_cluster_ports(n: usize) -> Vec<u16> {
    let mut ports: Vec<u16> = Vec::with_capacity(n);
    while ports.len() < n {
        let port = free_port_where(cluster_port_free);
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    ports
}

fn start_cluster_node(binary: &Path, port: u16) -> Result<ClusterNode, String> {
    let mut node =
        ClusterNode { proc: Proc { child: None, log: PathBuf::new() }, port, dir: TempDir::new("redis-cluster") };
    spawn_cluster_node(binary, &mut node)?;
    Ok(node)
}

fn spawn_cluster_node(binary: &Path, node: &mut ClusterNode) -> Result<(), String> {
    let dir = node.dir.path();
    let extra: Vec<String> = vec![
        "--cluster-enabled".into(),
        "yes".into(),
        "--cluster-config-file".into(),
        dir.join("nodes.conf").display().to_string(),
        "--cluster-node-timeout".into(),
        "5000".into(),
    ];
    let args = redis_args(node.port, dir, &extra);
    node.proc = Proc::spawn(binary, &args, dir, dir.join("redis.log"));
    let (proc, port) = (&mut node.proc, node.port);
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_ready(proc, "redis-server (cluster node)", port, redis_pings)
    }))
    .map_err(panic_text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// True while a process with this pid exists (zombies included, but our
    /// guards reap, so a killed server does not linger as one).
    fn alive(pid: u32) -> bool {
        // SAFETY: signal 0 only checks for existence.
        unsafe { libc::kill(pid as i32, 0) == 0 }
    }

    #[test]
    fn free_ports_avoid_reserved_and_ephemeral_ranges() {
        for _ in 0..50 {
            let p = free_port();
            assert!(PORT_RANGE.contains(&p) && !RESERVED_PORTS.contains(&p));
        }
    }

    #[test]
    fn redis_answers_restarts_and_dies_on_drop() {
        let mut server = RedisServer::start();
        assert!(redis_pings(server.port()));
        assert_eq!(server.url(), format!("redis://127.0.0.1:{}", server.port()));
        let dir = server.dir.path().to_path_buf();
        server.stop();
        assert!(!redis_pings(server.port()));
        server.restart();
        assert!(redis_pings(server.port()));
        let pid = server.pid().unwrap();
        drop(server);
        assert!(!alive(pid), "redis-server {pid} survived its guard");
        assert!(!dir.exists(), "temp dir {} survived its guard", dir.display());
    }

    #[test]
    fn redis_pause_stops_answers_until_resume() {
        let mut server = RedisServer::start();
        server.pause();
        assert!(!redis_pings(server.port()));
        server.resume();
        assert!(redis_pings(server.port()));
        // Dropping a paused server must not hang either.
        server.pause();
        let pid = server.pid().unwrap();
        drop(server);
        assert!(!alive(pid));
    }

    #[test]
    fn redis_starts_on_a_given_port() {
        let port = free_port();
        let server = RedisServer::start_on(port);
        assert_eq!(server.port(), port);
        assert!(redis_pings(port));
    }

    #[test]
    fn cluster_forms_survives_a_node_restart_and_dies_on_drop() {
        let mut cluster = RedisCluster::start(3);
        let ports = cluster.ports();
        assert_eq!(cluster.urls().len(), 3);
        for &p in &ports {
            assert!(p <= 55_535 && cluster_ok(p));
        }
        cluster.kill_node(1);
        assert!(!redis_pings(ports[1]));
        cluster.restart_node(1);
        assert!(ports.iter().all(|&p| cluster_ok(p)));
        let pids: Vec<u32> = cluster.nodes.iter().map(|n| n.proc.pid().unwrap() as u32).collect();
        drop(cluster);
        for pid in pids {
            assert!(!alive(pid), "cluster node {pid} survived its guard");
        }
    }

    #[test]
    fn nats_greets_restarts_and_dies_on_drop() {
        let mut server = NatsServer::start();
        assert!(nats_greets(server.port()));
        assert_eq!(server.url(), format!("nats://127.0.0.1:{}", server.port()));
        server.restart();
        assert!(nats_greets(server.port()));
        server.pause();
        assert!(!nats_greets(server.port()));
        server.resume();
        assert!(nats_greets(server.port()));
        let pid = server.pid().unwrap();
        let dir = server.dir.path().to_path_buf();
        drop(server);
        assert!(!alive(pid));
        assert!(!dir.exists());
    }

    #[test]
    #[should_panic(expected = "install the Debian package `no-such-package`")]
    fn a_missing_binary_panics_naming_the_package() {
        find_binary("herald-no-such-binary", "no-such-package");
    }
}
