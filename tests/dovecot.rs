//! Dovecot's push_notification drivers in: every request a real Dovecot 2.3.19 sent (captured
//! in `tests/fixtures/dovecot/`, OX and Lua drivers, with the scenario step that caused it)
//! replayed byte for byte over TCP, `Expect: 100-continue` included, and what comes out
//! checked: the right user's EventSource state, and the right APNs request at the mock.

mod common;

use common::mock::{APNS_TOPIC, ApnsMock};
use common::{INGEST_SECRET, TestApp, wait_until};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One captured request: its head lines (request line first) and body.
struct Captured {
    name: String,
    /// The scenario step that caused it (`lmtp_new_alice_encoded_headers`...).
    step: String,
    driver: &'static str,
    head: Vec<String>,
    body: Value,
}

fn captured() -> Vec<Captured> {
    let dir = common::fixtures().join("dovecot");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "http"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|path| {
            let bytes = std::fs::read(path).unwrap();
            let text = String::from_utf8(bytes).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let decoded: Value =
                serde_json::from_slice(&std::fs::read(path.with_extension("json")).unwrap())
                    .unwrap();
            Captured {
                step: decoded["step"].as_str().unwrap().to_owned(),
                driver: if name.contains("-lua-") { "lua" } else { "ox" },
                name,
                head: head.split("\r\n").map(str::to_owned).collect(),
                body: serde_json::from_str(body).unwrap(),
            }
        })
        .collect()
}

/// A request as it reaches mailpush: Dovecot's head with mailpush's path and credentials.
struct Request {
    head: String,
    body: Vec<u8>,
    expect_continue: bool,
}

impl Captured {
    /// The request as Dovecot would send it to mailpush, configured as README says. The Lua
    /// fixtures come from the harness's script, which sends no counts; mailpush's adds
    /// `inbox_unseen` to a transaction that touched INBOX, and so does this replay.
    fn for_mailpush(&self, inbox_unseen: u64) -> Request {
        let mut body = self.body.clone();
        let touches_inbox = self
            .events()
            .iter()
            .any(|event| event["mailbox"] == "INBOX");
        if self.driver == "lua" && touches_inbox {
            body["inbox_unseen"] = json!(inbox_unseen);
        }
        let body = serde_json::to_vec(&body).unwrap();
        let (method, path) = match self.driver {
            "lua" => ("POST", "/ingest/dovecot/lua"),
            _ => ("PUT", "/ingest/dovecot/ox"),
        };
        let mut head = format!("{method} {path} HTTP/1.1\r\n");
        let mut expect_continue = false;
        for line in &self.head[1..] {
            let name = line.split(':').next().unwrap().to_ascii_lowercase();
            match name.as_str() {
                "authorization" | "content-length" => {}
                "expect" => {
                    expect_continue = true;
                    head.push_str(line);
                    head.push_str("\r\n");
                }
                _ => {
                    head.push_str(line);
                    head.push_str("\r\n");
                }
            }
        }
        head.push_str(&match self.driver {
            "lua" => format!("Authorization: Bearer {INGEST_SECRET}\r\n"),
            _ => format!(
                "Authorization: Basic {}\r\n",
                basic("dovecot", INGEST_SECRET)
            ),
        });
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        Request {
            head,
            body,
            expect_continue,
        }
    }

    fn user(&self) -> &str {
        self.body["user"].as_str().unwrap()
    }

