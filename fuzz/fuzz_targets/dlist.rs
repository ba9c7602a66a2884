//! A record on the `dlist:` stream socket, with the event it carries.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((notification, used)) = mailpush::event::dlist::parse_record(data, 1 << 20) {
        assert!(used <= data.len());
        let _ = mailpush::event::from_notification(notification);
    }
});
