//! Web Push end to end: browsers' subscriptions registered (and SSRF refused), Cyrus fixtures
//! in, RFC 8030 requests out. A recording push service here checks the headers and the VAPID
//! JWT; the npm package `web-push-testing`, a push service nobody here wrote, decrypts the
//! payloads and can expire a subscription; Python's `http_ece` decrypts a body a second time.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::agreement::{ECDH_P256, PrivateKey};
use aws_lc_rs::encoding::{AsBigEndian, EcPrivateKeyBin};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{TestApp, metric, wait_until};
use reqwest::Method;
use serde_json::{Value, json};

const SUBJECT: &str = "mailto:ops@example.test";

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A browser's side of a subscription: its ECDH key pair and auth secret.
struct Browser {
    private: Vec<u8>,
    public: Vec<u8>,
    auth: [u8; 16],
}

impl Browser {
    fn new() -> Browser {
        let key = PrivateKey::generate(&ECDH_P256).unwrap();
        let public = key.compute_public_key().unwrap().as_ref().to_vec();
        let private: EcPrivateKeyBin = key.as_be_bytes().unwrap();
        let private = private.as_ref().to_vec();
        let mut auth = [0u8; 16];
        getrandom::fill(&mut auth).unwrap();
        Browser {
            private,
            public,
            auth,
        }
    }

    fn subscription(&self, endpoint: &str, format: &str) -> Value {
        json!({"platform": "webpush", "endpoint": endpoint, "expirationTime": null,
               "keys": {"p256dh": b64(&self.public), "auth": b64(&self.auth)}, "format": format})
    }
}

async fn web_app(extra: &[(&str, &str)]) -> TestApp {
    let mut builder = TestApp::builder()
        .env("MAILPUSH_PUSH__WEBPUSH__ENABLED", "true")
        .env("MAILPUSH_PUSH__WEBPUSH__SUBJECT", SUBJECT)
        .env("MAILPUSH_PUSH__RETRY_BASE_MS", "50");
    for (key, value) in extra {
        builder = builder.env(key, value);
    }
    builder.start().await
}

