//! Decoding of RFC 2047 encoded-words (`=?charset?B|Q?text?=`) in raw header text, for display.
//!
//! This module owns turning a raw Subject or display-name phrase into readable UTF-8: it unfolds
//! folded lines, decodes B and Q words, converts their charsets with `encoding_rs`, and removes
//! the whitespace between adjacent words. It is deliberately lenient, because real mail is: long
//! words and words inside quoted strings are decoded, and words that cannot be decoded (unknown
//! charset, bad base64, bad `=XX`) are left exactly as they were.
//!
//! It never parses header structure (addresses, comments, quoting), never truncates for display,
//! never encodes, and never fails or panics: the worst outcome is the input handed back unchanged.

use std::borrow::Cow;

use base64::Engine as _;
use base64::alphabet::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use encoding_rs::Encoding;

/// Base64 as found in `B` words: standard alphabet, padding optional, stray trailing bits ignored.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Decodes the RFC 2047 encoded-words in `text` so a subject or sender name can be shown.
///
/// It exists because IMAP ENVELOPE fields carry the raw header text. Folded lines are unfolded
/// into one space, whitespace between adjacent encoded-words is dropped, and adjacent words in
/// the same charset are decoded together so that a character split across two words survives.
/// Returns `Cow::Borrowed` when nothing had to change.
pub fn decode(text: &str) -> Cow<'_, str> {
    if !text.contains("=?") && !text.contains('\n') {
        return Cow::Borrowed(text);
    }
    let unfolded = unfold(text);
    let decoded = assemble(segments(&unfolded));
    if decoded == text {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(decoded)
    }
}

