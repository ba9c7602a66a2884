//! FastMail's EventSource format, served at `GET /events`.
//!
//! ```text
//! event: push
//! id: m1042c17a9
//! data: {"mailModSeq":1042,"calendarModSeq":17,"contactsModSeq":9}
//! ```
//!
//! Clients compare each value with their own and resync the kinds that moved.

use std::fmt::Write as _;

use bytes::Bytes;

use super::live::UserState;

/// The `push` event for `state` as shared bytes: the hub encodes it once per state change.
pub fn frame(state: &UserState) -> Bytes {
    let mut out = String::with_capacity(128);
    encode(state, &mut out);
    Bytes::from(out)
}

/// Writes one `push` event for `state`, ending in the blank line that dispatches it.
pub fn encode(state: &UserState, out: &mut String) {
    let _ = write!(
        out,
        "event: push\nid: {}\ndata: {{\"mailModSeq\":{},\"calendarModSeq\":{},\"contactsModSeq\":{}}}\n\n",
        state.event_id(),
        state.mail,
        state.calendar,
        state.contacts
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_event() {
        let mut out = String::new();
        encode(
            &UserState {
                mail: 1042,
                calendar: 17,
                contacts: 9,
                delivered: 1000,
                ..UserState::default()
            },
            &mut out,
        );
        assert_eq!(
            out,
            "event: push\nid: m1042c17a9\ndata: {\"mailModSeq\":1042,\"calendarModSeq\":17,\"contactsModSeq\":9}\n\n"
        );
    }
}
