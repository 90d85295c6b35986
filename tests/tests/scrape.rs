//! Every metric that a shipped dashboard or alert rule queries must be in a
//! real scrape of a running node: a renamed or dropped metric breaks this
//! test, not a graph in production. The node runs on a Redis fabric (so the
//! fabric and cluster series exist) and the files are read as text, so a
//! query in any panel, template variable or rule counts.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use herald_e2e::cluster::{Cluster, Kind};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The files operators load: Grafana dashboards and Prometheus rule files
/// (the Helm chart's copies are symlinks to these).
fn shipped_queries() -> Vec<(PathBuf, String)> {
    let root = repo_root();
    let mut files = Vec::new();
    for (dir, ext) in [("docs/grafana", "json"), ("deploy/prometheus/rules", "yml")] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap_or_else(|e| panic!("{dir}: {e}")) {
            let path = entry.unwrap().path();
            let is_test = path.file_name().is_some_and(|n| n.to_string_lossy().ends_with(".test.yml"));
            if path.extension().is_some_and(|e| e == ext) && !is_test {
                let text = std::fs::read_to_string(&path).unwrap();
                files.push((path, text));
            }
        }
    }
    assert!(files.len() >= 2, "expected at least one dashboard and one rule file, found {files:?}");
    files
}

/// `herald_…` identifiers in `text` (metric names; Herald's labels carry no prefix).
fn herald_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("herald_") {
        let start = i + at;
        let boundary = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start + "herald_".len();
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            names.insert(text[start..end].to_string());
        }
        i = end;
    }
    names
}

/// Series names in a Prometheus text exposition.
fn scraped_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

#[test]
fn name_scanner_finds_names_in_queries() {
    let names = herald_names(r#"sum(rate(herald_ws_messages_sent_total{app="x"}[5m])) / my_herald_x + herald_up"#);
    assert_eq!(names, BTreeSet::from(["herald_ws_messages_sent_total".to_string(), "herald_up".to_string()]));
}

#[tokio::test]
async fn every_queried_metric_is_in_a_real_scrape() {
    let cluster = Cluster::start(Kind::Redis, 1, &[]).await;
    let scraped = scraped_names(&cluster.node(0).metrics().await);
    assert!(scraped.contains("herald_connections"), "scrape looks wrong: {scraped:?}");
    let mut missing = Vec::new();
    for (path, text) in shipped_queries() {
        let names = herald_names(&text);
        assert!(!names.is_empty(), "{} queries no herald metric", path.display());
        for name in names {
            if !scraped.contains(&name) {
                missing.push(format!("{}: {name}", path.strip_prefix(repo_root()).unwrap().display()));
            }
        }
    }
    assert!(missing.is_empty(), "queried but not in a scrape of a running node:\n  {}", missing.join("\n  "));
}
