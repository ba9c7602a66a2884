//! Cyrus's `imapd.conf` against mailpush's configuration: the notify socket (where, how long,
//! who may write it), the notifier, the event groups and parameters, the Sieve notifier.

use std::path::{Path, PathBuf};

use super::Report;
use crate::config::Config;

/// `sun_path` holds 108 bytes, the terminating NUL included.
const MAX_SOCKET_PATH: usize = 107;

/// An `imapd.conf`: `key: value` lines, `#` comments.
struct ImapdConf<'a> {
    options: Vec<(usize, &'a str, &'a str)>,
}

impl<'a> ImapdConf<'a> {
    fn parse(text: &'a str) -> ImapdConf<'a> {
        let options = text
            .lines()
            .enumerate()
            .filter_map(|(index, line)| {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    return None;
                }
                let (key, value) = line.split_once(':')?;
                Some((index + 1, key.trim(), value.trim()))
            })
            .collect();
        ImapdConf { options }
    }

    /// The last value given for `key` (Cyrus takes the last), with its line number.
    fn get(&self, key: &str) -> Option<(usize, &'a str)> {
        self.options
            .iter()
            .rev()
            .find(|(_, k, _)| *k == key)
            .map(|(line, _, value)| (*line, *value))
    }
}

/// Checks a Cyrus `imapd.conf` (read from `source`, for messages) against mailpush's config.
pub fn check_cyrus(text: &str, source: &Path, config: &Config) -> Report {
    let conf = ImapdConf::parse(text);
    let mut report = Report::default();
    let at = |line: usize| format!("{}:{line}", source.display());
    match conf.get("event_notifier") {
        Some((line, value)) => report.ok(format!("{}: event_notifier: {value}", at(line))),
        None => report.fault(format!(
            "{}: event_notifier is not set: Cyrus sends no events at all",
            source.display()
        )),
    }
    check_socket(&conf, source, config, &mut report);
    check_groups(&conf, source, &mut report);
    check_params(&conf, source, &mut report);
    match conf.get("sievenotifier") {
        Some((line, value)) => report.ok(format!("{}: sievenotifier: {value}", at(line))),
        None => report.fault(format!(
            "{}: sievenotifier is not set: Sieve notify actions never reach mailpush",
            source.display()
        )),
    }
    report
}

fn check_socket(conf: &ImapdConf<'_>, source: &Path, config: &Config, report: &mut Report) {
    let Some((line, value)) = conf.get("notifysocket") else {
        report.fault(format!(
            "{}: notifysocket is not set: Cyrus has nowhere to send events",
            source.display()
        ));
        return;
    };
    let here = format!("{}:{line}", source.display());
    let (path, listening, key) = match value.strip_prefix("dlist:") {
        Some(path) => (
            PathBuf::from(path),
            config.ingest.cyrus_dlist_socket.iter().cloned().collect(),
            "ingest.cyrus_dlist_socket",
        ),
        None => (
            PathBuf::from(value),
            config.ingest.cyrus_socket.clone(),
            "ingest.cyrus_socket",
        ),
    };
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        report.fault(format!(
            "{here}: notifysocket {} is {} bytes, over the {MAX_SOCKET_PATH} a Unix socket path may hold",
            path.display(),
            path.as_os_str().len()
        ));
    }
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
    if !listening.iter().any(|l| absolute(l) == absolute(&path)) {
        let listening: Vec<String> = listening.iter().map(|p| p.display().to_string()).collect();
        report.fault(format!(
            "{here}: notifysocket {} is not where mailpush listens ({key} = [{}])",
            path.display(),
            listening.join(", ")
        ));
        return;
    }
    report.ok(format!(
        "{here}: notifysocket {} is mailpush's {key}",
        path.display()
    ));
    check_writable(&path, &here, config, report);
}

/// Cyrus runs as its own user: the socket must let others, or a group given to it, write.
fn check_writable(path: &Path, here: &str, config: &Config, report: &mut Report) {
    use std::os::unix::fs::PermissionsExt;
    let (mode, from) = match std::fs::metadata(path) {
        Ok(meta) => (meta.permissions().mode() & 0o777, "the socket file has"),
        Err(_) => (config.socket_mode(), "ingest.cyrus_socket_mode gives it"),
    };
    let group = config.ingest.cyrus_socket_group.as_deref();
    if mode & 0o002 != 0 {
        report.ok(format!(
            "{here}: any user may write the socket ({from} mode {mode:04o})"
        ));
    } else if let (true, Some(group)) = (mode & 0o020 != 0, group) {
        report.ok(format!(
            "{here}: group {group} may write the socket ({from} mode {mode:04o}); Cyrus must run in it"
        ));
    } else {
        report.fault(format!(
            "{here}: Cyrus (its own user) cannot write the socket: {from} mode {mode:04o} and no \
             group; set ingest.cyrus_socket_group to Cyrus's group, or ingest.cyrus_socket_mode = \"0666\""
        ));
    }
}

