//! A real browser: Debian's headless Chromium, driven over WebDriver (chromedriver), opens the
//! demo web client and the status page, and its own EventSource receives what mailpush pushes.
//!
//! Needs `chromedriver` (and Chromium); `.ci/run` installs both and sets
//! `MAILPUSH_TEST_CHROMEDRIVER`, so a bare `cargo test` skips these.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::peer::{Peer, free_port};
use common::sse::Sse;
use common::{TestApp, client, fixtures};
use serde_json::{Value, json};

/// chromedriver on an ephemeral port, with one headless Chromium session.
struct Browser {
    _driver: Peer,
    base: String,
    session: String,
}

impl Browser {
    async fn start() -> Browser {
        let chromedriver =
            std::env::var("MAILPUSH_TEST_CHROMEDRIVER").expect("MAILPUSH_TEST_CHROMEDRIVER");
        let port = free_port();
        let driver = Peer::spawn(
            "chromedriver",
            Command::new(chromedriver)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let base = format!("http://127.0.0.1:{port}");
        common::wait_until("chromedriver answers", || async {
            client()
                .get(format!("{base}/status"))
                .send()
                .await
                .is_ok_and(|response| response.status().is_success())
        })
        .await;
        let mut options = json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        });
        if let Ok(binary) = std::env::var("MAILPUSH_TEST_CHROMIUM") {
            options["binary"] = json!(binary);
        }
        let created: Value = client()
            .post(format!("{base}/session"))
            .json(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": options,
            }}}))
            .send()
            .await
            .expect("create a session")
            .json()
            .await
            .expect("session JSON");
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_owned();
        Browser {
            _driver: driver,
            base,
            session,
        }
    }

    async fn open(&self, url: &str) {
        let answer: Value = client()
            .post(format!("{}/session/{}/url", self.base, self.session))
            .json(&json!({ "url": url }))
            .send()
            .await
            .expect("navigate")
            .json()
            .await
            .expect("navigate JSON");
        assert!(answer["value"].is_null(), "navigating to {url}: {answer}");
    }

    /// Runs `script` in the page and returns its value.
    async fn eval(&self, script: &str) -> Value {
        let answer: Value = client()
            .post(format!(
                "{}/session/{}/execute/sync",
                self.base, self.session
            ))
            .json(&json!({ "script": script, "args": [] }))
            .send()
            .await
            .expect("execute")
            .json()
            .await
            .expect("execute JSON");
        answer["value"].clone()
    }

    /// Waits until `script` returns something other than null, false or "".
    async fn wait_for(&self, what: &str, script: &str) -> Value {
        let deadline = tokio::time::Instant::now() + common::DEADLINE;
        loop {
            let value = self.eval(script).await;
            if !(value.is_null() || value == json!(false) || value == json!("")) {
                return value;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Browser {
    /// Ends the session, which closes Chromium.
    async fn quit(self) {
        let _ = client()
            .delete(format!("{}/session/{}", self.base, self.session))
            .send()
            .await;
    }
}

/// Serves `examples/web/` from its own origin, as a web app's host would.
async fn serve_demo(listener: tokio::net::TcpListener) {
    let page = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/web/index.html"),
    )
    .expect("examples/web/index.html");
    let router = axum::Router::new().route(
        "/",
        axum::routing::get(move || async move { axum::response::Html(page) }),
    );
    axum::serve(listener, router).await.expect("demo server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium and chromedriver: set MAILPUSH_TEST_CHROMEDRIVER"]
async fn demo_page_and_status_page_receive_pushes_in_chromium() {
    let demo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let demo_origin = format!("http://{}", demo.local_addr().unwrap());
    tokio::spawn(serve_demo(demo));
    let app = TestApp::builder()
        .env(
            "MAILPUSH_HTTP__CORS_ORIGINS",
            &format!("[\"{demo_origin}\"]"),
        )
        .start()
        .await;
    let browser = Browser::start().await;

    // The demo client on its own origin, through the browser's EventSource (CORS).
    let server = app.url("");
    browser
        .open(&format!(
            "{demo_origin}/?server={server}&token={}&format=jmap",
            app.token("alice")
        ))
        .await;
    browser
        .wait_for(
            "the demo's stream to open",
            "return document.getElementById('status').textContent === 'open'",
        )
        .await;
    let before = browser
        .eval("return document.body.dataset.latest || ''")
        .await;
    // A second subscriber, outside the browser, tells what the browser should see.
    let mut reference = Sse::connect(
        &app.url("/jmap/eventsource?types=*&closeafter=no&ping=0"),
        &app.token("alice"),
        None,
    )
    .await;
    let message_new = std::fs::read(fixtures().join("cyrus/008-MessageNew.bin")).unwrap();
    app.send_datagram(&message_new);
    let expected = loop {
        let event = reference.next_event().await.expect("reference stream");
        let change: Value = serde_json::from_str(&event.data).unwrap();
        if change["changed"]["alice"]["Email"].is_string() && event.data != before {
            break change;
        }
    };
    let latest = browser
        .wait_for(
            "the pushed state in the demo page",
            &format!(
                "const latest = document.body.dataset.latest || ''; \
                 return latest !== {before} && latest",
            ),
        )
        .await;
    let change: Value = serde_json::from_str(latest.as_str().unwrap()).unwrap();
    assert_eq!(change["@type"], "StateChange", "{change}");
    assert_eq!(
        change["changed"]["alice"], expected["changed"]["alice"],
        "the browser saw the state the event made"
    );

    // The status page, with an admin token; its stream shows the event just sent.
    browser
        .open(&app.url(&format!("/status?access_token={}", app.admin_token("ops"))))
        .await;
    browser
        .wait_for(
            "two status samples",
            "return Number(document.body.dataset.samples || 0) >= 2",
        )
        .await;
    let events = browser
        .wait_for(
            "the event count on the status page",
            "return document.getElementById('events-total').textContent",
        )
        .await;
    assert_eq!(events, json!("1"), "one event was sent");
    let status = browser
        .eval("return document.getElementById('stream-status').textContent")
        .await;
    assert_eq!(status, json!("connected"));
    browser.quit().await;
    app.stop().await;
}
