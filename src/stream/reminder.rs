//! The `reminder` event: a calendar `display` alarm, written once to the owner's open streams
//! (both formats). It carries no `id`, so it never moves a client's `Last-Event-ID`.

use bytes::Bytes;
use serde_json::json;

use crate::route::Reminder;

/// One `event: reminder` frame.
pub fn encode(reminder: &Reminder) -> Bytes {
    let data = json!({
        "summary": reminder.summary,
        "start": reminder.start,
        "end": reminder.end,
        "timezone": reminder.timezone,
        "location": reminder.location,
        "calendar": reminder.calendar,
        "uid": reminder.uid,
        "alarmTime": reminder.alarm_time,
    });
    Bytes::from(format!("event: reminder\ndata: {data}\n\n"))
}
