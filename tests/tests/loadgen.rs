//! The load generator against a real Herald process: every figure in
//! docs/benchmarks.md comes from this tool, so its own client (a lean
//! WebSocket implementation, `test/loadgen/src/lean.rs`) must speak the
//! protocol correctly and count what really arrived.

use herald_e2e::{loadgen_bin, HeraldProcess};

#[test]
fn the_load_generator_connects_subscribes_and_counts_every_delivery() {
    let herald = HeraldProcess::start(&[]);
    let out = std::process::Command::new(loadgen_bin())
        .args(["run", "--url", &format!("ws://{}", herald.addr)])
        .args(["--app-id", &herald.app.id, "--app-key", &herald.app.key, "--app-secret", &herald.app.secret])
        .args(["--clients", "300", "--channels", "3", "--workers", "2", "--rounds", "4", "--burst", "2"])
        .args(["--interval-ms", "100", "--server-pid", &herald.pid().to_string(), "--json"])
        .output()
        .expect("herald-loadgen runs");
    assert!(out.status.success(), "loadgen failed: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    assert_eq!(report["connected"], 300, "{report}");
    assert_eq!(report["connect_failures"], 0, "{report}");
    // 300 clients, each on one of 3 channels; 4 rounds of 2 broadcasts to
    // every channel: every client gets 8.
    assert_eq!(report["expected_deliveries"], 2400, "{report}");
    assert_eq!(report["received"], 2400, "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["duplicated"], 0, "{report}");
    assert_eq!(report["out_of_order"], 0, "{report}");
    assert!(report["server"]["cpu_us_per_delivery"].as_f64().is_some_and(|us| us > 0.0), "{report}");
}
