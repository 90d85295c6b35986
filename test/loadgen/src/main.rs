//! `herald-loadgen`: a load generator for any Pusher-compatible server.
//!
//! It speaks only the public Pusher protocol (WebSocket + signed REST), so it
//! measures Herald and its peers alike. `run` connects clients (optionally in
//! several worker processes, since one process holds at most ~19,900
//! sockets here), subscribes them, triggers broadcast rounds through the REST
//! API and reports delivery latency, round completion, losses, and — given
//! the server's PID — CPU per delivery and memory per connection. `floor`
//! measures the kernel's own cost of writing a frame to a loopback socket.

mod coordinator;
mod floor;
mod hist;
mod lean;
mod probe;
mod procstat;
mod worker;

use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};

#[derive(Parser)]
#[command(name = "herald-loadgen", version, about = "Load generator for Pusher-compatible servers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Connect, subscribe and broadcast; report latency and costs.
    Run(Box<RunArgs>),
    /// Measure the kernel's CPU cost per small write to loopback sockets.
    Floor(FloorArgs),
    /// Internal: the reading process of `floor`.
    #[command(hide = true)]
    FloorReader {
        #[arg(long)]
        addr: std::net::SocketAddr,
        #[arg(long)]
        sockets: usize,
        #[arg(long)]
        expected: usize,
        #[arg(long)]
        cpu: Option<usize>,
    },
    /// Internal: one worker process of `run`.
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        spec: String,
        #[arg(long)]
        index: usize,
        #[arg(long)]
        count: usize,
    },
}

/// Everything a run needs; also sent to worker processes as JSON.
#[derive(Parser, Clone, Debug, Serialize, Deserialize)]
pub struct RunArgs {
    /// WebSocket base URL(s) of the server or cluster nodes; clients are spread over them.
    #[arg(long, env = "HERALD_URL", value_delimiter = ',', default_value = "ws://127.0.0.1:6001")]
    pub url: Vec<String>,
    /// REST base URL [default: the first --url over http].
    #[arg(long)]
    pub rest_url: Option<String>,
    #[arg(long, env = "APP_ID", default_value = "app-id")]
    pub app_id: String,
    #[arg(long, env = "APP_KEY", default_value = "app-key")]
    pub app_key: String,
    #[arg(long, env = "APP_SECRET", default_value = "app-secret")]
    pub app_secret: String,
    /// Client connections in all.
    #[arg(long, env = "NUM_CLIENTS", default_value_t = 1000)]
    pub clients: usize,
    /// Channels the clients are spread over (client i joins channel i % N).
    #[arg(long, env = "NUM_CHANNELS", default_value_t = 1)]
    pub channels: usize,
    #[arg(long, env = "CHANNEL_PREFIX", default_value = "loadgen-")]
    pub channel_prefix: String,
    /// Run broadcast rounds after connecting.
    #[arg(long, env = "BROADCAST_TEST", default_value_t = true, action = clap::ArgAction::Set)]
    pub broadcast: bool,
    /// Padding carried by every broadcast (its size sets the frame size).
    #[arg(
        long,
        env = "BROADCAST_MESSAGE",
        default_value = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
    )]
    pub message: String,
    /// Broadcast rounds.
    #[arg(long, default_value_t = 100)]
    pub rounds: usize,
    /// Broadcasts sent back-to-back in each round.
    #[arg(long, default_value_t = 1)]
    pub burst: usize,
    /// Pause between rounds, milliseconds.
    #[arg(long, default_value_t = 200)]
    pub interval_ms: u64,
    /// Worker processes the clients are divided over.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Loopback source addresses (127.0.0.1 ..) client sockets bind to.
    #[arg(long, default_value_t = 16)]
    pub source_addrs: u8,
    /// Connections opened at once per worker.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Milliseconds to wait for late deliveries after the last round.
    #[arg(long, default_value_t = 5000)]
    pub drain_ms: u64,
    /// Churn test: after connecting, every client leaves at once while this
    /// many newcomers connect; reports cleanup time and newcomer latency
    /// (against the same newcomers on the idle server before). Skips broadcasts.
    #[arg(long, default_value_t = 0)]
    pub churn: usize,
    /// Ping probe: while the broadcasts run, one extra idle connection sends
    /// `pusher:ping` every this many milliseconds and the report gives the
    /// pong round trip's percentiles (0: no probe).
    #[arg(long, default_value_t = 0)]
    pub ping_probe_ms: u64,
    /// PID of the server, to sample its CPU time and memory.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Parser)]
