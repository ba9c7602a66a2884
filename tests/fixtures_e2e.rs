//! Every captured Cyrus packet, sent into a running `mailpush serve` through each ingest form
//! (datagram socket, `dlist:` stream socket, NDJSON over TCP), yields exactly the expected
//! EventSource events at the owner's client and nothing at another user's client.

mod common;

use std::io::{Read, Write};
use std::path::Path;

use common::server::Server;
use common::{AUTH_SECRET, INGEST_SECRET, Sse, datagram_fixtures, metric};
use mailpush::auth::TokenKeys;

/// The state alice's client must see after each datagram fixture that moves it, written out by
/// hand from the capture (`index.json`): mail modseqs from message and flag events in mail
/// folders, the calendar modseq from the CalDAV PUT. Every other packet changes nothing.
const DATAGRAM_STATES: &[(&str, (u64, u64, u64))] = &[
    ("008-MessageNew.bin", (4, 0, 0)),
    ("011-MessageNew.bin", (5, 0, 0)),
    ("014-MessageNew.bin", (6, 0, 0)),
    ("017-MessageRead.bin", (7, 0, 0)),
    ("021-FlagsSet.bin", (8, 0, 0)),
    ("025-FlagsClear.bin", (9, 0, 0)),
    ("029-FlagsClear.bin", (10, 0, 0)),
    // 034 FlagsSet and 035 FlagsClear carry the same modseq 12 and push nothing more.
    ("033-MessageRead.bin", (12, 0, 0)),
    ("039-MessageTrash.bin", (13, 0, 0)),
    ("042-MessageExpunge.bin", (14, 0, 0)),
    ("051-vnd.cmu.MessageCopy.bin", (17, 0, 0)),
    ("055-vnd.cmu.MessageMove.bin", (18, 0, 0)),
    ("057-MessageExpunge.bin", (19, 0, 0)),
    ("061-MessageAppend.bin", (20, 0, 0)),
    ("084-MessageNew.bin", (31, 0, 0)),
    ("091-MessageNew.bin", (37, 0, 0)),
    ("098-MessageNew.bin", (42, 0, 0)),
    ("104-MessageNew.bin", (45, 0, 0)),
    ("128-MessageNew.bin", (45, 70, 0)),
];

/// The same scenario captured in `dlist:` form; it also holds the 82 KB MessageNew (087) that
/// the datagram form lost.
const DLIST_STATES: &[(&str, (u64, u64, u64))] = &[
    ("008-MessageNew.dlist", (4, 0, 0)),
    ("011-MessageNew.dlist", (5, 0, 0)),
    ("014-MessageNew.dlist", (6, 0, 0)),
    ("017-MessageRead.dlist", (7, 0, 0)),
    ("021-FlagsSet.dlist", (8, 0, 0)),
    ("025-FlagsClear.dlist", (9, 0, 0)),
    ("029-FlagsClear.dlist", (10, 0, 0)),
    ("033-MessageRead.dlist", (12, 0, 0)),
    ("039-MessageTrash.dlist", (13, 0, 0)),
    ("042-MessageExpunge.dlist", (14, 0, 0)),
    ("051-vnd.cmu.MessageCopy.dlist", (17, 0, 0)),
    ("055-vnd.cmu.MessageMove.dlist", (18, 0, 0)),
    ("057-MessageExpunge.dlist", (19, 0, 0)),
    ("061-MessageAppend.dlist", (20, 0, 0)),
    ("084-MessageNew.dlist", (31, 0, 0)),
    ("087-MessageNew.dlist", (32, 0, 0)),
    ("092-MessageNew.dlist", (37, 0, 0)),
    ("099-MessageNew.dlist", (42, 0, 0)),
    ("105-MessageNew.dlist", (45, 0, 0)),
    ("129-MessageNew.dlist", (45, 70, 0)),
];

struct Setup {
    _dir: tempfile::TempDir,
    server: Server,
    cyrus_socket: std::path::PathBuf,
    dlist_socket: std::path::PathBuf,
    keys: TokenKeys,
}

