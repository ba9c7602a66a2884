//! What an event means for mailpush: a pure function from an [`Event`] to [`Action`]s.
//!
//! `route` never does I/O, reads no clock and takes no lock, and it never fails on a parsed
//! event: an event that matters to nobody routes to no action. Actions are live-state updates
//! for web clients, device pushes, jobs for the blocking path and reminders, each a variant of
//! [`Action`], so that each consumer stays a plain `match`.

mod notify;

pub use crate::job::{JobRequest, Work};

use crate::event::{Event, IdScheme, Kind, MailboxType};

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
    /// Part of the event was not acted on because it is over a bound; counted and logged.
    Refused {
        user: String,
        /// A metric label: why.
        reason: &'static str,
        /// How many of the things it asked for were left out.
        count: usize,
    },
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
    /// The user's state moved (any kind): made by the pipeline, not by [`route`], for
    /// providers whose clients sync from the payload ([`crate::push::provider::Client::takes`]).
    State,
}

impl PushKind {
    /// Whether the push is one the user should notice now (new mail, a reminder), rather than
    /// a count or state that only the newest value of matters.
    pub fn is_alert(&self) -> bool {
        matches!(self, PushKind::NewMail { .. } | PushKind::Reminder { .. })
    }
}

/// New modseqs for a user; `None` leaves a value as it is. Values only ever raise the state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateChange {
    pub mail: Option<u64>,
    pub calendar: Option<u64>,
    pub contacts: Option<u64>,
    /// The mail modseq of a delivery (MessageNew into a mail folder): JMAP's `EmailDelivery`.
    pub delivered: Option<u64>,
    /// The account's JMAP id scheme, when the event's ids showed it.
    pub ids: IdScheme,
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
    actions.extend(notify::sieve_job(event).map(Action::Job));
    actions.extend(notify::alarm_actions(event));
    actions
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
            ..StateChange::default()
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
    change.ids = event.id_scheme;
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
                    ..StateChange::default()
                },
            )),
        );
    }

    #[test]
    fn the_id_scheme_comes_with_the_state() {
        let scheme = |ids: &str| {
            let json = format!(
                r#"{{"event":"MessageNew","uri":"imap://h/user/alice;UIDVALIDITY=1/;UID=1","modseq":4,"vnd.cmu.mbtype":"e",{ids}}}"#
            );
            route(&from_json(json).unwrap())
                .into_iter()
                .find_map(|action| match action {
                    Action::UpdateState { change, .. } => Some(change.ids),
                    _ => None,
                })
                .unwrap()
        };
        assert_eq!(
            scheme(
                r#""vnd.cmu.emailid":"M532f609e737f4cb59298ff2b","vnd.cmu.threadid":"Tc2dcb97f781647a7""#
            ),
            IdScheme::Legacy
        );
        assert_eq!(
            scheme(r#""vnd.cmu.emailid":"Sbrp-oRDd_Mh","vnd.cmu.threadid":"A0nwZdIYiCtU""#),
            IdScheme::Compact
        );
        assert_eq!(
            scheme(r#""vnd.cmu.threadid":"A0nwZdIYiCtU""#),
            IdScheme::Compact
        );
        assert_eq!(scheme(r#""x":1"#), IdScheme::Unknown);
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
