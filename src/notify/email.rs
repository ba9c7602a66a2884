//! Notification emails: calendar alarms (rendered in the recipient's language) and Sieve
//! `mailto` notifications (RFC 5436), and the transports that send them (an SMTP relay through
//! [`super::smtp`], or `.eml` files in the outbox folder when no relay is configured).

use std::error::Error as StdError;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use lettre::message::header::{Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncFileTransport, AsyncTransport, Message, Tokio1Executor};
use percent_encoding::percent_decode_str;
use serde::Serialize;

use super::SendError;
use super::render::{Templates, ical_when};
use super::smtp::SmtpRelay;
use crate::config::SmtpConfig;
use crate::job::Alarm;

/// Where emails go.
pub enum MailTransport {
    Smtp(Box<SmtpRelay>),
    Outbox(AsyncFileTransport<Tokio1Executor>),
}

/// How long connecting to the relay (TCP, TLS, greeting, AUTH) may take.
const SMTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

impl MailTransport {
    /// The relay of `notify.smtp.url`, keeping up to `workers` connections open, or `.eml`
    /// files in `outbox`.
    pub fn new(smtp: &SmtpConfig, outbox: &Path, workers: usize) -> anyhow::Result<MailTransport> {
        match &smtp.url {
            Some(url) => {
                let relay = SmtpRelay::new(
                    url.expose(),
                    smtp.ca_file.as_deref(),
                    workers,
                    SMTP_CONNECT_TIMEOUT,
                )?;
                Ok(MailTransport::Smtp(Box::new(relay)))
            }
            None => {
                crate::files::create_private_dir(outbox)
                    .with_context(|| format!("cannot create {}", outbox.display()))?;
                Ok(MailTransport::Outbox(AsyncFileTransport::new(outbox)))
            }
        }
    }

    /// Sends one message; `before_commit` runs as its final `.` is written, when the relay
    /// can take it for good (the outbox never runs it: a file written is not sent twice by a
    /// crash).
    /// SMTP permanent (5xx) replies are permanent; the rest is retried.
    pub async fn send(
        &self,
        message: Message,
        before_commit: super::smtp::Commit,
    ) -> Result<(), SendError> {
        match self {
            MailTransport::Smtp(relay) => {
                relay
                    .send(message.envelope(), &message.formatted(), before_commit)
                    .await
            }
            MailTransport::Outbox(transport) => transport
                .send(message)
                .await
                .map(drop)
                .map_err(|err| SendError::Retry(format!("outbox: {err}"))),
        }
    }
}

/// `Auto-Submitted` (RFC 3834 / RFC 5436), which lettre does not know.
#[derive(Debug, Clone)]
struct AutoSubmitted(String);

impl Header for AutoSubmitted {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("Auto-Submitted")
    }

    fn parse(value: &str) -> Result<Self, Box<dyn StdError + Send + Sync>> {
        Ok(AutoSubmitted(value.to_owned()))
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), self.0.clone())
    }
}

/// `Importance` for Sieve's `:importance`.
#[derive(Debug, Clone)]
struct Importance(String);

impl Header for Importance {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("Importance")
    }

    fn parse(value: &str) -> Result<Self, Box<dyn StdError + Send + Sync>> {
        Ok(Importance(value.to_owned()))
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), self.0.clone())
    }
}

/// What the alarm templates see.
#[derive(Serialize)]
struct AlarmContext<'a> {
    summary: &'a str,
    description: &'a str,
    location: &'a str,
    timezone: &'a str,
    start: String,
    end: String,
    all_day: bool,
    calendar: &'a str,
    attendees: Vec<Attendee<'a>>,
}

#[derive(Serialize)]
struct Attendee<'a> {
    name: &'a str,
    email: &'a str,
    status: &'a str,
}

/// Identity and addressing shared by every notification email.
pub struct Envelope<'a> {
    pub from: &'a str,
    /// `<job-id@domain>`, the same on every attempt, so a resend after a crash is recognisable.
    pub message_id: String,
}

