//! Device registration over HTTP against the real app and a real SQLite file: authentication,
//! isolation between users, validation, limits, moves, and survival across a restart.

mod common;

use common::TestApp;
use reqwest::Method;
use serde_json::{Value, json};

fn apns(token_byte: u8) -> Value {
    json!({"platform": "apns", "token": format!("{token_byte:02x}").repeat(32), "app": "com.example.mail", "environment": "production"})
}

async fn register(app: &TestApp, user: &str, body: &Value) -> (u16, Value) {
    let response = app
        .request(Method::POST, "/devices", user)
        .json(body)
        .send()
        .await
        .expect("POST /devices");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json body"))
}

async fn list(app: &TestApp, user: &str) -> Vec<Value> {
    let response = app
        .request(Method::GET, "/devices", user)
        .send()
        .await
        .expect("GET /devices");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    body["devices"].as_array().expect("devices array").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_requires_a_token() {
    let app = TestApp::start().await;
    let client = common::client();
    for (method, path) in [
        (Method::POST, "/devices"),
        (Method::GET, "/devices"),
        (Method::DELETE, "/devices/1"),
    ] {
        let response = client
            .request(method.clone(), app.url(path))
            .json(&apns(1))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{method} {path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "token_missing");
    }
    let response = client
        .get(app.url("/devices"))
        .bearer_auth("forged.token.here")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_see_and_delete_only_their_own_devices() {
    let app = TestApp::start().await;
    let (status, alice_phone) = register(&app, "alice", &apns(1)).await;
    assert_eq!(status, 201, "{alice_phone}");
    assert_eq!(alice_phone["platform"], "apns");
    assert_eq!(alice_phone["token"], "01".repeat(32));
    assert_eq!(alice_phone["environment"], "production");
    // The same registration again is idempotent: same id, 200.
    let (status, again) = register(&app, "alice", &apns(1)).await;
    assert_eq!(status, 200);
    assert_eq!(again["id"], alice_phone["id"]);
    let fcm = json!({"platform": "fcm", "token": "fKz:APA91b-token", "app": "com.example.android"});
    let (status, alice_android) = register(&app, "alice", &fcm).await;
    assert_eq!(status, 201);
    assert_eq!(alice_android["environment"], "production");
    let (_, bob_phone) = register(&app, "bob", &apns(2)).await;

    let alice_devices = list(&app, "alice").await;
    assert_eq!(alice_devices.len(), 2);
    assert_eq!(list(&app, "bob").await, vec![bob_phone.clone()]);
    assert!(list(&app, "carol").await.is_empty());

    // Bob cannot delete Alice's device, and cannot tell it exists.
    let path = format!("/devices/{}", alice_phone["id"]);
    let response = app
        .request(Method::DELETE, &path, "bob")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.json::<Value>().await.unwrap()["code"],
        "device_not_found"
    );
    let response = app
        .request(Method::DELETE, "/devices/999999", "bob")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let response = app
        .request(Method::DELETE, "/devices/not-a-number", "bob")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(list(&app, "alice").await.len(), 2);

    let response = app
        .request(Method::DELETE, &path, "alice")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(list(&app, "alice").await, vec![alice_android]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_registrations_get_400_with_the_reason() {
    let app = TestApp::start().await;
    let cases = [
        (
            json!({"platform": "apns", "token": "not-hex", "app": "a"}),
            "token:",
        ),
        (
            json!({"platform": "apns", "token": "ab", "app": "a"}),
            "token:",
        ),
        (
            json!({"platform": "fcm", "token": "with space", "app": "a"}),
            "token:",
        ),
        (
            json!({"platform": "fcm", "token": "t", "app": "a", "environment": "sandbox"}),
            "environment:",
        ),
        (
            json!({"platform": "pager", "token": "t", "app": "a"}),
            "platform",
        ),
        (
            json!({"platform": "apns", "token": "ab".repeat(32), "app": ""}),
            "app:",
        ),
        (
            json!({"platform": "apns", "token": "ab".repeat(32)}),
            "app: required",
        ),
        (json!([1, 2]), "Failed to deserialize"),
    ];
    for (body, reason) in cases {
        let (status, reply) = register(&app, "alice", &body).await;
        assert_eq!(status, 400, "{body}: {reply}");
        assert_eq!(reply["code"], "invalid_device", "{reply}");
        assert!(
            reply["message"].as_str().unwrap().starts_with(reason),
            "{body}: {reply}"
        );
    }
    let response = app
        .request(Method::POST, "/devices", "alice")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(
        list(&app, "alice").await.is_empty(),
        "nothing stored from bad input"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_limit_and_tokens_moving_between_users() {
    let app = TestApp::builder()
        .env("MAILPUSH_PUSH__MAX_DEVICES_PER_USER", "2")
        .start()
        .await;
    assert_eq!(register(&app, "alice", &apns(1)).await.0, 201);
    assert_eq!(register(&app, "alice", &apns(2)).await.0, 201);
    let (status, reply) = register(&app, "alice", &apns(3)).await;
    assert_eq!(status, 409);
    assert_eq!(reply["code"], "too_many_devices");
    // Refreshing a known token is not a new device.
    assert_eq!(register(&app, "alice", &apns(2)).await.0, 200);

    // The phone changes hands: the token moves to bob.
    let (status, moved) = register(&app, "bob", &apns(1)).await;
    assert_eq!(status, 200);
    assert_eq!(moved["token"], "01".repeat(32));
    assert_eq!(list(&app, "alice").await.len(), 1);
    assert_eq!(list(&app, "bob").await, vec![moved]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_survive_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let first = TestApp::builder().data_dir(data.path()).start().await;
    let (_, phone) = register(&first, "alice", &apns(7)).await;
    let second = TestApp::builder()
        .data_dir(data.path())
        .same_database(&first);
    first.stop().await;
    let second = second.start().await;
    assert_eq!(list(&second, "alice").await, vec![phone]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_registration_gets_413() {
    let app = TestApp::start().await;
    let padding = "x".repeat(3 << 20);
    let body = json!({"platform": "apns", "token": padding, "app": "com.example.mail"});
    let (status, reply) = register(&app, "alice", &body).await;
    assert_eq!(status, 413, "{reply}");
    assert_eq!(reply["code"], "body_too_large");
}
