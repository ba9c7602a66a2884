//! Dovecot's `dovecot.conf` (with what it `!include`s) against mailpush's configuration: the
//! plugins every service that changes mail needs, the push_notification drivers that send to
//! mailpush (where they point, their secret, the Lua script they run), and what the OX driver
//! needs besides.
//!
//! `conf.rs` reads the file as Dovecot 2.3 does; this module checks what it says.

mod conf;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use super::Report;
use crate::config::Config;
use conf::{DovecotConf, Setting};

/// A driver that sends to mailpush.
enum Driver {
    Lua { at: String, file: PathBuf },
    Ox { at: String, url: String },
}

/// Checks a `dovecot.conf` (read from `source`) against mailpush's config.
pub fn check_dovecot(source: &Path, config: &Config) -> Report {
    let mut report = Report::default();
    let conf = match DovecotConf::read(source, &mut report) {
        Some(conf) => conf,
        None => return report,
    };
    if config.ingest.secret.is_none() {
        report.fault(
            "mailpush's ingest.secret is not set: Dovecot's requests are refused (403); set it, \
             and give it to Dovecot as mailpush_token or in the OX driver's url",
        );
    }
    let drivers = check_drivers(&conf, config, &mut report);
    let needs_lua = drivers.iter().any(|d| matches!(d, Driver::Lua { .. }));
    check_plugins(&conf, needs_lua, &mut report);
    for driver in &drivers {
        match driver {
            Driver::Lua { at, file } => check_lua(&conf, at, file, config, &mut report),
            Driver::Ox { at, url } => check_ox(&conf, at, url, config, &mut report),
        }
    }
    let lua = drivers.iter().any(|d| matches!(d, Driver::Lua { .. }));
    let ox = drivers.iter().any(|d| matches!(d, Driver::Ox { .. }));
    if lua && ox {
        report.warn(
            "both the Lua and the OX driver send to mailpush: each new mail is pushed twice; keep the Lua one",
        );
    }
    report
}

/// The services that change mail and may set plugins of their own, with what they report.
const SERVICES: &[(&str, &str)] = &[
    ("imap", "IMAP (reads, flags, moves)"),
    ("lmtp", "LMTP (new mail)"),
    ("lda", "LDA (new mail)"),
];

fn check_plugins(conf: &DovecotConf, needs_lua: bool, report: &mut Report) {
    let mut required = vec!["notify", "push_notification"];
    if needs_lua {
        required.extend(["mail_lua", "push_notification_lua"]);
    }
    let lacking = |plugins: &[String]| -> Vec<&str> {
        required
            .iter()
            .copied()
            .filter(|plugin| !plugins.iter().any(|p| p == plugin))
            .collect()
    };
    let (global, at) = conf.plugins(None);
    let at = at.unwrap_or_else(|| "dovecot.conf".into());
    let missing = lacking(&global);
    if missing.is_empty() {
        report.ok(format!("{at}: mail_plugins has {}", required.join(" ")));
    } else {
        report.fault(format!(
            "{at}: mail_plugins lacks {}, so nothing of any service reaches mailpush",
            missing.join(" ")
        ));
    }
    // A protocol's own mail_plugins replaces the global one: what it drops is lost there.
    for (protocol, what) in SERVICES {
        let section = format!("protocol {protocol}");
        if conf.last(&[section.as_str()], "mail_plugins").is_none() {
            continue;
        }
        let (plugins, at) = conf.plugins(Some(protocol));
        let at = at.unwrap_or_else(|| "dovecot.conf".into());
        let dropped: Vec<&str> = lacking(&plugins)
            .into_iter()
            .filter(|plugin| !missing.contains(plugin))
            .collect();
        if !dropped.is_empty() {
            report.fault(format!(
                "{at}: protocol {protocol}: mail_plugins drops {}, so nothing of {what} reaches mailpush (keep $mail_plugins in it)",
                dropped.join(" ")
            ));
        } else if missing.is_empty() {
            report.ok(format!(
                "{at}: protocol {protocol}: mail_plugins keeps {}",
                required.join(" ")
            ));
        }
    }
}

