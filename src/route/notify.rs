//! The rules for the blocking path and reminders: Sieve `notify` packets become email or SMS
//! jobs, calendar alarms become alarm emails (`email`) or reminders (`display`). Pure, like the
//! rest of `route`.

use super::{Action, JobRequest, PushKind, PushRequest, Reminder, Work};
use crate::event::{Event, Kind};
use crate::job::Alarm;

/// The Sieve rule: `mailto` (and Cyrus's default method, whose option is an address) becomes an
/// email job; `sms` (legacy, number in the options), `sms:` and `tel:` URIs become SMS jobs.
/// Other methods (`xmpp:`...) are not supported and route to nothing.
pub(super) fn sieve_job(event: &Event) -> Option<JobRequest> {
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
        // A number the script gives must be a number; only without one is the stored used.
        let number = match first_option {
            Some(option) => Some(phone_number(&option)?),
            None => None,
        };
        Work::Sms {
            number,
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
    let trigger = matches!(work, Work::SieveEmail { .. })
        .then(|| packet.fname.clone())
        .flatten();
    Some(JobRequest {
        user,
        key,
        work,
        trigger,
    })
}

/// Recipients one `email` alarm may mail. Cyrus takes them from the VALARM's attendees, a
/// handful at most; a longer list is someone using mailpush as a relay, and the rest are left
/// out (counted as `alarm_recipients_over_cap`).
pub const MAX_ALARM_RECIPIENTS: usize = 20;

/// Reads Cyrus's CalendarAlarm JSON: the one place it is parsed.
fn calendar_alarm(event: &Event) -> Option<Alarm> {
    if event.kind != Kind::CalendarAlarm {
        return None;
    }
    serde_json::from_str(event.raw.as_deref()?).ok()
}

/// The calendar rule. An `email` alarm mails each of its recipients (`mailto:` attendees of the
/// VALARM), or the owner when it names none and the owner's id is an address. A `display`
/// alarm needs no database: it goes to the owner's open streams and phones at once.
pub(super) fn alarm_actions(event: &Event) -> Vec<Action> {
    let (Some(alarm), Some(user)) = (calendar_alarm(event), event.owner.as_ref()) else {
        return Vec::new();
    };
    match alarm.action.as_str() {
        "display" => display_alarm(user, alarm),
        "email" => email_alarm(user, alarm),
        _ => Vec::new(),
    }
}

fn display_alarm(user: &str, alarm: Alarm) -> Vec<Action> {
    let reminder = Reminder {
        user: user.to_owned(),
        summary: alarm.summary.clone(),
        start: alarm.start.clone(),
        calendar: alarm.calendar_label().to_owned(),
        end: alarm.end,
        timezone: alarm.timezone,
        location: alarm.location,
        uid: alarm.uid,
        alarm_time: alarm.alarm_time,
    };
    let push = PushRequest {
        user: user.to_owned(),
        kind: PushKind::Reminder {
            summary: alarm.summary,
            start: alarm.start,
        },
    };
    vec![Action::Reminder(reminder), Action::Push(push)]
}

fn email_alarm(user: &str, alarm: Alarm) -> Vec<Action> {
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
        recipients.push(user.to_owned());
    }
    let mut actions = Vec::new();
    if recipients.len() > MAX_ALARM_RECIPIENTS {
        actions.push(Action::Refused {
            user: user.to_owned(),
            reason: "alarm_recipients_over_cap",
            count: recipients.len() - MAX_ALARM_RECIPIENTS,
        });
        recipients.truncate(MAX_ALARM_RECIPIENTS);
    }
    let alarm = Box::new(alarm);
    actions.extend(recipients.into_iter().map(|recipient| {
        Action::Job(JobRequest {
            user: user.to_owned(),
            trigger: None,
            key: format!(
                "alarm:{:016x}",
                fnv1a(&[
                    user,
                    &alarm.calendar_id,
                    &alarm.uid,
                    &alarm.recurrence_id,
                    &alarm.alarm_time,
                    &recipient
                ])
            ),
            work: Work::AlarmEmail {
                recipient,
                alarm: alarm.clone(),
            },
        })
    }));
    actions
}

/// An E.164-ish number from a URI or option: parameters cut off, the visual separators of
/// RFC 3966 dropped. Anything else in it (a letter, a stray sign) makes it no number at all,
/// rather than a shorter number that would reach someone else.
fn phone_number(text: &str) -> Option<String> {
    let number = text.split([';', '?', ',']).next()?.trim();
    let mut digits = String::with_capacity(number.len());
    for (index, c) in number.chars().enumerate() {
        match c {
            '0'..='9' => digits.push(c),
            '+' if index == 0 => digits.push(c),
            ' ' | '-' | '.' | '(' | ')' => {}
            _ => return None,
        }
    }
    let count = digits.trim_start_matches('+').len();
    (3..=15).contains(&count).then_some(digits)
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

#[cfg(test)]
mod tests {
    use super::super::route;
    use super::*;
    use crate::event::from_json;

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
        // A number with anything but digits and separators is refused whole, not cut short.
        assert!(work(b"sms:+1555abc0100\0SIEVE\0normal\0alice\0\x000\0Hi\0/s\0").is_empty());
        assert!(work(b"sms\0SIEVE\0low\0alice\0\x001\0+49 30 12x34\0Hi\0/s\0").is_empty());
        assert!(work(b"sms:+12+34567\0SIEVE\0normal\0alice\0\x000\0Hi\0/s\0").is_empty());
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
    fn alarm_recipients_are_capped() {
        let recipients: Vec<String> = (0..MAX_ALARM_RECIPIENTS + 7)
            .map(|n| format!("\"mailto:r{n}@outside.test\""))
            .collect();
        let json = format!(
            r#"{{"event":"CalendarAlarm","userId":"alice","uid":"e1","action":"email","alarmRecipients":[{}]}}"#,
            recipients.join(",")
        );
        let actions = route(&from_json(json).unwrap());
        let jobs = actions
            .iter()
            .filter(|action| matches!(action, Action::Job(_)))
            .count();
        assert_eq!(jobs, MAX_ALARM_RECIPIENTS);
        assert!(actions.contains(&Action::Refused {
            user: "alice".into(),
            reason: "alarm_recipients_over_cap",
            count: 7,
        }));
    }
}
