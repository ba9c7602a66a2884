//! An RFC 5423 event as JSON text (NDJSON, `POST /ingest`, the datagram's payload): mailpush's
//! one-pass reader must never accept what `serde_json` refuses. The yardstick is serde_json's
//! own skipping (`IgnoredAny`), as in `src/event/json.rs`: it checks `\u` escapes in strings
//! it skips for four hex digits, not for surrogate pairs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if mailpush::event::from_json(text.to_owned()).is_ok() {
        assert!(
            serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok(),
            "accepted what serde_json refuses: {text:?}"
        );
    }
});
