//! The real `herald` binary at start: what it refuses (exit code 2, the key
//! named), what it warns about, and what its logs look like on a pipe.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use herald_e2e::{herald_bin, HeraldProcess};
use serde_json::Value;

/// Generous: the binary may be starting on a loaded machine.
const START: Duration = Duration::from_secs(30);

/// The warnings (as JSON) that name the default secret.
fn secret_warnings(herald: &HeraldProcess) -> Vec<Value> {
    herald
        .logged("default secret")
        .iter()
        .map(|line| serde_json::from_str::<Value>(line).expect("JSON log line"))
        .filter(|v| v["level"] == "WARN")
        .collect()
}

async fn up(herald: &HeraldProcess) -> u16 {
    reqwest::get(format!("http://{}/up", herald.addr)).await.unwrap().status().as_u16()
}

#[tokio::test]
async fn default_secret_beyond_loopback_is_warned_about() {
    let herald = HeraldProcess::start_on("0.0.0.0", &[]);
    // Logged before "herald listening", which `start_on` has waited for.
    let warnings = secret_warnings(&herald);
    assert_eq!(warnings.len(), 1, "{:?}", herald.logs.lock().unwrap());
    let warning = &warnings[0];
    assert_eq!(warning["app_id"], "app-id");
    assert!(warning["setting"].as_str().unwrap().contains("HERALD_APP_SECRET"), "{warning}");
    assert!(warning["message"].as_str().unwrap().contains("HERALD_APP_SECRET"), "{warning}");
    assert_eq!(up(&herald).await, 200);
}

#[tokio::test]
async fn no_secret_warning_on_loopback_or_with_a_real_secret() {
    for herald in [
        HeraldProcess::start_on("127.0.0.1", &[]),
        HeraldProcess::start_on("0.0.0.0", &[("HERALD_APP_SECRET", "a-real-secret")]),
    ] {
        // The listening line came after where the warning would be.
        assert_eq!(herald.logged("herald listening").len(), 1);
        assert!(secret_warnings(&herald).is_empty(), "{:?}", herald.logs.lock().unwrap());
        assert_eq!(up(&herald).await, 200);
    }
}

#[test]
fn text_logs_on_a_pipe_have_no_colour_codes() {
    // 0.0.0.0 with the default secret also logs a WARN line (coloured levels and fields on a terminal).
    let mut child = Command::new(herald_bin())
        .args(["--host", "0.0.0.0", "--port", "0", "--metrics-port", "0", "--log-format", "text"])
        .env("HERALD_NODE_ID", "text")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("herald starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let deadline = std::time::Instant::now() + START;
    while !lines.iter().any(|l: &String| l.contains("herald listening")) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(e) => panic!("no listening line within {START:?} ({e}); got {lines:?}"),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(lines.iter().any(|l| l.contains("WARN") && l.contains("default secret")), "{lines:?}");
    for line in &lines {
        assert!(!line.contains("\x1b["), "ANSI escape in {line:?}");
    }
}

#[test]
fn huge_durations_exit_2_naming_the_key() {
    /// Flags, environment, the key the error must name.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (&["--activity-timeout", "18446744073709551615"], &[], "activity_timeout"),
        (&["--webhook-backoff-ms", "18446744073709551615"], &[], "webhook_backoff_ms"),
        (&[], &[("HERALD_NODE_TIMEOUT_MS", "18446744073709551615")], "node_timeout_ms"),
        (&[], &[("HERALD_CACHE_TTL", "31536001")], "cache_ttl"),
    ];
    for (args, vars, key) in cases {
        let out = Command::new(herald_bin())
            .args(["--host", "127.0.0.1", "--port", "0", "--metrics-port", "0"])
            .args(*args)
            .envs(vars.iter().copied())
            .output()
            .expect("herald runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{key}: {stderr}");
        assert!(stderr.contains(key) && stderr.contains("1 year"), "{key}: {stderr}");
    }
}
