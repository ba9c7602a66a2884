//! The one pass over an event's JSON text: the fields mailpush acts on, borrowed where the
//! text allows, every other key checked and skipped, a known key given twice an error.

use std::borrow::Cow;

use super::Envelope;
use super::json::{JsonError, Reader};

/// The fields mailpush reads from an event; every other key is checked and skipped.
#[derive(Default)]
pub(super) struct WireEvent<'a> {
    pub(super) event: Option<Cow<'a, str>>,
    pub(super) uri: Option<Cow<'a, str>>,
    pub(super) modseq: Option<u64>,
    pub(super) messages: Option<u64>,
    pub(super) unseen: Option<u64>,
    pub(super) user: Option<Cow<'a, str>>,
    pub(super) user_id: Option<Cow<'a, str>>,
    pub(super) calendar_owner: Option<Cow<'a, str>>,
    pub(super) server_fqdn: Option<Cow<'a, str>>,
    pub(super) mbtype: Option<Cow<'a, str>>,
    pub(super) counters: Option<Cow<'a, str>>,
    pub(super) email_id: Option<Cow<'a, str>>,
    pub(super) thread_id: Option<Cow<'a, str>>,
    /// `vnd.cmu.envelope`, kept raw: it is full of escaped quotes, and only decoded when
    /// `vnd.fastmail.jmapEmail` gives no sender and subject.
    pub(super) envelope: Option<&'a str>,
    /// `vnd.fastmail.jmapEmail`, read in place; None when absent or of an odd shape.
    pub(super) jmap_email: Option<Envelope>,
    /// The `id` of `vnd.fastmail.jmapEmail`: an Email id, in the account's id scheme.
    pub(super) jmap_email_id: Option<String>,
}

/// Reads the fields of [`WireEvent`] in one pass over the text, which must be one object and
/// nothing else. A known key given twice is an error, as it would be to `serde_json`; a known
/// key with a value of another type reads as absent.
pub(super) fn read_wire(text: &str) -> Result<WireEvent<'_>, JsonError> {
    let mut reader = Reader::new(text);
    let mut wire = WireEvent::default();
    let mut seen = 0u16;
    reader.object(|reader, key| {
        let Some(field) = Field::from_key(&key) else {
            return reader.skip();
        };
        first_time(reader, &mut seen, field)?;
        match field {
            Field::Event => wire.event = reader.text()?,
            Field::Uri => wire.uri = reader.text()?,
            Field::User => wire.user = reader.text()?,
            Field::UserId => wire.user_id = reader.text()?,
            Field::CalendarOwner => wire.calendar_owner = reader.text()?,
            Field::ServerFqdn => wire.server_fqdn = reader.text()?,
            Field::MbType => wire.mbtype = reader.text()?,
            Field::Counters => wire.counters = reader.text()?,
            Field::EmailId => wire.email_id = reader.text()?,
            Field::ThreadId => wire.thread_id = reader.text()?,
            Field::Modseq => wire.modseq = reader.unsigned()?,
            Field::Messages => wire.messages = reader.unsigned()?,
            Field::Unseen => wire.unseen = reader.unsigned()?,
            Field::Envelope => wire.envelope = Some(reader.raw()?),
            Field::JmapEmail => {
                (wire.jmap_email, wire.jmap_email_id) = read_jmap_email(reader)?;
            }
        }
        Ok(())
    })?;
    reader.end()?;
    Ok(wire)
}

/// The keys of [`WireEvent`]; the discriminant is the key's bit in the duplicate check.
#[derive(Clone, Copy)]
enum Field {
    Event,
    Uri,
    User,
    UserId,
    CalendarOwner,
    ServerFqdn,
    MbType,
    Counters,
    EmailId,
    ThreadId,
    Modseq,
    Messages,
    Unseen,
    Envelope,
    JmapEmail,
}

impl Field {
    fn from_key(key: &str) -> Option<Field> {
        Some(match key {
            "event" => Field::Event,
            "uri" => Field::Uri,
            "user" => Field::User,
            "userId" => Field::UserId,
            "calendarOwner" => Field::CalendarOwner,
            "serverFQDN" => Field::ServerFqdn,
            "vnd.cmu.mbtype" => Field::MbType,
            "vnd.fastmail.counters" => Field::Counters,
            "vnd.cmu.emailid" => Field::EmailId,
            "vnd.cmu.threadid" => Field::ThreadId,
            "modseq" => Field::Modseq,
            "messages" => Field::Messages,
            "vnd.cmu.unseenMessages" => Field::Unseen,
            "vnd.cmu.envelope" => Field::Envelope,
            "vnd.fastmail.jmapEmail" => Field::JmapEmail,
            _ => return None,
        })
    }
}

/// Marks a known key as read; the second time it is an error.
fn first_time(reader: &Reader<'_>, seen: &mut u16, field: Field) -> Result<(), JsonError> {
    let bit = 1 << field as u16;
    if *seen & bit != 0 {
        return Err(reader.error("duplicate key"));
    }
    *seen |= bit;
    Ok(())
}

/// Reads sender and subject from `vnd.fastmail.jmapEmail`, whose headers are already decoded,
/// and its Email `id`. Its shape is checked: anything but an object whose `from` is null or an
/// array of objects reads as no envelope, so the caller falls back to the IMAP envelope. Bad
/// JSON is still an error.
fn read_jmap_email(
    reader: &mut Reader<'_>,
) -> Result<(Option<Envelope>, Option<String>), JsonError> {
    if reader.peek() != Some(b'{') {
        return reader.skip().map(|()| (None, None));
    }
    let mut id = None;
    let mut envelope = Envelope::default();
    let mut odd = false;
    let mut first_from = true;
    reader.object(|reader, key| match key.as_ref() {
        "subject" => {
            envelope.subject = reader.text()?.map(Cow::into_owned);
            Ok(())
        }
        "id" => {
            id = reader.text()?.map(Cow::into_owned);
            Ok(())
        }
        "from" if reader.peek() == Some(b'[') => reader.array(|reader| {
            if reader.peek() != Some(b'{') {
                odd = true;
                return reader.skip();
            }
            let take = std::mem::take(&mut first_from);
            reader.object(|reader, key| {
                let field = match key.as_ref() {
                    "name" if take => &mut envelope.from_name,
                    "email" if take => &mut envelope.from_address,
                    _ => return reader.skip(),
                };
                *field = reader
                    .text()?
                    .filter(|t| !t.is_empty())
                    .map(Cow::into_owned);
                Ok(())
            })
        }),
        "from" => {
            odd |= !reader.null()?;
            if odd {
                reader.skip()?;
            }
            Ok(())
        }
        _ => reader.skip(),
    })?;
    Ok(((!odd).then_some(envelope), id))
}
