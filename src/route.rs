//! What an event means for mailpush: a pure function from an [`Event`] to [`Action`]s.
//!
//! `route` never does I/O, reads no clock and takes no lock, and it never fails on a parsed
//! event: an event that matters to nobody routes to no action. Actions are live-state updates
//! for web clients and device pushes; slow jobs will be a further variant of [`Action`], so
//! that each consumer stays a plain `match`.

use crate::event::{Event, Kind, MailboxType};

/// One thing to do because of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Raise the owner's live state (what EventSource clients see).
    UpdateState { user: String, change: StateChange },
    /// Tell the owner's phones.
    Push(PushRequest),
    /// Work for the blocking path (email, SMS), queued durably.
    Job(JobRequest),
    /// A calendar reminder to show now on the owner's open EventSource streams.
    Reminder(Reminder),
}

/// A `display` calendar alarm, for clients that are open (no queue: it is now or never).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reminder {
    pub user: String,
    pub summary: String,
    /// iCalendar date-times as Cyrus sends them, in the event's zone.
    pub start: String,
    pub end: String,
    pub timezone: String,
    pub location: String,
    pub calendar: String,
    /// The iCalendar UID of the event.
    pub uid: String,
    pub alarm_time: String,
}

/// A job for the durable queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRequest {
    /// The user the job is for (whose language, number and credit apply).
    pub user: String,
    /// The same event always yields the same key, so a replay sends nothing twice.
    pub key: String,
    pub work: Work,
}

/// What a job does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Work {
    /// A text message: to `number`, or to the user's stored number when None.
    Sms {
        number: Option<String>,
        text: String,
    },
    /// A Sieve `mailto` notification (RFC 5436): `uri` is the mailto URI without its scheme.
    SieveEmail {
        uri: String,
        message: String,
        importance: String,
    },
    /// A calendar alarm email to one recipient; `alarm` is Cyrus's CalendarAlarm JSON.
    AlarmEmail { recipient: String, alarm: String },
}

/// A push for every device of a user; each provider shapes it into its own payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushRequest {
    pub user: String,
    pub kind: PushKind,
}

/// What a push says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushKind {
    /// New mail in the INBOX: an alert with sender and subject.
    NewMail {
        /// The sender's display name, else their address, else empty.
        from: String,
        subject: String,
        /// The INBOX unseen count, for the badge.
        unseen: Option<u64>,
        /// Groups the notifications of one mailbox (APNs `thread-id`).
        thread_id: String,
        /// The message's IMAP URL, for the app to open.
        url: String,
    },
    /// Any other INBOX change (read, flagged, expunged, moved): only the badge moves.
    Badge { unseen: u64 },
    /// A calendar reminder (a `display` alarm): an alert with the event and its start.
    Reminder { summary: String, start: String },
}

/// New modseqs for a user; `None` leaves a value as it is. Values only ever raise the state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateChange {
    pub mail: Option<u64>,
    pub calendar: Option<u64>,
    pub contacts: Option<u64>,
    /// The mail modseq of a delivery (MessageNew into a mail folder): JMAP's `EmailDelivery`.
    pub delivered: Option<u64>,
}

/// Decides what an event causes.
pub fn route(event: &Event) -> Vec<Action> {
    let mut actions = Vec::new();
    if let Some(action) = state_update(event) {
        actions.push(action);
    }
    if let Some(push) = device_push(event) {
        actions.push(Action::Push(push));
    }
    actions.extend(sieve_job(event).map(Action::Job));
    if let Some(alarm) = calendar_alarm(event) {
        actions.extend(alarm_actions(event, alarm));
    }
    actions
}

