//! Every captured packet parses, field for field as the capture harness decoded it, and no
//! input of any shape makes the parsers panic.

mod common;

use std::path::Path;

use mailpush::event::{self, Class, Kind, dlist, packet};
use proptest::prelude::*;
use serde_json::Value;

fn sidecar(bin: &Path) -> Value {
    let text = std::fs::read_to_string(bin.with_extension("json")).expect("sidecar json");
    serde_json::from_str(&text).expect("sidecar parses")
}

fn check_folder(folder: &str) -> usize {
    let mut checked = 0;
    for (name, bytes) in common::datagram_fixtures(folder) {
        let expect = sidecar(&common::fixtures().join(folder).join(&name));
        let notification =
            packet::from_datagram(&bytes).unwrap_or_else(|err| panic!("{name}: {err}"));
        assert_eq!(notification.method, expect["method"], "{name}");
        assert_eq!(
            Value::from(class_name(&notification.class)),
            expect["class"],
            "{name}"
        );
        assert_eq!(notification.priority, expect["priority"], "{name}");
        assert_eq!(notification.user, expect["user"], "{name}");
        assert_eq!(notification.mailbox, expect["mailbox"], "{name}");
        assert_eq!(
            Value::from(notification.options.clone()),
            expect["options"],
            "{name}"
        );
        assert_eq!(notification.message, expect["message"], "{name}");
        assert_eq!(
            notification.fname.clone().map_or(Value::Null, Value::from),
            expect["fname"],
            "{name}"
        );

        let parsed =
            event::from_notification(notification).unwrap_or_else(|err| panic!("{name}: {err}"));
        if let Some(name_in_json) = expect["event"]["event"].as_str() {
            assert_eq!(parsed.name, name_in_json, "{name}");
            assert_ne!(
                parsed.kind,
                Kind::Other,
                "{name}: every captured event type is known"
            );
            // The owner comes from the mailbox path whenever there is one.
            if let Some(uri) = expect["event"]["uri"]
                .as_str()
                .filter(|uri| uri.contains("/user/"))
            {
                assert_eq!(parsed.owner.as_deref(), Some("alice"), "{name}: {uri}");
            }
            assert_eq!(
                parsed.slot.as_deref(),
                expect["event"]["serverFQDN"].as_str(),
                "{name}"
            );
            assert_eq!(parsed.modseq, expect["event"]["modseq"].as_u64(), "{name}");
            assert_eq!(
                parsed.unseen,
                expect["event"]["vnd.cmu.unseenMessages"].as_u64(),
                "{name}"
            );
        }
        checked += 1;
    }
    checked
}

fn class_name(class: &Class) -> &str {
    match class {
        Class::Event => "EVENT",
        Class::Sieve => "SIEVE",
        Class::Mail => "MAIL",
        Class::Imip => "IMIP",
        Class::Other(name) => name,
    }
}

#[test]
fn every_datagram_fixture_parses_as_captured() {
    assert_eq!(check_folder("cyrus"), 130);
    assert_eq!(check_folder("cyrus/fastmail-params"), 94);
}

#[test]
fn every_dlist_fixture_parses() {
    let fixtures = common::datagram_fixtures("cyrus-dlist");
    assert_eq!(fixtures.len(), 131);
    for (name, bytes) in fixtures {
        let (notification, used) =
            dlist::parse_record(&bytes, 1 << 20).unwrap_or_else(|err| panic!("{name}: {err:?}"));
        assert_eq!(used, bytes.len(), "{name}: one record per connection");
        event::from_notification(notification).unwrap_or_else(|err| panic!("{name}: {err}"));
    }
}

#[test]
fn message_new_envelope_and_counts() {
    let bytes = std::fs::read(common::fixtures().join("cyrus/008-MessageNew.bin")).unwrap();
    let event = event::from_notification(packet::from_datagram(&bytes).unwrap()).unwrap();
    assert_eq!(event.kind, Kind::MessageNew);
    let mailbox = event.mailbox.as_ref().unwrap();
    assert_eq!(mailbox.folder.as_deref(), Some("INBOX"));
    assert_eq!(
        (mailbox.uidvalidity, mailbox.uid),
        (Some(1795878360), Some(1))
    );
    let envelope = event.envelope.as_ref().unwrap();
    assert_eq!(envelope.from_name.as_deref(), Some("Bob Sender"));
    assert_eq!(envelope.from_address.as_deref(), Some("bob@sender.example"));
    assert_eq!(envelope.subject.as_deref(), Some("Hello 1"));
    assert_eq!(event.actor.as_deref(), Some("alice"));
}

proptest! {
    #[test]
    fn datagrams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(notification) = packet::from_datagram(&bytes) {
            let _ = event::from_notification(notification);
        }
    }

    #[test]
    fn event_headers_with_any_body_never_panic(body in ".{0,512}") {
        let datagram = [b"mailpush\0EVENT\0\0\0\x000\0".as_slice(), body.as_bytes(), b"\0"].concat();
        // A body with NULs in it splits into more fields; that is an error, not a panic.
        if let Ok(notification) = packet::from_datagram(&datagram) {
            let _ = event::from_notification(notification);
        }
    }

    #[test]
    fn json_like_events_never_panic(
        name in "[A-Za-z.]{0,20}",
        uri in ".{0,60}",
        modseq in any::<i64>(),
        envelope in ".{0,200}",
        counters in "[0-9 x]{0,40}",
    ) {
        let json = serde_json::json!({
            "event": name, "uri": uri, "modseq": modseq, "vnd.cmu.envelope": envelope,
            "vnd.fastmail.counters": counters, "vnd.cmu.mbtype": "e",
        });
        let _ = event::from_json(json.to_string());
    }
}