struct FloorArgs {
    /// Loopback sockets written to (the receiving ends are in a child
    /// process with live readers, so this can match the server's count).
    #[arg(long, default_value_t = 9000)]
    sockets: usize,
    /// Payload bytes per frame (match the server's frame size).
    #[arg(long, default_value_t = 180)]
    payload: usize,
    #[arg(long, default_value_t = 21)]
    rounds: usize,
    /// Read the receivers from a thread blocked in epoll while writing (as
    /// real clients are), instead of after each round.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    live_readers: bool,
    /// CPU to pin the writing thread to.
    #[arg(long)]
    writer_cpu: Option<usize>,
    /// CPU to pin the reading thread to.
    #[arg(long)]
    reader_cpu: Option<usize>,
    /// With live readers: write each round in this many groups of sockets
    /// (as broadcasts to that many channels), pausing between them.
    #[arg(long, default_value_t = 1)]
    groups: usize,
    /// The pause between groups, µs (not counted).
    #[arg(long, default_value_t = 300)]
    group_gap_us: u64,
    /// With live readers: reading processes sharing the sockets (as the
    /// load generator's `--workers`, which `test/bench.sh` sets to one per
    /// 9,500 clients).
    #[arg(long, default_value_t = 1)]
    reader_procs: usize,
    /// Write the sockets in a fixed random order, as a server's subscriber
    /// lists are, not in the order their kernel state was allocated.
    #[arg(long)]
    shuffle: bool,
    /// Pause between rounds, ms (not counted): as the run's
    /// `--interval-ms`, since a receiver idle for longer than TCP's
    /// retransmission timeout acknowledges the next frame at once, inside
    /// the writer's `send` on loopback.
    #[arg(long, default_value_t = 50)]
    round_gap_ms: u64,
    #[arg(long)]
    json: bool,
}

fn main() -> std::process::ExitCode {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let cli = Cli::parse();
    // Workers are pinned with the coordinator to the same cores: one thread
    // each avoids cross-thread wake-ups that only add cost there.
    let runtime = match cli.command {
        Command::Worker { .. } => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        _ => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
    }
    .expect("tokio runtime");
    let result = match cli.command {
        Command::Run(args) => runtime.block_on(coordinator::run(*args)),
        Command::Worker { spec, index, count } => match serde_json::from_str(&spec) {
            Ok(args) => runtime.block_on(worker::run(args, index, count)),
            Err(e) => Err(format!("bad worker spec: {e}")),
        },
        Command::FloorReader { addr, sockets, expected, cpu } => {
            floor::reader(addr, sockets, expected, cpu).map_err(|e| e.to_string())
        }
        Command::Floor(args) => {
            floor::run(
            args.sockets,
            args.payload,
            args.rounds,
            floor::Readers {
                    live: args.live_readers,
                    writer_cpu: args.writer_cpu,
                    reader_cpu: args.reader_cpu,
                    groups: args.groups,
                    group_gap: std::time::Duration::from_micros(if args.groups > 1 { args.group_gap_us } else { 0 }),
                    procs: args.reader_procs,
                    shuffle: args.shuffle,
                    round_gap: std::time::Duration::from_millis(args.round_gap_ms),
                },
        )
        .map_err(|e| e.to_string()).map(|report| {
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&report).expect("serializable"));
                } else {
                    println!(
                        "kernel floor: {:.2} µs CPU per {}-byte write to {} loopback sockets in {} group(s) (median of {} rounds, live readers: {})",
                        report.cpu_us_per_write, report.frame_bytes, report.sockets, args.groups, report.rounds, args.live_readers
                    );
                }
            })
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald-loadgen: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
