//! `examples/grafana/mailpush.json` is a dashboard Grafana imports, and every metric it queries
//! is one mailpush exports.
//!
//! The structure checked is what Grafana's dashboard model requires to import and lay out a
//! dashboard (schema version 39): a title and uid, a datasource variable that every panel and
//! query names, panels with unique ids, a known type and a grid position inside the 24-column
//! grid, and queries with unique `refId`s.

mod common;

use std::collections::HashSet;

use common::TestApp;
use common::mock::ApnsMock;
use serde_json::Value;

fn dashboard() -> Value {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/grafana/mailpush.json");
    let text = std::fs::read_to_string(&path).expect("the dashboard file");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every query expression of every panel.
fn exprs(dashboard: &Value) -> Vec<String> {
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().unwrap().iter())
        .map(|target| target["expr"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_dashboard_has_what_grafana_needs_to_import_it() {
    let dashboard = dashboard();
    assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));
    let uid = dashboard["uid"].as_str().unwrap();
    assert!(!uid.is_empty() && uid.len() <= 40, "uid {uid}");
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
    let variables: HashSet<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|variable| {
            assert!(variable["type"].is_string(), "{variable}");
            variable["name"].as_str().unwrap()
        })
        .collect();
    assert!(variables.contains("datasource") && variables.contains("job"));
    let mut ids = HashSet::new();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 8, "one panel per area of the issue");
    for panel in panels {
        let id = panel["id"].as_u64().unwrap();
        assert!(ids.insert(id), "panel id {id} twice");
        assert!(matches!(
            panel["type"].as_str(),
            Some("timeseries" | "stat" | "gauge" | "table")
        ));
        assert!(panel["title"].as_str().is_some_and(|t| !t.is_empty()));
        let grid = &panel["gridPos"];
        let (x, w, h) = (
            grid["x"].as_u64().unwrap(),
            grid["w"].as_u64().unwrap(),
            grid["h"].as_u64().unwrap(),
        );
        assert!(
            grid["y"].is_u64() && h > 0 && w > 0 && x + w <= 24,
            "{grid}"
        );
        assert_eq!(panel["datasource"]["uid"], "${datasource}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty());
        let mut refs = HashSet::new();
        for target in targets {
            assert!(refs.insert(target["refId"].as_str().unwrap()), "{panel}");
            assert!(target["expr"].as_str().unwrap().contains("mailpush_"));
            assert_eq!(target["datasource"]["uid"], "${datasource}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_exists() {
    // An app that has done one of each thing the dashboard shows: an event, a bad packet, a
    // push to a phone, a notification email.
    let dir = tempfile::tempdir().unwrap();
    let apns = ApnsMock::start(dir.path()).await;
    let app = TestApp::builder().envs(apns.env("MAIN")).start().await;
    let registered = app
        .request(reqwest::Method::POST, "/devices", "alice")
        .json(&serde_json::json!({"platform": "apns", "token": "ab".repeat(32), "app": common::mock::APNS_TOPIC, "environment": "sandbox"}))
        .send()
        .await
        .unwrap();
    assert!(registered.status().is_success());
    app.send_datagram(&std::fs::read(common::fixtures().join("cyrus/008-MessageNew.bin")).unwrap());
    app.send_datagram(b"not a packet");
    app.send_datagram(b"mailto\0SIEVE\0normal\0alice\0\x001\0bob@example.test\0Hi\0/stage/1\0");
    common::wait_until("a push and an email", || async {
        let metrics = app.metrics().await;
        metrics.contains("mailpush_pushes_total{provider=\"apns\"")
            && common::metric(&metrics, "mailpush_jobs_total{outcome=\"sent\"}") >= 1.0
    })
    .await;
    let metrics = app.metrics().await;
    let exported: HashSet<&str> = metrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split(' ').next())
        .collect();
    let mut queried = HashSet::new();
    for expr in exprs(&dashboard()) {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("mailpush_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            queried.insert(name);
        }
    }
    assert!(queried.len() >= 15, "{queried:?}");
    for name in &queried {
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        assert!(exported.contains(family), "{name} is not in /metrics");
    }
}
