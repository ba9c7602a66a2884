//! The OpenAPI document (`GET /openapi.json`) against the running app and README: every
//! operation it lists is served with that method, none is served that it lacks, and README's
//! table of endpoints names the same ones. Schemathesis holds the answers to the schemas
//! (`tests/schemathesis.rs`).

mod common;

use std::collections::BTreeSet;

use common::TestApp;
use serde_json::Value;

async fn document(app: &TestApp) -> Value {
    let response = reqwest::get(app.url("/openapi.json")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    response.json().await.unwrap()
}

/// Every (method, path) the document lists.
fn operations(document: &Value) -> BTreeSet<(String, String)> {
    document["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(|method| (method.to_uppercase(), path.clone()))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_served_and_nothing_else() {
    // Web Push on, so that its key is served rather than a 404 that says it is off.
    let app = TestApp::builder()
        .env("MAILPUSH_PUSH__WEBPUSH__ENABLED", "true")
        .env("MAILPUSH_PUSH__WEBPUSH__SUBJECT", "mailto:ops@example.test")
        .start()
        .await;
    let document = document(&app).await;
    assert_eq!(document["openapi"], "3.1.0");
    assert_eq!(
        document,
        serde_json::to_value(mailpush::http::openapi::document()).unwrap(),
        "served as built"
    );
    let operations = operations(&document);
    assert_eq!(operations.len(), 15, "{operations:?}");
    let client = reqwest::Client::new();
    for (method, path) in &operations {
        let url = app.url(&path.replace("{id}", "1"));
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = client
            .request(method.clone(), &url)
            .timeout(common::DEADLINE)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        // Unauthenticated, so mostly 401: what matters is that a route answered.
        assert!(
            ![404, 405].contains(&status) || path.starts_with("/devices/"),
            "{method} {path}: {status}"
        );
        let documented: Vec<String> =
            document["paths"][path][method.as_str().to_lowercase()]["responses"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect();
        assert!(
            documented.contains(&status.to_string()),
            "{method} {path}: {status} is not among {documented:?}"
        );
        // Every operation says how it authenticates, and every scheme it names exists.
        for requirement in document["paths"][path][method.as_str().to_lowercase()]["security"]
            .as_array()
            .unwrap()
        {
            for scheme in requirement.as_object().unwrap().keys() {
                assert!(
                    document["components"]["securitySchemes"][scheme].is_object(),
                    "{method} {path}: unknown scheme {scheme}"
                );
            }
        }
    }
    // A method the document does not list for a path is refused.
    for (method, path) in [("PUT", "/devices"), ("POST", "/events"), ("GET", "/ingest")] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = client
            .request(method.clone(), app.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{method} {path}");
    }
    assert_eq!(reqwest::get(app.url("/nope")).await.unwrap().status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_lists_the_documented_operations() {
    let app = TestApp::start().await;
    let documented = operations(&document(&app).await);
    let readme =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .unwrap();
    let listed: BTreeSet<(String, String)> = readme
        .lines()
        .filter_map(|line| {
            let cell = line.strip_prefix("| `")?.split('`').next()?;
            let (method, target) = cell.split_once(' ')?;
            let path = target.split('?').next()?;
            ["GET", "POST", "PUT", "DELETE"]
                .contains(&method)
                .then(|| (method.to_owned(), path.to_owned()))
        })
        .collect();
    assert_eq!(
        listed, documented,
        "README's HTTP API table and /openapi.json"
    );
}
