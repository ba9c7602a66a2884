//! The `dlist:` stream form of a Cyrus notify packet (`protocol/cyrus-notify.md` §7).
//!
//! ```text
//! NOTIFY %(METHOD mailpush CLASS EVENT PRIORITY NIL USER NIL MAILBOX NIL OPTIONS ()
//!          MESSAGE {449+}\r\n<449 bytes> FILEPATH NIL)\r\n
//! ```
//!
//! Values are atoms, `NIL`, quoted strings, literals (`{n+}` or `{n}`, CRLF, n bytes) or
//! parenthesised lists. The parser works on a growing buffer: it says [`DlistError::Incomplete`]
//! until a whole record is there, so the reader knows to read more.

use std::borrow::Cow;

use super::{Class, Notification, ParseError};

/// Why a buffer does not (yet) hold a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DlistError {
    /// The record is cut short: read more bytes and try again.
    Incomplete,
    /// The bytes can never become a valid record.
    Invalid(ParseError),
}

/// The reply Cyrus expects after each record; a bare `OK` is logged by Cyrus as an error.
pub const REPLY_OK: &[u8] = b"OK NIL\r\n";

/// Parses one record from the start of `buf`, returning it and how many bytes it used.
/// A literal longer than `max_literal` is refused at once rather than waited for.
pub fn parse_record(buf: &[u8], max_literal: usize) -> Result<(Notification, usize), DlistError> {
    let mut cursor = Cursor {
        buf,
        at: 0,
        max_literal,
    };
    let name = cursor.atom()?;
    if !name.eq_ignore_ascii_case(b"NOTIFY") {
        return Err(invalid("record is not NOTIFY"));
    }
    cursor.expect(b' ')?;
    cursor.expect(b'%')?;
    cursor.expect(b'(')?;
    let mut notification = Notification {
        method: String::new(),
        class: Class::Other(String::new()),
        priority: String::new(),
        user: String::new(),
        mailbox: String::new(),
        options: Vec::new(),
        message: String::new(),
        fname: None,
    };
    let mut seen_class = false;
    loop {
        cursor.skip_spaces()?;
        if cursor.peek()? == b')' {
            cursor.at += 1;
            break;
        }
        let key = cursor.atom()?.to_ascii_uppercase();
        cursor.expect(b' ')?;
        let value = cursor.value(0)?;
        match key.as_slice() {
            b"METHOD" => notification.method = value.text(),
            b"CLASS" => {
                notification.class = Class::from_name(&value.text());
                seen_class = true;
            }
            b"PRIORITY" => notification.priority = value.text(),
            b"USER" => notification.user = value.text(),
            b"MAILBOX" => notification.mailbox = value.text(),
            b"OPTIONS" => notification.options = value.list_texts(),
            b"MESSAGE" => {
                notification.message = match value {
                    Value::Nil => String::new(),
                    Value::Bytes(bytes) => {
                        String::from_utf8(bytes.into_owned()).map_err(|_| invalid_utf8())?
                    }
                    Value::List(_) => return Err(invalid("MESSAGE is a list")),
                }
            }
            b"FILEPATH" => notification.fname = value.optional_text(),
            _ => {}
        }
    }
    // The record ends with CRLF; accept a bare LF from hand-written producers.
    if cursor.peek()? == b'\r' {
        cursor.at += 1;
    }
    cursor.expect(b'\n')?;
    if !seen_class {
        return Err(invalid("record has no CLASS"));
    }
    Ok((notification, cursor.at))
}

fn invalid(reason: &'static str) -> DlistError {
    DlistError::Invalid(ParseError::BadDlist(reason))
}

fn invalid_utf8() -> DlistError {
    DlistError::Invalid(ParseError::NotUtf8("message"))
}

/// Lists nest only as deep as OPTIONS needs; deeper input is refused, not recursed into.
const MAX_DEPTH: usize = 4;

