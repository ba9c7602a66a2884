//! The Cyrus notify packet: the header fields every notifier class shares, and the datagram
//! layout (`protocol/cyrus-notify.md` §2).
//!
//! ```text
//! method \0 class \0 priority \0 user \0 mailbox \0 nopt \0 option_1 \0 … message \0 [fname \0]
//! ```
//!
//! The `dlist:` stream form carries the same fields in another syntax and ends in the same
//! [`Notification`]; [`super::parse`] turns either into an `Event`.

use super::ParseError;

/// The header of a Cyrus notify packet and its message body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The notifyd method: `event_notifier` for EVENT, the Sieve method (`mailto`, `sms`, a
    /// whole non-mailto URI) for SIEVE.
    pub method: String,
    pub class: Class,
    /// `low`, `normal` or `high` for SIEVE; empty otherwise.
    pub priority: String,
    /// The userid for SIEVE, MAIL and IMIP packets; empty for EVENT.
    pub user: String,
    /// The external mailbox name for MAIL packets; empty otherwise.
    pub mailbox: String,
    /// SIEVE only: for `mailto` the URI without its scheme comes first, then the script's
    /// options.
    pub options: Vec<String>,
    /// The body. For JSON classes (EVENT, IMIP) it is moved into [`super::Event::raw`] and left
    /// empty here, so the text is held once.
    pub message: String,
    /// SIEVE only: lmtpd's short-lived staging copy of the message.
    pub fname: Option<String>,
}

/// The notifier class, which says what the message body is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    /// An RFC 5423 mboxevent as JSON.
    Event,
    /// A Sieve `notify` action; the body is text.
    Sieve,
    /// lmtpd's legacy new-mail notice; the body is a few header lines.
    Mail,
    /// A CalDAV scheduling message as JSON.
    Imip,
    /// A class this version does not know; kept as sent.
    Other(String),
}

impl Class {
    /// Reads a class name as Cyrus sends it.
    pub fn from_name(name: &str) -> Class {
        match name {
            "EVENT" => Class::Event,
            "SIEVE" => Class::Sieve,
            "MAIL" => Class::Mail,
            "IMIP" => Class::Imip,
            other => Class::Other(other.to_owned()),
        }
    }

    /// Whether the message body is a JSON object.
    pub fn has_json_body(&self) -> bool {
        matches!(self, Class::Event | Class::Imip)
    }
}

/// The most options a packet may carry; Cyrus sends a handful, and the count is only a
/// sanity bound on input.
const MAX_OPTIONS: usize = 256;

/// Splits a notify datagram into its fields. Every field must be NUL-terminated; a datagram
/// that ends early is reported as truncated, naming the first missing field.
pub fn from_datagram(bytes: &[u8]) -> Result<Notification, ParseError> {
    let mut fields = Fields { rest: bytes };
    let method = fields.text("method")?;
    let class = Class::from_name(&String::from_utf8_lossy(fields.field("class")?));
    let priority = fields.text("priority")?;
    let user = fields.text("user")?;
    let mailbox = fields.text("mailbox")?;
    let n_options: usize = std::str::from_utf8(fields.field("nopt")?)
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|n| *n <= MAX_OPTIONS)
        .ok_or(ParseError::BadHeader("nopt is not a small number"))?;
    let mut options = Vec::with_capacity(n_options);
    for _ in 0..n_options {
        options.push(fields.text("option")?);
    }
    let message = fields.field("message")?;
    let message =
        String::from_utf8(message.to_vec()).map_err(|_| ParseError::NotUtf8("message"))?;
    let fname = if fields.rest.is_empty() {
        None
    } else {
        Some(fields.text("fname")?)
    };
    if !fields.rest.is_empty() {
        return Err(ParseError::BadHeader("bytes after the last field"));
    }
    Ok(Notification {
        method,
        class,
        priority,
        user,
        mailbox,
        options,
        message,
        fname,
    })
}

struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn field(&mut self, name: &'static str) -> Result<&'a [u8], ParseError> {
        let end = memchr::memchr(0, self.rest).ok_or(ParseError::Truncated(name))?;
        let (field, rest) = self.rest.split_at(end);
        self.rest = &rest[1..];
        Ok(field)
    }

    /// Header fields are short identifiers and paths; bytes that are not UTF-8 are replaced
    /// rather than failing the packet, since they only ever reach logs.
    fn text(&mut self, name: &'static str) -> Result<String, ParseError> {
        Ok(String::from_utf8_lossy(self.field(name)?).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// method, class, user, options, message, fname
    type Expected<'a> = (
        &'a str,
        Class,
        &'a str,
        Vec<&'a str>,
        &'a str,
        Option<&'a str>,
    );

    fn check(bytes: &[u8], expect: Result<Expected<'_>, ParseError>) {
        let got = from_datagram(bytes).map(|n| {
            (
                n.method.clone(),
                n.class.clone(),
                n.user.clone(),
                n.options.clone(),
                n.message.clone(),
                n.fname.clone(),
            )
        });
        let expect = expect.map(|(m, c, u, o, msg, f)| {
            (
                m.to_owned(),
                c,
                u.to_owned(),
                o.into_iter().map(str::to_owned).collect::<Vec<_>>(),
                msg.to_owned(),
                f.map(str::to_owned),
            )
        });
        assert_eq!(got, expect, "{:?}", String::from_utf8_lossy(bytes));
    }

    #[test]
    fn datagram_layouts() {
        check(
            b"mailpush\0EVENT\0\0\0\0\x30\0{\"event\":\"Login\"}\0",
            Ok((
                "mailpush",
                Class::Event,
                "",
                vec![],
                "{\"event\":\"Login\"}",
                None,
            )),
        );
        check(
            b"mailto\0SIEVE\0high\0alice\0\x003\0a@b?subject=x\0opt-a\0opt-b\0Urgent\n\0/var/stage./1-2-0\0",
            Ok((
                "mailto",
                Class::Sieve,
                "alice",
                vec!["a@b?subject=x", "opt-a", "opt-b"],
                "Urgent\n",
                Some("/var/stage./1-2-0"),
            )),
        );
        check(
            b"m\0MAIL\0\0alice\0INBOX\x000\0From: Bob\n\0",
            Ok(("m", Class::Mail, "alice", vec![], "From: Bob\n", None)),
        );
        check(
            b"m\0FUTURE\0\0\0\x000\0x\0",
            Ok(("m", Class::Other("FUTURE".into()), "", vec![], "x", None)),
        );
    }

    #[test]
    fn bad_datagrams() {
        check(b"", Err(ParseError::Truncated("method")));
        check(
            b"mailpush\0EVENT\0\0\0\0\x30\0{\"event\"",
            Err(ParseError::Truncated("message")),
        );
        check(
            b"mailpush\0EVENT\0\0\0\0",
            Err(ParseError::Truncated("nopt")),
        );
        check(
            b"m\0SIEVE\0\0\0\0\x32\0one\0",
            Err(ParseError::Truncated("option")),
        );
        check(
            b"m\0EVENT\0\0\0\0x\0{}\0",
            Err(ParseError::BadHeader("nopt is not a small number")),
        );
        check(
            b"m\0EVENT\0\0\0\x0099999\0{}\0",
            Err(ParseError::BadHeader("nopt is not a small number")),
        );
        check(
            b"m\0EVENT\0\0\0\x000\0\xff\0",
            Err(ParseError::NotUtf8("message")),
        );
        check(
            b"m\0EVENT\0\0\0\x000\0{}\0f\0extra\0",
            Err(ParseError::BadHeader("bytes after the last field")),
        );
        check(
            b"m\0EVENT\0\0\0\x000\0{}\0tail",
            Err(ParseError::Truncated("fname")),
        );
    }
}
