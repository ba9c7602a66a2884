//! `vnd.cmu.envelope`: an IMAP ENVELOPE, from which sender and subject are read.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = mailpush::event::envelope::parse(text);
    }
});
