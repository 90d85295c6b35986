//! Keeps the Grafana dashboards, the Prometheus alert rules and the docs
//! honest: every metric a dashboard or an alert queries is one Herald exports,
//! every query is valid PromQL (checked by `promtool check rules`), the
//! dashboards are loadable by Grafana's file provisioning, every alert has its
//! annotations, a promtool unit test and a row in docs/operations.md#alerts,
//! and every exported metric is documented.

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
    require_promtool();
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

const ALERT_RULES: &str = "deploy/prometheus/rules/herald.yml";
const ALERT_TESTS: &str = "deploy/prometheus/rules/herald.test.yml";
const RUNBOOK: &str = "docs/operations.md#alerts";

/// Fails the test when promtool is missing: a check that cannot run must not pass.
fn require_promtool() {
    assert!(
        Command::new("promtool").arg("--version").output().is_ok(),
        "promtool is not installed: install the Debian package prometheus (scripts/test does)"
    );
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The value of a `key:` line, unquoted, if `line` is one.
fn value_of<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = line.trim_start().strip_prefix("- ").unwrap_or(line.trim_start());
    let value = rest.strip_prefix(key)?.strip_prefix(':')?.trim();
    Some(value.trim_matches(|c| c == '\'' || c == '"'))
}

/// Every `expr:` of a rules file, read line by line (no YAML parser): a plain
/// or quoted one-line value, or a `|` / `>` block scalar (the lines indented
/// deeper than the key).
fn rule_exprs(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        let Some(value) = value_of(line, "expr") else { continue };
        if value.starts_with('|') || value.starts_with('>') {
            let mut block = Vec::new();
            while i < lines.len() && (lines[i].trim().is_empty() || indent(lines[i]) > indent(line)) {
                block.push(lines[i].trim());
                i += 1;
            }
            out.push(block.join(" ").trim().to_string());
        } else {
            out.push(value.to_string());
        }
    }
    out
}

/// The alerts of a rules file as (name, lines of its rule).
fn alerts(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let mut depth = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if let Some(name) = value_of(line, "alert").filter(|_| trimmed.starts_with("- ")) {
            out.push((name.to_string(), Vec::new()));
            depth = Some(indent(line));
        } else if trimmed.starts_with("- ") && Some(indent(line)) == depth {
            depth = None; // a recording rule or another list item at the same level
        } else if let (Some(_), Some((_, body))) = (depth, out.last_mut()) {
            body.push(line.to_string());
        }
    }
    out
}

#[test]
fn rule_extraction_reads_plain_quoted_and_block_exprs() {
    let text = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: herald_fabric_up == 0\n        for: 30s\n      - alert: B\n        expr: |\n          sum(herald_connections)\n            > 1\n        labels:\n          severity: warning\n      - record: r\n        expr: 'rate(herald_cleanup_processed_total[1m])'\n";
    assert_eq!(
        rule_exprs(text),
        ["herald_fabric_up == 0", "sum(herald_connections) > 1", "rate(herald_cleanup_processed_total[1m])"]
    );
    let names: Vec<String> = alerts(text).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["A", "B"]);
}

#[test]
fn every_alert_metric_is_exported() {
    let text = std::fs::read_to_string(repo().join(ALERT_RULES)).expect("alert rules exist");
    let all = rule_exprs(&text);
    assert!(!all.is_empty(), "{ALERT_RULES} has no expressions");
    let mut seen = 0;
    for expr in &all {
        for name in metric_names(expr) {
            assert!(exported(&name), "{ALERT_RULES}: {name} is not exported by Herald (in `{expr}`)");
            seen += 1;
        }
    }
    assert!(seen > 0, "no alert queries a herald metric");
}

