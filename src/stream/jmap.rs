//! JMAP push over EventSource (RFC 8620 §7.3), served at `GET /jmap/eventsource`.
//!
//! A `state` event carries a StateChange with only the types that moved since the client's
//! last state; `ping` events carry the interval and no id. The account id is the user id and
//! each type's state string is the modseq of its kind, written as Cyrus's JMAP server writes
//! it (`jmap_state_string()` in `imap/jmap_api.c`): for an account with compact ids, Mailbox,
//! Email, Thread, Calendar and CalendarEvent states carry a `J` in front (`J1042`), contacts
//! never do, and a legacy account's states are bare. So a client can pass the state it was
//! pushed as `sinceState` to `Email/changes`.

use std::fmt::Write as _;

use super::live::UserState;

/// Which JMAP types a client asked for (`types=*` or a comma-separated list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeFilter {
    wanted: Option<Vec<String>>,
}

/// The types mailpush reports, and which modseq each one follows.
/// The third field says whether the state takes the `J` of a compact-id account.
const TYPES: &[(&str, Source, bool)] = &[
    ("Mailbox", Source::Mail, true),
    ("Email", Source::Mail, true),
    ("Thread", Source::Mail, true),
    // A push-only type: its state is the Email state of the delivery, written the same way.
    ("EmailDelivery", Source::Delivered, true),
    ("Calendar", Source::Calendar, true),
    ("CalendarEvent", Source::Calendar, true),
    ("AddressBook", Source::Contacts, false),
    ("ContactCard", Source::Contacts, false),
];

#[derive(Clone, Copy)]
enum Source {
    Mail,
    Delivered,
    Calendar,
    Contacts,
}

impl TypeFilter {
    /// Every type (`types=*`).
    pub fn all() -> TypeFilter {
        TypeFilter { wanted: None }
    }

    /// Parses the `types` parameter; an empty name in the list is an error.
    pub fn parse(types: &str) -> Result<TypeFilter, &'static str> {
        if types == "*" {
            return Ok(TypeFilter { wanted: None });
        }
        let wanted: Vec<String> = types
            .split(',')
            .map(|name| name.trim().to_owned())
            .collect();
        if wanted.iter().any(String::is_empty) {
            return Err("types must be * or a comma-separated list of type names");
        }
        Ok(TypeFilter {
            wanted: Some(wanted),
        })
    }

    fn wants(&self, name: &str) -> bool {
        self.wanted
            .as_ref()
            .is_none_or(|wanted| wanted.iter().any(|w| w == name))
    }
}

/// Writes a `state` event for the types that moved from `seen` to `now`; writes nothing and
/// returns false when none of the wanted types moved. `compact` writes the states of a
/// compact-id account.
pub fn encode_state(
    user: &str,
    seen: &UserState,
    now: &UserState,
    filter: &TypeFilter,
    compact: bool,
    out: &mut String,
) -> bool {
    let Some(change) = state_change(user, seen, now, filter, compact) else {
        return false;
    };
    let _ = write!(
        out,
        "event: state\nid: {}\ndata: {change}\n\n",
        now.event_id()
    );
    true
}

/// The StateChange object for the types that moved from `seen` to `now` (every known type
/// when `seen` is all zero), or None when none of the wanted types moved. Web Push sends it
/// as the payload of `jmap` subscriptions.
pub fn state_change(
    user: &str,
    seen: &UserState,
    now: &UserState,
    filter: &TypeFilter,
    compact: bool,
) -> Option<String> {
    let mut changed = String::new();
    for (name, source, prefixed) in TYPES {
        let (value, moved) = match source {
            Source::Mail => (now.mail, now.mail > seen.mail),
            Source::Delivered => (now.delivered, now.delivered > seen.mail.max(seen.delivered)),
            Source::Calendar => (now.calendar, now.calendar > seen.calendar),
            Source::Contacts => (now.contacts, now.contacts > seen.contacts),
        };
        if moved && filter.wants(name) {
            let separator = if changed.is_empty() { "" } else { "," };
            let prefix = if compact && *prefixed { "J" } else { "" };
            let _ = write!(changed, "{separator}\"{name}\":\"{prefix}{value}\"");
        }
    }
    if changed.is_empty() {
        return None;
    }
    let account = serde_json::to_string(user).unwrap_or_else(|_| "\"\"".into());
    Some(format!(
        "{{\"@type\":\"StateChange\",\"changed\":{{{account}:{{{changed}}}}}}}"
    ))
}

