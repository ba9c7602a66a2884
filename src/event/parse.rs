//! Bytes to [`Event`]: the RFC 5423 JSON body, and the notify packet around it.
//!
//! The JSON is read once (`wire.rs`), into a borrowed struct that picks out the fields
//! mailpush acts on and skips the rest; the whole text is then kept as [`Event::raw`].
//! Unknown event types and unknown keys are never an error, and a known key with an unexpected
//! type is read as absent: producers differ (Cyrus, Dovecot, scripts) and a push is worth more
//! than a type check.

use std::borrow::Cow;

use super::json::Reader;
use super::wire::read_wire;
use super::{
    Class, Counters, Envelope, Event, IdScheme, Kind, MailboxType, Notification, envelope, imapurl,
};

/// Why bytes are not an event. Each variant has a stable [`ParseError::reason`] for metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("truncated packet: no {0} field")]
    Truncated(&'static str),
    #[error("bad packet header: {0}")]
    BadHeader(&'static str),
    #[error("{0} is not UTF-8")]
    NotUtf8(&'static str),
    #[error("bad dlist record: {0}")]
    BadDlist(&'static str),
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("event has no \"event\" name")]
    MissingName,
    #[error("no {0} given")]
    MissingField(&'static str),
    #[error("bad uri: {0}")]
    Uri(#[from] imapurl::UrlError),
    #[error(
        "{field} is {value}, over 2^53 - 1 (no real counter gets there, and JavaScript clients could not read it exactly)"
    )]
    OutOfRange { field: &'static str, value: u64 },
    #[error("{size} bytes is over the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
}

impl ParseError {
    /// A short, fixed label for the `reason` of a rejected-packet counter.
    pub fn reason(&self) -> &'static str {
        match self {
            ParseError::Truncated(_) => "truncated",
            ParseError::BadHeader(_) => "bad_header",
            ParseError::NotUtf8(_) => "not_utf8",
            ParseError::BadDlist(_) => "bad_dlist",
            ParseError::Json(_) => "invalid_json",
            ParseError::MissingName => "missing_event_name",
            ParseError::MissingField(_) => "missing_field",
            ParseError::Uri(_) => "bad_uri",
            ParseError::OutOfRange { .. } => "number_out_of_range",
            ParseError::TooLarge { .. } => "too_large",
        }
    }
}

/// Parses one RFC 5423 event given as a JSON object (NDJSON lines, `POST /ingest`).
pub fn from_json(json: String) -> Result<Event, ParseError> {
    // Reading the typed fields checks the whole text's syntax, so the text is kept as it is
    // rather than parsed a second time into a RawValue.
    let mut event = event_from_json_text(&json)?;
    event.raw = Some(json.into_boxed_str());
    Ok(event)
}

/// Turns a notify packet (datagram or dlist record) into an event, whatever its class.
pub fn from_notification(mut notification: Notification) -> Result<Event, ParseError> {
    let packet_user = non_empty(&notification.user);
    let mut event = match &notification.class {
        Class::Event => {
            let json = std::mem::take(&mut notification.message);
            let mut event = from_json(json)?;
            if event.owner.is_none() && event.mailbox.is_none() {
                event.owner = packet_user;
            }
            event
        }
        Class::Imip => {
            let json = std::mem::take(&mut notification.message);
            let mut reader = Reader::new(&json);
            reader
                .skip()
                .and_then(|()| reader.end())
                .map_err(|err| ParseError::Json(err.to_string()))?;
            let mut event = Event::bare(Class::Imip, "IMIP".into(), Kind::Imip, packet_user);
            event.raw = Some(json.into_boxed_str());
            event
        }
        Class::Sieve => Event::bare(Class::Sieve, "SIEVE".into(), Kind::SieveNotify, packet_user),
        Class::Mail => Event::bare(Class::Mail, "MAIL".into(), Kind::MailNotice, packet_user),
        Class::Other(name) => Event::bare(
            notification.class.clone(),
            name.clone(),
            Kind::Other,
            packet_user,
        ),
    };
    event.notification = Some(Box::new(notification));
    Ok(event)
}

fn event_from_json_text(json: &str) -> Result<Event, ParseError> {
    // A derived struct would also accept a JSON array (by position); events are objects.
    if !json.trim_start().starts_with('{') {
        return Err(ParseError::Json("an event must be a JSON object".into()));
    }
    let wire = read_wire(json).map_err(|err| ParseError::Json(err.to_string()))?;
    let name = wire
        .event
        .filter(|name| !name.is_empty())
        .ok_or(ParseError::MissingName)?;
    let kind = Kind::from_name(&name);
    let mailbox = match wire.uri.as_deref() {
        Some(uri) => imapurl::parse(uri)?,
        None => None,
    };
    // The owner comes from the mailbox path when there is one (the acting `user` may be an
    // admin or a sharee); events without a mailbox name their user directly.
    let owner = match &mailbox {
        Some(mailbox) => mailbox.owner.clone(),
        None => wire
            .user_id
            .or(wire.calendar_owner)
            .or(wire.user.clone())
            .filter(|user| !user.is_empty())
            .map(Cow::into_owned),
    };
    let envelope = wire
        .jmap_email
        .or_else(|| envelope_from_imap(wire.envelope?));
    let counters = wire.counters.as_deref().and_then(Counters::parse);
    // The first id that shows a scheme: `vnd.cmu.emailid`, jmapEmail's `id`, the thread id.
    let id_scheme = [
        wire.email_id.as_deref().map(IdScheme::of_email_id),
        wire.jmap_email_id.as_deref().map(IdScheme::of_email_id),
        wire.thread_id.as_deref().map(IdScheme::of_thread_id),
    ]
    .into_iter()
    .flatten()
    .find(|scheme| *scheme != IdScheme::Unknown)
    .unwrap_or_default();
    check_range("modseq", wire.modseq)?;
    check_range("vnd.cmu.unseenMessages", wire.unseen)?;
    check_range("messages", wire.messages)?;
    if let Some(counters) = &counters {
        for value in [
            counters.highest,
            counters.mail,
            counters.calendar,
            counters.contacts,
        ] {
            check_range("vnd.fastmail.counters", Some(value))?;
        }
    }
    Ok(Event {
        class: Class::Event,
        name: name.into_owned(),
        kind,
        owner,
        mailbox,
        mailbox_type: wire.mbtype.as_deref().and_then(MailboxType::from_mbtype),
        actor: wire
            .user
            .filter(|user| !user.is_empty())
            .map(Cow::into_owned),
        slot: wire.server_fqdn.map(Cow::into_owned),
        modseq: wire.modseq,
        unseen: wire.unseen,
        messages: wire.messages,
        counters,
        envelope,
        id_scheme,
        raw: None,
        notification: None,
    })
}

/// The largest number an event may carry: 2^53 - 1, the largest integer a JavaScript client
/// reads exactly. State only ever rises, so one absurd modseq (`u64::MAX`) would otherwise
/// freeze its user's live state until a restart.
pub const MAX_NUMBER: u64 = (1 << 53) - 1;

fn check_range(field: &'static str, value: Option<u64>) -> Result<(), ParseError> {
    match value {
        Some(value) if value > MAX_NUMBER => Err(ParseError::OutOfRange { field, value }),
        _ => Ok(()),
    }
}

/// Reads sender and subject from the IMAP ENVELOPE string; None when it is not a string.
fn envelope_from_imap(raw: &str) -> Option<Envelope> {
    let text = Reader::new(raw).text().ok()??;
    Some(envelope::parse(&text))
}

fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::packet;

    fn json(text: &str) -> Result<Event, ParseError> {
        from_json(text.to_owned())
    }

    #[test]
    fn numbers_past_2_53_are_rejected() {
        let event = |field: &str, value: u64| {
            json(&format!(
                r#"{{"event":"MessageNew","uri":"imap://h/user/alice;UIDVALIDITY=1","{field}":{value}}}"#
            ))
        };
        assert_eq!(
            event("modseq", MAX_NUMBER).unwrap().modseq,
            Some(MAX_NUMBER)
        );
        for field in ["modseq", "vnd.cmu.unseenMessages", "messages"] {
            let err = event(field, MAX_NUMBER + 1).unwrap_err();
            assert_eq!(err.reason(), "number_out_of_range", "{field}");
            assert!(err.to_string().starts_with(field), "{err}");
        }
        assert_eq!(
            event("modseq", u64::MAX).unwrap_err().reason(),
            "number_out_of_range"
        );
        let counters = json(&format!(
            r#"{{"event":"MessageNew","uri":"imap://h/user/alice;UIDVALIDITY=1","vnd.fastmail.counters":"9 {} 4 0 0"}}"#,
            u64::MAX
        ));
        assert_eq!(counters.unwrap_err().reason(), "number_out_of_range");
    }

    #[test]
    fn message_new_fields() {
        let event = json(r#"{"event":"MessageNew","uri":"imap://h/user/alice;UIDVALIDITY=7/;UID=3","modseq":4,"messages":1,"vnd.cmu.unseenMessages":1,"user":"cyrus","vnd.cmu.mbtype":"e","serverFQDN":"slot1.example","vnd.cmu.envelope":"(NIL \"Hi\" ((\"Bob\" NIL \"bob\" \"example.net\")) NIL NIL NIL NIL NIL NIL NIL)","x-unknown":{"deep":[1,2]}}"#).unwrap();
        assert_eq!(event.kind, Kind::MessageNew);
        assert_eq!(event.owner.as_deref(), Some("alice"));
        assert_eq!(event.actor.as_deref(), Some("cyrus"));
        assert_eq!(event.slot.as_deref(), Some("slot1.example"));
        assert_eq!(event.mailbox_type, Some(MailboxType::Mail));
        let mailbox = event.mailbox.as_ref().unwrap();
        assert_eq!(
            (mailbox.folder.as_deref(), mailbox.uidvalidity, mailbox.uid),
            (Some("INBOX"), Some(7), Some(3))
        );
        assert_eq!(
            (event.modseq, event.unseen, event.messages),
            (Some(4), Some(1), Some(1))
        );
        let envelope = event.envelope.unwrap();
        assert_eq!(envelope.subject.as_deref(), Some("Hi"));
        assert_eq!(envelope.from_name.as_deref(), Some("Bob"));
        assert!(event.raw.unwrap().contains("x-unknown"));
    }

    #[test]
    fn jmap_email_wins_over_envelope() {
        let event = json(r#"{"event":"MessageNew","vnd.cmu.envelope":"(NIL \"raw\" NIL NIL NIL NIL NIL NIL NIL NIL)","vnd.fastmail.jmapEmail":{"subject":"Grüße","from":[{"name":"Jörg","email":"joerg@example.net"}]}}"#).unwrap();
        let envelope = event.envelope.unwrap();
        assert_eq!(envelope.subject.as_deref(), Some("Grüße"));
        assert_eq!(envelope.from_name.as_deref(), Some("Jörg"));
        assert_eq!(envelope.from_address.as_deref(), Some("joerg@example.net"));
        assert_eq!(event.id_scheme, IdScheme::Unknown, "no id in it");
        let compact = json(r#"{"event":"MessageNew","vnd.fastmail.jmapEmail":{"id":"Sbrp-oRDd_Mh","subject":"x"}}"#).unwrap();
        assert_eq!(
            compact.id_scheme,
            IdScheme::Compact,
            "the scheme from jmapEmail's id"
        );
        // An odd jmapEmail falls back to the envelope instead of failing the event.
        let event = json(r#"{"event":"MessageNew","vnd.cmu.envelope":"(NIL \"raw\" NIL NIL NIL NIL NIL NIL NIL NIL)","vnd.fastmail.jmapEmail":{"from":"nobody"}}"#).unwrap();
        assert_eq!(event.envelope.unwrap().subject.as_deref(), Some("raw"));
    }

    #[test]
    fn owners_without_a_mailbox() {
        let owner = |text: &str| json(text).unwrap().owner;
        assert_eq!(
            owner(r#"{"event":"CalendarAlarm","userId":"alice","calendarOwner":"bob"}"#).as_deref(),
            Some("alice")
        );
        assert_eq!(
            owner(r#"{"event":"ApplePushService","user":"alice"}"#).as_deref(),
            Some("alice")
        );
        assert_eq!(
            owner(r#"{"event":"Login","uri":"imap://h","user":"carol"}"#).as_deref(),
            Some("carol")
        );
        // A shared mailbox has no owner, whoever acted on it.
        assert_eq!(
            owner(
                r#"{"event":"MessageNew","uri":"imap://h/shared.x;UIDVALIDITY=1","user":"carol"}"#
            ),
            None
        );
        assert_eq!(owner(r#"{"event":"MailboxModseq","uri":"imap://h/user/dave/Work;UIDVALIDITY=1","user":""}"#).as_deref(), Some("dave"));
    }

    #[test]
    fn lenient_types_and_unknown_events() {
        let event = json(r#"{"event":"vnd.example.Thing","modseq":"12","messages":-1,"vnd.cmu.unseenMessages":[1],"user":5,"serverFQDN":null}"#).unwrap();
        assert_eq!(event.kind, Kind::Other);
        assert_eq!(event.name, "vnd.example.Thing");
        assert_eq!(
            (event.modseq, event.messages, event.unseen),
            (Some(12), None, None)
        );
        assert_eq!(event.actor, None);
        assert_eq!(event.slot, None);
    }

    #[test]
    fn rejected_json() {
        let reason = |text: &str| json(text).err().map(|err| err.reason());
        assert_eq!(reason(""), Some("invalid_json"));
        assert_eq!(reason("{\"event\":"), Some("invalid_json"));
        assert_eq!(reason("[1,2]"), Some("invalid_json"));
        assert_eq!(reason("\"MessageNew\""), Some("invalid_json"));
        assert_eq!(reason("{}"), Some("missing_event_name"));
        assert_eq!(reason(r#"{"event":""}"#), Some("missing_event_name"));
        assert_eq!(reason(r#"{"event":7}"#), Some("missing_event_name"));
        assert_eq!(
            reason(r#"{"event":"MessageNew","uri":"http://x/"}"#),
            Some("bad_uri")
        );
        assert_eq!(
            reason(r#"{"event":"MessageNew"} trailing"#),
            Some("invalid_json")
        );
        assert_eq!(reason(r#"{"event":"A","event":"B"}"#), Some("invalid_json"));
    }

    #[test]
    fn packet_classes() {
        let sieve =
            packet::from_datagram(b"mailto\0SIEVE\0high\0alice\0\x001\0a@b\0Hi\n\0/stage/1\0")
                .unwrap();
        let event = from_notification(sieve).unwrap();
        assert_eq!(
            (event.kind, event.owner.as_deref()),
            (Kind::SieveNotify, Some("alice"))
        );
        assert_eq!(event.notification.as_ref().unwrap().message, "Hi\n");

        let imip =
            packet::from_datagram(b"imip\0IMIP\0\0alice\0\x000\0{\"recipient\":\"x\"}\0").unwrap();
        let event = from_notification(imip).unwrap();
        assert_eq!(
            (event.kind, event.owner.as_deref()),
            (Kind::Imip, Some("alice"))
        );
        assert_eq!(event.raw.as_deref(), Some("{\"recipient\":\"x\"}"));
        assert_eq!(event.notification.as_ref().unwrap().message, "");

        let bad = packet::from_datagram(b"m\0EVENT\0\0\0\x000\0{oops}\0").unwrap();
        assert_eq!(
            from_notification(bad).err().map(|e| e.reason()),
            Some("invalid_json")
        );
    }
}
