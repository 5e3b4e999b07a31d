//! An open `/sse` stream read with an event-stream parser (not string matching): the tests'
//! one SSE reader.

use std::time::Duration;

use eventsource_stream::{Event, Eventsource};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use serde_json::Value;

/// An open `/sse` stream, read with an event-stream parser.
pub struct Stream {
    pub status: reqwest::StatusCode,
    pub headers: reqwest::header::HeaderMap,
    events: BoxStream<'static, Result<Event, String>>,
}

impl Stream {
    /// Reads a `/sse` response as an event stream.
    pub fn from_response(response: reqwest::Response) -> Self {
        let status = response.status();
        let headers = response.headers().clone();
        let events = response
            .bytes_stream()
            .eventsource()
            .map(|r| r.map_err(|e| e.to_string()))
            .boxed();
        Self {
            status,
            headers,
            events,
        }
    }

    /// The next data event's JSON, or `None` when the stream ended or `wait` passed.
    pub async fn next_json_within(&mut self, wait: Duration) -> Option<Value> {
        match tokio::time::timeout(wait, self.events.next()).await {
            Ok(Some(Ok(event))) => Some(serde_json::from_str(&event.data).expect("JSON data")),
            _ => None,
        }
    }

    /// The next data event's JSON; panics after 10 s.
    pub async fn next_json(&mut self) -> Value {
        self.next_json_within(Duration::from_secs(10))
            .await
            .expect("an event within 10 s")
    }

    /// The next raw event (with its id).
    pub async fn next_event(&mut self) -> Event {
        tokio::time::timeout(Duration::from_secs(10), self.events.next())
            .await
            .expect("an event within 10 s")
            .expect("stream open")
            .expect("well-formed event")
    }

    /// Whether the stream ends (no further event) within `wait`.
    pub async fn ends_within(&mut self, wait: Duration) -> bool {
        matches!(
            tokio::time::timeout(wait, self.events.next()).await,
            Ok(None)
        )
    }
}
