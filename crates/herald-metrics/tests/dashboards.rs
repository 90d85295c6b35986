//! Keeps the Grafana dashboards and docs/metrics.md honest: every metric a
//! dashboard queries is one Herald exports, every query is valid PromQL
//! (checked by `promtool check rules`), and every exported metric is
//! documented.

use std::path::{Path, PathBuf};
use std::process::Command;

use herald_metrics::{Kind, DESCRIPTIONS};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn dashboards() -> Vec<(PathBuf, Value)> {
    let dir = repo().join("docs/grafana");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("docs/grafana exists") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).unwrap();
            out.push((path, serde_json::from_str(&text).expect("dashboard is valid JSON")));
        }
    }
    assert!(!out.is_empty(), "no dashboards found");
    out
}

fn exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

/// Every `herald_*` identifier in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("herald_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        names.push(expr[start..end].to_string());
        i = end;
    }
    names
}

fn exported(name: &str) -> bool {
    DESCRIPTIONS.iter().any(|(n, kind, ..)| {
        *n == name
            || (matches!(kind, Kind::Histogram)
                && ["_bucket", "_sum", "_count"].iter().any(|s| name.strip_suffix(s) == Some(*n)))
    })
}

#[test]
fn every_dashboard_metric_is_exported() {
    for (path, dashboard) in dashboards() {
        let mut all = Vec::new();
        exprs(&dashboard, &mut all);
        assert!(!all.is_empty(), "{} has no queries", path.display());
        for expr in &all {
            let names = metric_names(expr);
            assert!(!names.is_empty(), "query names no herald metric: {expr}");
            for name in names {
                assert!(exported(&name), "{}: {name} is not exported by Herald", path.display());
            }
        }
    }
}

#[test]
fn every_dashboard_query_is_valid_promql() {
    if Command::new("promtool").arg("--version").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "promtool is required in CI (Debian package prometheus)");
        eprintln!("promtool not installed: skipping the PromQL check (scripts/test installs it)");
        return;
    }
    let mut rules = String::from("groups:\n  - name: dashboards\n    rules:\n");
    for (i, (_, dashboard)) in dashboards().iter().enumerate() {
        let mut all = Vec::new();
        exprs(dashboard, &mut all);
        for (j, expr) in all.iter().enumerate() {
            let concrete = expr.replace("$__rate_interval", "1m").replace("$node", ".*").replace("$app", ".*");
            rules.push_str(&format!(
                "      - record: dashboard:q{i}_{j}\n        expr: '{}'\n",
                concrete.replace('\'', "''")
            ));
        }
    }
    let file = std::env::temp_dir().join(format!("herald-dashboard-rules-{}.yml", std::process::id()));
    std::fs::write(&file, rules).unwrap();
    let out = Command::new("promtool").arg("check").arg("rules").arg(&file).output().unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_metric_is_documented() {
    let doc = std::fs::read_to_string(repo().join("docs/metrics.md")).expect("docs/metrics.md exists");
    for (name, ..) in DESCRIPTIONS {
        assert!(doc.contains(&format!("`{name}`")), "docs/metrics.md does not document {name}");
    }
}
