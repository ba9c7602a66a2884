//! The two Dovecot drivers' bodies, read into [`Event`]s: the OX driver's MessageNew and the
//! transactions mailpush's Lua script sends, each change with a modseq of mailpush's own (see
//! the parent module for why each is read so).

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;

use crate::event::{Class, Envelope, Event, Kind, MailboxRef, MailboxType, ParseError};

/// The OX driver's request body (Dovecot 2.3's `push-notification-driver-ox.c`). Fields are
/// read as optional so that a missing one gets its own reason; the document says which are
/// required.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(super) struct OxNotification {
    /// The Dovecot user name, or the metadata `user=` value with `user_from_metadata`.
    #[schema(required, value_type = String, min_length = 1)]
    user: Option<String>,
    /// `messageNew`.
    #[schema(required, value_type = String, min_length = 1)]
    event: Option<String>,
    /// `INBOX`.
    #[schema(required, value_type = String, min_length = 1)]
    folder: Option<String>,
    #[serde(
        rename = "imap-uidvalidity",
        default,
        deserialize_with = "integral::u32"
    )]
    #[schema(value_type = Option<u64>, maximum = 4294967295_u64)]
    uidvalidity: Option<u32>,
    #[serde(rename = "imap-uid", default, deserialize_with = "integral::u32")]
    #[schema(value_type = Option<u64>, maximum = 4294967295_u64)]
    uid: Option<u32>,
    /// The raw `From:` header (RFC 2047 words are decoded here).
    from: Option<String>,
    /// The raw `Subject:` header.
    subject: Option<String>,
    /// INBOX's unseen count: the badge.
    #[serde(default, deserialize_with = "integral::u64")]
    #[schema(maximum = 9007199254740991_u64)]
    unseen: Option<u64>,
}

/// One push transaction as mailpush's Lua script (`examples/dovecot/mailpush.lua`) sends it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(super) struct LuaTransaction {
    /// The format's version: 1.
    #[serde(default, deserialize_with = "integral::u32")]
    #[schema(required, value_type = u64, minimum = 1, maximum = 1)]
    v: Option<u32>,
    /// The Dovecot user name.
    #[schema(required, value_type = String, min_length = 1)]
    user: Option<String>,
    /// Dovecot's event tables, in its order.
    #[serde(default)]
    events: Vec<LuaEvent>,
    /// INBOX's unseen count after the transaction, when it touched INBOX.
    #[serde(default, deserialize_with = "integral::u64")]
    #[schema(maximum = 9007199254740991_u64)]
    inbox_unseen: Option<u64>,
}

/// One event table of Dovecot's Lua driver (its other fields are kept out).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct LuaEvent {
    /// `MessageNew`, `FlagsSet`, `MailboxRename`...
    #[schema(required, value_type = String, min_length = 1)]
    name: Option<String>,
    /// The folder's full name.
    #[schema(required, value_type = String, min_length = 1)]
    mailbox: Option<String>,
    #[serde(default, deserialize_with = "integral::u32")]
    #[schema(value_type = Option<u64>, maximum = 4294967295_u64)]
    uid: Option<u32>,
    #[serde(default, deserialize_with = "integral::u32")]
    #[schema(value_type = Option<u64>, maximum = 4294967295_u64)]
    uid_validity: Option<u32>,
    flags: Option<Vec<String>>,
    keywords: Option<Vec<String>>,
    from_address: Option<String>,
    from_display_name: Option<String>,
    /// Decoded already.
    subject: Option<String>,
}

/// Integers as JSON has them: `3` and `3.0` alike (Lua prints numbers as floats unless told
/// otherwise; JSON Schema's `integer` takes both), anything fractional or out of range refused.
mod integral {
    use serde::{Deserialize, Deserializer, de::Error};

    pub fn u64<'de, D: Deserializer<'de>>(de: D) -> Result<Option<u64>, D::Error> {
        let Some(number) = Option::<serde_json::Number>::deserialize(de)? else {
            return Ok(None);
        };
        if let Some(value) = number.as_u64() {
            return Ok(Some(value));
        }
        match number.as_f64() {
            Some(value)
                if value >= 0.0 && value.fract() == 0.0 && value < 18_446_744_073_709_551_616.0 =>
            {
                // Integral and in range: the cast is exact.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                Ok(Some(value as u64))
            }
            _ => Err(D::Error::custom(format!(
                "{number} is not a non-negative integer"
            ))),
        }
    }