    /// The Lua events (the OX body is one MessageNew).
    fn events(&self) -> Vec<Value> {
        self.body["events"].as_array().cloned().unwrap_or_default()
    }
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

/// Sends `request` on a new connection as Dovecot does (head, then the body once `100
/// Continue` came when it asked for it); returns the status, and the body as JSON.
async fn send(addr: std::net::SocketAddr, request: &Request) -> (u16, Value) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    write.write_all(request.head.as_bytes()).await.unwrap();
    if request.expect_continue {
        let status = read_head(&mut read).await;
        assert_eq!(status.0, 100, "100 Continue before the body: {status:?}");
    }
    write.write_all(&request.body).await.unwrap();
    let status = read_head(&mut read).await;
    let mut body = vec![0; status.1];
    read.read_exact(&mut body).await.unwrap();
    (
        status.0,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

/// Reads a response head: its status and Content-Length.
async fn read_head(read: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> (u16, usize) {
    let mut status = 0;
    let mut length = 0;
    loop {
        let mut line = String::new();
        let read_bytes = tokio::time::timeout(common::DEADLINE, read.read_line(&mut line))
            .await
            .expect("an answer")
            .unwrap();
        assert!(read_bytes > 0, "the connection closed");
        let line = line.trim_end();
        if line.is_empty() {
            return (status, length);
        }
        if let Some(rest) = line.strip_prefix("HTTP/1.1 ") {
            status = rest[..3].parse().unwrap();
        } else if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap();
        }
    }
}

/// What a captured request must make mailpush push, given the replay's INBOX unseen count.
fn expected_push(captured: &Captured, inbox_unseen: u64) -> Option<Value> {
    if captured.driver == "ox" {
        let unseen = captured.body["unseen"].as_u64().unwrap();
        return Some(json!({"badge": unseen, "new_mail": true}));
    }
    let kept: Vec<Value> = captured
        .events()
        .into_iter()
        .filter(|event| {
            let flags = |key: &str| event[key].as_array().is_some_and(|a| !a.is_empty());
            let name = event["name"].as_str().unwrap();
            !(name.starts_with("Flags") && !flags("flags") && !flags("keywords"))
        })
        .collect();
    let inbox = |event: &&Value| event["mailbox"] == "INBOX";
    if kept
        .iter()
        .filter(inbox)
        .any(|event| event["name"] == "MessageNew")
    {
        return Some(json!({"badge": inbox_unseen, "new_mail": true}));
    }
    let badge_events = [
        "MessageAppend",
        "MessageExpunge",
        "MessageRead",
        "MessageTrash",
        "FlagsSet",
        "FlagsClear",
    ];
    let last_inbox = kept.iter().rev().find(inbox)?;
    badge_events
        .contains(&last_inbox["name"].as_str().unwrap())
        .then(|| json!({"badge": inbox_unseen, "new_mail": false}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_captured_request_moves_its_users_state_and_pushes_what_it_should() {
    let dir = tempfile::tempdir().unwrap();
    let apns = ApnsMock::start(dir.path()).await;
    let app = TestApp::builder().envs(apns.env("MAIN")).start().await;
    let all = captured();
    let captured = &all;
    assert_eq!(captured.len(), 36, "every captured request");
    let mut users: Vec<String> = captured.iter().map(|c| c.user().to_owned()).collect();
    users.sort();
    users.dedup();
    assert_eq!(users, ["42@7", "alice", "bob"]);
    let mut streams = std::collections::HashMap::new();
    for (n, user) in users.iter().enumerate() {
        let response = app
            .request(Method::POST, "/devices", user)
            .json(&json!({"platform": "apns", "token": format!("{n:064x}"), "app": APNS_TOPIC}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        streams.insert(user.clone(), (app.sse(user).await, 0u64));
    }
    let phone = |user: &str| format!("{:064x}", users.iter().position(|u| u == user).unwrap());

    let mut pushes = 0;
    for (index, captured) in captured.iter().enumerate() {
        let unseen = 10 + index as u64;
        let request = captured.for_mailpush(unseen);
        let (status, answer) = send(app.http, &request).await;
        assert_eq!(status, 200, "{}: {answer}", captured.name);
        if captured.driver == "lua" {
            let events = captured.events();
            let empty = events
                .iter()
                .filter(|event| {
                    event["name"].as_str().unwrap().starts_with("Flags")
                        && event["flags"].as_array().unwrap().is_empty()
                        && event["keywords"].as_array().unwrap().is_empty()
                })
                .count();
            assert_eq!(
                answer,
                json!({"accepted": events.len() - empty, "dropped_empty": empty}),
                "{}",
                captured.name
            );
        }
        let user = captured.user();
        // Every request changes something: the user's stream moves on, never back.
        let (stream, last) = streams.get_mut(user).unwrap();
        let (mail, calendar, contacts) = stream.next_state().await;
        assert!(mail > *last, "{}: {mail} after {last}", captured.name);
        assert_eq!((calendar, contacts), (0, 0), "{}", captured.name);
        *last = mail;

        let Some(expected) = expected_push(captured, unseen) else {
            continue;
        };
        pushes += 1;
        wait_until(&format!("the push of {}", captured.name), || async {
            apns.recorder.received().len() >= pushes
        })
        .await;
        let push = &apns.recorder.received()[pushes - 1];
        assert_eq!(push.token, phone(user), "{}", captured.name);
        let aps = &push.body["aps"];
        assert_eq!(
            aps["badge"], expected["badge"],
            "{}: {}",
            captured.name, push.body
        );
        if expected["new_mail"] == true {
            let alert = aps["alert"].as_str().unwrap();
            let (from, subject) = alert.split_once('\n').unwrap();
            let (want_from, want_subject) = sender_and_subject(captured, &all);
            assert_eq!(
                (from, subject),
                (want_from.as_str(), want_subject.as_str()),
                "{}",
                captured.name
            );
            assert_eq!(aps["thread-id"], format!("{user}/INBOX"));
            assert!(
                push.body["url"]
                    .as_str()
                    .unwrap()
                    .starts_with("/INBOX;UIDVALIDITY="),
                "{}",
                push.body
            );
        } else {
            assert_eq!(aps.get("alert"), None, "{}: badge only", captured.name);
        }
    }
    // Nothing else was pushed: a last new mail is the next push after all of the above.
    let last = captured.iter().find(|c| c.driver == "ox").unwrap();
    send(app.http, &last.for_mailpush(0)).await;
    wait_until("the last push", || async {
        apns.recorder.received().len() > pushes
    })
    .await;
    assert_eq!(apns.recorder.received().len(), pushes + 1);
    assert_eq!(
        pushes, 23,
        "13 new mails in INBOX, 10 badge updates, nothing for other folders"
    );
    let metrics = app.metrics().await;
    assert_eq!(
        common::metric(
            &metrics,
            "mailpush_events_received_total{source=\"dovecot_ox\",type=\"MessageNew\"}"
        ),
        9.0
    );
}

/// The sender and subject a phone shows for a new-mail request. Dovecot's Lua driver gives
/// them decoded; the OX driver sends the raw headers, so for it the oracle is the Lua capture
/// of the same delivery.
fn sender_and_subject(captured: &Captured, all: &[Captured]) -> (String, String) {
    let lua = all
        .iter()
        .find(|other| {
            other.driver == "lua"
                && other.step == captured.step
                && other
                    .events()
                    .iter()
                    .any(|event| event["name"] == "MessageNew")
        })
        .expect("the Lua capture of the same delivery");
    let event = &lua.events()[0];
    let from = match event["from_display_name"].as_str().unwrap_or("") {
        "" => event["from_address"].as_str().unwrap_or("").to_owned(),
        name => name.to_owned(),
    };
    (from, event["subject"].as_str().unwrap_or("").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_and_unauthenticated_requests_get_a_reason_and_the_service_goes_on() {
    let app = TestApp::start().await;
    let mut alice = app.sse("alice").await;
    let client = reqwest::Client::new();
    let lua = |body: &str, token: Option<&str>| {
        let mut request = client
            .post(app.url("/ingest/dovecot/lua"))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let good = r#"{"v":1,"user":"alice","events":[{"name":"MessageRead","mailbox":"INBOX","uid":1,"uid_validity":7}]}"#;
    let check = |response: reqwest::Response, status: u16, code: &'static str| async move {
        assert_eq!(response.status(), status);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], code, "{body}");
        assert!(!body["message"].as_str().unwrap().is_empty());
    };
    check(lua(good, None).await.unwrap(), 401, "ingest_unauthorized").await;
    check(
        lua(good, Some("wrong")).await.unwrap(),
        401,
        "ingest_unauthorized",
    )
    .await;
    for (body, code) in [
        ("{", "invalid_json"),
        ("[1]", "invalid_json"),
        (r#"{"v":2,"user":"alice","events":[]}"#, "invalid_json"),
        (r#"{"v":1,"events":[]}"#, "missing_field"),
        (
            r#"{"v":1,"user":"alice","events":[{"mailbox":"INBOX"}]}"#,
            "missing_event_name",
        ),
        (
            r#"{"v":1,"user":"alice","events":[{"name":"MessageRead"}]}"#,
            "missing_field",
        ),
        (
            r#"{"v":1,"user":"alice","inbox_unseen":9007199254740992,"events":[]}"#,
            "number_out_of_range",
        ),
    ] {
        check(lua(body, Some(INGEST_SECRET)).await.unwrap(), 400, code).await;
    }
    let ox = |authorization: Option<String>, body: &str| {
        let mut request = client
            .put(app.url("/ingest/dovecot/ox"))
            .header("content-type", "application/json; charset=utf-8")
            .body(body.to_owned());
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        request.send()
    };
    let ox_body = r#"{"user":"alice","event":"messageNew","folder":"INBOX","imap-uidvalidity":7,"imap-uid":2,"unseen":1}"#;
    let refused = ox(None, ox_body).await.unwrap();
    assert_eq!(
        refused.headers()["www-authenticate"],
        "Basic realm=\"mailpush\""
    );
    check(refused, 401, "ingest_unauthorized").await;
    let wrong = Some(format!("Basic {}", basic("dovecot", "wrong")));
    check(
        ox(wrong, ox_body).await.unwrap(),
        401,
        "ingest_unauthorized",
    )
    .await;
    let right = || Some(format!("Basic {}", basic("anyone", INGEST_SECRET)));
    check(
        ox(right(), r#"{"event":"messageNew","folder":"INBOX"}"#)
            .await
            .unwrap(),
        400,
        "missing_field",
    )
    .await;
    check(ox(right(), "not json").await.unwrap(), 400, "invalid_json").await;

    // A request refused for its credentials never sends its body: no 100 Continue.
    let head = "POST /ingest/dovecot/lua HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 10\r\nContent-Type: application/json\r\n\r\n";
    let (status, body) = send(
        app.http,
        &Request {
            head: head.into(),
            body: Vec::new(),
            expect_continue: false,
        },
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("ingest_unauthorized"))
    );

    // Each refusal counted with its reason, and the service goes on.
    let metrics = app.metrics().await;
    let rejected = |source: &str, reason: &str| {
        common::metric(
            &metrics,
            &format!("mailpush_packets_rejected_total{{source=\"{source}\",reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(rejected("dovecot_lua", "invalid_json"), 3.0);
    assert_eq!(rejected("dovecot_lua", "missing_field"), 2.0);
    assert_eq!(rejected("dovecot_ox", "missing_field"), 1.0);
    assert_eq!(
        common::metric(
            &metrics,
            "mailpush_requests_refused_total{reason=\"ingest_unauthorized\"}"
        ),
        5.0
    );
    let accepted = lua(good, Some(INGEST_SECRET)).await.unwrap();
    assert_eq!(accepted.status(), 200);
    assert_eq!(
        accepted.json::<Value>().await.unwrap(),
        json!({"accepted": 1, "dropped_empty": 0})
    );
    let (mail, _, _) = alice.next_state().await;
    assert!(
        mail > 1_700_000_000_000_000,
        "a modseq of mailpush's own: {mail}"
    );
}