/// Replaces each line break (CRLF or bare LF) followed by spaces or tabs with a single space.
fn unfold(text: &str) -> Cow<'_, str> {
    if !text.contains('\n') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some((line, after)) = rest.split_once('\n') {
        let continued = after.trim_start_matches([' ', '\t']);
        if continued.len() < after.len() {
            out.push_str(line.strip_suffix('\r').unwrap_or(line));
            out.push(' ');
            rest = continued;
        } else {
            // A line break without a following blank is not a fold, so it stays.
            out.push_str(line);
            out.push('\n');
            rest = after;
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// One piece of header text: either plain text or a decoded-to-bytes encoded-word.
enum Segment<'a> {
    Text(&'a str),
    Word(&'static Encoding, Vec<u8>),
}

/// Splits `text` into maximal plain-text runs and the encoded-words between them.
fn segments(text: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    let mut text_start = 0;
    let mut search = 0;
    while let Some(offset) = text.get(search..).and_then(|rest| rest.find("=?")) {
        let at = search + offset;
        match text.get(at..).and_then(parse_word) {
            Some((len, encoding, bytes)) => {
                if let Some(plain) = text.get(text_start..at).filter(|t| !t.is_empty()) {
                    out.push(Segment::Text(plain));
                }
                out.push(Segment::Word(encoding, bytes));
                text_start = at + len;
                search = text_start;
            }
            // Not a valid word: the `=` stays as text and the search goes on after it.
            None => search = at + 1,
        }
    }
    if let Some(plain) = text.get(text_start..).filter(|t| !t.is_empty()) {
        out.push(Segment::Text(plain));
    }
    out
}

/// Parses the encoded-word at the start of `s`, returning its length, charset and raw bytes.
///
/// Returns `None` for anything malformed or for a charset `encoding_rs` does not know, so that
/// the caller leaves the word as it is.
fn parse_word(s: &str) -> Option<(usize, &'static Encoding, Vec<u8>)> {
    let body = s.strip_prefix("=?")?;
    let (charset, rest) = body.split_once('?')?;
    let (letter, rest) = rest.split_once('?')?;
    let (encoded, _) = rest.split_once('?')?;
    if !rest.get(encoded.len()..)?.starts_with("?=") {
        return None;
    }
    if charset.is_empty() || !charset.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    if !encoded.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    // RFC 2231 allows `charset*language`; the language is of no use for display.
    let label = charset.split_once('*').map_or(charset, |(label, _)| label);
    let encoding = Encoding::for_label_no_replacement(label.as_bytes())?;
    let bytes = match letter {
        "B" | "b" => LENIENT_BASE64.decode(encoded).ok()?,
        "Q" | "q" => q_decode(encoded)?,
        _ => return None,
    };
    let len = 2 + charset.len() + 1 + letter.len() + 1 + encoded.len() + 2;
    Some((len, encoding, bytes))
}

/// Decodes the `Q` encoding: `_` is a space, `=XX` a hex byte, anything else itself.
fn q_decode(encoded: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(encoded.len());
    let mut bytes = encoded.bytes();
    while let Some(byte) = bytes.next() {
        match byte {
            b'_' => out.push(b' '),
            b'=' => {
                let high = hex_value(bytes.next()?)?;
                let low = hex_value(bytes.next()?)?;
                out.push(high << 4 | low);
            }
            _ => out.push(byte),
        }
    }
    Some(out)
}

/// Returns the value of one hexadecimal digit, either case.
fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// Joins the segments back into text, dropping blanks between words and merging same-charset
/// neighbours before conversion so that a multibyte character split between them decodes.
fn assemble(segments: Vec<Segment<'_>>) -> String {
    let mut out = String::new();
    let mut pending: Option<(&'static Encoding, Vec<u8>)> = None;
    let mut gap = "";
    for segment in segments {
        match segment {
            Segment::Word(encoding, bytes) => {
                gap = "";
                match pending.as_mut() {
                    Some((current, buffer)) if *current == encoding => buffer.extend(bytes),
                    _ => {
                        flush(&mut out, pending.take());
                        pending = Some((encoding, bytes));
                    }
                }
            }
            Segment::Text(text) if pending.is_some() && is_blank(text) => gap = text,
            Segment::Text(text) => {
                flush(&mut out, pending.take());
                out.push_str(gap);
                gap = "";
                out.push_str(text);
            }
        }
    }
    flush(&mut out, pending.take());
    out.push_str(gap);
    out
}

/// Converts a run of word bytes from its charset to UTF-8, replacing invalid sequences.
fn flush(out: &mut String, pending: Option<(&'static Encoding, Vec<u8>)>) {
    if let Some((encoding, bytes)) = pending {
        let (text, _had_errors) = encoding.decode_without_bom_handling(&bytes);
        out.push_str(&text);
    }
}

/// Tells whether `text` is only the linear whitespace that may separate encoded-words.
fn is_blank(text: &str) -> bool {
    text.bytes()
        .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(input: &str, expected: &str) {
        assert_eq!(decode(input), expected, "input: {input:?}");
    }

    #[test]
    fn decodes_table() {
        let cases = [
            // Plain text and unfolding.
            ("", ""),
            ("Hello 1", "Hello 1"),
            ("Hello\r\n world", "Hello world"),
            ("Hello\n\t\tworld", "Hello world"),
            ("line\r\nbreak", "line\r\nbreak"),
            // Q and B words, either case of the letter, padding optional.
            ("=?UTF-8?Q?Gr=C3=BC=C3=9Fe?=", "Grüße"),
            ("=?utf-8?q?caf=c3=a9_au_lait?=", "café au lait"),
            ("=?UTF-8?B?SsO2cmc=?=", "Jörg"),
            ("=?utf-8?b?SsO2cmc?=", "Jörg"),
            ("=?UTF-8*en?Q?hello?=", "hello"),
            // Whitespace between words goes, whitespace next to text stays.
            ("=?UTF-8?Q?a?= =?UTF-8?Q?b?=", "ab"),
            ("=?UTF-8?Q?a?=\r\n =?UTF-8?Q?b?=", "ab"),
            ("=?UTF-8?Q?a?=\t \t=?ISO-8859-1?Q?b?=", "ab"),
            ("Re: =?UTF-8?Q?caf=C3=A9?= ok", "Re: café ok"),
            ("=?UTF-8?Q?a_?= b", "a  b"),
            ("x=?UTF-8?Q?y?=z", "xyz"),
            // A character split across two words of the same charset.
            ("=?UTF-8?Q?caf=C3?= =?UTF-8?Q?=A9?=", "café"),
            ("=?UTF-8?B?4oI=?= =?utf-8?B?rA==?=", "€"),
            ("=?ISO-8859-1?Q?caf=E9?= =?UTF-8?Q?=E2=82=AC?=", "café€"),
            // Legacy charsets.
            ("=?ISO-8859-1?Q?Andr=E9?=", "André"),
            ("=?windows-1252?Q?=80_5?=", "€ 5"),
            ("=?iso-8859-15?q?=A4?=", "€"),
            ("=?us-ascii?Q?plain?=", "plain"),
            // Leniency: long words and words inside quotes are decoded.
            (
                "=?UTF-8?Q?a_very_long_encoded_word_that_goes_well_beyond_the_75_char_limit?=",
                "a very long encoded word that goes well beyond the 75 char limit",
            ),
            ("\"=?UTF-8?Q?J=C3=B6rg?=\" <j@x>", "\"Jörg\" <j@x>"),
            // Words that cannot be decoded stay as they are.
            ("=?x-unknown?Q?abc?=", "=?x-unknown?Q?abc?="),
            ("=?x-unknown?Q?a?= =?UTF-8?Q?b?=", "=?x-unknown?Q?a?= b"),
            ("=?UTF-8?X?abc?=", "=?UTF-8?X?abc?="),
            ("=?UTF-8?Q?a b?=", "=?UTF-8?Q?a b?="),
            ("=?UTF-8?Q?=ZZ?=", "=?UTF-8?Q?=ZZ?="),
            ("=?UTF-8?Q?=A?=", "=?UTF-8?Q?=A?="),
            ("=?UTF-8?B?!!!?=", "=?UTF-8?B?!!!?="),
            ("=?UTF-8?Q?abc", "=?UTF-8?Q?abc"),
            ("=??Q?abc?=", "=??Q?abc?="),
            ("=?=?utf-8?q?a?=", "=?a"),
            ("100% =? sure", "100% =? sure"),
        ];
        for (input, expected) in cases {
            check(input, expected);
        }
    }

    #[test]
    fn borrows_when_unchanged() {
        for input in ["Hello 1", "=?x-unknown?Q?abc?=", "a\r\nb", "Zoë"] {
            assert!(
                matches!(decode(input), Cow::Borrowed(_)),
                "input: {input:?}"
            );
        }
        assert!(matches!(decode("=?utf-8?q?a?="), Cow::Owned(_)));
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in any::<String>()) {
            let _ = decode(&text);
        }

        #[test]
        fn word_like_text_never_panics(text in "(=\\?|\\?=|[bBqQ_=?*]|utf-8|[0-9A-F]|\r\n |\\s|é){0,40}") {
            let _ = decode(&text);
        }
    }
}
