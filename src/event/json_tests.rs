use proptest::prelude::*;
use serde::de::IgnoredAny;

use super::*;

/// Checks a whole text as one value, as the event parser does.
fn valid(text: &str) -> Result<(), JsonError> {
    let mut reader = Reader::new(text);
    reader.skip()?;
    reader.end()
}

fn serde_accepts(text: &str) -> bool {
    serde_json::from_str::<IgnoredAny>(text).is_ok()
}

#[test]
fn accepts_what_serde_json_accepts() {
    let cases = [
        "{}",
        "[]",
        " { \"a\" : [1, -2, 3.5e+7, 0, -0.0, 1E9, true, false, null] } \n",
        r#"{"s":"plain","e":"\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00","x":{"y":[{}]}}"#,
        "\"\\ud800\"",
        // Found by fuzz/event_json: a lone surrogate, then text, in a skipped string.
        r#"{"event":"M8T15","uri":"imap://m/user/alice;IA","timestamp":"1013-ice\udb5Ap2"}"#,
        "12345678901234567890123",
        "{\"a\":1,}",
        "[1,]",
        "{\"a\" 1}",
        "{1:2}",
        "01",
        "1.",
        ".5",
        "-",
        "1e",
        "+1",
        "tru",
        "nul",
        "\"\\x\"",
        "\"\\u12\"",
        "\"\\u12g4\"",
        "\"tab\there\"",
        "\"unterminated",
        "[1 2]",
        "{\"a\":1}}",
        "",
        "   ",
        "\u{a0}{}",
        "{\"a\":\"\u{1F600}\"}",
    ];
    for text in cases {
        assert_eq!(
            valid(text).is_ok(),
            serde_accepts(text),
            "{text:?}: {:?}",
            valid(text)
        );
    }
}

#[test]
fn nesting_is_bounded() {
    let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    assert!(valid(&nested(MAX_DEPTH - 1)).is_ok());
    assert_eq!(
        valid(&nested(100_000)).unwrap_err().what,
        "nested too deep",
        "deep input is an error, not a stack overflow"
    );
}

#[test]
fn strings_decode() {
    fn read(text: &str) -> Cow<'_, str> {
        Reader::new(text).string().unwrap()
    }
    assert!(matches!(read(r#""plain""#), Cow::Borrowed("plain")));
    assert_eq!(read(r#""a\"b\\c\u00e9\n""#), "a\"b\\cé\n");
    assert_eq!(read(r#""\ud83d\ude00!""#), "😀!");
    for bad in [
        r#""\ud83d""#,
        r#""\ud83dx""#,
        r#""\ude00""#,
        r#""\ud83d\u0041""#,
    ] {
        assert!(Reader::new(bad).string().is_err(), "{bad}");
    }
}

#[test]
fn lenient_readers() {
    let unsigned = |text: &str| Reader::new(text).unsigned().unwrap();
    assert_eq!(unsigned("42"), Some(42));
    assert_eq!(unsigned("\" 42 \""), Some(42));
    assert_eq!(unsigned("-1"), None);
    assert_eq!(unsigned("1.5"), None);
    assert_eq!(unsigned("1e3"), None);
    assert_eq!(unsigned("18446744073709551616"), None);
    assert_eq!(unsigned("[1]"), None);
    assert_eq!(Reader::new("{\"a\":[]}").text().unwrap(), None);
    assert!(
        Reader::new("[1,").text().is_err(),
        "skipped values are checked"
    );
    let mut reader = Reader::new(" {\"a\": [1, \"x\"]} ");
    assert_eq!(reader.raw().unwrap(), "{\"a\": [1, \"x\"]}");
}

/// The JSON body of a real Cyrus MessageNew (1.6 KB, escapes and nesting included).
fn message_new() -> String {
    let datagram = include_bytes!("../../tests/fixtures/cyrus/008-MessageNew.bin");
    crate::event::packet::from_datagram(datagram)
        .unwrap()
        .message
}

/// Pieces that make up JSON-like texts, valid and not.
fn token() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "{",
        "}",
        "[",
        "]",
        ":",
        ",",
        "\"",
        "\"k\"",
        "\"a\\\"b\"",
        "\\",
        "\\u00e9",
        "\\ud800",
        "\\x",
        "0",
        "1",
        "-",
        "-0",
        "12",
        "1.5",
        "e",
        "E+",
        ".",
        "true",
        "false",
        "null",
        "tru",
        " ",
        "\n",
        "\t",
        "\u{1}",
        "é",
        "x",
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn agrees_with_serde_json(tokens in prop::collection::vec(token(), 0..24)) {
        let text = tokens.concat();
        prop_assert_eq!(valid(&text).is_ok(), serde_accepts(&text), "{:?}", text);
    }

    #[test]
    fn agrees_on_damaged_events(at in 0usize..1700, with in token()) {
        let event = message_new();
        let event = event.as_str();
        let at = at.min(event.len());
        if event.is_char_boundary(at) {
            let mut text = event.to_owned();
            text.insert_str(at, with);
            prop_assert_eq!(valid(&text).is_ok(), serde_accepts(&text), "{:?}", text);
            let mut cut = event.to_owned();
            cut.truncate(at);
            prop_assert_eq!(valid(&cut).is_ok(), serde_accepts(&cut), "{:?}", cut);
        }
    }
}

proptest! {
    #[test]
    fn eight_at_a_time_finds_the_first(bytes in prop::collection::vec(any::<u8>(), 0..40), start in 0usize..40) {
        let start = start.min(bytes.len());
        let slow = bytes[start..].iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20);
        prop_assert_eq!(find_special(&bytes, start), slow.map(|i| start + i));
    }
}