async fn register(app: &TestApp, body: &Value) -> (StatusCode, Value) {
    let response = app
        .request(Method::POST, "/devices", "alice")
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `GET /webpush/vapid-public-key`'s document.
async fn vapid_document(app: &TestApp) -> Value {
    common::client()
        .get(app.url("/webpush/vapid-public-key"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn vapid_key(app: &TestApp) -> String {
    let body = vapid_document(app).await;
    body["applicationServerKey"].as_str().unwrap().to_owned()
}

async fn devices(app: &TestApp) -> Vec<Value> {
    let body: Value = app
        .request(Method::GET, "/devices", "alice")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["devices"].as_array().unwrap().clone()
}

fn send_fixture(app: &TestApp, name: &str) {
    let bytes = std::fs::read(common::fixtures().join("cyrus").join(name)).unwrap();
    app.send_datagram(&bytes);
}

async fn outcome(app: &TestApp, outcome: &str) -> f64 {
    metric(
        &app.metrics().await,
        &format!("mailpush_pushes_total{{provider=\"webpush\",app=\"web\",outcome=\"{outcome}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_to_private_addresses_and_bad_keys_are_refused() {
    let app = web_app(&[]).await;
    let key = vapid_key(&app).await;
    let raw = URL_SAFE_NO_PAD.decode(&key).unwrap();
    assert_eq!((raw.len(), raw[0]), (65, 4), "an uncompressed P-256 point");
    let capability = vapid_document(&app).await;
    assert_eq!(
        capability["capabilities"]["urn:ietf:params:jmap:webpush-vapid"]["applicationServerKey"],
        key.as_str()
    );
    // Kept in the data dir, readable by its owner only, and the same after a restart.
    use std::os::unix::fs::PermissionsExt;
    let file = app.data_dir.join("vapid.pem");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let browser = Browser::new();
    for (endpoint, reason) in [
        ("http://127.0.0.1/push/1", "must be an https URL"),
        (
            "https://10.0.0.1/push/1",
            "10.0.0.1 is a loopback, private or reserved address",
        ),
        ("https://localhost/push/1", "localhost resolves to"),
        ("https://[::1]/push/1", "::1 is a loopback"),
        (
            "https://169.254.169.254/latest/meta-data",
            "169.254.169.254 is a loopback",
        ),
    ] {
        let (status, body) = register(&app, &browser.subscription(endpoint, "legacy")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{endpoint}: {body}");
        assert_eq!(body["code"], "invalid_device");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(reason), "{endpoint}: {message}");
    }
    let endpoint = "https://8.8.8.8/push/1";
    let mut bad = browser.subscription(endpoint, "legacy");
    bad["keys"]["p256dh"] = b64(&browser.public[..33]).into();
    let (_, body) = register(&app, &bad).await;
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("keys.p256dh: must be a 65-byte"),
        "{body}"
    );
    let mut off_curve = browser.public.clone();
    off_curve[64] ^= 1;
    bad["keys"]["p256dh"] = b64(&off_curve).into();
    let (_, body) = register(&app, &bad).await;
    assert_eq!(body["message"], "keys.p256dh: not a point on P-256");
    let mut bad = browser.subscription(endpoint, "legacy");
    bad["keys"]["auth"] = "c2hvcnQ".into();
    let (_, body) = register(&app, &bad).await;
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("keys.auth: must be 16 bytes"),
        "{body}"
    );
    let (_, body) = register(&app, &browser.subscription(endpoint, "xml")).await;
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("format must be"),
        "{body}"
    );
    assert!(devices(&app).await.is_empty(), "nothing refused was stored");

    // A public endpoint is registered (nothing is sent to it here).
    let (status, body) = register(&app, &browser.subscription(endpoint, "jmap")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["platform"], "webpush");
    assert_eq!(body["token"], endpoint);
    assert_eq!(body["format"], "jmap");
    let public_key = key;
    app.stop().await;

    // Off: no key is served and registrations say so.
    let off = TestApp::builder().start().await;
    let response = common::client()
        .get(off.url("/webpush/vapid-public-key"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let (status, body) = register(&off, &browser.subscription(endpoint, "legacy")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["message"].as_str().unwrap().contains("not enabled"),
        "{body}"
    );
    assert_ne!(public_key, "");
}

/// What the recording push service saw of one request.
#[derive(Clone, Debug)]
struct Pushed {
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Clone, Default)]
struct Service {
    pushed: Arc<Mutex<Vec<Pushed>>>,
    /// Statuses to answer with, first first; 201 when empty.
    script: Arc<Mutex<Vec<u16>>>,
}

async fn receive(State(service): State<Service>, headers: HeaderMap, body: Bytes) -> StatusCode {
    service
        .pushed
        .lock()
        .unwrap()
        .push(Pushed { headers, body });
    let mut script = service.script.lock().unwrap();
    let status = if script.is_empty() {
        201
    } else {
        script.remove(0)
    };
    StatusCode::from_u16(status).unwrap()
}

impl Service {
    async fn start() -> (Service, String) {
        let service = Service::default();
        let router = Router::new()
            .route("/push/{id}", post(receive))
            .with_state(service.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        (service, origin)
    }

    async fn wait_for(&self, count: usize) -> Vec<Pushed> {
        wait_until(&format!("{count} pushes"), || async {
            self.pushed.lock().unwrap().len() >= count
        })
        .await;
        self.pushed.lock().unwrap().clone()
    }
}

fn header<'a>(pushed: &'a Pushed, name: &str) -> &'a str {
    pushed
        .headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

/// Checks the `Authorization: vapid t=…, k=…` header: ES256 by `key`, for `origin`, not more
/// than 24 hours ahead, with our contact.
fn check_vapid(pushed: &Pushed, key: &str, origin: &str) {
    let value = header(pushed, "authorization");
    let (jwt, k) = value
        .strip_prefix("vapid t=")
        .and_then(|rest| rest.split_once(", k="))
        .unwrap_or_else(|| panic!("{value}"));
    assert_eq!(k, key);
    let (input, signature) = jwt.rsplit_once('.').unwrap();
    let public = URL_SAFE_NO_PAD.decode(k).unwrap();
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &public)
        .verify(
            input.as_bytes(),
            &URL_SAFE_NO_PAD.decode(signature).unwrap(),
        )
        .expect("the JWT is signed with the VAPID key");
    let parts: Vec<Value> = input
        .split('.')
        .map(|part| serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap())
        .collect();
    assert_eq!(parts[0], json!({"typ": "JWT", "alg": "ES256"}));
    assert_eq!(parts[1]["aud"], origin);
    assert_eq!(parts[1]["sub"], SUBJECT);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let exp = parts[1]["exp"].as_u64().unwrap();
    assert!(exp > now && exp <= now + 24 * 3600, "exp {exp}, now {now}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_follow_rfc_8030_and_dead_subscriptions_are_removed() {
    let (service, origin) = Service::start().await;
    let app = web_app(&[("MAILPUSH_PUSH__WEBPUSH__ALLOW_PRIVATE_ENDPOINTS", "true")]).await;
    let key = vapid_key(&app).await;
    let browser = Browser::new();
    let endpoint = format!("{origin}/push/1");
    let (status, _) = register(&app, &browser.subscription(&endpoint, "legacy")).await;
    assert_eq!(status, StatusCode::CREATED);

    // New mail: at once, high urgency, no topic; its state change is merged into it.
    send_fixture(&app, "008-MessageNew.bin");
    let pushed = service.wait_for(1).await;
    let alert = &pushed[0];
    assert_eq!(header(alert, "content-encoding"), "aes128gcm");
    assert_eq!(header(alert, "content-type"), "application/octet-stream");
    assert_eq!(header(alert, "ttl"), "86400");
    assert_eq!(header(alert, "urgency"), "high");
    assert!(alert.headers.get("topic").is_none());
    check_vapid(alert, &key, &origin);
    // The aes128gcm header: salt, record size 4096, a 65-byte key id (the sender's key).
    assert_eq!(&alert.body[16..21], &[0, 0, 16, 0, 65]);
    assert!(alert.body.len() <= 4096);

    // A read: a low-urgency state push under a topic, after the coalescing window.
    send_fixture(&app, "017-MessageRead.bin");
    let pushed = service.wait_for(2).await;
    assert_eq!(header(&pushed[1], "urgency"), "low");
    assert_eq!(header(&pushed[1], "topic"), "state");
    wait_until("both sent", || async { outcome(&app, "sent").await == 2.0 }).await;
    assert!(
        outcome(&app, "coalesced").await >= 1.0,
        "the alert's state change was merged"
    );

    // 429 and 5xx are retried; 413 is not; 410 removes the subscription.
    service.script.lock().unwrap().extend([429, 503, 413]);
    send_fixture(&app, "011-MessageNew.bin");
    wait_until("retried twice then failed", || async {
        outcome(&app, "failed").await == 1.0
    })
    .await;
    assert_eq!(outcome(&app, "retried").await, 2.0);
    assert_eq!(service.pushed.lock().unwrap().len(), 5);
    service.script.lock().unwrap().push(410);
    send_fixture(&app, "014-MessageNew.bin");
    wait_until("the subscription removed", || async {
        outcome(&app, "token_removed").await == 1.0
    })
    .await;
    assert!(devices(&app).await.is_empty());
    let store = app.store().await;
    let removals = store.removals_of("alice").await.unwrap();
    assert_eq!(removals[0].0, endpoint);
}

/// The npm package `web-push-testing` (its `src/bin/server.js`), run with node on a port of
/// the test's own and bound to loopback.
struct WebPushTesting {
    _peer: common::peer::Peer,
    url: String,
}

impl WebPushTesting {
    fn start(server_js: &str) -> WebPushTesting {
        let port = common::peer::free_port();
        // Its server listens on every interface; this preload keeps it on loopback.
        let loopback = "const http = require('http'); const listen = http.Server.prototype.listen; \
            http.Server.prototype.listen = function (port, ...rest) { \
              return listen.call(this, port, '127.0.0.1', ...rest.filter(a => typeof a === 'function')); };";
        let peer = common::peer::Peer::spawn(
            "web-push-testing",
            std::process::Command::new("node")
                .args([
                    "-e",
                    &format!("{loopback} process.argv[2] = '{port}'; require({server_js:?});"),
                ])
                .stdout(std::process::Stdio::null()),
        );
        WebPushTesting {
            _peer: peer,
            url: format!("http://localhost:{port}"),
        }
    }

    async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        common::client()
            .post(format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn ready(&self) {
        wait_until("web-push-testing answers", || async {
            common::client()
                .post(format!("{}/status", self.url))
                .send()
                .await
                .is_ok_and(|response| response.status().is_success())
        })
        .await;
    }

    /// A subscription made with `key` as a browser would: endpoint, keys and the client hash.
    async fn subscribe(&self, key: &str) -> Value {
        let response = self
            .post("/subscribe", json!({"applicationServerKey": key}))
            .await;
        assert!(response.status().is_success(), "{}", response.status());
        let body: Value = response.json().await.unwrap();
        body["data"].clone()
    }

    /// The payloads it decrypted for a subscription.
    async fn messages(&self, client_hash: &str) -> Vec<Value> {
        let body: Value = self
            .post("/get-notifications", json!({"clientHash": client_hash}))
            .await
            .json()
            .await
            .unwrap();
        body["data"]["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|text| serde_json::from_str(text.as_str().unwrap()).unwrap())
            .collect()
    }

    async fn wait_messages(&self, client_hash: &str, count: usize) -> Vec<Value> {
        wait_until(&format!("{count} messages decrypted"), || async {
            self.messages(client_hash).await.len() >= count
        })
        .await;
        self.messages(client_hash).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs web-push-testing from npm: MAILPUSH_TEST_WEB_PUSH_TESTING=<its src/bin/server.js>"]
async fn a_real_push_service_decrypts_what_we_send_and_expires_a_subscription() {
    let server_js = std::env::var("MAILPUSH_TEST_WEB_PUSH_TESTING")
        .expect("MAILPUSH_TEST_WEB_PUSH_TESTING names web-push-testing's src/bin/server.js");
    let service = WebPushTesting::start(&server_js);
    service.ready().await;
    let app = web_app(&[("MAILPUSH_PUSH__WEBPUSH__ALLOW_PRIVATE_ENDPOINTS", "true")]).await;
    let key = vapid_key(&app).await;
    let legacy = service.subscribe(&key).await;
    let jmap = service.subscribe(&key).await;
    for (subscription, format) in [(&legacy, "legacy"), (&jmap, "jmap")] {
        let mut body = subscription.clone();
        body["platform"] = "webpush".into();
        body["format"] = format.into();
        body.as_object_mut().unwrap().remove("clientHash");
        let (status, response) = register(&app, &body).await;
        assert_eq!(status, StatusCode::CREATED, "{response}");
    }
    let legacy_hash = legacy["clientHash"].as_str().unwrap();
    let jmap_hash = jmap["clientHash"].as_str().unwrap();

    let mut stream = app.sse("alice").await;
    send_fixture(&app, "008-MessageNew.bin");
    let (mail, _, _) = stream.next_state().await;
    let messages = service.wait_messages(legacy_hash, 1).await;
    assert_eq!(
        messages[0],
        json!({"mailModSeq": mail, "calendarModSeq": 0, "contactsModSeq": 0, "unseen": 1,
               "alert": {"type": "mail", "from": "Bob Sender", "subject": "Hello 1",
                         "url": "imap://mailstore1.example.test/user/alice;UIDVALIDITY=1795878360/;UID=1"}})
    );
    let messages = service.wait_messages(jmap_hash, 1).await;
    assert_eq!(messages[0]["@type"], "StateChange");
    let changed = &messages[0]["changed"]["alice"];
    assert_eq!(changed["Email"], mail.to_string());
    assert_eq!(changed["EmailDelivery"], mail.to_string());

    // A read moves the badge (to the fixture's count, 2): one push after the window.
    send_fixture(&app, "017-MessageRead.bin");
    let messages = service.wait_messages(legacy_hash, 2).await;
    assert_eq!(messages[1]["unseen"], 2);
    assert!(messages[1]["mailModSeq"].as_u64().unwrap() > mail);
    assert!(messages[1].get("alert").is_none());

    // The browser unsubscribes: the push service answers 410 and the subscription goes.
    let response = service
        .post(&format!("/expire-subscription/{legacy_hash}"), json!({}))
        .await;
    assert!(response.status().is_success());
    send_fixture(&app, "011-MessageNew.bin");
    wait_until("the expired subscription removed", || async {
        outcome(&app, "token_removed").await == 1.0
    })
    .await;
    let left = devices(&app).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["format"], "jmap");
    service.wait_messages(jmap_hash, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs python3 with http_ece from PyPI: MAILPUSH_TEST_PYTHON_ECE=python3"]
async fn python_http_ece_decrypts_a_push() {
    let python = std::env::var("MAILPUSH_TEST_PYTHON_ECE").expect("MAILPUSH_TEST_PYTHON_ECE");
    let (service, origin) = Service::start().await;
    let app = web_app(&[("MAILPUSH_PUSH__WEBPUSH__ALLOW_PRIVATE_ENDPOINTS", "true")]).await;
    let browser = Browser::new();
    let (status, _) = register(
        &app,
        &browser.subscription(&format!("{origin}/push/1"), "legacy"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    send_fixture(&app, "008-MessageNew.bin");
    let pushed = service.wait_for(1).await;
    let script = r#"
import sys, base64, http_ece
from cryptography.hazmat.primitives.asymmetric import ec
d = lambda s: base64.urlsafe_b64decode(s + '=' * (-len(s) % 4))
key = ec.derive_private_key(int.from_bytes(d(sys.argv[1]), 'big'), ec.SECP256R1())
body = sys.stdin.buffer.read()
sys.stdout.buffer.write(http_ece.decrypt(body, private_key=key, auth_secret=d(sys.argv[2]), version='aes128gcm'))
"#;
    let mut child = std::process::Command::new(python)
        .args(["-c", script, &b64(&browser.private), &b64(&browser.auth)])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&pushed[0].body)
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let payload: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(payload["alert"]["subject"], "Hello 1");
    assert_eq!(payload["unseen"], 1);
}
