//! The operators' status page: admin-only, fed by its own EventSource whose figures move with
//! the traffic and which lists rejected packets; and cross-origin access for web apps.

mod common;

use common::sse::Sse;
use common::{TestApp, client, fixtures};
use serde_json::Value;

fn total(stats: &Value, field: &str) -> u64 {
    stats[field]
        .as_object()
        .map_or(0, |by_key| by_key.values().filter_map(Value::as_u64).sum())
}

async fn next_stats(stream: &mut Sse) -> Value {
    let event = stream.next_event().await.expect("status stream ended");
    assert_eq!(event.event, "stats", "{event:?}");
    serde_json::from_str(&event.data).expect("stats are JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_is_for_admins_only() {
    let app = TestApp::start().await;
    for path in ["/status", "/status/events"] {
        let anonymous = client().get(app.url(path)).send().await.unwrap();
        assert_eq!(anonymous.status(), 401, "{path}");
        let user = client()
            .get(app.url(path))
            .bearer_auth(app.token("alice"))
            .send()
            .await
            .unwrap();
        assert_eq!(user.status(), 403, "{path}");
        let body: Value = user.json().await.unwrap();
        assert_eq!(body["code"], "not_admin");
    }
    let page = client()
        .get(app.url(&format!("/status?access_token={}", app.admin_token("ops"))))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    assert!(page.headers().contains_key("content-security-policy"));
    let html = page.text().await.unwrap();
    assert!(html.contains("<title>mailpush status</title>"), "{html}");
    assert!(
        html.contains("/status/events"),
        "the page opens its own stream"
    );
    let metrics = app.metrics().await;
    assert_eq!(
        common::metric(
            &metrics,
            "mailpush_requests_refused_total{reason=\"not_admin\"}"
        ),
        2.0
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_stream_moves_with_traffic_and_lists_rejected_packets() {
    let app = TestApp::start().await;
    let mut status = Sse::connect(&app.url("/status/events"), &app.admin_token("ops"), None).await;
    let before = next_stats(&mut status).await;
    assert_eq!(before["connections"], 0);
    assert_eq!(total(&before, "events_in"), 0);

    let mut alice = app.sse("alice").await;
    let message_new = std::fs::read(fixtures().join("cyrus/008-MessageNew.bin")).unwrap();
    app.send_datagram(&message_new);
    app.send_datagram(b"not a cyrus packet\0\x01");
    alice.next_state().await;

    let stats = tokio::time::timeout(common::DEADLINE, async {
        loop {
            let stats = next_stats(&mut status).await;
            if total(&stats, "rejected") == 1 && total(&stats, "events_in") == 1 {
                return stats;
            }
        }
    })
    .await
    .expect("the figures move");
    assert_eq!(stats["events_in"]["cyrus"], 1);
    assert_eq!(stats["rejected"]["cyrus"], 1);
    assert_eq!(stats["connections"], 1, "alice's stream");
    assert_eq!(stats["state_updates"], 1);
    assert!(stats["frames_sent"].as_u64().unwrap() >= 1);
    assert!(stats["time_ms"].as_u64().unwrap() >= before["time_ms"].as_u64().unwrap());
    let rejection = &stats["recent_rejections"][0];
    assert_eq!(rejection["source"], "cyrus");
    assert_eq!(rejection["bytes"], 20);
    assert_eq!(rejection["excerpt"], "not a cyrus packet\\x00\\x01");
    let metrics = app.metrics().await;
    let reason = rejection["reason"].as_str().unwrap();
    assert_eq!(
        common::metric(
            &metrics,
            &format!("mailpush_packets_rejected_total{{source=\"cyrus\",reason=\"{reason}\"}}")
        ),
        1.0,
        "the page and /metrics agree"
    );
    assert!(!rejection["error"].as_str().unwrap().is_empty());

    drop(alice);
    tokio::time::timeout(common::DEADLINE, async {
        while next_stats(&mut status).await["connections"] != 0 {}
    })
    .await
    .expect("the status page sees alice leave");
    app.stop().await;
    status.expect_end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_origins_may_read_streams_and_register_devices() {
    let app = TestApp::builder()
        .env(
            "MAILPUSH_HTTP__CORS_ORIGINS",
            "[\"https://app.example.test\"]",
        )
        .start()
        .await;
    let token = app.token("alice");

    let stream = client()
        .get(app.url(&format!("/events?access_token={token}")))
        .header("origin", "https://app.example.test")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert_eq!(
        stream.headers()["access-control-allow-origin"],
        "https://app.example.test"
    );
    assert!(
        !stream
            .headers()
            .contains_key("access-control-allow-credentials")
    );
    drop(stream);

    let stranger = client()
        .get(app.url(&format!("/events?access_token={token}")))
        .header("origin", "https://evil.example.test")
        .send()
        .await
        .unwrap();
    assert!(
        !stranger
            .headers()
            .contains_key("access-control-allow-origin"),
        "an origin not listed gets no CORS headers"
    );
    drop(stranger);

    let preflight = client()
        .request(reqwest::Method::OPTIONS, app.url("/devices"))
        .header("origin", "https://app.example.test")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    let allowed_headers = preflight.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap();
    assert!(allowed_headers.contains("authorization") && allowed_headers.contains("content-type"));
    assert!(
        preflight.headers()["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );

    let denied_preflight = client()
        .request(reqwest::Method::OPTIONS, app.url("/devices"))
        .header("origin", "https://evil.example.test")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(
        !denied_preflight
            .headers()
            .contains_key("access-control-allow-origin")
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_ask_for_a_token() {
    const TOKEN: &str = "scrape-token-0123456789";
    let app = TestApp::builder()
        .env("MAILPUSH_HTTP__METRICS_TOKEN", TOKEN)
        .start()
        .await;
    let client = common::client();
    let refused = client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let wrong = client
        .get(app.url("/metrics"))
        .bearer_auth("scrape-token-wrong-000000")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let scraped = client
        .get(app.url("/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(scraped.status(), 200);
    let text = scraped.text().await.unwrap();
    assert!(
        text.contains("mailpush_requests_refused_total{reason=\"metrics_unauthorized\"} 2"),
        "{text}"
    );
}