/// A calendar alarm email for `recipient`, in `lang`: multipart text and HTML.
pub fn alarm_email(
    envelope: &Envelope<'_>,
    recipient: &str,
    lang: &str,
    alarm: &Alarm,
    templates: &Templates,
) -> Result<Message, SendError> {
    let attendees = alarm
        .attendee_emails
        .iter()
        .enumerate()
        .map(|(index, email)| Attendee {
            name: alarm.attendee_names.get(index).map_or("", String::as_str),
            email: email.strip_prefix("mailto:").unwrap_or(email),
            status: alarm.attendee_status.get(index).map_or("", String::as_str),
        })
        .collect();
    let context = AlarmContext {
        summary: &alarm.summary,
        description: &alarm.description,
        location: &alarm.location,
        timezone: &alarm.timezone,
        start: ical_when(&alarm.start, lang),
        end: ical_when(&alarm.end, lang),
        all_day: alarm.all_day == 1,
        calendar: &alarm.calendar_name,
        attendees,
    };
    let render = |part: &str| {
        templates
            .render("alarm", lang, part, &context)
            .map_err(|err| SendError::Permanent(format!("alarm template {part}: {err}")))
    };
    let subject = one_line(render("subject")?.trim());
    let body = MultiPart::alternative_plain_html(
        line_breaks(&render("txt")?),
        line_breaks(&render("html")?),
    );
    build(envelope, &[recipient], &[], &subject, "auto-generated")?
        .multipart(body)
        .map_err(|err| SendError::Permanent(format!("cannot build the alarm email: {err}")))
}

/// A Sieve `mailto` notification (RFC 5436): recipients, subject and body from the URI and the
/// script's message; URI headers other than those are not copied (the RFC forbids the
/// identity, trace and threading ones, and mailpush needs no others).
pub fn sieve_email(
    envelope: &Envelope<'_>,
    owner: &str,
    uri: &str,
    message: &str,
    importance: &str,
) -> Result<Message, SendError> {
    let mailto = Mailto::parse(uri);
    if mailto.to.is_empty() {
        return Err(SendError::Permanent(format!(
            "mailto:{uri} names no recipient"
        )));
    }
    let first_line = message
        .lines()
        .find(|line| !line.trim().is_empty())
        .unwrap_or("")
        .trim();
    let subject = if !first_line.is_empty() {
        one_line(&first_line.chars().take(200).collect::<String>())
    } else {
        mailto
            .subject
            .clone()
            .unwrap_or_else(|| "Sieve notification".to_owned())
    };
    let body = match &mailto.body {
        Some(body) => body.clone(),
        None => {
            format!("{message}\n\n-- \nThis notification was sent by a Sieve rule of {owner}.\n")
        }
    };
    let owner_param = if owner.contains('@') {
        format!("; owner-email=\"{owner}\"")
    } else {
        String::new()
    };
    let to: Vec<&str> = mailto.to.iter().map(String::as_str).collect();
    let cc: Vec<&str> = mailto.cc.iter().map(String::as_str).collect();
    let mut builder = build(
        envelope,
        &to,
        &cc,
        &subject,
        &format!("auto-notified{owner_param}"),
    )?;
    let mapped = match importance {
        "high" | "1" => Some("High"),
        "low" | "3" => Some("Low"),
        _ => None,
    };
    if let Some(level) = mapped {
        builder = builder.header(Importance(level.to_owned()));
    }
    builder
        .body(line_breaks(&body))
        .map_err(|err| SendError::Permanent(format!("cannot build the notification: {err}")))
}

/// Body text with every line break a plain `\n` (lettre writes each as CRLF): a bare CR from
/// a script or a calendar field would otherwise reach the wire inside a 7bit body, which
/// RFC 5322 forbids and some relays reject or rewrite.
fn line_breaks(text: &str) -> String {
    text.replace("\r\n", "\n").replace('\r', "\n")
}

/// Header text on one line: control characters (CR, LF, tabs, escapes) become spaces.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn build(
    envelope: &Envelope<'_>,
    to: &[&str],
    cc: &[&str],
    subject: &str,
    auto_submitted: &str,
) -> Result<lettre::message::MessageBuilder, SendError> {
    let mailbox = |address: &str| -> Result<Mailbox, SendError> {
        address
            .parse()
            .map_err(|err| SendError::Permanent(format!("bad address {address:?}: {err}")))
    };
    let mut builder = Message::builder()
        .from(mailbox(envelope.from)?)
        .subject(subject)
        .date_now()
        .message_id(Some(envelope.message_id.clone()))
        .header(AutoSubmitted(auto_submitted.to_owned()));
    for address in to {
        builder = builder.to(mailbox(address)?);
    }
    for address in cc {
        builder = builder.cc(mailbox(address)?);
    }
    Ok(builder)
}

