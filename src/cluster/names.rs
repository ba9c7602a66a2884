//! The names mailpush uses on NATS, all under one prefix (`cluster.prefix`, `mailpush` by
//! default):
//!
//! | name | what |
//! |---|---|
//! | bucket `<prefix>_states`, key `<user>.s` | a user's state of record (JetStream key-value, history 1) |
//! | `<prefix>.u.<user>.s` | the bucket republishes each stored state here |
//! | `<prefix>.u.<user>.r` | a calendar reminder for the user's open streams |
//! | `<prefix>.devices` | "these users' devices changed": every node reloads them |
//! | `<prefix>.jobs` | "jobs were written": every node's workers look for work |
//!
//! A node serving a user subscribes to `<prefix>.u.<user>.*` and to nothing else of theirs.
//! User names become one subject token: letters, digits, `_` and `-` stay as they are, every
//! other byte is written `=XX` (so `alice@example.com` is `alice=40example=2Ecom`), which keeps
//! the mapping one-to-one and the token valid in subjects and keys alike.

use std::fmt::Write as _;

/// Every subject and the bucket, for one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    prefix: String,
}

impl Names {
    /// Names under `prefix` (validated by the configuration: letters, digits, `_`, `-`).
    pub fn new(prefix: &str) -> Names {
        Names {
            prefix: prefix.to_owned(),
        }
    }

    /// The key-value bucket holding users' states.
    pub fn bucket(&self) -> String {
        format!("{}_states", self.prefix)
    }

    /// The bucket's key for `user`.
    pub fn state_key(&self, user: &str) -> String {
        format!("{}.s", token(user))
    }

    /// Where the bucket republishes stored states: `<prefix>.u.<key>`.
    pub fn republish_destination(&self) -> String {
        format!("{}.u.>", self.prefix)
    }

    /// Everything a node serving `user` hears of them.
    pub fn user_subjects(&self, user: &str) -> String {
        format!("{}.u.{}.*", self.prefix, token(user))
    }

    /// Where a reminder for `user` goes.
    pub fn reminder_subject(&self, user: &str) -> String {
        format!("{}.u.{}.r", self.prefix, token(user))
    }

    /// Device registrations and removals.
    pub fn devices_subject(&self) -> String {
        format!("{}.devices", self.prefix)
    }

    /// Jobs written to the shared database.
    pub fn jobs_subject(&self) -> String {
        format!("{}.jobs", self.prefix)
    }
}

/// What a message on a user's subjects carries, told from the subject's last token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserSubject {
    State,
    Reminder,
    Other,
}

impl UserSubject {
    /// Reads the kind of a subject under `<prefix>.u.<user>.`.
    pub fn of(subject: &str) -> UserSubject {
        match subject.rsplit_once('.').map(|(_, last)| last) {
            Some("s") => UserSubject::State,
            Some("r") => UserSubject::Reminder,
            _ => UserSubject::Other,
        }
    }
}

/// `user` as one subject token (see the module's doc). An empty name is `=`, which no other
/// name gives.
pub fn token(user: &str) -> String {
    if user.is_empty() {
        return "=".into();
    }
    let mut token = String::with_capacity(user.len() + 8);
    for byte in user.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
            token.push(char::from(byte));
        } else {
            let _ = write!(token, "={byte:02X}");
        }
    }
    token
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_become_one_valid_token() {
        let check = |user: &str, expect: &str| assert_eq!(token(user), expect, "{user:?}");
        check("alice", "alice");
        check("alice@example.com", "alice=40example=2Ecom");
        check("a.b", "a=2Eb");
        check("a=2Eb", "a=3D2Eb");
        check("x*>y z", "x=2A=3Ey=20z");
        check("", "=");
        check("jö", "j=C3=B6");
        for user in [
            "alice@example.com",
            "a.b",
            "a=2Eb",
            "",
            "x y",
            "UPPER_lower-1",
        ] {
            let token = token(user);
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-=".contains(&b)),
                "{token}"
            );
        }
        assert_ne!(token("a.b"), token("a=2Eb"), "one-to-one");
    }

    #[test]
    fn subjects_and_keys() {
        let names = Names::new("mp");
        assert_eq!(names.bucket(), "mp_states");
        assert_eq!(names.state_key("a@b"), "a=40b.s");
        assert_eq!(names.user_subjects("a@b"), "mp.u.a=40b.*");
        assert_eq!(names.reminder_subject("a@b"), "mp.u.a=40b.r");
        assert_eq!(names.devices_subject(), "mp.devices");
        assert_eq!(UserSubject::of("mp.u.a=40b.s"), UserSubject::State);
        assert_eq!(UserSubject::of("mp.u.a=40b.r"), UserSubject::Reminder);
        assert_eq!(UserSubject::of("mp.u.a=40b"), UserSubject::Other);
    }
}
