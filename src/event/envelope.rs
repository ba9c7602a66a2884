//! Lenient reading of the IMAP ENVELOPE (RFC 3501 §7.4.2) that Cyrus sends as `vnd.cmu.envelope`.
//!
//! This module owns the byte-level tokenizer for that text (lists, quoted strings with `\`
//! escapes, `{n}` literals, atoms, `NIL`) and the choice of what a push notification shows: the
//! decoded Subject and the first real From address, group markers skipped.
//!
//! It never reports an error and never panics: a missing, truncated or malformed envelope simply
//! leaves fields empty. It never trusts a literal's length for allocation, never recurses (nesting
//! is counted and capped at `MAX_DEPTH`), and never reads past the From field, because nothing
//! after it is shown. Decoding of encoded-words is left to `rfc2047`.

use std::borrow::Cow;

use super::rfc2047;

/// Deepest list nesting accepted; a real envelope needs 3, anything past this is given up on.
const MAX_DEPTH: usize = 16;

/// The display fields mailpush needs from an IMAP ENVELOPE (RFC 3501 §7.4.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// Decoded Subject, None when NIL or absent.
    pub subject: Option<String>,
    /// Decoded display name of the first real From address (group markers skipped), surrounding
    /// quotes stripped; None when NIL/empty.
    pub from_name: Option<String>,
    /// `mailbox@host` of that address (or just mailbox if host is NIL); None when absent.
    pub from_address: Option<String>,
}

/// Extracts the subject and sender from a `vnd.cmu.envelope` string so a notification can show
/// them.
///
/// Lenient: a truncated, malformed or missing envelope yields fields None, never an error or
/// panic. Fields read before the damage are kept.
pub fn parse(text: &str) -> Envelope {
    let mut envelope = Envelope::default();
    let mut tokens = Tokenizer { text, pos: 0 };
    if !matches!(tokens.next(), Some(Token::Open)) {
        return envelope;
    }
    // Field 1 is the date, which is not shown.
    if !matches!(tokens.item(1), Some(Item::Text(_) | Item::Other)) {
        return envelope;
    }
    match tokens.item(1) {
        Some(Item::Text(subject)) => envelope.subject = display_text(&subject),
        Some(Item::Other) => {}
        Some(Item::Close) | None => return envelope,
    }
    // Field 3 is From: NIL or a list of addresses.
    if matches!(tokens.next(), Some(Token::Open))
        && let Some(address) = first_real_address(&mut tokens)
    {
        envelope.from_name = address.name.as_deref().and_then(display_name);
        envelope.from_address = address.email();
    }
    envelope
}

/// One address structure: `(name adl mailbox host)`, each an nstring.
#[derive(Default)]
struct Address<'a> {
    name: Option<Cow<'a, str>>,
    adl: Option<Cow<'a, str>>,
    mailbox: Option<Cow<'a, str>>,
    host: Option<Cow<'a, str>>,
}

impl Address<'_> {
    /// Group start is `(NIL NIL "name" NIL)` and group end `(NIL NIL NIL NIL)`.
    fn is_group_marker(&self) -> bool {
        self.name.is_none() && self.adl.is_none() && self.host.is_none()
    }

    /// Returns `mailbox@host`, or the bare mailbox when there is no host.
    fn email(&self) -> Option<String> {
        let mailbox = self
            .mailbox
            .as_deref()
            .map(str::trim)
            .filter(|m| !m.is_empty())?;
        match self
            .host
            .as_deref()
            .map(str::trim)
            .filter(|h| !h.is_empty())
        {
            Some(host) => Some(format!("{mailbox}@{host}")),
            None => Some(mailbox.to_owned()),
        }
    }
}

/// Reads addresses after the `(` of an address list until one is not a group marker.
fn first_real_address<'a>(tokens: &mut Tokenizer<'a>) -> Option<Address<'a>> {
    loop {
        match tokens.next()? {
            Token::Open => {
                let address = read_address(tokens)?;
                if !address.is_group_marker() {
                    return Some(address);
                }
            }
            Token::Close => return None,
            // Stray strings or atoms between addresses are ignored.
            Token::Str(_) | Token::Nil | Token::Atom => {}
        }
    }
}

/// Reads the four fields of an address whose `(` was just read, up to and including its `)`.
///
/// Missing trailing fields count as NIL and extra ones are skipped; `None` means the input ended.
fn read_address<'a>(tokens: &mut Tokenizer<'a>) -> Option<Address<'a>> {
    let mut fields: [Option<Cow<'a, str>>; 4] = Default::default();
    let mut closed = false;
    for field in &mut fields {
        match tokens.item(3)? {
            Item::Text(text) => *field = Some(text),
            Item::Other => {}
            Item::Close => {
                closed = true;
                break;
            }
        }
    }
    if !closed {
        tokens.skip_list(3)?;
    }
    let [name, adl, mailbox, host] = fields;
    Some(Address {
        name,
        adl,
        mailbox,
        host,
    })
}

