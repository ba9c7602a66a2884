//! A Cyrus notify datagram, as the receive loop takes it: header, then the event inside.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(notification) = mailpush::event::packet::from_datagram(data) {
        let _ = mailpush::event::from_notification(notification);
    }
});
