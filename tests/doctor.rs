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

/// mailpush's side for Dovecot: HTTP on 127.0.0.1:8080, and the ingest secret.
fn dovecot_env() -> Vec<(&'static str, String)> {
    vec![
        ("MAILPUSH_HTTP__LISTEN", "127.0.0.1:8080".to_owned()),
        ("MAILPUSH_INGEST__SECRET", common::INGEST_SECRET.to_owned()),
    ]
}

/// mailpush's Lua script as shipped.
fn script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/dovecot/mailpush.lua")
}

/// Copies `fixtures/dovecot-conf/<file>` into `dir` with `@SCRIPT@` naming the shipped script.
fn dovecot_conf(dir: &std::path::Path, file: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(fixtures().join("dovecot-conf").join(file)).unwrap();
    let path = dir.join(file);
    std::fs::write(
        &path,
        text.replace("@SCRIPT@", &script().display().to_string()),
    )
    .unwrap();
    path
}

fn dovecot_doctor(conf: &std::path::Path) -> (i32, String) {
    let (status, stdout, stderr) = run_command(
        conf.parent().unwrap(),
        &dovecot_env(),
        &["doctor", "--dovecot", conf.to_str().unwrap()],
    );
    assert!(stderr.is_empty(), "{stderr}");
    (status, stdout)
}

fn faults(report: &str) -> Vec<&str> {
    report.lines().filter(|l| l.starts_with("FAULT")).collect()
}

#[test]
fn a_correct_dovecot_conf_passes() {
    let dir = tempfile::tempdir().unwrap();
    let (status, report) = dovecot_doctor(&dovecot_conf(dir.path(), "good.conf"));
    assert_eq!(status, 0, "{report}");
    assert!(faults(&report).is_empty(), "{report}");
    for line in [
        "good.conf:5: mail_plugins has notify push_notification mail_lua push_notification_lua",
        "good.conf:8: protocol imap: mail_plugins keeps notify push_notification mail_lua push_notification_lua",
        "good.conf:12: the Lua driver runs mailpush's script",
        "good.conf:13: mailpush_url is mailpush's http://127.0.0.1:8080/ingest/dovecot/lua",
        "good.conf:14: mailpush_token is mailpush's ingest.secret",
    ] {
        assert!(report.contains(line), "{line}\n{report}");
    }
    assert!(!report.contains(common::INGEST_SECRET), "no secret printed");
}

#[test]
fn the_shipped_dovecot_conf_passes_once_its_token_is_set() {
    // Debian's layout: dovecot.conf includes conf.d/*.conf, and the example is dropped in.
    let dir = tempfile::tempdir().unwrap();
    let split = fixtures().join("dovecot-conf/split");
    std::fs::create_dir(dir.path().join("conf.d")).unwrap();
    for file in ["dovecot.conf", "conf.d/10-mail.conf"] {
        std::fs::copy(split.join(file), dir.path().join(file)).unwrap();
    }
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/dovecot/mailpush.conf"),
    )
    .unwrap()
    .replace("/etc/dovecot/mailpush.lua", &script().display().to_string());
    let dropped_in = dir.path().join("conf.d/95-mailpush.conf");
    std::fs::write(&dropped_in, &example).unwrap();
    let conf = dir.path().join("dovecot.conf");
    let (status, report) = dovecot_doctor(&conf);
    assert_eq!(status, 1, "the token is still CHANGE-ME: {report}");
    assert_eq!(faults(&report).len(), 1, "{report}");
    assert!(
        faults(&report)[0]
            .contains("95-mailpush.conf:13: mailpush_token is not mailpush's ingest.secret"),
        "{report}"
    );
    std::fs::write(
        &dropped_in,
        example.replace("CHANGE-ME-to-mailpush-ingest.secret", common::INGEST_SECRET),
    )
    .unwrap();
    let (status, report) = dovecot_doctor(&conf);
    assert_eq!(status, 0, "{report}");
    assert!(
        report.contains("95-mailpush.conf:8: mail_plugins has notify"),
        "{report}"
    );
}

#[test]
fn each_broken_dovecot_conf_names_its_fault() {
    let dir = tempfile::tempdir().unwrap();
    for (file, fault) in [
        (
            "no-notify.conf",
            "no-notify.conf:5: mail_plugins lacks notify, so nothing of any service reaches mailpush",
        ),
        (
            "lmtp-override.conf",
            "lmtp-override.conf:8: protocol lmtp: mail_plugins drops notify push_notification mail_lua push_notification_lua, so nothing of LMTP (new mail) reaches mailpush (keep $mail_plugins in it)",
        ),
        (
            "wrong-url.conf",
            "wrong-url.conf:13: mailpush_url points elsewhere (http://127.0.0.1:8080/dovecot/lua), not at mailpush's http://127.0.0.1:8080/ingest/dovecot/lua",
        ),
        (
            "wrong-token.conf",
            "wrong-token.conf:14: mailpush_token is not mailpush's ingest.secret",
        ),
        (
            "driver-gap.conf",
            "driver-gap.conf:13: push_notification_driver3 is never loaded: Dovecot stops at the first missing number (push_notification_driver2)",
        ),
        (
            "ox-no-dict.conf",
            "ox-no-dict.conf:6: mail_attribute_dict is not set",
        ),
    ] {
        let (status, report) = dovecot_doctor(&dovecot_conf(dir.path(), file));
        assert_eq!(status, 1, "{file}: {report}");
        let found = faults(&report);
        assert!(
            found.iter().any(|line| line.contains(fault)),
            "{file}: {fault}\n{report}"
        );
        // A gap also leaves mailpush with no driver at all: that is the one other fault.
        let expected = if file == "driver-gap.conf" { 2 } else { 1 };
        assert_eq!(found.len(), expected, "{file}: {report}");
    }
}

#[test]
fn the_harness_dovecot_conf_is_not_pointed_at_mailpush() {
    // The real configuration the Dovecot fixtures were captured with: its drivers go to the
    // harness's own receiver, with its own script.
    let dir = tempfile::tempdir().unwrap();
    let (status, report) = dovecot_doctor(&dovecot_conf(dir.path(), "harness-dovecot.conf"));
    assert_eq!(status, 1, "{report}");
    for fault in [
        "harness-dovecot.conf:54: the OX driver points elsewhere (http://oxuser:<redacted>@127.0.0.1:18480/preliminary/http-notify/v1/notify)",
        "harness-dovecot.conf:55: the OX driver points elsewhere (http://127.0.0.1:18480/ox-user-from-metadata)",
        "harness-dovecot.conf:56: the Lua driver's script @STATE@/etc/mailpush-push.lua cannot be read",
        "harness-dovecot.conf:56: plugin { mailpush_url } is not set",
        "harness-dovecot.conf:56: plugin { mailpush_token } is not set",
    ] {
        assert!(report.contains(fault), "{fault}\n{report}");
    }
    assert!(
        !report.contains("oxpass"),
        "passwords are not printed: {report}"
    );
}