/// The Sieve rule: `mailto` (and Cyrus's default method, whose option is an address) becomes an
/// email job; `sms` (legacy, number in the options), `sms:` and `tel:` URIs become SMS jobs.
/// Other methods (`xmpp:`...) are not supported and route to nothing.
fn sieve_job(event: &Event) -> Option<JobRequest> {
    let packet = event
        .notification
        .as_ref()
        .filter(|_| event.kind == Kind::SieveNotify)?;
    let user = event.owner.clone()?;
    // Cyrus appends "\n\nAction(s) taken:\n…" to the script's text.
    let message = packet
        .message
        .split("\n\nAction(s) taken:")
        .next()
        .unwrap_or_default()
        .trim_end()
        .to_owned();
    let method = packet.method.as_str();
    let first_option = packet.options.first().cloned();
    let work = if method == "mailto" {
        Work::SieveEmail {
            uri: first_option?,
            message,
            importance: packet.priority.clone(),
        }
    } else if let Some(uri) = method.strip_prefix("mailto:") {
        Work::SieveEmail {
            uri: uri.to_owned(),
            message,
            importance: packet.priority.clone(),
        }
    } else if method == "sms" {
        Work::Sms {
            number: first_option.and_then(|n| phone_number(&n)),
            text: message,
        }
    } else if let Some(uri) = method
        .strip_prefix("sms:")
        .or_else(|| method.strip_prefix("tel:"))
    {
        Work::Sms {
            number: Some(phone_number(uri)?),
            text: message,
        }
    } else if !method.contains(':') && first_option.as_deref().is_some_and(|o| o.contains('@')) {
        // Legacy `notify` without :method: Cyrus sends `sievenotifier`'s value; the option is
        // the address to notify.
        Work::SieveEmail {
            uri: first_option?,
            message,
            importance: packet.priority.clone(),
        }
    } else {
        return None;
    };
    let key = format!(
        "sieve:{:016x}",
        fnv1a(&[
            &user,
            method,
            &packet.options.join("\u{1}"),
            &packet.message,
            packet.fname.as_deref().unwrap_or("")
        ])
    );
    Some(JobRequest { user, key, work })
}

/// The fields of Cyrus's CalendarAlarm event that routing needs.
#[derive(serde::Deserialize)]
struct Alarm {
    #[serde(default)]
    action: String,
    #[serde(default, rename = "alarmRecipients")]
    recipients: Vec<String>,
    #[serde(default, rename = "calendarId")]
    calendar: String,
    #[serde(default, rename = "calendarName")]
    calendar_name: String,
    #[serde(default)]
    uid: String,
    #[serde(default, rename = "recurrenceId")]
    recurrence: String,
    #[serde(default, rename = "alarmTime")]
    time: String,
    #[serde(default)]
    summary: String,
    #[serde(default)]
    start: String,
    #[serde(default)]
    end: String,
    #[serde(default)]
    timezone: String,
    #[serde(default)]
    location: String,
}

fn calendar_alarm(event: &Event) -> Option<Alarm> {
    if event.kind != Kind::CalendarAlarm {
        return None;
    }
    serde_json::from_str(event.raw.as_deref()?).ok()
}

/// The calendar rule. An `email` alarm mails each of its recipients (`mailto:` attendees of the
/// VALARM), or the owner when it names none and the owner's id is an address. A `display`
/// alarm needs no database: it goes to the owner's open streams and phones at once.
fn alarm_actions(event: &Event, alarm: Alarm) -> Vec<Action> {
    let Some(user) = event.owner.as_ref() else {
        return Vec::new();
    };
    if alarm.action == "display" {
        let reminder = Reminder {
            user: user.clone(),
            summary: alarm.summary.clone(),
            start: alarm.start.clone(),
            end: alarm.end,
            timezone: alarm.timezone,
            location: alarm.location,
            calendar: if alarm.calendar_name.is_empty() {
                alarm.calendar
            } else {
                alarm.calendar_name
            },
            uid: alarm.uid,
            alarm_time: alarm.time,
        };
        let push = PushRequest {
            user: user.clone(),
            kind: PushKind::Reminder {
                summary: alarm.summary,
                start: alarm.start,
            },
        };
        return vec![Action::Reminder(reminder), Action::Push(push)];
    }
    if alarm.action != "email" {
        return Vec::new();
    }
    let Some(raw) = event.raw.as_deref() else {
        return Vec::new();
    };
    let mut recipients: Vec<String> = alarm
        .recipients
        .iter()
        .filter_map(|r| {
            r.strip_prefix("mailto:")
                .or_else(|| r.strip_prefix("MAILTO:"))
                .map(str::to_owned)
        })
        .collect();
    if recipients.is_empty() && user.contains('@') {
        recipients.push(user.clone());
    }
    recipients
        .into_iter()
        .map(|recipient| {
            Action::Job(JobRequest {
                user: user.clone(),
                key: format!(
                    "alarm:{:016x}",
                    fnv1a(&[
                        user,
                        &alarm.calendar,
                        &alarm.uid,
                        &alarm.recurrence,
                        &alarm.time,
                        &recipient
                    ])
                ),
                work: Work::AlarmEmail {
                    recipient,
                    alarm: raw.to_owned(),
                },
            })
        })
        .collect()
}

