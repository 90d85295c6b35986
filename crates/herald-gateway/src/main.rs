//! The `herald` binary: configuration from flags, env and file; run until
//! SIGTERM or Ctrl-C; then drain.

use clap::Parser;
use herald_gateway::{logging, Cli, Config, Server};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli, |key| std::env::var(key).ok()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("herald: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    logging::init(&config);
    for (app_id, setting) in config.default_secrets_exposed() {
        tracing::warn!(
            app_id,
            setting = %setting,
            host = %config.host,
            "INSECURE: app {app_id} uses the built-in default secret on a non-loopback address; anyone who reaches \
             this node can sign subscriptions and call the REST API. Set {setting} to a secret of your own \
             (see docs/configuration.md)"
        );
    }
    // Every connection is a file descriptor: take the whole hard limit.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "file descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the file descriptor limit"),
    }
    let server = match Server::start(config).await {
        Ok(server) => server,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return std::process::ExitCode::from(1);
        }
    };
    wait_for_signal().await;
    server.shutdown().await;
    std::process::ExitCode::SUCCESS
}

async fn wait_for_signal() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