enum Value<'a> {
    Nil,
    Bytes(Cow<'a, [u8]>),
    List(Vec<Value<'a>>),
}

impl Value<'_> {
    fn text(&self) -> String {
        self.optional_text().unwrap_or_default()
    }

    fn optional_text(&self) -> Option<String> {
        match self {
            Value::Bytes(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
            Value::Nil | Value::List(_) => None,
        }
    }

    fn list_texts(&self) -> Vec<String> {
        match self {
            Value::List(items) => items.iter().map(Value::text).collect(),
            _ => Vec::new(),
        }
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
    max_literal: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Result<u8, DlistError> {
        self.buf.get(self.at).copied().ok_or(DlistError::Incomplete)
    }

    fn expect(&mut self, byte: u8) -> Result<(), DlistError> {
        if self.peek()? != byte {
            return Err(invalid("unexpected byte"));
        }
        self.at += 1;
        Ok(())
    }

    fn skip_spaces(&mut self) -> Result<(), DlistError> {
        while self.peek()? == b' ' {
            self.at += 1;
        }
        Ok(())
    }

    fn atom(&mut self) -> Result<&'a [u8], DlistError> {
        let start = self.at;
        while !matches!(
            self.peek()?,
            b' ' | b'(' | b')' | b'\r' | b'\n' | b'"' | b'{'
        ) {
            self.at += 1;
        }
        if self.at == start {
            return Err(invalid("empty atom"));
        }
        Ok(&self.buf[start..self.at])
    }

    fn value(&mut self, depth: usize) -> Result<Value<'a>, DlistError> {
        match self.peek()? {
            b'(' => {
                if depth >= MAX_DEPTH {
                    return Err(invalid("lists nested too deep"));
                }
                self.at += 1;
                let mut items = Vec::new();
                loop {
                    self.skip_spaces()?;
                    if self.peek()? == b')' {
                        self.at += 1;
                        return Ok(Value::List(items));
                    }
                    items.push(self.value(depth + 1)?);
                }
            }
            b'"' => self.quoted().map(Value::Bytes),
            b'{' => self
                .literal()
                .map(|bytes| Value::Bytes(Cow::Borrowed(bytes))),
            _ => {
                let atom = self.atom()?;
                if atom.eq_ignore_ascii_case(b"NIL") {
                    Ok(Value::Nil)
                } else {
                    Ok(Value::Bytes(Cow::Borrowed(atom)))
                }
            }
        }
    }

    fn quoted(&mut self) -> Result<Cow<'a, [u8]>, DlistError> {
        self.at += 1;
        let mut out = Vec::new();
        loop {
            match self.peek()? {
                b'"' => {
                    self.at += 1;
                    return Ok(Cow::Owned(out));
                }
                b'\\' => {
                    self.at += 1;
                    out.push(self.peek()?);
                }
                b'\r' | b'\n' => return Err(invalid("line break in a quoted string")),
                byte => out.push(byte),
            }
            self.at += 1;
        }
    }

    fn literal(&mut self) -> Result<&'a [u8], DlistError> {
        self.at += 1;
        let start = self.at;
        while self.peek()?.is_ascii_digit() {
            self.at += 1;
            if self.at - start > 12 {
                return Err(invalid("literal length too long"));
            }
        }
        let length: usize = std::str::from_utf8(&self.buf[start..self.at])
            .ok()
            .and_then(|digits| digits.parse().ok())
            .ok_or_else(|| invalid("literal without a length"))?;
        if length > self.max_literal {
            return Err(DlistError::Invalid(ParseError::TooLarge {
                size: length,
                limit: self.max_literal,
            }));
        }
        if self.peek()? == b'+' {
            self.at += 1;
        }
        self.expect(b'}')?;
        if self.peek()? == b'\r' {
            self.at += 1;
        }
        self.expect(b'\n')?;
        let end = self.at + length;
        if end > self.buf.len() {
            return Err(DlistError::Incomplete);
        }
        let bytes = &self.buf[self.at..end];
        self.at = end;
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENT: &[u8] = b"NOTIFY %(METHOD mailpush CLASS EVENT PRIORITY NIL USER NIL MAILBOX NIL OPTIONS () MESSAGE {17+}\r\n{\"event\":\"Login\"} FILEPATH NIL)\r\n";
    const SIEVE: &[u8] = b"NOTIFY %(METHOD mailto CLASS SIEVE PRIORITY high USER alice MAILBOX NIL OPTIONS (alice-phone@sms.example.test?subject=urgent opt-a opt-b) MESSAGE {9+}\r\nUrgent\n\nx FILEPATH /var/spool/cyrus/stage./9063-1795880822-0)\r\n";

    #[test]
    fn event_record() {
        let (n, used) = parse_record(EVENT, 1 << 20).unwrap();
        assert_eq!(used, EVENT.len());
        assert_eq!(n.method, "mailpush");
        assert_eq!(n.class, Class::Event);
        assert_eq!(n.user, "");
        assert_eq!(n.message, "{\"event\":\"Login\"}");
        assert_eq!(n.fname, None);
    }

    #[test]
    fn sieve_record() {
        let (n, _) = parse_record(SIEVE, 1 << 20).unwrap();
        assert_eq!(n.class, Class::Sieve);
        assert_eq!(n.priority, "high");
        assert_eq!(n.user, "alice");
        assert_eq!(
            n.options,
            [
                "alice-phone@sms.example.test?subject=urgent",
                "opt-a",
                "opt-b"
            ]
        );
        assert_eq!(n.message, "Urgent\n\nx");
        assert_eq!(
            n.fname.as_deref(),
            Some("/var/spool/cyrus/stage./9063-1795880822-0")
        );
    }

    #[test]
    fn every_prefix_is_incomplete() {
        for record in [EVENT, SIEVE] {
            for cut in 0..record.len() {
                assert_eq!(
                    parse_record(&record[..cut], 1 << 20).err(),
                    Some(DlistError::Incomplete),
                    "cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn two_records_back_to_back() {
        let both = [EVENT, SIEVE].concat();
        let (_, used) = parse_record(&both, 1 << 20).unwrap();
        let (second, rest) = parse_record(&both[used..], 1 << 20).unwrap();
        assert_eq!(second.class, Class::Sieve);
        assert_eq!(used + rest, both.len());
    }

    #[test]
    fn quoted_values_and_bare_lf() {
        let record = b"NOTIFY %(CLASS \"EVENT\" METHOD \"a \\\"b\\\"\" MESSAGE \"{}\")\n";
        let (n, _) = parse_record(record, 100).unwrap();
        assert_eq!(n.method, "a \"b\"");
        assert_eq!(n.message, "{}");
    }

    #[test]
    fn invalid_records() {
        let check = |bytes: &[u8], reason: ParseError| {
            assert_eq!(
                parse_record(bytes, 100).err(),
                Some(DlistError::Invalid(reason)),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        };
        check(
            b"HELLO %(CLASS EVENT)\r\n",
            ParseError::BadDlist("record is not NOTIFY"),
        );
        check(
            b"NOTIFY (CLASS EVENT)\r\n",
            ParseError::BadDlist("unexpected byte"),
        );
        check(
            b"NOTIFY %(METHOD x)\r\n",
            ParseError::BadDlist("record has no CLASS"),
        );
        check(
            b"NOTIFY %(CLASS EVENT MESSAGE {101+}\r\n",
            ParseError::TooLarge {
                size: 101,
                limit: 100,
            },
        );
        check(
            b"NOTIFY %(CLASS EVENT MESSAGE {x}\r\n",
            ParseError::BadDlist("literal without a length"),
        );
        check(
            b"NOTIFY %(CLASS EVENT OPTIONS (((((a))))))\r\n",
            ParseError::BadDlist("lists nested too deep"),
        );
        check(
            b"NOTIFY %(CLASS EVENT MESSAGE {1}\r\n\xff)\r\n",
            ParseError::NotUtf8("message"),
        );
        check(
            b"NOTIFY %(CLASS EVENT MESSAGE (a))\r\n",
            ParseError::BadDlist("MESSAGE is a list"),
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = parse_record(&bytes, 256);
            let mut prefixed = b"NOTIFY %(".to_vec();
            prefixed.extend_from_slice(&bytes);
            let _ = parse_record(&prefixed, 256);
        }
    }
}
