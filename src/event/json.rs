//! A validating JSON reader that walks one event object in place.
//!
//! An RFC 5423 event is mostly fields mailpush forwards but never reads (a MessageNew from
//! Cyrus carries about 1.3 KB of them, much of it escaped IMAP syntax). The whole text must
//! still be valid JSON, because it is kept as [`super::Event::raw`] for later readers. This
//! reader checks every byte once, decodes only the values the caller asks for, and looks for
//! string ends eight bytes at a time.
//!
//! It accepts exactly what `serde_json` accepts (a differential test holds it to that): the
//! same grammar, the same 128-level nesting limit, and, like `serde_json`'s own skipping,
//! `\u` escapes in skipped strings are checked for four hex digits but not for surrogate pairs.

use std::borrow::Cow;
use std::fmt;

/// How deep arrays and objects may nest, as in `serde_json`: deeper input is an error rather
/// than a deep recursion.
const MAX_DEPTH: usize = 128;

/// Where and why the text is not JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    what: &'static str,
    at: usize,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.what, self.at)
    }
}

/// A JSON value read leniently as a number: what mailpush's counters accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Number {
    /// A non-negative integer that fits in 64 bits.
    Unsigned(u64),
    /// Any other number: negative, fractional, with an exponent or too large.
    Other,
}