/// An E.164-ish number from a URI or option: visual separators dropped, parameters cut off.
fn phone_number(text: &str) -> Option<String> {
    let number = text.split([';', '?', ',']).next()?.trim();
    let digits: String = number
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == '+')
        .collect();
    let valid = digits.len() >= 3
        && digits.len() <= 16
        && digits.chars().skip(1).all(|c| c.is_ascii_digit());
    valid.then_some(digits)
}

/// FNV-1a over the parts (separated), for idempotency keys: stable across builds and versions,
/// unlike the standard library's hasher.
fn fnv1a(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain([0xff]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// The push rule: only the owner's INBOX matters to phones. A delivery there is an alert;
/// any other message or flag change there moves the badge, when Cyrus sent the unseen count.
fn device_push(event: &Event) -> Option<PushRequest> {
    let mailbox = event.mailbox.as_ref()?;
    let user = mailbox.owner.as_ref()?;
    if mailbox.folder.as_deref() != Some("INBOX") || event.mailbox_type != Some(MailboxType::Mail) {
        return None;
    }
    let kind = match event.kind {
        Kind::MessageNew => {
            let envelope = event.envelope.clone().unwrap_or_default();
            PushKind::NewMail {
                from: envelope
                    .from_name
                    .or(envelope.from_address)
                    .unwrap_or_default(),
                subject: envelope.subject.unwrap_or_default(),
                unseen: event.unseen,
                thread_id: format!("{user}/INBOX"),
                url: mailbox.url.clone(),
            }
        }
        Kind::MessageAppend
        | Kind::MessageExpunge
        | Kind::MessageExpire
        | Kind::MessageRead
        | Kind::MessageTrash
        | Kind::MessageCopy
        | Kind::MessageMove
        | Kind::FlagsSet
        | Kind::FlagsClear => PushKind::Badge {
            unseen: event.unseen?,
        },
        _ => return None,
    };
    Some(PushRequest {
        user: user.clone(),
        kind,
    })
}

/// The state rule: `vnd.fastmail.counters` when Cyrus sends them (they are per user), else the
/// event's modseq for the kind of mailbox it names (with `conversations`, Cyrus allocates
/// modseqs per user, so the highest one seen per kind is the user's state).
fn state_update(event: &Event) -> Option<Action> {
    let user = event.owner.as_ref()?;
    let mut change = match (&event.counters, event.modseq, event.mailbox_type) {
        (Some(counters), _, _) => StateChange {
            mail: Some(counters.mail),
            calendar: Some(counters.calendar),
            contacts: Some(counters.contacts),
            delivered: None,
        },
        (None, Some(modseq), Some(MailboxType::Mail)) => StateChange {
            mail: Some(modseq),
            ..StateChange::default()
        },
        (None, Some(modseq), Some(MailboxType::Calendar)) => StateChange {
            calendar: Some(modseq),
            ..StateChange::default()
        },
        (None, Some(modseq), Some(MailboxType::Addressbook)) => StateChange {
            contacts: Some(modseq),
            ..StateChange::default()
        },
        _ => return None,
    };
    if event.kind == Kind::MessageNew && event.mailbox_type == Some(MailboxType::Mail) {
        change.delivered = change.mail;
    }
    Some(Action::UpdateState {
        user: user.clone(),
        change,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::from_json;

    /// Checks the state actions of an event.
    fn check(json: &str, expect: Option<(&str, StateChange)>) {
        let event = from_json(json.to_owned()).unwrap();
        let expect: Vec<Action> = expect
            .into_iter()
            .map(|(user, change)| Action::UpdateState {
                user: user.to_owned(),
                change,
            })
            .collect();
        let got: Vec<Action> = route(&event)
            .into_iter()
            .filter(|action| matches!(action, Action::UpdateState { .. }))
            .collect();
        assert_eq!(got, expect, "{json}");
    }

    /// Checks the push action of an event.
    fn check_push(json: &str, expect: Option<PushKind>) {
        let event = from_json(json.to_owned()).unwrap();
        let got: Vec<PushRequest> = route(&event)
            .into_iter()
            .filter_map(|action| match action {
                Action::Push(push) => Some(push),
                _ => None,
            })
            .collect();
        let expect: Vec<PushRequest> = expect
            .into_iter()
            .map(|kind| PushRequest {
                user: "alice".into(),
                kind,
            })
            .collect();
        assert_eq!(got, expect, "{json}");
    }

    const INBOX: &str = "imap://h/user/alice;UIDVALIDITY=7";

    fn jobs_of(packet: &[u8]) -> Vec<JobRequest> {
        let notification = crate::event::packet::from_datagram(packet).unwrap();
        let event = crate::event::from_notification(notification).unwrap();
        route(&event)
            .into_iter()
            .filter_map(|action| match action {
                Action::Job(job) => Some(job),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn sieve_rules() {
        let work = |packet: &[u8]| {
            jobs_of(packet)
                .into_iter()
                .map(|job| job.work)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            work(b"mailto\0SIEVE\0high\0alice\0\x003\0bob@example.test?subject=urgent\0a\0b\0Urgent: hi\n\nAction(s) taken:\nKept\n\0/stage/1\0"),
            [Work::SieveEmail { uri: "bob@example.test?subject=urgent".into(), message: "Urgent: hi".into(), importance: "high".into() }]
        );
        assert_eq!(
            work(b"sms\0SIEVE\0high\0alice\0\x001\0+1 (555) 555-0100\0Mail from Bob\0/stage/1\0"),
            [Work::Sms {
                number: Some("+15555550100".into()),
                text: "Mail from Bob".into()
            }]
        );
        assert_eq!(
            work(b"sms:+4930123456?body=x\0SIEVE\0normal\0alice\0\x000\0Hi\0/s\0"),
            [Work::Sms {
                number: Some("+4930123456".into()),
                text: "Hi".into()
            }]
        );
        assert_eq!(
            work(b"tel:+1-201-555-0123\0SIEVE\0normal\0alice\0\x000\0Hi\0/s\0")[0],
            Work::Sms {
                number: Some("+12015550123".into()),
                text: "Hi".into()
            }
        );
        // Legacy sms without a number: the user's stored number is used later.
        assert_eq!(
            work(b"sms\0SIEVE\0low\0alice\0\x000\0Hi\0/s\0"),
            [Work::Sms {
                number: None,
                text: "Hi".into()
            }]
        );
        assert_eq!(
            work(b"mailpush-sieve\0SIEVE\0low\0alice\0\x001\0carol@example.test\0default\n\nAction(s) taken:\nKept\n\0/s\0"),
            [Work::SieveEmail { uri: "carol@example.test".into(), message: "default".into(), importance: "low".into() }]
        );
        assert!(work(b"xmpp:alice@chat.example\0SIEVE\0normal\0alice\0\x000\0Hi\0/s\0").is_empty());
        assert!(work(b"sms:not-a-number\0SIEVE\0normal\0alice\0\x000\0Hi\0/s\0").is_empty());
        // The same packet twice is the same job; another delivery (fname) is another job.
        let packet = b"sms\0SIEVE\0low\0alice\0\x000\0Hi\0/s/1\0";
        assert_eq!(jobs_of(packet)[0].key, jobs_of(packet)[0].key);
        assert_ne!(
            jobs_of(packet)[0].key,
            jobs_of(b"sms\0SIEVE\0low\0alice\0\x000\0Hi\0/s/2\0")[0].key
        );
    }

    #[test]
    fn display_alarms_remind_at_once() {
        let json = r#"{"event":"CalendarAlarm","userId":"alice","calendarId":"Default","calendarName":"personal","uid":"e1","alarmTime":"20261128T145123Z","action":"display","alarmRecipients":[],"summary":"Standup","start":"20261128T150053Z","end":"20261128T153053Z","timezone":"UTC","location":"Room 4"}"#;
        let actions = route(&from_json(json.to_owned()).unwrap());
        assert_eq!(
            actions,
            [
                Action::Reminder(Reminder {
                    user: "alice".into(),
                    summary: "Standup".into(),
                    start: "20261128T150053Z".into(),
                    end: "20261128T153053Z".into(),
                    timezone: "UTC".into(),
                    location: "Room 4".into(),
                    calendar: "personal".into(),
                    uid: "e1".into(),
                    alarm_time: "20261128T145123Z".into(),
                }),
                Action::Push(PushRequest {
                    user: "alice".into(),
                    kind: PushKind::Reminder {
                        summary: "Standup".into(),
                        start: "20261128T150053Z".into()
                    }
                }),
            ]
        );
    }

    #[test]
    fn alarm_rules() {
        let alarm = |action: &str, recipients: &str, user: &str| {
            let json = format!(
                r#"{{"event":"CalendarAlarm","userId":"{user}","calendarId":"Default","uid":"e1","alarmTime":"20261128T145123Z","action":"{action}","alarmRecipients":{recipients},"summary":"Standup"}}"#
            );
            let event = from_json(json).unwrap();
            route(&event)
                .into_iter()
                .filter_map(|action| match action {
                    Action::Job(JobRequest {
                        work: Work::AlarmEmail { recipient, .. },
                        ..
                    }) => Some(recipient),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            alarm(
                "email",
                r#"["mailto:a@example.test","mailto:b@example.test"]"#,
                "alice"
            ),
            ["a@example.test", "b@example.test"]
        );
        assert_eq!(
            alarm("email", "[]", "alice@example.test"),
            ["alice@example.test"]
        );
        assert!(
            alarm("email", "[]", "alice").is_empty(),
            "no address to use"
        );
        assert!(alarm("display", r#"["mailto:a@example.test"]"#, "alice").is_empty());
    }

    #[test]
    fn push_rules() {
        let envelope = r#""vnd.cmu.envelope":"(NIL \"=?UTF-8?Q?Gr=C3=BC=C3=9Fe?=\" ((\"Robert Norris\" NIL \"rob\" \"example.net\")) NIL NIL NIL NIL NIL NIL NIL)""#;
        check_push(
            &format!(
                r#"{{"event":"MessageNew","uri":"{INBOX}/;UID=3","vnd.cmu.mbtype":"e","vnd.cmu.unseenMessages":4,{envelope}}}"#
            ),
            Some(PushKind::NewMail {
                from: "Robert Norris".into(),
                subject: "Grüße".into(),
                unseen: Some(4),
                thread_id: "alice/INBOX".into(),
                url: format!("{INBOX}/;UID=3"),
            }),
        );
        // No display name: the address; no envelope at all: empty strings, still an alert.
        check_push(
            &format!(
                r#"{{"event":"MessageNew","uri":"{INBOX}/;UID=3","vnd.cmu.mbtype":"e","vnd.cmu.envelope":"(NIL NIL ((NIL NIL \"rob\" \"example.net\")) NIL NIL NIL NIL NIL NIL NIL)"}}"#
            ),
            Some(PushKind::NewMail {
                from: "rob@example.net".into(),
                subject: String::new(),
                unseen: None,
                thread_id: "alice/INBOX".into(),
                url: format!("{INBOX}/;UID=3"),
            }),
        );
        for kind in [
            "MessageRead",
            "FlagsSet",
            "FlagsClear",
            "MessageTrash",
            "MessageExpunge",
            "MessageAppend",
            "vnd.cmu.MessageMove",
            "vnd.cmu.MessageCopy",
        ] {
            check_push(
                &format!(
                    r#"{{"event":"{kind}","uri":"{INBOX}","vnd.cmu.mbtype":"e","vnd.cmu.unseenMessages":2}}"#
                ),
                Some(PushKind::Badge { unseen: 2 }),
            );
        }
        // Without the unseen count there is no badge to set.
        check_push(
            &format!(r#"{{"event":"MessageRead","uri":"{INBOX}","vnd.cmu.mbtype":"e"}}"#),
            None,
        );
        // Other folders, other mailbox types, other events and shared mailboxes push nothing.
        check_push(
            r#"{"event":"MessageNew","uri":"imap://h/user/alice/Work;UIDVALIDITY=1/;UID=1","vnd.cmu.mbtype":"e","vnd.cmu.unseenMessages":1}"#,
            None,
        );
        check_push(
            r#"{"event":"MessageNew","uri":"imap://h/user/alice/%23calendars/Default;UIDVALIDITY=1/;UID=1","vnd.cmu.mbtype":"c"}"#,
            None,
        );
        check_push(
            &format!(
                r#"{{"event":"MailboxModseq","uri":"{INBOX}","vnd.cmu.mbtype":"e","vnd.cmu.unseenMessages":1}}"#
            ),
            None,
        );
        check_push(
            &format!(r#"{{"event":"MessageNew","uri":"{INBOX}/;UID=1"}}"#),
            None,
        );
        check_push(
            r#"{"event":"MessageNew","uri":"imap://h/shared.news;UIDVALIDITY=1/;UID=1","vnd.cmu.mbtype":"e"}"#,
            None,
        );
        check_push(r#"{"event":"Login","uri":"imap://h","user":"alice"}"#, None);
    }

    fn mail(modseq: u64) -> StateChange {
        StateChange {
            mail: Some(modseq),
            ..StateChange::default()
        }
    }

    #[test]
    fn state_rules() {
        check(
            r#"{"event":"MessageNew","uri":"imap://h/user/alice;UIDVALIDITY=1/;UID=1","modseq":4,"vnd.cmu.mbtype":"e","user":"alice"}"#,
            Some((
                "alice",
                StateChange {
                    mail: Some(4),
                    delivered: Some(4),
                    ..StateChange::default()
                },
            )),
        );
        // Appends, flags and moves change mail state but are no delivery.
        check(
            r#"{"event":"MessageAppend","uri":"imap://h/user/alice;UIDVALIDITY=1/;UID=4","modseq":20,"vnd.cmu.mbtype":"e"}"#,
            Some(("alice", mail(20))),
        );
        check(
            r#"{"event":"MessageRead","uri":"imap://h/user/alice;UIDVALIDITY=1","modseq":7,"vnd.cmu.mbtype":"e"}"#,
            Some(("alice", mail(7))),
        );
        check(
            r#"{"event":"vnd.cmu.MessageMove","uri":"imap://h/user/alice/Work;UIDVALIDITY=1","modseq":18,"vnd.cmu.mbtype":"e"}"#,
            Some(("alice", mail(18))),
        );
        // The owner is in the path, not the acting user.
        check(
            r#"{"event":"FlagsSet","uri":"imap://h/user/bob/Shared;UIDVALIDITY=1","modseq":9,"vnd.cmu.mbtype":"e","user":"alice"}"#,
            Some(("bob", mail(9))),
        );
        // A calendar delivery raises the calendar state only.
        check(
            r#"{"event":"MessageNew","uri":"imap://h/user/alice/%23calendars/Default;UIDVALIDITY=1/;UID=1","modseq":70,"vnd.cmu.mbtype":"c"}"#,
            Some((
                "alice",
                StateChange {
                    calendar: Some(70),
                    ..StateChange::default()
                },
            )),
        );
        check(
            r#"{"event":"MessageNew","uri":"imap://h/user/alice/%23addressbooks/Default;UIDVALIDITY=1/;UID=1","modseq":12,"vnd.cmu.mbtype":"a"}"#,
            Some((
                "alice",
                StateChange {
                    contacts: Some(12),
                    ..StateChange::default()
                },
            )),
        );
        // Counters win over the mailbox modseq and carry all three kinds.
        check(
            r#"{"event":"MailboxModseq","uri":"imap://h/user/alice;UIDVALIDITY=1","vnd.cmu.mbtype":"e","vnd.fastmail.counters":"9 40 38 21 5 0 1 0 0 0 4 0 1"}"#,
            Some((
                "alice",
                StateChange {
                    mail: Some(38),
                    calendar: Some(21),
                    contacts: Some(5),
                    delivered: None,
                },
            )),
        );
    }

    #[test]
    fn events_that_change_no_state() {
        check(
            r#"{"event":"MailboxModseq","uri":"imap://h/user/alice;UIDVALIDITY=1","vnd.cmu.mbtype":"e"}"#,
            None,
        );
        check(r#"{"event":"Login","uri":"imap://h","user":"alice"}"#, None);
        check(
            r#"{"event":"MailboxCreate","uri":"imap://h/user/alice/Work;UIDVALIDITY=1","vnd.cmu.mbtype":"e"}"#,
            None,
        );
        check(
            r#"{"event":"FlagsSet","uri":"imap://h/shared.x;UIDVALIDITY=1","modseq":9,"vnd.cmu.mbtype":"e"}"#,
            None,
        );
        check(
            r#"{"event":"MessageNew","uri":"imap://h/user/alice/%23calendars/Attachments;UIDVALIDITY=1/;UID=1","modseq":3,"vnd.cmu.mbtype":"b"}"#,
            None,
        );
        check(
            r#"{"event":"MessageNew","uri":"imap://h/user/alice;UIDVALIDITY=1/;UID=1","modseq":4}"#,
            None,
        );
        check(r#"{"event":"CalendarAlarm","userId":"alice"}"#, None);
        check(
            r#"{"event":"vnd.example.Unknown","uri":"imap://h/user/alice;UIDVALIDITY=1"}"#,
            None,
        );
    }
}