fn start() -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let cyrus_socket = dir.path().join("notify.sock");
    let dlist_socket = dir.path().join("dlist.sock");
    let env = [
        ("MAILPUSH_HTTP__LISTEN", "127.0.0.1:0".to_owned()),
        (
            "MAILPUSH_STORAGE__DATA_DIR",
            dir.path().join("data").display().to_string(),
        ),
        (
            "MAILPUSH_INGEST__CYRUS_SOCKET",
            cyrus_socket.display().to_string(),
        ),
        (
            "MAILPUSH_INGEST__CYRUS_DLIST_SOCKET",
            dlist_socket.display().to_string(),
        ),
        ("MAILPUSH_INGEST__NDJSON_LISTEN", "127.0.0.1:0".to_owned()),
        ("MAILPUSH_INGEST__SECRET", INGEST_SECRET.to_owned()),
        ("MAILPUSH_AUTH__SECRET", AUTH_SECRET.to_owned()),
    ];
    let server = Server::start(dir.path(), &env, &["serve"]);
    let keys = common::auth_keys(dir.path());
    Setup {
        _dir: dir,
        server,
        cyrus_socket,
        dlist_socket,
        keys,
    }
}

impl Setup {
    async fn sse(&self, user: &str) -> Sse {
        let token = self.keys.mint(user, 600, false).expect("token");
        Sse::connect(&self.server.url("/events"), &token, None).await
    }