/// Decodes a subject for display; blank becomes None.
fn display_text(raw: &str) -> Option<String> {
    let decoded = rfc2047::decode(raw);
    let text = decoded.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// Decodes a display name and strips one pair of surrounding double quotes; blank becomes None.
fn display_name(raw: &str) -> Option<String> {
    let decoded = rfc2047::decode(raw);
    let mut text = decoded.trim();
    // A lone `"` is not a pair: stripping the prefix leaves nothing to strip the suffix from.
    if let Some(inner) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        text = inner.trim();
    }
    (!text.is_empty()).then(|| text.to_owned())
}

/// A lexical token of the ENVELOPE syntax.
enum Token<'a> {
    Open,
    Close,
    Nil,
    /// Any atom other than NIL; it has no meaning inside an envelope.
    Atom,
    /// A quoted string (unescaped) or a literal.
    Str(Cow<'a, str>),
}

/// A list member as seen from the list containing it; nested lists are skipped as `Other`.
enum Item<'a> {
    Text(Cow<'a, str>),
    Other,
    Close,
}

/// Byte-level tokenizer (spec §4.3); after the end or any malformed input it yields nothing more.
struct Tokenizer<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Iterator for Tokenizer<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        let bytes = self.text.as_bytes();
        while bytes.get(self.pos).is_some_and(u8::is_ascii_whitespace) {
            self.pos += 1;
        }
        let token = match *bytes.get(self.pos)? {
            b'(' => {
                self.pos += 1;
                Some(Token::Open)
            }
            b')' => {
                self.pos += 1;
                Some(Token::Close)
            }
            b'"' => self.quoted(),
            b'{' => self.literal(),
            _ => Some(self.atom()),
        };
        if token.is_none() {
            self.give_up();
        }
        token
    }
}

impl<'a> Tokenizer<'a> {
    /// Stops the tokenizer for good, so a damaged input cannot be misread further on.
    fn give_up(&mut self) {
        self.pos = self.text.len();
    }

    /// Reads one member of a list that sits at nesting `depth`.
    fn item(&mut self, depth: usize) -> Option<Item<'a>> {
        Some(match self.next()? {
            Token::Str(text) => Item::Text(text),
            Token::Nil | Token::Atom => Item::Other,
            Token::Open => {
                self.skip_list(depth + 1)?;
                Item::Other
            }
            Token::Close => Item::Close,
        })
    }

    /// Skips to the `)` closing a list at nesting `depth` whose `(` was already read.
    fn skip_list(&mut self, depth: usize) -> Option<()> {
        let mut nested = 0usize;
        loop {
            match self.next()? {
                Token::Open if depth + nested >= MAX_DEPTH => {
                    self.give_up();
                    return None;
                }
                Token::Open => nested += 1,
                Token::Close if nested == 0 => return Some(()),
                Token::Close => nested -= 1,
                Token::Str(_) | Token::Nil | Token::Atom => {}
            }
        }
    }

    /// Reads a quoted string starting at the `"`; `\x` stands for `x`.
    fn quoted(&mut self) -> Option<Token<'a>> {
        let bytes = self.text.as_bytes();
        let start = self.pos + 1;
        let mut end = start;
        let mut escaped = false;
        loop {
            match *bytes.get(end)? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    end += 2;
                }
                _ => end += 1,
            }
        }
        let raw = self.text.get(start..end)?;
        self.pos = end + 1;
        Some(Token::Str(if escaped {
            Cow::Owned(unescape(raw))
        } else {
            Cow::Borrowed(raw)
        }))
    }

    /// Reads a `{n}` or `{n+}` literal: CRLF (or bare LF), then exactly `n` bytes of UTF-8.
    ///
    /// A count that runs past the end or cuts a character counts as truncated input.
    fn literal(&mut self) -> Option<Token<'a>> {
        let rest = self.text.get(self.pos + 1..)?;
        let (count, after) = rest.split_once('}')?;
        let digits = count.strip_suffix('+').unwrap_or(count);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let len: usize = digits.parse().ok()?;
        let body = after
            .strip_prefix("\r\n")
            .or_else(|| after.strip_prefix('\n'))?;
        let content = body.get(..len)?;
        self.pos = self.text.len() - body.len() + len;
        Some(Token::Str(Cow::Borrowed(content)))
    }

    /// Reads an atom up to whitespace or a parenthesis; only `NIL` (any case) matters.
    fn atom(&mut self) -> Token<'a> {
        let bytes = self.text.as_bytes();
        let start = self.pos;
        while bytes
            .get(self.pos)
            .is_some_and(|&b| b != b'(' && b != b')' && !b.is_ascii_whitespace())
        {
            self.pos += 1;
        }
        let atom = self.text.get(start..self.pos).unwrap_or_default();
        if atom.eq_ignore_ascii_case("NIL") {
            Token::Nil
        } else {
            Token::Atom
        }
    }
}

