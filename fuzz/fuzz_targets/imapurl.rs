//! An event's `uri` (RFC 5092 IMAP URL), percent-decoded and split into owner and folder.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(uri) = std::str::from_utf8(data) {
        let _ = mailpush::event::imapurl::parse(uri);
    }
});