/// Reads the push_notification drivers in the order Dovecot loads them, reports those that
/// point near mailpush but not at it, and returns those that send to it.
fn check_drivers(conf: &DovecotConf, config: &Config, report: &mut Report) -> Vec<Driver> {
    let mut drivers = Vec::new();
    let mut numbered: Vec<(usize, &Setting)> = conf
        .settings
        .iter()
        .filter(|s| s.section == ["plugin"])
        .filter_map(|s| {
            let number = s.key.strip_prefix("push_notification_driver")?;
            let number = if number.is_empty() {
                1
            } else {
                number.parse().ok()?
            };
            Some((number, s))
        })
        .collect();
    numbered.sort_by_key(|(number, _)| *number);
    numbered.dedup_by_key(|(number, _)| *number);
    for (expected, (number, setting)) in (1..).zip(numbered) {
        if number != expected {
            report.fault(format!(
                "{}: {} is never loaded: Dovecot stops at the first missing number (push_notification_driver{expected})",
                setting.at, setting.key
            ));
            break;
        }
        let (kind, options) = setting
            .value
            .split_once(':')
            .unwrap_or((&setting.value, ""));
        let option = |name: &str| {
            options
                .split_whitespace()
                .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
        };
        match kind {
            "lua" => match option("file") {
                Some(file) => drivers.push(Driver::Lua {
                    at: setting.at.clone(),
                    file: PathBuf::from(file),
                }),
                None => report.warn(format!(
                    "{}: a Lua driver without file=: it runs mail_lua_script, which the doctor does not check",
                    setting.at
                )),
            },
            "ox" => match option("url") {
                Some(url) if url_points_here(url, config, "/ingest/dovecot/ox") => {
                    drivers.push(Driver::Ox {
                        at: setting.at.clone(),
                        url: url.to_owned(),
                    })
                }
                Some(url) => report.fault(format!(
                    "{}: the OX driver points elsewhere ({}), not at mailpush's {}/ingest/dovecot/ox",
                    setting.at,
                    redact(url),
                    listen_url(config)
                )),
                None => report.fault(format!("{}: an OX driver without url=", setting.at)),
            },
            other => report.ok(format!("{}: driver {other} (not mailpush's)", setting.at)),
        }
    }
    if drivers.is_empty() {
        report.fault(
            "no push_notification driver sends to mailpush: add the Lua one (examples/dovecot/mailpush.conf)",
        );
    }
    drivers
}

fn check_lua(conf: &DovecotConf, at: &str, file: &Path, config: &Config, report: &mut Report) {
    match std::fs::read_to_string(file) {
        Ok(script) if script.contains("mailpush_url") && script.contains("dovecot_lua_notify_end_txn") => {
            report.ok(format!("{at}: the Lua driver runs mailpush's script {}", file.display()))
        }
        Ok(_) => report.fault(format!(
            "{at}: {} is not mailpush's script (it does not read mailpush_url): install examples/dovecot/mailpush.lua",
            file.display()
        )),
        Err(err) => report.fault(format!(
            "{at}: the Lua driver's script {} cannot be read ({err}): Dovecot loads no driver after it",
            file.display()
        )),
    }
    match conf.last(&["plugin"], "mailpush_url") {
        None => report.fault(format!(
            "{at}: plugin {{ mailpush_url }} is not set: the script sends nothing"
        )),
        Some(url) if url_points_here(&url.value, config, "/ingest/dovecot/lua") => report.ok(
            format!("{}: mailpush_url is mailpush's {}", url.at, url.value),
        ),
        Some(url) => report.fault(format!(
            "{}: mailpush_url points elsewhere ({}), not at mailpush's {}/ingest/dovecot/lua",
            url.at,
            redact(&url.value),
            listen_url(config)
        )),
    }
    match (
        conf.last(&["plugin"], "mailpush_token"),
        &config.ingest.secret,
    ) {
        (Some(token), Some(secret)) if secret.matches(token.value.as_bytes()) => report.ok(
            format!("{}: mailpush_token is mailpush's ingest.secret", token.at),
        ),
        (Some(token), _) => report.fault(format!(
            "{}: mailpush_token is not mailpush's ingest.secret: every POST gets 401",
            token.at
        )),
        (None, _) => report.fault(format!(
            "{at}: plugin {{ mailpush_token }} is not set: every POST gets 401"
        )),
    }
}

