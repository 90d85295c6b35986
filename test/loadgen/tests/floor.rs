//! The kernel floor with live readers runs its receiving ends in a child
//! process of the binary: run it for real, small, and check its report.

use std::process::Command;

#[test]
fn the_floor_writes_every_round_to_every_socket_read_by_a_child_process() {
    check(&[]);
}

#[test]
fn a_grouped_floor_still_writes_every_socket_every_round() {
    // The child reader exits successfully only once every byte of every
    // round arrived, so a group left out fails the run.
    check(&["--groups", "7", "--group-gap-us", "100"]);
}

fn check(extra: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_herald-loadgen"))
        .args(["floor", "--sockets", "40", "--payload", "185", "--rounds", "3", "--json"])
        .args(extra)
        .output()
        .expect("herald-loadgen runs");
    assert!(out.status.success(), "floor failed: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    assert_eq!(report["sockets"], 40);
    // 185 bytes of payload behind a 4-byte header (126 + 16-bit length).
    assert_eq!(report["frame_bytes"], 189);
    assert_eq!(report["cpu_us_per_write_rounds"].as_array().map(Vec::len), Some(3));
    assert!(report["cpu_us_per_write"].as_f64().is_some_and(|us| us > 0.0));
}