/// Writes a `ping` event; pings carry no id, so they never move a client's `Last-Event-ID`.
pub fn encode_ping(interval_secs: u64, out: &mut String) {
    let _ = write!(
        out,
        "event: ping\ndata: {{\"interval\":{interval_secs}}}\n\n"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(mail: u64, calendar: u64, contacts: u64, delivered: u64) -> UserState {
        UserState {
            mail,
            calendar,
            contacts,
            delivered,
            ..UserState::default()
        }
    }

    fn check(types: &str, seen: UserState, now: UserState, expect: Option<&str>) {
        let mut out = String::new();
        let filter = TypeFilter::parse(types).unwrap();
        let wrote = encode_state("alice", &seen, &now, &filter, false, &mut out);
        match expect {
            Some(changed) => {
                assert!(wrote);
                assert_eq!(
                    out,
                    format!(
                        "event: state\nid: {}\ndata: {{\"@type\":\"StateChange\",\"changed\":{{\"alice\":{{{changed}}}}}}}\n\n",
                        now.event_id()
                    )
                );
            }
            None => assert!(!wrote && out.is_empty(), "{out}"),
        }
    }

    #[test]
    fn state_changes() {
        let zero = UserState::default();
        check(
            "*",
            zero,
            state(5, 0, 0, 5),
            Some(r#""Mailbox":"5","Email":"5","Thread":"5","EmailDelivery":"5""#),
        );
        // A flag change is no delivery.
        check(
            "*",
            state(5, 0, 0, 5),
            state(6, 0, 0, 5),
            Some(r#""Mailbox":"6","Email":"6","Thread":"6""#),
        );
        check(
            "*",
            state(5, 1, 0, 5),
            state(5, 2, 0, 5),
            Some(r#""Calendar":"2","CalendarEvent":"2""#),
        );
        check(
            "*",
            zero,
            state(0, 0, 3, 0),
            Some(r#""AddressBook":"3","ContactCard":"3""#),
        );
        check(
            "Email,EmailDelivery",
            state(5, 0, 0, 5),
            state(7, 9, 0, 7),
            Some(r#""Email":"7","EmailDelivery":"7""#),
        );
        check("CalendarEvent", state(5, 0, 0, 5), state(7, 0, 0, 7), None);
        check("*", state(5, 1, 1, 5), state(5, 1, 1, 5), None);
    }

    #[test]
    fn filters() {
        assert!(TypeFilter::parse("*").is_ok());
        assert!(
            TypeFilter::parse("Email, Mailbox")
                .unwrap()
                .wants("Mailbox")
        );
        assert!(TypeFilter::parse("Email,,Mailbox").is_err());
        assert!(TypeFilter::parse("").is_err());
    }

    /// State strings as Cyrus's `jmap_state_string()` writes them: `J` + modseq for an
    /// account with compact ids (not for contacts), the bare modseq for a legacy account.
    #[test]
    fn state_strings_follow_the_account_id_scheme() {
        let filter = TypeFilter::parse("*").unwrap();
        let now = state(1042, 17, 9, 1042);
        let changed = |compact: bool| {
            let mut out = String::new();
            assert!(encode_state(
                "alice",
                &UserState::default(),
                &now,
                &filter,
                compact,
                &mut out
            ));
            let data = out
                .lines()
                .find_map(|line| line.strip_prefix("data: "))
                .unwrap();
            let value: serde_json::Value = serde_json::from_str(data).unwrap();
            value["changed"]["alice"].clone()
        };
        let compact = changed(true);
        for (name, expect) in [
            ("Mailbox", "J1042"),
            ("Email", "J1042"),
            ("Thread", "J1042"),
            ("EmailDelivery", "J1042"),
            ("Calendar", "J17"),
            ("CalendarEvent", "J17"),
            ("AddressBook", "9"),
            ("ContactCard", "9"),
        ] {
            assert_eq!(compact[name], expect, "compact {name}");
        }
        let legacy = changed(false);
        for (name, expect) in [
            ("Email", "1042"),
            ("CalendarEvent", "17"),
            ("ContactCard", "9"),
        ] {
            assert_eq!(legacy[name], expect, "legacy {name}");
        }
    }

    #[test]
    fn ping() {
        let mut out = String::new();
        encode_ping(30, &mut out);
        assert_eq!(out, "event: ping\ndata: {\"interval\":30}\n\n");
    }

    #[test]
    fn account_ids_are_escaped() {
        let mut out = String::new();
        let filter = TypeFilter::parse("*").unwrap();
        encode_state(
            "we\"ird",
            &UserState::default(),
            &state(1, 0, 0, 0),
            &filter,
            false,
            &mut out,
        );
        assert!(out.contains(r#""we\"ird":{"#), "{out}");
    }
}
