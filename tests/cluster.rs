//! Three `mailpush serve` processes as one cluster, on real NATS JetStream and PostgreSQL: A
//! beside the mail store (its Cyrus socket gets the events), B and C serving clients. Each
//! test runs on a schema and a subject prefix of its own. The tests that stop NATS run a
//! `nats-server -js` of their own on an ephemeral port (`MAILPUSH_TEST_NATS_SERVER`); the others
//! use the machine's (`MAILPUSH_TEST_NATS_URL`). `.ci/run` sets both, and the PostgreSQL URL.

mod common;

use common::cluster::{Cluster, Node};
use common::mock::{APNS_TOPIC, ApnsMock};
use common::nats::{PrivateNats, delete_bucket};
use common::smtp::{Hold, SmtpSink};
use common::{DEADLINE, Sse, mail_event_datagram, wait_until};
use serde_json::Value;

fn shared_nats() -> String {
    std::env::var("MAILPUSH_TEST_NATS_URL").expect("MAILPUSH_TEST_NATS_URL")
}

fn private_nats() -> PrivateNats {
    let bin = std::env::var("MAILPUSH_TEST_NATS_SERVER").expect("MAILPUSH_TEST_NATS_SERVER");
    PrivateNats::start(std::path::Path::new(&bin))
}

/// The legacy stream of `user` on `node`, resuming from `last_event_id`.
async fn legacy(cluster: &Cluster, node: &Node, user: &str, last_event_id: Option<&str>) -> Sse {
    Sse::connect(&node.url("/events"), &cluster.token(user), last_event_id).await
}

/// The JMAP stream of `user` on `node`.
async fn jmap(cluster: &Cluster, node: &Node, user: &str) -> Sse {
    let url = node.url("/jmap/eventsource?types=*&closeafter=no&ping=0");
    Sse::connect(&url, &cluster.token(user), None).await
}

/// The `Email` state of `user` in the next JMAP StateChange.
async fn next_email_state(stream: &mut Sse, user: &str) -> String {
    let event = stream.next_event().await.expect("a JMAP state event");
    assert_eq!(event.event, "state", "{event:?}");
    let data: Value = serde_json::from_str(&event.data).unwrap();
    assert_eq!(data["@type"], "StateChange", "{data}");
    data["changed"][user]["Email"]
        .as_str()
        .unwrap_or_else(|| panic!("no Email state in {data}"))
        .to_owned()
}

/// The state a `Last-Event-ID` (`m<mail>c<calendar>a<contacts>`) names.
fn state_of_id(id: &str) -> (u64, u64, u64) {
    let (mail, rest) = id.trim_start_matches('m').split_once('c').expect("c");
    let (calendar, contacts) = rest.split_once('a').expect("a");
    let number = |text: &str| text.parse::<u64>().expect("a number");
    (number(mail), number(calendar), number(contacts))
}