fn check_groups(conf: &ImapdConf<'_>, source: &Path, report: &mut Report) {
    let Some((line, value)) = conf.get("event_groups") else {
        report.fault(format!(
            "{}: event_groups is not set: Cyrus's default sends no message or flag events",
            source.display()
        ));
        return;
    };
    let here = format!("{}:{line}", source.display());
    let groups: Vec<&str> = value.split_whitespace().collect();
    for (group, why) in [
        ("message", "new mail and its state"),
        ("flags", "reads and flag changes (badges)"),
    ] {
        if groups.contains(&group) {
            report.ok(format!("{here}: event_groups has {group}"));
        } else {
            report.fault(format!(
                "{here}: event_groups lacks {group}: no events for {why}"
            ));
        }
    }
    for (group, why) in [
        ("mailbox", "mailbox modseq changes"),
        ("calendar", "calendar alarms (emails and reminders)"),
    ] {
        if !groups.contains(&group) {
            report.warn(format!(
                "{here}: event_groups lacks {group}: no events for {why}"
            ));
        }
    }
    for group in ["access", "quota"] {
        if groups.contains(&group) {
            report.fault(format!(
                "{here}: event_groups has {group}: with these event_extra_params it crashes Cyrus 3.6, and mailpush does not need it"
            ));
        }
    }
}

fn check_params(conf: &ImapdConf<'_>, source: &Path, report: &mut Report) {
    let Some((line, value)) = conf.get("event_extra_params") else {
        report.fault(format!(
            "{}: event_extra_params is not set: events carry no modseq, so no state moves",
            source.display()
        ));
        return;
    };
    let here = format!("{}:{line}", source.display());
    let params: Vec<&str> = value.split_whitespace().collect();
    for (param, why) in [
        ("modseq", "without it no state moves"),
        (
            "vnd.cmu.mbtype",
            "without it mail, calendar and contacts cannot be told apart",
        ),
    ] {
        if params.contains(&param) {
            report.ok(format!("{here}: event_extra_params has {param}"));
        } else {
            report.fault(format!("{here}: event_extra_params lacks {param}: {why}"));
        }
    }
    if !params.contains(&"vnd.cmu.unseenMessages") {
        report.warn(format!(
            "{here}: event_extra_params lacks vnd.cmu.unseenMessages: phones get no badge"
        ));
    }
    if !params.contains(&"vnd.cmu.envelope") && !params.contains(&"vnd.fastmail.jmapEmail") {
        report.warn(format!(
            "{here}: event_extra_params has neither vnd.cmu.envelope nor vnd.fastmail.jmapEmail: alerts show no sender or subject"
        ));
    }
    if !params.contains(&"vnd.cmu.emailid") && !params.contains(&"vnd.fastmail.jmapEmail") {
        report.warn(format!(
            "{here}: event_extra_params lacks vnd.cmu.emailid: JMAP states follow jmap.id_scheme instead of the account's ids"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Verdict;

    const GOOD: &str = "notifysocket: /run/mailpush/notify.sock\nevent_notifier: mailpush\nevent_groups: message mailbox flags calendar\nevent_extra_params: timestamp service modseq messages uidnext vnd.cmu.unseenMessages vnd.cmu.envelope vnd.cmu.mbtype vnd.cmu.emailid\nsievenotifier: mailpush-sieve\n";

    fn config() -> Config {
        let pairs = [
            ("MAILPUSH_INGEST__CYRUS_SOCKET", "/run/mailpush/notify.sock"),
            ("MAILPUSH_INGEST__CYRUS_SOCKET_MODE", "0666"),
        ];
        Config::load(
            None,
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .unwrap()
    }

    fn faults(text: &str) -> Vec<String> {
        check_cyrus(text, Path::new("imapd.conf"), &config())
            .findings
            .into_iter()
            .filter(|f| f.verdict == Verdict::Fault)
            .map(|f| f.message)
            .collect()
    }

    #[test]
    fn a_good_configuration_is_healthy() {
        let report = check_cyrus(GOOD, Path::new("imapd.conf"), &config());
        assert!(report.healthy(), "{}", report.render());
        assert!(report.render().contains("ok    imapd.conf:1: notifysocket"));
    }

    #[test]
    fn each_fault_is_named_with_its_line() {
        let without = |key: &str| {
            GOOD.lines()
                .filter(|line| !line.starts_with(key))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert!(faults(&without("event_notifier"))[0].contains("event_notifier is not set"));
        assert!(faults(&without("sievenotifier"))[0].contains("sievenotifier is not set"));
        let no_modseq = GOOD.replace(" modseq ", " ");
        assert!(faults(&no_modseq)[0].contains("imapd.conf:4: event_extra_params lacks modseq"));
        let access = GOOD.replace("calendar\n", "calendar access quota\n");
        let found = faults(&access);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].contains("has access"), "{found:?}");
        let elsewhere = GOOD.replace("/run/mailpush/notify.sock", "/var/run/other.sock");
        assert!(faults(&elsewhere)[0].contains("is not where mailpush listens"));
        let long = GOOD.replace(
            "/run/mailpush/notify.sock",
            &format!("/run/{}/notify.sock", "x".repeat(120)),
        );
        assert!(faults(&long).iter().any(|f| f.contains("over the 107")));
    }

    #[test]
    fn a_socket_only_its_owner_may_write_is_a_fault() {
        let pairs = [("MAILPUSH_INGEST__CYRUS_SOCKET", "/run/mailpush/notify.sock")];
        let config = Config::load(
            None,
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .unwrap();
        let report = check_cyrus(GOOD, Path::new("imapd.conf"), &config);
        assert!(!report.healthy());
        assert!(
            report.render().contains("cannot write the socket"),
            "{}",
            report.render()
        );
    }
}