    pub fn u32<'de, D: Deserializer<'de>>(de: D) -> Result<Option<u32>, D::Error> {
        match u64(de)? {
            None => Ok(None),
            Some(value) => u32::try_from(value)
                .map(Some)
                .map_err(|_| D::Error::custom(format!("{value} is over 4294967295"))),
        }
    }
}

/// The last modseq given to a Dovecot change, in microseconds since the epoch.
static LAST_MODSEQ: AtomicU64 = AtomicU64::new(0);

/// Reads an OX driver body.
pub fn from_ox(body: &[u8]) -> Result<Event, ParseError> {
    let ox: OxNotification =
        serde_json::from_slice(body).map_err(|err| ParseError::Json(err.to_string()))?;
    let user = non_empty(ox.user).ok_or(ParseError::MissingField("user"))?;
    let name = non_empty(ox.event).ok_or(ParseError::MissingName)?;
    let folder = non_empty(ox.folder).ok_or(ParseError::MissingField("folder"))?;
    let envelope = Envelope {
        subject: ox
            .subject
            .map(|raw| crate::event::rfc2047::decode(&raw).trim().to_owned()),
        ..sender(ox.from.as_deref().unwrap_or(""))
    };
    let mut event = event(user, &name, folder, ox.uidvalidity, ox.uid);
    event.unseen = checked(ox.unseen, "unseen")?;
    event.envelope = Some(envelope);
    Ok(event)
}

/// Reads a Lua script body: the transaction's events (empty flag changes dropped, and their
/// count).
pub fn from_lua(body: &[u8]) -> Result<(Vec<Event>, usize), ParseError> {
    let transaction: LuaTransaction =
        serde_json::from_slice(body).map_err(|err| ParseError::Json(err.to_string()))?;
    if transaction.v != Some(1) {
        return Err(ParseError::Json(format!(
            "v is {:?}: this mailpush reads version 1 of the script's format",
            transaction.v
        )));
    }
    let user = non_empty(transaction.user).ok_or(ParseError::MissingField("user"))?;
    let unseen = checked(transaction.inbox_unseen, "inbox_unseen")?;
    let mut events = Vec::with_capacity(transaction.events.len());
    let mut dropped_empty = 0;
    for lua in transaction.events {
        let name = non_empty(lua.name).ok_or(ParseError::MissingName)?;
        let mailbox = non_empty(lua.mailbox).ok_or(ParseError::MissingField("mailbox"))?;
        let kind = Kind::from_name(&name);
        let no_flags = lua.flags.as_ref().is_none_or(Vec::is_empty)
            && lua.keywords.as_ref().is_none_or(Vec::is_empty);
        if matches!(kind, Kind::FlagsSet | Kind::FlagsClear) && no_flags {
            dropped_empty += 1;
            continue;
        }
        let mut event = event(user.clone(), &name, mailbox, lua.uid_validity, lua.uid);
        if matches!(kind, Kind::MessageNew | Kind::MessageAppend) {
            event.envelope = Some(Envelope {
                subject: non_empty(lua.subject),
                from_name: non_empty(lua.from_display_name),
                from_address: non_empty(lua.from_address),
            });
        }
        events.push(event);
    }
    // The count goes with the transaction's delivery, else with its last INBOX event.
    let in_inbox =
        |event: &Event| event.mailbox.as_ref().and_then(|m| m.folder.as_deref()) == Some("INBOX");
    let carrier = events
        .iter()
        .position(|event| event.kind == Kind::MessageNew && in_inbox(event))
        .or_else(|| events.iter().rposition(in_inbox));
    if let Some(index) = carrier {
        events[index].unseen = unseen;
    }
    Ok((events, dropped_empty))
}

