//! Sharing the account's one callback URL: callbacks that are not login scans of our QR codes
//! (messages, menu clicks, plain follows, scans of other QR codes) are passed on unchanged to
//! `FORWARD_URL` (same query string, so the downstream can check WeChat's signature itself;
//! same body), and the downstream's answer is relayed to WeChat. A downstream that does not
//! answer in time gets WeChat `success`, so the user never sees WeChat's error message.
//!
//! Redirects are not followed: the callback carries WeChat's signature, and a redirect would
//! hand it to a host nobody configured. A redirect, and an answer longer than
//! [`MAX_ANSWER_BYTES`] (a passive reply is a short XML message), count as failures too.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The downstream's time to answer: WeChat gives up after 5 s.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(4);
/// The longest downstream answer relayed to WeChat; longer ones are not read to the end.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

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
                .redirect(reqwest::redirect::Policy::none())
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
        let mut response = match sent {
            Ok(r) => r,
            Err(e) => return Forwarded::Failed(e.without_url().to_string()),
        };
        let status = StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::OK);
        if status.is_server_error() {
            return Forwarded::Failed(format!("downstream answered {status}"));
        }
        if status.is_redirection() {
            return Forwarded::Failed(format!(
                "downstream answered {status}, a redirect, which is not followed"
            ));
        }
        let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
        match read_capped(&mut response, MAX_ANSWER_BYTES).await {
            Ok(None) => Forwarded::Failed("the downstream's answer is larger than 64 KiB".into()),
            Ok(Some(bytes)) => {
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

/// The body of `response` if it is at most `limit` bytes, `None` if it is longer. Reads chunk
/// by chunk and stops past the limit, so a long body is never held in memory.
async fn read_capped(
    response: &mut reqwest::Response,
    limit: usize,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    if response
        .content_length()
        .is_some_and(|n| n > u64::try_from(limit).unwrap_or(u64::MAX))
    {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}