/// Removes the backslash of each `\x` escape in a quoted string.
fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `Hello 1` from the Cyrus fixtures (008-MessageNew.json).
    const HELLO: &str = "(\"Mon, 27 Nov 2023 10:00:00 +0000\" \"Hello 1\" ((\"Bob Sender\" NIL \"bob\" \"sender.example\")) ((\"Bob Sender\" NIL \"bob\" \"sender.example\")) ((\"Bob Sender\" NIL \"bob\" \"sender.example\")) ((\"Alice\" NIL \"alice\" \"example.test\")) NIL NIL NIL \"<hello-1@sender.example>\")";

    /// A calendar invitation from the Cyrus fixtures: From has a NIL name.
    const STANDUP: &str = "(\"Sat, 28 Nov 2026 15:06:08 +0000\" \"Standup with the push team\" ((NIL NIL \"alice\" \"example.test\")) ((NIL NIL \"alice\" \"example.test\")) ((NIL NIL \"alice\" \"example.test\")) NIL NIL NIL NIL \"<563bad3f685ba4c7f6ec98f1fb57f125d13ebf99@mailstore1.example.test>\")";

    /// The urgent-keyword test message from the Cyrus fixtures.
    const URGENT: &str = "(\"Mon, 27 Nov 2023 10:00:00 +0000\" \"This is URGENT please read\" ((\"Bob Sender\" NIL \"bob\" \"sender.example\")) ((\"Bob Sender\" NIL \"bob\" \"sender.example\")) ((\"Bob Sender\" NIL \"bob\" \"sender.example\")) ((\"Alice\" NIL \"alice\" \"example.test\")) NIL NIL NIL \"<urgent-1@sender.example>\")";

    /// Cyrus's literal form: the subject holds `"` and raw UTF-8, the name raw UTF-8 (n in bytes).
    const LITERALS: &str = "(\"Tue, 1 Dec 2026 09:00:00 +0100\" {16}\r\nSay \"hi\" to Zoë (({7}\r\nJürgen NIL \"j\" \"x.example\")) NIL NIL NIL NIL NIL NIL \"<l@x>\")";

    /// Builds the expected result from `[subject, name, address]`; `""` stands for None.
    fn envelope(fields: [&str; 3]) -> Envelope {
        let [subject, name, address] = fields.map(|f| (!f.is_empty()).then(|| f.to_owned()));
        Envelope {
            subject,
            from_name: name,
            from_address: address,
        }
    }

    fn check(input: &str, expected: [&str; 3]) {
        assert_eq!(parse(input), envelope(expected), "input: {input:?}");
    }

    #[test]
    fn parses_table() {
        let cases = [
            (HELLO, ["Hello 1", "Bob Sender", "bob@sender.example"]),
            (
                URGENT,
                [
                    "This is URGENT please read",
                    "Bob Sender",
                    "bob@sender.example",
                ],
            ),
            (
                STANDUP,
                ["Standup with the push team", "", "alice@example.test"],
            ),
            (LITERALS, ["Say \"hi\" to Zoë", "Jürgen", "j@x.example"]),
            // Literal variants: `{n+}`, bare LF, an empty literal, a folded header.
            ("(NIL {3+}\r\nabc NIL)", ["abc", "", ""]),
            ("(NIL {3}\nabc ((NIL NIL \"a\" \"b\")))", ["abc", "", "a@b"]),
            ("(NIL {0}\r\n NIL)", ["", "", ""]),
            ("(NIL {9}\r\nfoo\r\n bar NIL)", ["foo bar", "", ""]),
            // Quoted strings with escapes, NIL in any case, empty and blank strings.
            (r#"(NIL "a \"b\" \\ c" nil)"#, [r#"a "b" \ c"#, "", ""]),
            (r#"(nil Nil ((nIl NIL "bob" "h")))"#, ["", "", "bob@h"]),
            (r#"(NIL "" (("  " NIL "bob" "")))"#, ["", "", "bob"]),
            // Names: surrounding quotes stripped, host NIL gives the bare mailbox.
            (
                r#"(NIL NIL (("\"Bob\"" NIL "bob" NIL)))"#,
                ["", "Bob", "bob"],
            ),
            (r#"(NIL NIL (("Bob" NIL NIL NIL)))"#, ["", "Bob", ""]),
            (r#"(NIL NIL (("\"\"" NIL "m" "h")))"#, ["", "", "m@h"]),
            // Group markers before (and around) the first real address are skipped.
            (
                r#"(NIL "s" ((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL)("R" NIL "r" "x")))"#,
                ["s", "R", "r@x"],
            ),
            (
                r#"(NIL "s" ((NIL NIL "team" NIL)("Ann" NIL "ann" "x")(NIL NIL NIL NIL)))"#,
                ["s", "Ann", "ann@x"],
            ),
            (
                r#"(NIL "s" ((NIL NIL "team" NIL)(NIL NIL NIL NIL)))"#,
                ["s", "", ""],
            ),
            // Encoded words, Q and B, including inside quotes and the spec's §3.6 example.
            (
                "(\"Thu, 21 Aug 2026 10:11:00 +0000\" \"=?UTF-8?Q?Gr=C3=BC=C3=9Fe?=\" ((\"=?UTF-8?B?SsO2cmc=?=\" NIL \"joerg\" \"example.net\")) ((\"=?UTF-8?B?SsO2cmc=?=\" NIL \"joerg\" \"example.net\")) NIL ((NIL NIL \"alice\" \"example.org\")) NIL NIL NIL \"<abc@example.net>\")",
                ["Grüße", "Jörg", "joerg@example.net"],
            ),
            (
                r#"(NIL "=?utf-8?q?a?= =?utf-8?q?b?=" (("\"=?ISO-8859-1?Q?Andr=E9?=\"" NIL "a" "b")))"#,
                ["ab", "André", "a@b"],
            ),
            // Odd but readable shapes: extra or missing address fields, stray items.
            (
                r#"(NIL NIL (("N" NIL "m" "h" "extra" (x))))"#,
                ["", "N", "m@h"],
            ),
            (r#"(NIL NIL ("stray" ("N" NIL "m")))"#, ["", "N", "m"]),
            (r#"(NIL (a list) (("N" NIL "m" "h")))"#, ["", "N", "m@h"]),
            (r#"(NIL ATOM NIL (("N" NIL "m" "h")))"#, ["", "", ""]),
            // Damage: what was read before it is kept.
            ("(NIL \"s\" ((\"N\" NIL \"m\"", ["s", "", ""]),
            ("(NIL {3}\r\nJü NIL)", ["Jü", "", ""]),
            ("(NIL {2}\r\nJü NIL)", ["", "", ""]),
            ("(NIL {99}\r\nshort)", ["", "", ""]),
            ("(NIL {99999999999999999999999}\r\nx)", ["", "", ""]),
            ("(NIL {12x}\r\nx)", ["", "", ""]),
            ("(NIL {3} abc)", ["", "", ""]),
            ("(NIL \"s\" \"unterminated", ["s", "", ""]),
            ("(NIL \"s\\", ["", "", ""]),
            // Garbage and missing envelopes.
            ("", ["", "", ""]),
            ("NIL", ["", "", ""]),
            (")(", ["", "", ""]),
            ("\"Hello\"", ["", "", ""]),
            ("(((((((((((((((((((((((((((((", ["", "", ""]),
            ("\u{0}\u{ff}é{", ["", "", ""]),
        ];
        for (input, expected) in cases {
            check(input, expected);
        }
    }

    #[test]
    fn deep_nesting_gives_up() {
        let deep = format!("(NIL \"s\" {}", "(".repeat(100_000));
        check(&deep, ["s", "", ""]);
        let deep_subject = format!("(NIL {}x{} \"s\")", "(".repeat(20), ")".repeat(20));
        check(&deep_subject, ["", "", ""]);
        let shallow = format!(
            "(NIL {}x{} ((NIL NIL \"m\" \"h\")))",
            "(".repeat(10),
            ")".repeat(10)
        );
        check(&shallow, ["", "", "m@h"]);
    }

    #[test]
    fn truncation_never_panics_or_invents() {
        for full in [HELLO, STANDUP, URGENT, LITERALS] {
            let expected = parse(full);
            for cut in 0..=full.len() {
                let prefix = String::from_utf8_lossy(&full.as_bytes()[..cut]);
                let got = parse(&prefix);
                for (part, whole) in [
                    (&got.subject, &expected.subject),
                    (&got.from_name, &expected.from_name),
                    (&got.from_address, &expected.from_address),
                ] {
                    assert!(part.is_none() || part == whole, "cut {cut}: {got:?}");
                }
            }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in any::<String>()) {
            let _ = parse(&text);
        }

        #[test]
        fn envelope_like_text_never_panics(
            text in "(\\(|\\)|NIL|\"|\\\\| |\\{[0-9+]{0,3}\\}\r?\n|=\\?|[a-z]|é){0,60}",
        ) {
            let _ = parse(&text);
        }
    }
}
