//! The job model: what the blocking path is asked to do, in the one shape that `route` decides,
//! the spool and the jobs table keep, and the workers send.
//!
//! A [`JobRequest`] is written to the spool by the receive loop that read its event and, later,
//! into the jobs table as its [`Work`] (the `payload` column, JSON) under [`Work::kind`] (the
//! `kind` column). Both are storage formats that outlive a process and an upgrade, which is why
//! this one internal type is `Serialize`: a second "wire" struct per kind would only repeat it.
//! Cyrus's CalendarAlarm JSON is read once, by `route`, into an [`Alarm`]; the job carries that,
//! not the raw event.

use serde::{Deserialize, Deserializer, Serialize};

/// The `jobs.kind` of a text message: the one kind that spends SMS credit when claimed.
pub const SMS_KIND: &str = "sms";

/// A job for the durable queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRequest {
    /// The user the job is for (whose language, number and credit apply).
    pub user: String,
    /// The file holding the message that triggered a notification email (lmtpd's staging
    /// copy), checked for `Auto-Submitted` before the job is queued (RFC 5436 loop prevention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    /// The same event always yields the same key, so a replay sends nothing twice.
    pub key: String,
    pub work: Work,
}

/// What a job does. The serde tag is the same name as [`Work::kind`] (tested).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Work {
    /// A text message: to `number`, or to the user's stored number when None.
    Sms {
        number: Option<String>,
        text: String,
    },
    /// A Sieve `mailto` notification (RFC 5436): `uri` is the mailto URI without its scheme.
    SieveEmail {
        uri: String,
        message: String,
        importance: String,
    },
    /// A calendar alarm email to one recipient.
    AlarmEmail {
        recipient: String,
        #[serde(deserialize_with = "alarm_object_or_json")]
        alarm: Box<Alarm>,
    },
}

/// Cyrus's CalendarAlarm event (`imap/mboxevent.c`), the fields that routing and the alarm
/// email use. Serialized with Cyrus's own names, so a stored alarm reads like the event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Alarm {
    /// `email` or `display` (others are ignored).
    pub action: String,
    /// `mailto:` URIs of the VALARM's attendees.
    #[serde(rename = "alarmRecipients")]
    pub recipients: Vec<String>,
    #[serde(rename = "calendarId")]
    pub calendar_id: String,
    #[serde(rename = "calendarName")]
    pub calendar_name: String,
    /// The iCalendar UID of the event.
    pub uid: String,
    #[serde(rename = "recurrenceId")]
    pub recurrence_id: String,
    #[serde(rename = "alarmTime")]
    pub alarm_time: String,
    pub summary: String,
    pub description: String,
    pub location: String,
    pub timezone: String,
    /// iCalendar date-times as Cyrus sends them, in the event's zone.
    pub start: String,
    pub end: String,
    /// 1 for an all-day event.
    #[serde(rename = "allDay")]
    pub all_day: u8,
    #[serde(rename = "attendeeNames")]
    pub attendee_names: Vec<String>,
    #[serde(rename = "attendeeEmails")]
    pub attendee_emails: Vec<String>,
    #[serde(rename = "attendeeStatus")]
    pub attendee_status: Vec<String>,
}

impl Work {
    /// The `jobs.kind` column for this work.
    pub fn kind(&self) -> &'static str {
        match self {
            Work::Sms { .. } => SMS_KIND,
            Work::SieveEmail { .. } => "sieve_email",
            Work::AlarmEmail { .. } => "alarm_email",
        }
    }

    /// The `jobs.payload` column. Serialising strings, options and lists cannot fail.
    pub fn to_payload(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a `jobs.payload` column back.
    pub fn from_payload(payload: &str) -> Result<Work, serde_json::Error> {
        serde_json::from_str(payload)
    }
}

impl Alarm {
    /// The calendar's display name, else its id.
    pub fn calendar_label(&self) -> &str {
        if self.calendar_name.is_empty() {
            &self.calendar_id
        } else {
            &self.calendar_name
        }
    }
}

/// Jobs queued before the alarm was stored parsed hold Cyrus's raw JSON as a string.
fn alarm_object_or_json<'de, D: Deserializer<'de>>(de: D) -> Result<Box<Alarm>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stored {
        Object(Box<Alarm>),
        Json(String),
    }
    match Stored::deserialize(de)? {
        Stored::Object(alarm) => Ok(alarm),
        Stored::Json(json) => serde_json::from_str(&json).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_tag_is_the_kind() {
        let works = [
            Work::Sms {
                number: None,
                text: "hi".into(),
            },
            Work::SieveEmail {
                uri: "a@x.test".into(),
                message: "m".into(),
                importance: "normal".into(),
            },
            Work::AlarmEmail {
                recipient: "a@x.test".into(),
                alarm: Box::default(),
            },
        ];
        for work in works {
            let payload: serde_json::Value = serde_json::from_str(&work.to_payload()).unwrap();
            assert_eq!(payload["type"], work.kind());
            assert_eq!(Work::from_payload(&work.to_payload()).unwrap(), work);
        }
    }

    #[test]
    fn alarms_stored_as_raw_json_still_read() {
        let old = r#"{"type":"alarm_email","recipient":"a@x.test","alarm":"{\"event\":\"CalendarAlarm\",\"summary\":\"Standup\",\"allDay\":1,\"attendeeNames\":[\"Bob\"]}"}"#;
        let Work::AlarmEmail { recipient, alarm } = Work::from_payload(old).unwrap() else {
            panic!("an alarm email");
        };
        assert_eq!(recipient, "a@x.test");
        assert_eq!(alarm.summary, "Standup");
        assert_eq!(alarm.all_day, 1);
        assert_eq!(alarm.attendee_names, ["Bob"]);
    }
}