/// Whether `/readyz` says the node is ready.
async fn ready(node: &Node) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(node.url("/readyz"))
        .timeout(DEADLINE)
        .send()
        .await
        .expect("GET /readyz");
    let status = response.status().as_u16();
    (status, response.json().await.expect("readyz body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NATS and PostgreSQL (MAILPUSH_TEST_NATS_URL, MAILPUSH_TEST_PG_URL)"]
async fn an_event_at_a_reaches_streams_on_b_and_c_in_both_formats() {
    let nats = shared_nats();
    let cluster = Cluster::new(&nats).await;
    let (a, b, c) = (cluster.start("a"), cluster.start("b"), cluster.start("c"));
    let mut on_a = legacy(&cluster, &a, "alice", None).await;
    let mut on_b = legacy(&cluster, &b, "alice", None).await;
    let mut on_c = jmap(&cluster, &c, "alice").await;
    let mut bob_on_b = legacy(&cluster, &b, "bob", None).await;

    a.send_datagram(&mail_event_datagram("alice", 7));
    assert_eq!(on_a.next_state().await, (7, 0, 0));
    assert_eq!(on_b.next_state().await, (7, 0, 0));
    assert_eq!(on_b.last_event_id.as_deref(), Some("m7c0a0"));
    assert_eq!(next_email_state(&mut on_c, "alice").await, "7");

    a.send_datagram(&mail_event_datagram("bob", 3));
    a.send_datagram(&mail_event_datagram("alice", 8));
    assert_eq!(bob_on_b.next_state().await, (3, 0, 0));
    assert_eq!(on_a.next_state().await, (8, 0, 0));
    assert_eq!(on_b.next_state().await, (8, 0, 0));
    assert_eq!(next_email_state(&mut on_c, "alice").await, "8");

    // A display alarm read at A reaches alice's streams on the other nodes too.
    let alarm = r#"{"event":"CalendarAlarm","userId":"alice","uid":"e1","alarmTime":"20261207T085500Z","action":"display","alarmRecipients":[],"summary":"Standup","start":"20261207T090000Z"}"#;
    let posted = reqwest::Client::new()
        .post(a.url("/ingest"))
        .bearer_auth(common::INGEST_SECRET)
        .header("content-type", "application/json")
        .body(alarm)
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 200);
    for stream in [&mut on_a, &mut on_b] {
        let reminder = stream.next_event().await.expect("a reminder");
        assert_eq!(reminder.event, "reminder", "{reminder:?}");
        let data: Value = serde_json::from_str(&reminder.data).unwrap();
        assert_eq!(data["summary"], "Standup");
    }
    // Bob's stream gets his next state, and no reminder before it.
    a.send_datagram(&mail_event_datagram("bob", 4));
    assert_eq!(bob_on_b.next_state().await, (4, 0, 0), "not bob's reminder");

    // B and C listen for the users they serve, and only for them.
    assert_eq!(b.metric("mailpush_cluster_users_watched").await, 2.0);
    assert_eq!(c.metric("mailpush_cluster_users_watched").await, 1.0);
    assert_eq!(
        c.metric("mailpush_cluster_messages_received_total{kind=\"state\"}")
            .await,
        2.0,
        "C heard alice's two states and nothing of bob's"
    );
    assert_eq!(ready(&b).await.1["cluster"], "connected");
    // Once its last stream closes, a node stops listening for the user.
    drop(on_c);
    wait_until("C to stop listening for alice", || async {
        c.metric("mailpush_cluster_users_watched").await == 0.0
    })
    .await;
    delete_bucket(&nats, &cluster.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NATS and PostgreSQL (MAILPUSH_TEST_NATS_URL, MAILPUSH_TEST_PG_URL)"]
async fn clients_of_a_killed_node_resume_on_another_with_nothing_missed() {
    const USERS: usize = 5;
    const LAST: u64 = 60;
    let nats = shared_nats();
    let cluster = Cluster::new(&nats).await;
    let (a, b, c) = (cluster.start("a"), cluster.start("b"), cluster.start("c"));
    let users: Vec<String> = (0..USERS).map(|n| format!("user{n}")).collect();
    let mut streams = Vec::new();
    for user in &users {
        streams.push(legacy(&cluster, &b, user, None).await);
        a.send_datagram(&mail_event_datagram(user, 1));
    }
    for stream in &mut streams {
        assert_eq!(stream.next_state().await, (1, 0, 0));
    }

    // Events keep coming at A while B dies and its clients move to C. The second half waits
    // for B's death: a slow run must not see the last state on B already, leaving C nothing
    // to send.
    let socket = a.socket.clone();
    let (b_is_dead, second_half) = std::sync::mpsc::channel::<()>();
    let producer = std::thread::spawn({
        let users = users.clone();
        move || {
            for modseq in 2..=LAST {
                if modseq == LAST / 2 + 1 {
                    second_half.recv().expect("the test goes on");
                }
                for user in &users {
                    common::send_datagram(&socket, &mail_event_datagram(user, modseq));
                }
            }
        }
    });
    let mut seen_on_b = Vec::new();
    for stream in &mut streams {
        stream.next_state().await;
        seen_on_b.push(stream.last_event_id.clone().expect("an id"));
    }
    b.kill();
    drop(streams);
    b_is_dead.send(()).expect("the producer waits");
    let mut resumed = Vec::new();
    for (user, seen) in users.iter().zip(&seen_on_b) {
        resumed.push(legacy(&cluster, &c, user, Some(seen)).await);
    }
    for ((stream, seen), user) in resumed.iter_mut().zip(&seen_on_b).zip(&users) {
        let mut last = state_of_id(seen);
        loop {
            let state = stream.next_state().await;
            assert!(
                state.0 > last.0,
                "{user}: {state:?} after {last:?}: a resumed stream only moves forward"
            );
            last = state;
            if state == (LAST, 0, 0) {
                break;
            }
        }
    }
    producer.join().expect("producer");
    delete_bucket(&nats, &cluster.prefix).await;
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NATS and PostgreSQL (MAILPUSH_TEST_NATS_SERVER, MAILPUSH_TEST_PG_URL)"]
async fn a_stream_opened_while_nats_is_frozen_catches_up_once_it_answers() {
    let nats = private_nats();
    let cluster = Cluster::new(&nats.url())
        .await
        .env("MAILPUSH_CLUSTER__REQUEST_TIMEOUT_MS", "500");
    let (a, c) = (cluster.start("a"), cluster.start("c"));
    // NATS freezes: C stays connected, but the read of alice's record gets no answer, and her
    // stream opens on what C knows.
    nats.pause();
    let mut alice_on_c = legacy(&cluster, &c, "alice", None).await;
    assert_eq!(
        c.metric("mailpush_state_record_failures_total{operation=\"load\"}")
            .await,
        1.0
    );
    nats.unpause();
    // Nothing reconnects, so no resync: the subscription, written before the read on the same
    // connection, is what brings alice's next state.
    a.send_datagram(&mail_event_datagram("alice", 7));
    alice_on_c.state_reaching((7, 0, 0)).await;
    assert_eq!(
        c.metric("mailpush_cluster_resyncs_total").await,
        1.0,
        "the first connection's only"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NATS and PostgreSQL (MAILPUSH_TEST_NATS_SERVER, MAILPUSH_TEST_PG_URL)"]
async fn after_a_nats_restart_no_stream_is_left_stale() {
    let mut nats = private_nats();
    let cluster = Cluster::new(&nats.url()).await;
    let (a, b, c) = (cluster.start("a"), cluster.start("b"), cluster.start("c"));
    let mut alice_on_b = legacy(&cluster, &b, "alice", None).await;
    let mut alice_on_c = jmap(&cluster, &c, "alice").await;
    let mut bob_on_a = legacy(&cluster, &a, "bob", None).await;
    let mut carol_on_c = legacy(&cluster, &c, "carol", None).await;
    a.send_datagram(&mail_event_datagram("alice", 1));
    assert_eq!(alice_on_b.next_state().await, (1, 0, 0));
    assert_eq!(next_email_state(&mut alice_on_c, "alice").await, "1");

    nats.stop();
    for node in [&a, &b, &c] {
        wait_until("the node to say it is cut off", || async {
            ready(node).await
                == (
                    503,
                    serde_json::json!({"database": "ok", "cluster": "cut off from NATS"}),
                )
        })
        .await;
        assert_eq!(node.metric("mailpush_cluster_connected").await, 0.0);
    }
    // A keeps reading the store's socket and serving its own streams.
    const DURING: u64 = 200;
    for modseq in 2..=DURING {
        a.send_datagram(&mail_event_datagram("alice", modseq));
    }
    a.send_datagram(&mail_event_datagram("bob", 5));
    a.send_datagram(&mail_event_datagram("carol", 9));
    assert_eq!(bob_on_a.next_state().await, (5, 0, 0));
    wait_until("A to read every event", || async {
        a.metric("mailpush_events_received_total{source=\"cyrus\",type=\"MessageNew\"}")
            .await
            == (DURING + 2) as f64
    })
    .await;

    nats.resume();
    // Once NATS is back, B and C catch up: with the newest state, never an older one.
    alice_on_b.state_reaching((DURING, 0, 0)).await;
    carol_on_c.state_reaching((9, 0, 0)).await;
    loop {
        let state: u64 = next_email_state(&mut alice_on_c, "alice")
            .await
            .parse()
            .unwrap();
        if state == DURING {
            break;
        }
        assert!(state < DURING, "{state}");
    }
    for node in [&a, &b, &c] {
        wait_until("the node to be ready again", || async {
            ready(node).await.0 == 200
        })
        .await;
        assert!(node.metric("mailpush_cluster_resyncs_total").await >= 1.0);
    }
    // And the cluster goes on as before.
    a.send_datagram(&mail_event_datagram("alice", DURING + 1));
    assert_eq!(alice_on_b.next_state().await, (DURING + 1, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NATS and PostgreSQL (MAILPUSH_TEST_NATS_URL, MAILPUSH_TEST_PG_URL)"]
async fn jobs_of_a_node_killed_mid_run_are_sent_exactly_once_by_the_others() {
    const JOBS: u32 = 500;
    let nats = shared_nats();
    let smtp = SmtpSink::start_with_threads(12);
    let cluster = Cluster::new(&nats)
        .await
        .env("MAILPUSH_NOTIFY__SMTP__URL", &smtp.url())
        .env("MAILPUSH_NOTIFY__WORKERS", "3")
        // A send may take up to the lease less a second: room for a machine busy with other tests.
        .env("MAILPUSH_NOTIFY__LEASE_SECS", "5")
        .env("MAILPUSH_NOTIFY__RETRY_BASE_MS", "200");
    // The relay holds the first messages until every job is in the shared queue.
    smtp.hold(Hold::Data);
    let (a, b, c) = (cluster.start("a"), cluster.start("b"), cluster.start("c"));
    for n in 0..JOBS {
        a.send_datagram(&common::sieve_mailto(n));
    }
    wait_until("every job queued", || async {
        a.metric("mailpush_jobs_total{outcome=\"queued\"}").await == f64::from(JOBS)
    })
    .await;
    smtp.hold(Hold::Nothing);
    wait_until("some emails before the crash", || async {
        smtp.mails().len() >= 100
    })
    .await;
    a.kill();
    let before_crash = smtp.mails().len();
    assert!(before_crash < JOBS as usize, "the crash came mid-run");

    let store = mailpush::store::Store::connect(
        Some(&cluster.database_url),
        std::path::Path::new("unused"),
    )
    .await
    .unwrap();
    // The dead node's jobs wait out their lease first: room for a busy machine.
    let within = std::time::Duration::from_secs(60);
    common::wait_until_within("every job done", within, || async {
        store
            .jobs(Some(mailpush::store::JobState::Done), 10_000)
            .await
            .unwrap()
            .len()
            == JOBS as usize
    })
    .await;
    let counts = smtp.by_message_id();
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "sent more than once: {twice:?}");
    // Every email arrived, but for the one window the delivery journal leaves
    // (src/notify/journal.rs): a worker killed after its journal record left for the database
    // and before it wrote the final `.`. Such a job is marked done from the journal, never
    // sent twice; at most one per worker of the killed node can be in that window.
    let jobs = store.jobs(None, 10_000).await.unwrap();
    let lost: Vec<_> = jobs
        .iter()
        .filter(|job| !counts.contains_key(&format!("mailpush.job{}@localhost", job.id)))
        .collect();
    assert!(
        lost.len() <= 3
            && lost.iter().all(|job| {
                job.last_error.as_deref() == Some(mailpush::store::DELIVERED_BEFORE_TAKEOVER)
            }),
        "{} of {JOBS} emails arrived; not arrived: {lost:#?}",
        counts.len()
    );
    eprintln!(
        "{} jobs were killed between their journal record and their final `.`",
        lost.len()
    );
    // B and C took part: woken by A's announcements, then alone after the crash.
    let sent = "mailpush_jobs_total{outcome=\"sent\"}";
    let (by_b, by_c) = (b.metric(sent).await, c.metric(sent).await);
    eprintln!("{before_crash} emails before the kill; B sent {by_b}, C sent {by_c}");
    assert!(by_b > 0.0 && by_c > 0.0);
    delete_bucket(&nats, &cluster.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NATS and PostgreSQL (MAILPUSH_TEST_NATS_URL, MAILPUSH_TEST_PG_URL)"]
async fn a_device_removed_through_b_is_not_pushed_by_a() {
    const ALICE_PHONE: &str = "aaaa456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const BOB_PHONE: &str = "bbbb456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let nats = shared_nats();
    let dir = tempfile::tempdir().unwrap();
    let apns = ApnsMock::start(dir.path()).await;
    let cluster = Cluster::new(&nats).await.envs(apns.env("MAIN"));
    let (a, b, c) = (cluster.start("a"), cluster.start("b"), cluster.start("c"));
    let client = reqwest::Client::new();
    let register = |user: &'static str, token: &'static str| {
        let request = client
            .post(b.url("/devices"))
            .bearer_auth(cluster.token(user))
            .json(&serde_json::json!({"platform": "apns", "token": token, "app": APNS_TOPIC}));
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 201);
            response.json::<Value>().await.unwrap()["id"]
                .as_i64()
                .unwrap()
        }
    };
    let alice_device = register("alice", ALICE_PHONE).await;
    register("bob", BOB_PHONE).await;
    // A learns of both registrations made through B.
    wait_until("A to hear of both registrations", || async {
        a.metric("mailpush_cluster_messages_received_total{kind=\"devices\"}")
            .await
            >= 1.0
    })
    .await;
    let pushed_to = |token: &str| {
        apns.recorder
            .received()
            .iter()
            .filter(|push| push.token == token)
            .count()
    };
    // Streams of alice on B and C relay her state; only A, which read the event, pushes.
    let _alice_on_b = legacy(&cluster, &b, "alice", None).await;
    let _alice_on_c = legacy(&cluster, &c, "alice", None).await;
    a.send_datagram(&mail_event_datagram("alice", 1));
    wait_until("alice's push", || async { pushed_to(ALICE_PHONE) == 1 }).await;

    let heard_before = a
        .metric("mailpush_cluster_messages_received_total{kind=\"devices\"}")
        .await;
    let removed = client
        .delete(b.url(&format!("/devices/{alice_device}")))
        .bearer_auth(cluster.token("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), 204);
    wait_until("A to hear of the removal", || async {
        a.metric("mailpush_cluster_messages_received_total{kind=\"devices\"}")
            .await
            > heard_before
    })
    .await;
    // Alice's next mail, then bob's: bob's push arriving means alice's event was handled.
    a.send_datagram(&mail_event_datagram("alice", 2));
    a.send_datagram(&mail_event_datagram("bob", 1));
    wait_until("bob's push", || async { pushed_to(BOB_PHONE) == 1 }).await;
    assert_eq!(
        pushed_to(ALICE_PHONE),
        1,
        "the removed token is not pushed again"
    );
    assert_eq!(
        apns.recorder.received().len(),
        2,
        "one push per event, from A alone"
    );
    delete_bucket(&nats, &cluster.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NATS and PostgreSQL (MAILPUSH_TEST_NATS_URL, MAILPUSH_TEST_PG_URL)"]
async fn after_every_node_restarted_an_old_last_event_id_gets_the_newest_state() {
    let nats = shared_nats();
    let cluster = Cluster::new(&nats).await;
    let (a, b, c) = (cluster.start("a"), cluster.start("b"), cluster.start("c"));
    let mut on_b = legacy(&cluster, &b, "alice", None).await;
    a.send_datagram(&mail_event_datagram("alice", 3));
    assert_eq!(on_b.next_state().await, (3, 0, 0));
    let old = on_b.last_event_id.clone().expect("an id");
    for modseq in 4..=10 {
        a.send_datagram(&mail_event_datagram("alice", modseq));
    }
    on_b.state_reaching((10, 0, 0)).await;
    drop(on_b);
    // B heard 10 from the bucket: it is stored. Every node dies at once.
    a.kill();
    b.kill();
    c.kill();
    let (_a, b, c) = (cluster.start("a"), cluster.start("b"), cluster.start("c"));
    let mut back = legacy(&cluster, &c, "alice", Some(&old)).await;
    assert_eq!(
        back.next_state().await,
        (10, 0, 0),
        "the newest state at once"
    );
    let mut current = legacy(&cluster, &b, "alice", Some("m10c0a0")).await;
    _a.send_datagram(&mail_event_datagram("alice", 11));
    assert_eq!(
        current.next_state().await,
        (11, 0, 0),
        "a client up to date gets the next change, and nothing before it"
    );
    delete_bucket(&nats, &cluster.prefix).await;
}