    async fn metrics(&self) -> String {
        reqwest::get(self.server.url("/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("body")
    }
}

/// Sends each fixture with `send`, and after each one that moves alice's state, waits for
/// exactly that state at alice's client. A packet that wrongly pushed something would show up
/// as an unexpected state before the next expected one; the final markers close the window.
async fn replay(
    setup: &Setup,
    fixtures: &[(String, Vec<u8>)],
    expected: &[(&str, (u64, u64, u64))],
    mut send: impl FnMut(&[u8]),
) {
    let mut alice = setup.sse("alice").await;
    let mut bob = setup.sse("bob").await;
    let mut matched = 0;
    for (name, bytes) in fixtures {
        send(bytes);
        if let Some((_, state)) = expected.iter().find(|(file, _)| file == name) {
            assert_eq!(alice.next_state().await, *state, "after {name}");
            matched += 1;
        }
        // The captured calendar alarm is a display alarm: a reminder on alice's stream.
        if name.contains("CalendarAlarm") {
            let event = alice.next_event().await.expect("a reminder");
            assert_eq!(event.event, "reminder", "after {name}: {event:?}");
            assert!(
                event.data.contains("Standup with the push team"),
                "{event:?}"
            );
        }
    }
    assert_eq!(matched, expected.len(), "every expected fixture was sent");
    send(&marker("alice", 1000));
    assert_eq!(
        alice.next_state().await,
        (1000, expected.last().map_or(0, |(_, s)| s.1), 0),
        "alice's marker comes next: no stray event"
    );
    // Bob's marker is far below alice's modseqs: any leak of alice's state into bob's cell
    // would show as a higher value.
    send(&marker("bob", 1));
    assert_eq!(
        bob.next_state().await,
        (1, 0, 0),
        "bob sees only his own state"
    );
}

/// A MessageNew for `user`'s INBOX as a Cyrus datagram.
fn marker(user: &str, modseq: u64) -> Vec<u8> {
    let json = format!(
        r#"{{"event":"MessageNew","uri":"imap://h/user/{user};UIDVALIDITY=1/;UID=1","modseq":{modseq},"vnd.cmu.mbtype":"e"}}"#
    );
    [
        b"mailpush\0EVENT\0\0\0\x000\0".as_slice(),
        json.as_bytes(),
        b"\0",
    ]
    .concat()
}

fn send_datagram(path: &Path, bytes: &[u8]) {
    common::send_datagram(path, bytes);
}

#[tokio::test]
async fn datagram_fixtures_reach_the_owner_only() {
    let setup = start();
    let fixtures = datagram_fixtures("cyrus");
    let socket = setup.cyrus_socket.clone();
    replay(&setup, &fixtures, DATAGRAM_STATES, |bytes| {
        send_datagram(&socket, bytes)
    })
    .await;
    let metrics = setup.metrics().await;
    let received: f64 = metrics
        .lines()
        .filter(|line| line.starts_with("mailpush_events_received_total{source=\"cyrus\""))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(
        received,
        (fixtures.len() + 2) as f64,
        "every packet parsed:\n{metrics}"
    );
    assert!(
        !metrics.contains("mailpush_packets_rejected_total{"),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "mailpush_slot_events_total{slot=\"mailstore1.example.test\"}"
        ),
        116.0,
        "{metrics}"
    );
    let status = setup.server.terminate();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn dlist_fixtures_reach_the_owner_only_and_are_acknowledged() {
    let setup = start();
    let fixtures = datagram_fixtures("cyrus-dlist");
    let socket = setup.dlist_socket.clone();
    let send_dlist = |bytes: &[u8]| {
        // Cyrus's dlist form: one connection per record, then wait for the reply.
        let record = if bytes.starts_with(b"mailpush\0") {
            to_dlist(bytes)
        } else {
            bytes.to_vec()
        };
        let mut stream = std::os::unix::net::UnixStream::connect(&socket).expect("connect dlist");
        stream
            .set_read_timeout(Some(common::DEADLINE))
            .expect("timeout");
        stream.write_all(&record).expect("write record");
        let mut reply = [0u8; 8];
        stream.read_exact(&mut reply).expect("read reply");
        assert_eq!(&reply, b"OK NIL\r\n");
    };
    replay(&setup, &fixtures, DLIST_STATES, send_dlist).await;
    let metrics = setup.metrics().await;
    assert!(
        !metrics.contains("mailpush_packets_rejected_total{"),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "mailpush_events_received_total{source=\"dlist\",type=\"MessageNew\"}"
        ),
        11.0,
        "{metrics}"
    );
}

/// The JSON body of a marker datagram (between the header and the final NUL).
fn marker_json(datagram: &[u8]) -> &[u8] {
    let start = datagram.iter().position(|b| *b == b'{').expect("json");
    &datagram[start..datagram.len() - 1]
}

/// Rewrites a marker datagram in dlist form.
fn to_dlist(datagram: &[u8]) -> Vec<u8> {
    let json = marker_json(datagram);
    let mut record = format!("NOTIFY %(METHOD mailpush CLASS EVENT PRIORITY NIL USER NIL MAILBOX NIL OPTIONS () MESSAGE {{{}+}}\r\n", json.len()).into_bytes();
    record.extend_from_slice(json);
    record.extend_from_slice(b" FILEPATH NIL)\r\n");
    record
}

#[tokio::test]
async fn ndjson_events_reach_the_owner_only() {
    let setup = start();
    // The JSON bodies of the EVENT datagrams, one per line over one TCP connection.
    let fixtures: Vec<(String, Vec<u8>)> = datagram_fixtures("cyrus")
        .into_iter()
        .filter_map(|(name, bytes)| {
            let notification =
                mailpush::event::packet::from_datagram(&bytes).expect("fixture parses");
            (notification.class == mailpush::event::Class::Event)
                .then(|| (name, notification.message.into_bytes()))
        })
        .collect();
    let mut stream = common::ndjson_connect(setup.server.ndjson.expect("ndjson address"));
    let send_line = |bytes: &[u8]| {
        let line = if bytes.starts_with(b"mailpush\0") {
            marker_json(bytes)
        } else {
            bytes
        };
        stream.write_all(line).expect("write");
        stream.write_all(b"\n").expect("newline");
    };
    replay(&setup, &fixtures, DATAGRAM_STATES, send_line).await;
    let metrics = setup.metrics().await;
    assert!(
        !metrics.contains("mailpush_packets_rejected_total{"),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "mailpush_events_received_total{source=\"ndjson\",type=\"MessageNew\"}"
        ),
        10.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn fastmail_counters_drive_all_three_modseqs() {
    let setup = start();
    let mut alice = setup.sse("alice").await;
    for (_, bytes) in datagram_fixtures("cyrus/fastmail-params") {
        send_datagram(&setup.cyrus_socket, &bytes);
    }
    // The capture ends with mail 45 and calendar 72 in vnd.fastmail.counters; states only rise.
    // The display alarm in the capture adds a reminder somewhere in between.
    let mut last = (0, 0, 0);
    let mut reminders = 0;
    while last != (45, 72, 0) {
        let event = alice.next_event().await.expect("stream open");
        if event.event == "reminder" {
            reminders += 1;
            continue;
        }
        assert_eq!(event.event, "push", "{event:?}");
        let state = common::sse::state_of(&event.data);
        assert!(
            state.0 >= last.0 && state.1 >= last.1 && state.2 >= last.2,
            "{state:?} after {last:?}"
        );
        last = state;
    }
    assert!(reminders <= 1, "one display alarm, at most one reminder");
    let metrics = setup.metrics().await;
    assert!(
        !metrics.contains("mailpush_packets_rejected_total{"),
        "{metrics}"
    );
}
