//! What an event means for mailpush: a pure function from an [`Event`] to [`Action`]s.
//!
//! `route` never does I/O, reads no clock and takes no lock, and it never fails on a parsed
//! event: an event that matters to nobody routes to no action. Today the only action is a
//! live-state update for web clients; device pushes and slow jobs are further variants of
//! [`Action`], so that each consumer stays a plain `match`.

use crate::event::{Event, Kind, MailboxType};

/// One thing to do because of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Raise the owner's live state (what EventSource clients see).
    UpdateState { user: String, change: StateChange },
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
    actions
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

    fn check(json: &str, expect: Option<(&str, StateChange)>) {
        let event = from_json(json.to_owned()).unwrap();
        let expect: Vec<Action> = expect
            .into_iter()
            .map(|(user, change)| Action::UpdateState {
                user: user.to_owned(),
                change,
            })
            .collect();
        assert_eq!(route(&event), expect, "{json}");
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