fn check_ox(conf: &DovecotConf, at: &str, url: &str, config: &Config, report: &mut Report) {
    let password = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split('/').next())
        .and_then(|authority| authority.rsplit_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, password)| password);
    match (password, &config.ingest.secret) {
        (Some(password), Some(secret)) if secret.matches(password.as_bytes()) => report.ok(format!(
            "{at}: the OX driver sends to mailpush with its ingest.secret"
        )),
        (Some(_), _) => report.fault(format!(
            "{at}: the OX driver's url password is not mailpush's ingest.secret: every PUT gets 401"
        )),
        (None, _) => report.fault(format!(
            "{at}: the OX driver's url has no user:password@: every PUT gets 401 (the password is mailpush's ingest.secret)"
        )),
    }
    report.warn(format!(
        "{at}: the OX driver reports new INBOX mail only: no badge updates from reads or flags, and only for users whose INBOX has the metadata key /private/vendor/vendor.dovecot/http-notify"
    ));
    match conf.last(&[], "mail_attribute_dict") {
        Some(dict) => report.ok(format!("{}: mail_attribute_dict = {}", dict.at, dict.value)),
        None => report.fault(format!(
            "{at}: mail_attribute_dict is not set: the OX driver cannot read the user's metadata and sends nothing"
        )),
    }
}

/// Whether `url` is mailpush's `http.listen` with `path`: the port must match, and the host
/// too when both are addresses (a name other than localhost is taken on trust).
fn url_points_here(url: &str, config: &Config, path: &str) -> bool {
    let Some((scheme, rest)) = url.split_once("://") else {
        return false;
    };
    let (authority, url_path) = rest.split_once('/').map_or((rest, "/"), |(a, p)| (a, p));
    let url_path = format!("/{}", url_path.trim_start_matches('/'));
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let (host, port) = match host_port.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host_port.starts_with('[') => {
            (host, port.parse::<u16>().ok())
        }
        _ => (host_port, None),
    };
    let port = port.unwrap_or(if scheme == "https" { 443 } else { 80 });
    let listen: SocketAddr = config.http.listen;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host_matches = match host.parse::<IpAddr>() {
        Ok(ip) => listen.ip().is_unspecified() || ip == listen.ip(),
        Err(_) if host == "localhost" => listen.ip().is_unspecified() || listen.ip().is_loopback(),
        Err(_) => true,
    };
    url_path == path && port == listen.port() && host_matches
}

fn listen_url(config: &Config) -> String {
    format!("http://{}", config.http.listen)
}

/// A URL with its password hidden.
fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((userinfo, host)) if userinfo.contains(':') && !userinfo.contains('/') => {
                let user = userinfo.split(':').next().unwrap_or("");
                format!("{scheme}://{user}:<redacted>@{host}")
            }
            _ => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::conf::expand;
    use super::*;

    fn config(listen: &str) -> Config {
        Config::load(
            None,
            [
                ("MAILPUSH_HTTP__LISTEN".to_owned(), listen.to_owned()),
                (
                    "MAILPUSH_INGEST__SECRET".to_owned(),
                    "s3cret-s3cret-s3cret".to_owned(),
                ),
            ],
        )
        .unwrap()
    }

    #[test]
    fn urls_point_at_mailpush_or_elsewhere() {
        let local = config("127.0.0.1:8080");
        let check = |url: &str, expect: bool| {
            assert_eq!(
                url_points_here(url, &local, "/ingest/dovecot/lua"),
                expect,
                "{url}"
            );
        };
        check("http://127.0.0.1:8080/ingest/dovecot/lua", true);
        check("http://localhost:8080/ingest/dovecot/lua", true);
        check("http://u:p@127.0.0.1:8080/ingest/dovecot/lua", true);
        check("http://127.0.0.1:8081/ingest/dovecot/lua", false);
        check("http://127.0.0.1:8080/dovecot/lua", false);
        check("http://10.0.0.5:8080/ingest/dovecot/lua", false);
        check("http://127.0.0.1/ingest/dovecot/lua", false);
        let any = config("0.0.0.0:8080");
        assert!(url_points_here(
            "http://10.0.0.5:8080/ingest/dovecot/lua",
            &any,
            "/ingest/dovecot/lua"
        ));
        assert!(url_points_here(
            "http://push.internal:8080/ingest/dovecot/lua",
            &any,
            "/ingest/dovecot/lua"
        ));
        assert_eq!(
            redact("http://oxuser:oxpass@h:1/x"),
            "http://oxuser:<redacted>@h:1/x"
        );
        assert_eq!(redact("http://h:1/x"), "http://h:1/x");
    }

    #[test]
    fn mail_plugins_follow_dollar_mail_plugins_and_protocol_sections() {
        assert_eq!(
            expand("$mail_plugins notify quota", &["acl".into()]),
            ["acl", "notify", "quota"]
        );
        assert_eq!(expand("quota", &["notify".into()]), ["quota"]);
    }
}