/// The event of one Dovecot change in `user`'s `mailbox`, with a modseq of mailpush's own.
fn event(
    user: String,
    name: &str,
    mailbox: String,
    uidvalidity: Option<u32>,
    uid: Option<u32>,
) -> Event {
    let url = relative_url(&mailbox, uidvalidity, uid);
    let mut event = Event::bare(
        Class::Event,
        name.to_owned(),
        Kind::from_name(name),
        Some(user.clone()),
    );
    event.mailbox = Some(MailboxRef {
        url,
        server: String::new(),
        name: mailbox.clone(),
        owner: Some(user),
        folder: Some(mailbox),
        uidvalidity,
        uid,
    });
    event.mailbox_type = Some(MailboxType::Mail);
    event.modseq = Some(next_modseq());
    event
}

/// The next modseq for a Dovecot change: the microseconds since the epoch, or one more than
/// the last one given, whichever is larger (below 2^53 until the year 2255).
fn next_modseq() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
        });
    let previous = LAST_MODSEQ
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
            Some((last + 1).max(now))
        })
        .unwrap_or_else(|last| last);
    (previous + 1).max(now)
}

/// A relative IMAP URL (RFC 5092 §7) of the message or mailbox, for the app to resolve against
/// its own server: `/INBOX;UIDVALIDITY=1795879878/;UID=3`.
fn relative_url(mailbox: &str, uidvalidity: Option<u32>, uid: Option<u32>) -> String {
    use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
    // RFC 5092 `achar` keeps unreserved characters, `&=~` and the sub-delims other than `;`.
    const MAILBOX: &AsciiSet = &CONTROLS
        .add(b' ')
        .add(b'"')
        .add(b'#')
        .add(b'%')
        .add(b';')
        .add(b'<')
        .add(b'>')
        .add(b'?')
        .add(b'[')
        .add(b'\\')
        .add(b']')
        .add(b'^')
        .add(b'`')
        .add(b'{')
        .add(b'|')
        .add(b'}');
    let mut url = format!("/{}", utf8_percent_encode(mailbox, MAILBOX));
    if let Some(uidvalidity) = uidvalidity {
        url.push_str(&format!(";UIDVALIDITY={uidvalidity}"));
    }
    if let Some(uid) = uid {
        url.push_str(&format!("/;UID={uid}"));
    }
    url
}

/// Display name and address of a raw `From:` header (`"Name" <a@b>`, `Name <a@b>` or `a@b`),
/// RFC 2047 words decoded.
fn sender(from: &str) -> Envelope {
    let from = from.trim();
    let (name, address) = match (from.rfind('<'), from.rfind('>')) {
        (Some(open), Some(close)) if open < close => (&from[..open], &from[open + 1..close]),
        _ => ("", from),
    };
    let name = crate::event::rfc2047::decode(name.trim());
    let name = name.trim().trim_matches('"').trim();
    Envelope {
        subject: None,
        from_name: (!name.is_empty()).then(|| name.to_owned()),
        from_address: (!address.trim().is_empty()).then(|| address.trim().to_owned()),
    }
}

fn non_empty(text: Option<String>) -> Option<String> {
    text.filter(|text| !text.is_empty())
}