/// A cursor over one JSON text.
pub struct Reader<'a> {
    text: &'a str,
    pos: usize,
    depth: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `text`.
    pub fn new(text: &'a str) -> Self {
        Reader {
            text,
            pos: 0,
            depth: 0,
        }
    }

    /// An error at the current position.
    pub fn error(&self, what: &'static str) -> JsonError {
        JsonError { what, at: self.pos }
    }

    /// The next byte after whitespace, without taking it; None at the end.
    pub fn peek(&mut self) -> Option<u8> {
        let bytes = self.text.as_bytes();
        while let Some(&byte) = bytes.get(self.pos) {
            match byte {
                b' ' | b'\n' | b'\r' | b'\t' => self.pos += 1,
                _ => return Some(byte),
            }
        }
        None
    }

    /// Checks that only whitespace is left.
    pub fn end(&mut self) -> Result<(), JsonError> {
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(self.error("trailing characters")),
        }
    }

    /// Walks an object, calling `member` with each key; `member` must read or skip its value.
    pub fn object(
        &mut self,
        mut member: impl FnMut(&mut Self, Cow<'a, str>) -> Result<(), JsonError>,
    ) -> Result<(), JsonError> {
        self.members(|reader| {
            let key = reader.string()?;
            reader.colon()?;
            member(reader, key)
        })
    }

    /// Walks an object; `member` reads each key, its colon and its value.
    fn members(
        &mut self,
        mut member: impl FnMut(&mut Self) -> Result<(), JsonError>,
    ) -> Result<(), JsonError> {
        self.open(b'{', "expected an object")?;
        if self.peek() == Some(b'}') {
            return self.close();
        }
        loop {
            if self.peek() != Some(b'"') {
                return Err(self.error("expected a key"));
            }
            member(self)?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => return self.close(),
                _ => return Err(self.error("expected ',' or '}'")),
            }
        }
    }

    fn colon(&mut self) -> Result<(), JsonError> {
        if self.peek() != Some(b':') {
            return Err(self.error("expected ':'"));
        }
        self.pos += 1;
        Ok(())
    }

    /// Walks an array, calling `element` for each; `element` must read or skip it.
    pub fn array(
        &mut self,
        mut element: impl FnMut(&mut Self) -> Result<(), JsonError>,
    ) -> Result<(), JsonError> {
        self.open(b'[', "expected an array")?;
        if self.peek() == Some(b']') {
            return self.close();
        }
        loop {
            element(self)?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => return self.close(),
                _ => return Err(self.error("expected ',' or ']'")),
            }
        }
    }

    fn open(&mut self, bracket: u8, what: &'static str) -> Result<(), JsonError> {
        if self.peek() != Some(bracket) {
            return Err(self.error(what));
        }
        if self.depth + 1 >= MAX_DEPTH {
            return Err(self.error("nested too deep"));
        }
        self.depth += 1;
        self.pos += 1;
        Ok(())
    }

    fn close(&mut self) -> Result<(), JsonError> {
        self.depth -= 1;
        self.pos += 1;
        Ok(())
    }

    /// Skips any value, checking it.
    pub fn skip(&mut self) -> Result<(), JsonError> {
        match self.peek() {
            Some(b'"') => self.skip_string(),
            // Keys are skipped like other strings, not decoded, as `serde_json` does.
            Some(b'{') => self.members(|reader| {
                reader.skip_string()?;
                reader.colon()?;
                reader.skip()
            }),
            Some(b'[') => self.array(Self::skip),
            Some(b'-' | b'0'..=b'9') => self.number().map(drop),
            Some(b't') => self.literal("true"),
            Some(b'f') => self.literal("false"),
            Some(b'n') => self.literal("null"),
            Some(_) => Err(self.error("expected a value")),
            None => Err(self.error("unexpected end")),
        }
    }

    /// Skips any value and returns its text.
    pub fn raw(&mut self) -> Result<&'a str, JsonError> {
        self.peek();
        let start = self.pos;
        self.skip()?;
        Ok(&self.text[start..self.pos])
    }

    /// A string, borrowed when it has no escapes; any other value is checked, skipped and None.
    pub fn text(&mut self) -> Result<Option<Cow<'a, str>>, JsonError> {
        match self.peek() {
            Some(b'"') => self.string().map(Some),
            _ => self.skip().map(|()| None),
        }
    }

    /// A non-negative integer, also when sent as a decimal string; any other value is None.
    pub fn unsigned(&mut self) -> Result<Option<u64>, JsonError> {
        match self.peek() {
            Some(b'"') => Ok(self.string()?.trim().parse().ok()),
            Some(b'-' | b'0'..=b'9') => Ok(match self.number()? {
                Number::Unsigned(n) => Some(n),
                Number::Other => None,
            }),
            _ => self.skip().map(|()| None),
        }
    }

    /// Whether the next value is `null`, which is then taken.
    pub fn null(&mut self) -> Result<bool, JsonError> {
        if self.peek() == Some(b'n') {
            self.literal("null")?;
            return Ok(true);
        }
        Ok(false)
    }

    fn literal(&mut self, word: &'static str) -> Result<(), JsonError> {
        if self.text.as_bytes()[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.error("expected a value"))
        }
    }

    /// Reads a number by the JSON grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Result<Number, JsonError> {
        let bytes = self.text.as_bytes();
        let negative = bytes.get(self.pos) == Some(&b'-');
        if negative {
            self.pos += 1;
        }
        let mut value: Option<u64> = Some(0);
        match bytes.get(self.pos) {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                while let Some(&digit @ b'0'..=b'9') = bytes.get(self.pos) {
                    value = value
                        .and_then(|v| v.checked_mul(10))
                        .and_then(|v| v.checked_add(u64::from(digit - b'0')));
                    self.pos += 1;
                }
            }
            _ => return Err(self.error("expected a digit")),
        }
        let mut integer = true;
        if bytes.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            self.digits()?;
            integer = false;
        }
        if let Some(b'e' | b'E') = bytes.get(self.pos) {
            self.pos += 1;
            if let Some(b'+' | b'-') = bytes.get(self.pos) {
                self.pos += 1;
            }
            self.digits()?;
            integer = false;
        }
        Ok(match value {
            Some(n) if integer && !negative => Number::Unsigned(n),
            _ => Number::Other,
        })
    }

    fn digits(&mut self) -> Result<(), JsonError> {
        let bytes = self.text.as_bytes();
        let start = self.pos;
        while let Some(b'0'..=b'9') = bytes.get(self.pos) {
            self.pos += 1;
        }
        if self.pos == start {
            return Err(self.error("expected a digit"));
        }
        Ok(())
    }

    /// Reads a string at the cursor, decoding escapes.
    pub fn string(&mut self) -> Result<Cow<'a, str>, JsonError> {
        let start = self.pos + 1; // past the opening quote
        let at = self.special(start)?;
        if self.text.as_bytes()[at] == b'"' {
            self.pos = at + 1;
            return Ok(Cow::Borrowed(&self.text[start..at]));
        }
        self.escaped_string(start, at).map(Cow::Owned)
    }

    /// The rest of a string from its first escape (at `at`) on.
    #[cold]
    fn escaped_string(&mut self, start: usize, mut at: usize) -> Result<String, JsonError> {
        let mut text = String::new();
        let mut from = start;
        loop {
            text.push_str(&self.text[from..at]);
            self.pos = at + 1;
            text.push(self.escape()?);
            from = self.pos;
            at = self.special(from)?;
            if self.text.as_bytes()[at] == b'"' {
                text.push_str(&self.text[from..at]);
                self.pos = at + 1;
                return Ok(text);
            }
        }
    }

    /// Skips a string, checking its escapes. Skipped strings are where events keep their
    /// escaped IMAP syntax (a quote every few bytes), so every hit in an eight-byte word is
    /// dealt with before the next word is read.
    fn skip_string(&mut self) -> Result<(), JsonError> {
        let bytes = self.text.as_bytes();
        let mut word_at = self.pos + 1; // past the opening quote
        'words: while let Some(chunk) = bytes.get(word_at..word_at + 8) {
            let mut found = specials(u64::from_le_bytes(chunk.try_into().expect("eight bytes")));
            while found != 0 {
                let at = word_at + found.trailing_zeros() as usize / 8;
                self.pos = at + 1;
                match bytes[at] {
                    b'"' => return Ok(()),
                    b'\\' => self.skip_escape()?,
                    _ => {
                        self.pos = at;
                        return Err(self.error("control character in a string"));
                    }
                }
                let consumed = self.pos - word_at;
                if consumed >= 8 {
                    word_at = self.pos;
                    continue 'words;
                }
                found &= u64::MAX << (consumed * 8);
            }
            word_at += 8;
        }
        // Fewer than eight bytes are left.
        self.pos = word_at;
        loop {
            let at = self.special(self.pos)?;
            self.pos = at + 1;
            if bytes[at] == b'"' {
                return Ok(());
            }
            self.skip_escape()?;
        }
    }

    /// The next quote or backslash at or after `start`; a raw control character on the way
    /// (which JSON forbids in strings) is an error.
    #[inline]
    fn special(&mut self, start: usize) -> Result<usize, JsonError> {
        let bytes = self.text.as_bytes();
        match find_special(bytes, start) {
            Some(at) if bytes[at] >= 0x20 => Ok(at),
            found => Err(self.string_error(found)),
        }
    }

    #[cold]
    fn string_error(&mut self, found: Option<usize>) -> JsonError {
        match found {
            Some(at) => {
                self.pos = at;
                self.error("control character in a string")
            }
            None => {
                self.pos = self.text.len();
                self.error("unterminated string")
            }
        }
    }

    /// Decodes the escape after a backslash.
    fn escape(&mut self) -> Result<char, JsonError> {
        let byte = self.text.as_bytes().get(self.pos).copied();
        self.pos += 1;
        Ok(match byte {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                let first = self.hex4()?;
                match first {
                    0xD800..=0xDBFF => {
                        if !self.text.as_bytes()[self.pos..].starts_with(b"\\u") {
                            return Err(self.error("lone leading surrogate"));
                        }
                        self.pos += 2;
                        let second = self.hex4()?;
                        if !(0xDC00..=0xDFFF).contains(&second) {
                            return Err(self.error("lone leading surrogate"));
                        }
                        let code = 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00);
                        char::from_u32(code).ok_or_else(|| self.error("bad escape"))?
                    }
                    0xDC00..=0xDFFF => return Err(self.error("lone trailing surrogate")),
                    code => char::from_u32(code).ok_or_else(|| self.error("bad escape"))?,
                }
            }
            _ => return Err(self.error("bad escape")),
        })
    }

    fn skip_escape(&mut self) -> Result<(), JsonError> {
        let byte = self.text.as_bytes().get(self.pos).copied();
        self.pos += 1;
        match byte {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(()),
            Some(b'u') => self.hex4().map(drop),
            _ => Err(self.error("bad escape")),
        }
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let digits = self
            .text
            .as_bytes()
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| self.error("bad \\u escape"))?;
        let mut code = 0;
        for &digit in digits {
            let value = (digit as char)
                .to_digit(16)
                .ok_or_else(|| self.error("bad \\u escape"))?;
            code = code * 16 + value;
        }
        self.pos += 4;
        Ok(code)
    }
}

/// The first quote, backslash or control character at or after `start`, eight bytes at a
/// time: strings are most of an event, and most of their bytes are none of these.
#[inline]
fn find_special(bytes: &[u8], start: usize) -> Option<usize> {
    let mut at = start;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let found = specials(word);
        if found != 0 {
            return Some(at + found.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    let is_special = |&b: &u8| b == b'"' || b == b'\\' || b < 0x20;
    bytes[at..].iter().position(is_special).map(|i| at + i)
}

const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// Each byte of `word` repeated in every byte.
const fn splat(byte: u8) -> u64 {
    0x0101_0101_0101_0101 * byte as u64
}

/// The high bit of each byte of `word` that is a quote, a backslash or below 0x20, and no
/// other bit. Exact for every byte: no carry crosses from one byte into the next.
fn specials(word: u64) -> u64 {
    let zero = |x: u64| !(((x & LOW7) + LOW7) | x) & HIGH;
    let below_space = !(((word & LOW7) + splat(0x80 - 0x20)) | word) & HIGH;
    zero(word ^ splat(b'"')) | zero(word ^ splat(b'\\')) | below_space
}

#[cfg(test)]
#[path = "json_tests.rs"]
mod tests;