#[test]
fn every_alert_is_annotated_tested_and_documented() {
    let text = std::fs::read_to_string(repo().join(ALERT_RULES)).expect("alert rules exist");
    let tests = std::fs::read_to_string(repo().join(ALERT_TESTS)).expect("alert rule tests exist");
    let ops = std::fs::read_to_string(repo().join("docs/operations.md")).expect("docs/operations.md exists");
    let section = ops.split("\n## Alerts\n").nth(1).expect("docs/operations.md has an `## Alerts` section");
    let section = section.split("\n## ").next().unwrap();
    let all = alerts(&text);
    assert!(!all.is_empty(), "{ALERT_RULES} has no alerts");
    for (name, body) in &all {
        let field = |key: &str| body.iter().find_map(|l| value_of(l, key).map(str::to_string));
        assert!(field("expr").is_some(), "alert {name} has no expr");
        for key in ["summary", "description"] {
            assert!(field(key).is_some_and(|v| !v.is_empty()), "alert {name} has no {key} annotation");
        }
        assert_eq!(field("runbook").as_deref(), Some(RUNBOOK), "alert {name}: runbook annotation");
        assert!(field("severity").is_some(), "alert {name} has no severity label");
        let tested = tests.lines().filter(|l| value_of(l, "alertname") == Some(name.as_str())).count();
        assert!(tested > 0, "alert {name} has no test in {ALERT_TESTS}");
        assert!(section.contains(&format!("`{name}`")), "docs/operations.md#alerts has no row for {name}");
    }
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    require_promtool();
    for args in [["check", "rules", ALERT_RULES], ["test", "rules", ALERT_TESTS]] {
        let out = Command::new("promtool").args(args).current_dir(repo()).output().unwrap();
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// What Grafana's file provisioning needs of a dashboard, and what the
/// provisioned data source (uid `prometheus`) needs of its queries.
#[test]
fn every_dashboard_is_provisionable() {
    let mut uids = Vec::new();
    for (path, d) in dashboards() {
        let at = path.display();
        let uid = d["uid"].as_str().unwrap_or_else(|| panic!("{at}: no uid"));
        assert!(!uid.is_empty() && uid.len() <= 40, "{at}: uid must be 1 to 40 characters");
        assert!(!uids.contains(&uid.to_string()), "{at}: uid {uid} used twice");
        uids.push(uid.to_string());
        assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()), "{at}: no title");
        assert!(d["schemaVersion"].as_u64().is_some(), "{at}: no schemaVersion");
        assert!(d.get("id").is_none_or(Value::is_null), "{at}: a provisioned dashboard must not carry an id");

        let vars = d["templating"]["list"].as_array().cloned().unwrap_or_default();
        let ds_var = vars.iter().find(|v| v["type"] == "datasource");
        if let Some(v) = ds_var {
            assert_eq!(v["query"], "prometheus", "{at}: the datasource variable lists Prometheus sources");
            assert_eq!(v["current"]["value"], "prometheus", "{at}: the datasource variable defaults to uid prometheus");
        }
        let ds_ok = |ds: &Value| {
            ds["type"] == "prometheus"
                && (ds["uid"] == "prometheus"
                    || ds_var
                        .is_some_and(|v| ds["uid"].as_str() == Some(&format!("${{{}}}", v["name"].as_str().unwrap()))))
        };

        let panels = d["panels"].as_array().unwrap_or_else(|| panic!("{at}: no panels"));
        assert!(!panels.is_empty(), "{at}: no panels");
        let mut ids = Vec::new();
        for p in panels.iter().chain(panels.iter().flat_map(|p| p["panels"].as_array().into_iter().flatten())) {
            let title = p["title"].as_str().unwrap_or("?");
            let id = p["id"].as_u64().unwrap_or_else(|| panic!("{at}: panel {title} has no id"));
            assert!(!ids.contains(&id), "{at}: panel id {id} used twice");
            ids.push(id);
            assert!(p["type"].as_str().is_some(), "{at}: panel {title} has no type");
            let g = &p["gridPos"];
            let [h, w, x, y] = ["h", "w", "x", "y"]
                .map(|k| g[k].as_u64().unwrap_or_else(|| panic!("{at}: panel {title} gridPos.{k} missing")));
            assert!(
                h > 0 && w > 0 && x + w <= 24,
                "{at}: panel {title} gridPos {h}x{w} at {x},{y} out of the 24-column grid"
            );
            if p["type"] == "row" {
                continue;
            }
            assert!(ds_ok(&p["datasource"]), "{at}: panel {title} datasource {}", p["datasource"]);
            let targets = p["targets"].as_array().unwrap_or_else(|| panic!("{at}: panel {title} has no targets"));
            assert!(!targets.is_empty(), "{at}: panel {title} has no targets");
            let mut refs = Vec::new();
            for t in targets {
                assert!(t["expr"].as_str().is_some(), "{at}: panel {title}: a target without expr");
                let r = t["refId"].as_str().unwrap_or_else(|| panic!("{at}: panel {title}: a target without refId"));
                assert!(!refs.contains(&r), "{at}: panel {title}: refId {r} twice");
                refs.push(r);
                assert!(
                    t.get("datasource").is_none_or(ds_ok),
                    "{at}: panel {title}: target datasource {}",
                    t["datasource"]
                );
            }
        }
    }
}
