//! Sharing the account's one callback URL: callbacks that are not login scans of our QR codes
//! (messages, menu clicks, plain follows, scans of other QR codes) are passed on unchanged to
//! `FORWARD_URL` (same query string, so the downstream can check WeChat's signature itself;
//! same body), and the downstream's answer is relayed to WeChat. A downstream that does not
//! answer in time gets WeChat `success`, so the user never sees WeChat's error message.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The downstream's time to answer: WeChat gives up after 5 s.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(4);

/// A client for `FORWARD_URL`.
#[derive(Clone)]
pub struct Forwarder {
    http: reqwest::Client,
    url: String,
}

/// What came back from the downstream.
pub enum Forwarded {
    /// Its answer, relayed.
    Answer(Response),
    /// No answer in time, or an error: WeChat gets `success`.
    Failed(String),
}

impl Forwarder {
    /// A forwarder to `url`.
    pub fn new(url: &str) -> Result<Self, reqwest::Error> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(FORWARD_TIMEOUT)
                .connect_timeout(Duration::from_secs(2))
                .build()?,
            url: url.to_owned(),
        })
    }

    /// Passes the callback on: `query` exactly as received, `body` unchanged.
    pub async fn forward(
        &self,
        query: Option<&str>,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Forwarded {
        let url = match query {
            Some(q) if self.url.contains('?') => format!("{}&{q}", self.url),
            Some(q) => format!("{}?{q}", self.url),
            None => self.url.clone(),
        };
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static("text/xml"));
        let sent = self
            .http
            .post(url)
            .header(header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => return Forwarded::Failed(e.without_url().to_string()),
        };
        let status = StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::OK);
        if status.is_server_error() {
            return Forwarded::Failed(format!("downstream answered {status}"));
        }
        let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
        match response.bytes().await {
            Ok(bytes) => {
                let mut answer = (status, bytes).into_response();
                if let Some(ct) = content_type {
                    answer.headers_mut().insert(header::CONTENT_TYPE, ct);
                }
                Forwarded::Answer(answer)
            }
            Err(e) => Forwarded::Failed(e.without_url().to_string()),
        }
    }
}
