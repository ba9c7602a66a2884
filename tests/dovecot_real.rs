//! A real Dovecot (Debian's 2.3.19 packages, which `.ci/run` installs) running mailpush's own
//! Lua script and configuration from `examples/dovecot/`: a message delivered over LMTP and
//! read over IMAP must reach the user's EventSource stream and their iPhone, as README says.
//! The Dovecot is the test's own, on ephemeral ports in a temporary folder.
//!
//! `MAILPUSH_TEST_DOVECOT` names the `dovecot` binary. Dovecot runs as root and drops to the
//! users it is given, so the test must run as root (CI does).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::mock::{APNS_TOPIC, ApnsMock};
use common::peer::{Peer, free_port};
use common::{DEADLINE, INGEST_SECRET, TestApp, wait_until};
use serde_json::json;

const PASSWORD: &str = "dovecot-test-password";
const IPHONE: &str = "ab0c456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A Dovecot of the test's own; killed when dropped.
struct Dovecot {
    _peer: Peer,
    imap: u16,
    lmtp: u16,
    dir: tempfile::TempDir,
}

impl Dovecot {
    /// Starts `bin` with mailpush's example configuration pointed at `mailpush`.
    fn start(bin: &Path, mailpush: std::net::SocketAddr) -> Dovecot {
        let dir = tempfile::Builder::new()
            .prefix("mailpush-dovecot-")
            .tempdir()
            .unwrap();
        let root = dir.path();
        // Dovecot's unprivileged processes must reach their sockets and the mail.
        chmod(root, 0o755);
        for folder in ["run", "state", "mail", "etc/conf.d"] {
            std::fs::create_dir_all(root.join(folder)).unwrap();
        }
        let owner = Command::new("chown")
            .args(["-R", "nobody:nogroup"])
            .arg(root.join("mail"))
            .status()
            .unwrap();
        assert!(owner.success());
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/dovecot");
        let script = root.join("etc/mailpush.lua");
        std::fs::copy(examples.join("mailpush.lua"), &script).unwrap();
        chmod(&script, 0o644);
        // The shipped drop-in, with its two blanks filled as README says.
        let drop_in = std::fs::read_to_string(examples.join("mailpush.conf"))
            .unwrap()
            .replace("/etc/dovecot/mailpush.lua", &script.display().to_string())
            .replace("CHANGE-ME-to-mailpush-ingest.secret", INGEST_SECRET)
            .replace(
                "http://127.0.0.1:8080/ingest/dovecot/lua",
                &format!("http://{mailpush}/ingest/dovecot/lua"),
            );
        std::fs::write(root.join("etc/conf.d/95-mailpush.conf"), drop_in).unwrap();
        std::fs::write(
            root.join("etc/passwd"),
            format!("alice:{{PLAIN}}{PASSWORD}::::::\n"),
        )
        .unwrap();
        let (imap, lmtp) = (free_port(), free_port());
        let state = root.display();
        let conf = format!(
            r#"instance_name = mailpush-test-{imap}
base_dir = {state}/run
state_dir = {state}/state
listen = 127.0.0.1
protocols = imap lmtp
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_username_format = %Ln
log_path = {state}/dovecot.log
first_valid_uid = 1
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {state}/etc/passwd
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={state}/mail/%n
}}
mail_location = maildir:~/Maildir
namespace inbox {{
  inbox = yes
  separator = /
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {lmtp}
  }}
}}
!include conf.d/*.conf
"#
        );
        let conf_file = root.join("etc/dovecot.conf");
        std::fs::write(&conf_file, conf).unwrap();
        let peer = Peer::spawn(
            &bin.display().to_string(),
            Command::new(bin)
                .arg("-F")
                .arg("-c")
                .arg(&conf_file)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        );
        let dovecot = Dovecot {
            _peer: peer,
            imap,
            lmtp,
            dir,
        };
        let deadline = Instant::now() + DEADLINE;
        while TcpStream::connect(("127.0.0.1", imap)).is_err()
            || TcpStream::connect(("127.0.0.1", lmtp)).is_err()
        {
            assert!(
                Instant::now() < deadline,
                "Dovecot did not start:\n{}",
                dovecot.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        dovecot
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("etc/dovecot.conf")
    }
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A line-based client (LMTP, IMAP) with a deadline on every read.
struct Session {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Session {
    fn connect(port: u16) -> Session {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        Session {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .expect("a line from Dovecot");
        line
    }

    fn send(&mut self, text: &str) {
        self.writer.write_all(text.as_bytes()).unwrap();
    }

    /// Reads SMTP-style replies until the last line of one (`250 ...`); returns it.
    fn reply(&mut self) -> String {
        loop {
            let line = self.line();
            if line.as_bytes().get(3) != Some(&b'-') {
                return line;
            }
        }
    }

    /// Sends an IMAP command and reads until its tagged answer.
    fn command(&mut self, tag: &str, command: &str) -> String {
        self.send(&format!("{tag} {command}\r\n"));
        loop {
            let line = self.line();
            if line.starts_with(&format!("{tag} ")) {
                return line;
            }
        }
    }
}

/// Delivers one message to alice over LMTP.
fn deliver(lmtp: u16, subject_header: &str) {
    let mut session = Session::connect(lmtp);
    assert!(session.reply().starts_with("220"));
    session.send("LHLO test.example\r\n");
    assert!(session.reply().starts_with("250"));
    session.send("MAIL FROM:<sender@example.org>\r\n");
    assert!(session.reply().starts_with("250"));
    session.send("RCPT TO:<alice@example.test>\r\n");
    assert!(session.reply().starts_with("250"));
    session.send("DATA\r\n");
    assert!(session.reply().starts_with("354"));
    session.send(&format!(
        "From: =?UTF-8?Q?J=C3=BCrgen_Sender?= <sender@example.org>\r\nTo: Alice <alice@example.test>\r\nSubject: {subject_header}\r\nMessage-ID: <m1@example.org>\r\n\r\nHello Alice.\r\n.\r\n"
    ));
    let saved = session.reply();
    assert!(saved.starts_with("250"), "{saved}");
    session.send("QUIT\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Dovecot: set MAILPUSH_TEST_DOVECOT to the dovecot binary (as root)"]
async fn a_real_dovecot_with_the_shipped_script_drives_streams_and_pushes() {
    let bin = PathBuf::from(std::env::var("MAILPUSH_TEST_DOVECOT").expect("MAILPUSH_TEST_DOVECOT"));
    let dir = tempfile::tempdir().unwrap();
    let apns = ApnsMock::start(dir.path()).await;
    let app = TestApp::builder().envs(apns.env("MAIN")).start().await;
    let registered = app
        .request(reqwest::Method::POST, "/devices", "alice")
        .json(&json!({"platform": "apns", "token": IPHONE, "app": APNS_TOPIC}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 201);
    let mut alice = app.sse("alice").await;
    let dovecot = Dovecot::start(&bin, app.http);

    // The doctor agrees with the configuration the test runs.
    let (status, report, _) = common::server::run_command(
        dir.path(),
        &[
            ("MAILPUSH_HTTP__LISTEN", app.http.to_string()),
            ("MAILPUSH_INGEST__SECRET", INGEST_SECRET.to_owned()),
        ],
        &["doctor", "--dovecot", dovecot.conf().to_str().unwrap()],
    );
    assert_eq!(status, 0, "{report}");

    // LMTP delivery: INBOX is created, then the message arrives.
    let lmtp = dovecot.lmtp;
    tokio::task::spawn_blocking(move || deliver(lmtp, "=?UTF-8?Q?Gr=C3=BC=C3=9Fe?= from Dovecot"))
        .await
        .unwrap();
    wait_until("the alert at the iPhone", || async {
        !apns.recorder.received().is_empty()
    })
    .await;
    let alert = &apns.recorder.received()[0];
    assert_eq!(alert.token, IPHONE);
    assert_eq!(
        alert.body["aps"]["alert"],
        "Jürgen Sender\nGrüße from Dovecot",
        "{}\n{}",
        alert.body,
        dovecot.log()
    );
    assert_eq!(alert.body["aps"]["badge"], 1, "the script's unseen count");
    let (mail, _, _) = alice.next_state().await;
    assert!(mail > 0);

    // IMAP: reading it moves the badge to 0, and the state on.
    let imap = dovecot.imap;
    tokio::task::spawn_blocking(move || {
        let mut session = Session::connect(imap);
        assert!(session.line().starts_with("* OK"));
        assert!(
            session
                .command("a", &format!("LOGIN alice {PASSWORD}"))
                .starts_with("a OK")
        );
        assert!(session.command("b", "SELECT INBOX").starts_with("b OK"));
        assert!(
            session
                .command("c", "STORE 1 +FLAGS (\\Seen)")
                .starts_with("c OK")
        );
        assert!(session.command("d", "LOGOUT").starts_with("d OK"));
    })
    .await
    .unwrap();
    wait_until("the badge update", || async {
        apns.recorder.received().len() >= 2
    })
    .await;
    let badge = &apns.recorder.received()[1];
    assert_eq!(badge.body["aps"]["badge"], 0, "{}", badge.body);
    assert_eq!(badge.body["aps"].get("alert"), None, "badge only");
    let mut last = mail;
    // The state moves for every transaction (the read; Dovecot may report more).
    let (next, _, _) = alice.next_state().await;
    assert!(next > last);
    last = next;
    let metrics = app.metrics().await;
    assert!(
        common::metric(
            &metrics,
            "mailpush_events_received_total{source=\"dovecot_lua\",type=\"MessageNew\"}"
        ) == 1.0,
        "{metrics}"
    );
    assert_eq!(
        apns.recorder.received().len(),
        2,
        "one alert, one badge update"
    );
    assert!(last > 0);
    assert!(
        !dovecot.log().contains("mailpush: POST"),
        "no failed POST: {}",
        dovecot.log()
    );
}
