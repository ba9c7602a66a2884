//! What a user's channel holds ([`Live`]): the state streams show with its encoded frame, the
//! signals they act on besides, and the record's bookkeeping. Values only rise, so replays
//! and out-of-order datagrams never move a client backwards.

use std::fmt::Write as _;

use bytes::Bytes;

use super::signals::Signals;
use super::stamp::{SecondStamp, Stamp};
use crate::event::IdScheme;
use crate::route::StateChange;

/// A user's modseqs as web clients see them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserState {
    pub mail: u64,
    pub calendar: u64,
    pub contacts: u64,
    /// Mail modseq of the latest delivery; it only matters relative to `mail`.
    pub delivered: u64,
    /// The account's JMAP id scheme, as the latest event that showed it said: it decides the
    /// shape of JMAP state strings ([`super::jmap`]).
    pub ids: IdScheme,
}

/// What a user's channel holds: what streams show, what they are told besides, and the
/// record's bookkeeping, which no stream reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Live {
    pub published: Published,
    pub signals: Signals,
    pub marks: RecordMarks,
}

/// The state streams show, with its frame.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Published {
    pub state: UserState,
    /// The `/events` frame of `state`, encoded once when the state moves and shared by every
    /// connection of the user: a delivery is then a reference count and a write.
    pub frame: Bytes,
    /// When `apply` last raised the state; never until it first does (for the latency).
    pub changed_at: Stamp,
}

/// Where the user stands with the state record ([`super::persist`]) and eviction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordMarks {
    /// The state moved since it was last handed to the record.
    pub dirty: bool,
    /// The record's state has been merged in (the hub reads it before a stream opens).
    pub loaded: bool,
    /// When the state last moved, was loaded, or a stream subscribed: a user untouched for
    /// `http.idle_user_secs` with no stream leaves memory.
    pub touched_at: SecondStamp,
}

impl UserState {
    /// Raises each value to the change's value when that is higher; returns whether anything
    /// moved.
    pub fn raise(&mut self, change: &StateChange) -> bool {
        let before = *self;
        let raise = |value: &mut u64, new: Option<u64>| *value = (*value).max(new.unwrap_or(0));
        raise(&mut self.mail, change.mail);
        raise(&mut self.calendar, change.calendar);
        raise(&mut self.contacts, change.contacts);
        raise(&mut self.delivered, change.delivered);
        if change.ids != IdScheme::Unknown {
            self.ids = change.ids;
        }
        *self != before
    }

    /// Raises each value to `other`'s when that is higher; returns whether anything moved.
    pub fn raise_to(&mut self, other: &UserState) -> bool {
        self.raise(&StateChange {
            mail: Some(other.mail),
            calendar: Some(other.calendar),
            contacts: Some(other.contacts),
            delivered: Some(other.delivered),
            ids: other.ids,
        })
    }

    /// Whether a client that saw `seen` has missed something.
    pub fn is_newer_than(&self, seen: &UserState) -> bool {
        self.mail > seen.mail || self.calendar > seen.calendar || self.contacts > seen.contacts
    }

    /// Whether anything is known about the user yet.
    pub fn is_known(&self) -> bool {
        *self != UserState::default()
    }

    /// The SSE `id:`: the three modseqs themselves (`m42c7a3`), so ids stay monotonic per user
    /// across restarts and a reconnecting client's `Last-Event-ID` says exactly what it saw.
    pub fn event_id(&self) -> String {
        let mut id = String::with_capacity(24);
        let _ = write!(id, "m{}c{}a{}", self.mail, self.calendar, self.contacts);
        id
    }

    /// Reads a `Last-Event-ID` written by [`UserState::event_id`]; None for anything else,
    /// which callers treat as "saw nothing".
    pub fn from_event_id(id: &str) -> Option<UserState> {
        let rest = id.strip_prefix('m')?;
        let (mail, rest) = rest.split_once('c')?;
        let (calendar, contacts) = rest.split_once('a')?;
        let number = |text: &str| -> Option<u64> {
            (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
                .then(|| text.parse().ok())?
        };
        let mail = number(mail)?;
        Some(UserState {
            mail,
            calendar: number(calendar)?,
            contacts: number(contacts)?,
            // What the client saw includes every delivery up to its mail modseq.
            delivered: mail,
            ids: IdScheme::Unknown,
        })
    }
}

impl RecordMarks {
    /// Marks the state unsaved; true when it was saved until now (the user must be listed).
    pub(super) fn mark_dirty(&mut self) -> bool {
        !std::mem::replace(&mut self.dirty, true)
    }
}

impl Published {
    /// Raises the state by `change`; when it moved, encodes its frame and stamps it `now`.
    pub(super) fn raise(&mut self, change: &StateChange, now: Stamp) -> bool {
        let moved = self.state.raise(change);
        if moved {
            self.frame = super::legacy::frame(&self.state);
            self.changed_at = now;
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_round_trip() {
        let state = UserState {
            mail: 42,
            calendar: 7,
            contacts: 3,
            delivered: 40,
            ..UserState::default()
        };
        assert_eq!(state.event_id(), "m42c7a3");
        let seen = UserState::from_event_id("m42c7a3").unwrap();
        assert!(!state.is_newer_than(&seen));
        assert_eq!(seen.delivered, 42);
        for bad in [
            "",
            "m",
            "42",
            "m1c2",
            "m1c2a",
            "mxc2a3",
            "m1c2a3x",
            "m-1c2a3",
            "m1c2a99999999999999999999",
        ] {
            assert_eq!(UserState::from_event_id(bad), None, "{bad}");
        }
    }
}
