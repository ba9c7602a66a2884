//! A real EventSource client: reqwest's byte stream parsed by `eventsource-stream`.

use std::pin::Pin;

use eventsource_stream::{Event, Eventsource};
use futures_util::{Stream, StreamExt};
use serde_json::Value;

use super::{DEADLINE, client};

type EventStream = Pin<Box<dyn Stream<Item = Result<Event, String>> + Send>>;

/// One open EventSource connection.
pub struct Sse {
    stream: EventStream,
    /// The id of the last event received, as a browser would keep it.
    pub last_event_id: Option<String>,
}

impl Sse {
    /// Connects with a bearer token and, optionally, a `Last-Event-ID`; panics unless the
    /// server answers 200 with `text/event-stream`.
    pub async fn connect(url: &str, token: &str, last_event_id: Option<&str>) -> Sse {
        let response = Sse::request(url, token, last_event_id).await;
        assert_eq!(
            response.status(),
            200,
            "GET {url}: {:?}",
            response.headers()
        );
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert_eq!(content_type, "text/event-stream");
        Sse::from_response(response)
    }

    /// Sends the request and returns the response whatever its status.
    pub async fn request(url: &str, token: &str, last_event_id: Option<&str>) -> reqwest::Response {
        let mut request = client()
            .get(url)
            .header("accept", "text/event-stream")
            .bearer_auth(token);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        request
            .send()
            .await
            .unwrap_or_else(|err| panic!("GET {url}: {err}"))
    }

    pub fn from_response(response: reqwest::Response) -> Sse {
        let stream = response
            .bytes_stream()
            .eventsource()
            .map(|item| item.map_err(|err| err.to_string()));
        Sse {
            stream: Box::pin(stream),
            last_event_id: None,
        }
    }

    /// The next event that carries data (keepalives and the bare `retry:` are skipped), or
    /// None when the stream ends. Panics at the deadline.
    pub async fn next_event(&mut self) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let item = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .expect("timed out waiting for an EventSource event");
            match item {
                None => return None,
                Some(Err(err)) => panic!("EventSource stream failed: {err}"),
                Some(Ok(event)) if event.data.is_empty() => continue,
                Some(Ok(event)) => {
                    if !event.id.is_empty() {
                        self.last_event_id = Some(event.id.clone());
                    }
                    return Some(event);
                }
            }
        }
    }

    /// The next `push` event's data as (mailModSeq, calendarModSeq, contactsModSeq).
    pub async fn next_state(&mut self) -> (u64, u64, u64) {
        let event = self
            .next_event()
            .await
            .expect("stream ended before a state event");
        assert_eq!(event.event, "push", "{event:?}");
        state_of(&event.data)
    }

    /// Reads states until `expect` arrives; the ones before it (a stream may see a state
    /// between two changes that landed close together) must be on the way to it, never past
    /// it or backwards. Returns how many came before.
    pub async fn state_reaching(&mut self, expect: (u64, u64, u64)) -> usize {
        let mut last = (0, 0, 0);
        let mut before = 0;
        loop {
            let state = self.next_state().await;
            if state == expect {
                return before;
            }
            let below =
                |a: (u64, u64, u64), b: (u64, u64, u64)| a.0 <= b.0 && a.1 <= b.1 && a.2 <= b.2;
            assert!(
                below(state, expect) && below(last, state),
                "got {state:?} after {last:?} on the way to {expect:?}"
            );
            last = state;
            before += 1;
        }
    }

    /// Waits for the stream to end (the server closed it).
    pub async fn expect_end(&mut self) {
        if let Some(event) = self.next_event().await {
            panic!("expected the stream to end, got {event:?}");
        }
    }
}

/// Reads a legacy `push` payload.
pub fn state_of(data: &str) -> (u64, u64, u64) {
    let value: Value = serde_json::from_str(data).unwrap_or_else(|err| panic!("{data}: {err}"));
    let field = |name: &str| {
        value[name]
            .as_u64()
            .unwrap_or_else(|| panic!("{name} missing in {data}"))
    };
    (
        field("mailModSeq"),
        field("calendarModSeq"),
        field("contactsModSeq"),
    )
}
