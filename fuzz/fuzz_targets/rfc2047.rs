//! RFC 2047 encoded words in a header (subjects, display names).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = mailpush::event::rfc2047::decode(text);
    }
});