/// A count that JavaScript clients can read exactly, as the Cyrus parser demands.
fn checked(value: Option<u64>, field: &'static str) -> Result<Option<u64>, ParseError> {
    match value {
        Some(value) if value > (1 << 53) - 1 => Err(ParseError::OutOfRange { field, value }),
        value => Ok(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OX: &str = r#"{"user":"alice","event":"messageNew","folder":"INBOX","imap-uidvalidity":1795879755,"imap-uid":1,"from":"=?UTF-8?Q?J=C3=BCrgen_Sender?= <sender@example.org>","subject":"=?UTF-8?Q?Gr=C3=BC=C3=9Fe?= from the harness","snippet":"Hello Alice","unseen":1}"#;

    #[test]
    fn an_ox_request_is_a_new_mail_with_decoded_headers() {
        let event = from_ox(OX.as_bytes()).unwrap();
        assert_eq!(event.kind, Kind::MessageNew);
        assert_eq!(event.owner.as_deref(), Some("alice"));
        let mailbox = event.mailbox.as_ref().unwrap();
        assert_eq!(mailbox.folder.as_deref(), Some("INBOX"));
        assert_eq!(
            (mailbox.uidvalidity, mailbox.uid),
            (Some(1795879755), Some(1))
        );
        assert_eq!(mailbox.url, "/INBOX;UIDVALIDITY=1795879755/;UID=1");
        assert_eq!(event.mailbox_type, Some(MailboxType::Mail));
        assert_eq!(event.unseen, Some(1));
        let envelope = event.envelope.unwrap();
        assert_eq!(envelope.from_name.as_deref(), Some("Jürgen Sender"));
        assert_eq!(envelope.from_address.as_deref(), Some("sender@example.org"));
        assert_eq!(envelope.subject.as_deref(), Some("Grüße from the harness"));
    }

    #[test]
    fn senders_read_as_mail_clients_show_them() {
        let check = |from: &str, name: Option<&str>, address: Option<&str>| {
            let envelope = sender(from);
            assert_eq!(envelope.from_name.as_deref(), name, "{from}");
            assert_eq!(envelope.from_address.as_deref(), address, "{from}");
        };
        check(
            "\"Sender, Quoted\" <quoted@example.org>",
            Some("Sender, Quoted"),
            Some("quoted@example.org"),
        );
        check("rob@example.net", None, Some("rob@example.net"));
        check("<rob@example.net>", None, Some("rob@example.net"));
        check(
            "=?ISO-8859-1?Q?Ren=E9?= <rene@example.org>",
            Some("René"),
            Some("rene@example.org"),
        );
        check("", None, None);
    }

    #[test]
    fn a_lua_transaction_drops_empty_flag_changes_and_badges_once() {
        let body = r#"{"v":1,"user":"alice","inbox_unseen":3,"events":[
            {"flags":[],"flags_old":["\\Recent"],"keywords":[],"keywords_old":[],"mailbox":"INBOX","name":"FlagsClear","uid":1,"uid_validity":7},
            {"flags":["\\Seen"],"keywords":[],"mailbox":"INBOX","name":"FlagsSet","uid":1,"uid_validity":7},
            {"mailbox":"INBOX","name":"MessageRead","uid":1,"uid_validity":7},
            {"mailbox":"Archive","name":"MessageAppend","uid":4,"uid_validity":9,"from_address":"a@b","subject":"Hi"}]}"#;
        let (events, dropped) = from_lua(body.as_bytes()).unwrap();
        assert_eq!(dropped, 1);
        let names: Vec<_> = events.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["FlagsSet", "MessageRead", "MessageAppend"]);
        let unseen: Vec<_> = events.iter().map(|e| e.unseen).collect();
        assert_eq!(
            unseen,
            [None, Some(3), None],
            "on the last INBOX event only"
        );
        let envelope = events[2].envelope.clone().unwrap();
        assert_eq!(
            (envelope.from_name, envelope.from_address.as_deref()),
            (None, Some("a@b"))
        );
        let modseqs: Vec<u64> = events.iter().map(|e| e.modseq.unwrap()).collect();
        assert!(
            modseqs.windows(2).all(|pair| pair[0] < pair[1]),
            "{modseqs:?}"
        );

        // A delivery carries the count, whatever else the transaction holds.
        let body = r#"{"v":1,"user":"bob","inbox_unseen":5,"events":[
            {"mailbox":"INBOX","name":"MessageNew","uid":2,"uid_validity":7,"subject":"Hello"},
            {"flags":["\\Flagged"],"keywords":[],"mailbox":"INBOX","name":"FlagsSet","uid":2,"uid_validity":7}]}"#;
        let (events, _) = from_lua(body.as_bytes()).unwrap();
        assert_eq!(events[0].unseen, Some(5));
        assert_eq!(events[1].unseen, None);
        assert_eq!(events[0].owner.as_deref(), Some("bob"));
    }

    #[test]
    fn modseqs_rise_and_follow_the_clock() {
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64;
        let taken: Vec<u64> = (0..1000).map(|_| next_modseq()).collect();
        assert!(taken.windows(2).all(|pair| pair[0] < pair[1]));
        assert!(taken[0] >= before, "never behind the clock");
        assert!(taken[999] < 1 << 53);
    }

    #[test]
    fn relative_urls() {
        assert_eq!(
            relative_url("Projects/2026", Some(3), None),
            "/Projects/2026;UIDVALIDITY=3"
        );
        assert_eq!(
            relative_url("a b;c%", None, Some(1)),
            "/a%20b%3Bc%25/;UID=1"
        );
        assert_eq!(relative_url("Gäste", None, None), "/G%C3%A4ste");
    }
}
