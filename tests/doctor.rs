//! `mailpush doctor` on real `imapd.conf` files: a correct one passes, and each broken one
//! fails with its fault named, the file and line included.

mod common;

use common::fixtures;
use common::server::run_command;

/// mailpush's side: the socket Cyrus should write, writable by any user.
fn env() -> Vec<(&'static str, String)> {
    vec![
        (
            "MAILPUSH_INGEST__CYRUS_SOCKET",
            "/run/mailpush/notify.sock".to_owned(),
        ),
        ("MAILPUSH_INGEST__CYRUS_SOCKET_MODE", "0666".to_owned()),
    ]
}

fn doctor(file: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = fixtures().join("imapd").join(file);
    let (status, stdout, stderr) = run_command(
        dir.path(),
        &env(),
        &["doctor", "--cyrus", path.to_str().unwrap()],
    );
    assert!(stderr.is_empty(), "{stderr}");
    (status, stdout)
}

#[test]
fn a_correct_imapd_conf_passes() {
    let (status, report) = doctor("good.conf");
    assert_eq!(status, 0, "{report}");
    assert!(!report.contains("FAULT"), "{report}");
    assert!(
        report.contains(
            "good.conf:11: notifysocket /run/mailpush/notify.sock is mailpush's ingest.cyrus_socket"
        ),
        "{report}"
    );
}

#[test]
fn each_broken_imapd_conf_names_its_fault() {
    for (file, fault) in [
        ("no-notifier.conf", "event_notifier is not set"),
        (
            "no-modseq.conf",
            "no-modseq.conf:14: event_extra_params lacks modseq",
        ),
        ("no-sievenotifier.conf", "sievenotifier is not set"),
        (
            "wrong-socket.conf",
            "wrong-socket.conf:11: notifysocket /var/lib/cyrus/socket/notify is not where mailpush listens",
        ),
        (
            "no-flags.conf",
            "no-flags.conf:13: event_groups lacks flags",
        ),
    ] {
        let (status, report) = doctor(file);
        assert_eq!(status, 1, "{file}: {report}");
        let faults: Vec<&str> = report.lines().filter(|l| l.starts_with("FAULT")).collect();
        assert_eq!(faults.len(), 1, "{file}: one fault: {report}");
        assert!(faults[0].contains(fault), "{file}: {report}");
    }
    // Groups that crash Cyrus 3.6 with these parameters: one fault each.
    let (status, report) = doctor("access-quota.conf");
    assert_eq!(status, 1, "{report}");
    let faults: Vec<&str> = report.lines().filter(|l| l.starts_with("FAULT")).collect();
    assert_eq!(faults.len(), 2, "{report}");
    assert!(
        faults[0].contains("access-quota.conf:13: event_groups has access"),
        "{report}"
    );
    assert!(faults[1].contains("event_groups has quota"), "{report}");
}