/// The parts of an RFC 6068 `mailto:` URI that a notification uses.
#[derive(Debug, Default, PartialEq, Eq)]
struct Mailto {
    to: Vec<String>,
    cc: Vec<String>,
    subject: Option<String>,
    body: Option<String>,
}

impl Mailto {
    fn parse(uri: &str) -> Mailto {
        let uri = uri.strip_prefix("mailto:").unwrap_or(uri);
        let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
        let decode = |text: &str| percent_decode_str(text).decode_utf8_lossy().into_owned();
        let addresses = |text: &str| -> Vec<String> {
            decode(text)
                .split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let mut mailto = Mailto {
            to: addresses(path),
            ..Mailto::default()
        };
        for field in query.split('&') {
            let Some((name, value)) = field.split_once('=') else {
                continue;
            };
            match name.to_ascii_lowercase().as_str() {
                "to" => mailto.to.extend(addresses(value)),
                "cc" => mailto.cc.extend(addresses(value)),
                "subject" => mailto.subject = Some(decode(value)),
                "body" => mailto.body = Some(decode(value)),
                // From, Sender, Bcc, Received, Message-ID, Date, Auto-Submitted, In-Reply-To,
                // References and Resent-* must not be taken from the URI (RFC 5436 §2.7).
                _ => {}
            }
        }
        mailto
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailto_uris() {
        assert_eq!(
            Mailto::parse("alice-phone@sms.example.test?subject=urgent"),
            Mailto {
                to: vec!["alice-phone@sms.example.test".into()],
                subject: Some("urgent".into()),
                ..Mailto::default()
            }
        );
        assert_eq!(
            Mailto::parse(
                "mailto:a@x.test,b@x.test?cc=c@x.test&body=New%20mail&from=evil@x.test&bcc=d@x.test"
            ),
            Mailto {
                to: vec!["a@x.test".into(), "b@x.test".into()],
                cc: vec!["c@x.test".into()],
                subject: None,
                body: Some("New mail".into()),
            }
        );
    }

    #[test]
    fn sieve_notification_headers() {
        let envelope = Envelope {
            from: "mailpush@example.test",
            message_id: "<job-1@example.test>".into(),
        };
        let message = sieve_email(
            &envelope,
            "alice@example.test",
            "bob@example.test?subject=x&from=evil@x.test",
            "Urgent: hi",
            "high",
        )
        .unwrap();
        let text = String::from_utf8(message.formatted()).unwrap();
        assert!(
            text.contains("Auto-Submitted: auto-notified; owner-email=\"alice@example.test\"\r\n"),
            "{text}"
        );
        assert!(text.contains("Importance: High\r\n"), "{text}");
        assert!(text.contains("Subject: Urgent: hi\r\n"), "{text}");
        assert!(text.contains("From: mailpush@example.test\r\n"), "{text}");
        assert!(!text.contains("evil"), "{text}");
        assert!(sieve_email(&envelope, "alice", "?subject=x", "hi", "normal").is_err());
    }

    #[test]
    fn bare_carriage_returns_never_reach_the_wire() {
        let envelope = Envelope {
            from: "mailpush@example.test",
            message_id: "<job-2@example.test>".into(),
        };
        let message = sieve_email(
            &envelope,
            "alice",
            "bob@example.test",
            "Urgent\rX-Injected: yes\n\nline one\rline two\r\nline three",
            "normal",
        )
        .unwrap();
        let text = String::from_utf8(message.formatted()).unwrap();
        let bare_cr = text
            .as_bytes()
            .windows(2)
            .any(|pair| pair[0] == b'\r' && pair[1] != b'\n');
        assert!(!bare_cr && !text.ends_with('\r'), "{text:?}");
        let (header, _) = text.split_once("\r\n\r\n").unwrap();
        assert!(!header.contains("\r\nX-Injected"), "{header:?}");
        assert!(
            text.contains("line one\r\nline two\r\nline three"),
            "{text:?}"
        );
    }
}
