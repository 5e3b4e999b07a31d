//! `/wechat_event`: WeChat's URL check (GET) and its event pushes (POST).
//!
//! A POST is believed only after its signature (constant time) and timestamp (within five
//! minutes) check out; in safe mode (`encrypt_type=aes`) the `Encrypt` element must also carry
//! a valid `msg_signature` and decrypt, with the current or the previous EncodingAESKey, to a
//! message for our appid. The body must be UTF-8 XML without DTDs; WeChat's retries of one
//! event are recognised. A login scan may be answered with a text reply (`REPLY_TEXT`,
//! encrypted with the key that opened the request); everything else gets `success`. Answers
//! come well inside WeChat's 5 s: nothing here waits on WeChat.

use std::borrow::Cow;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::error::HttpError;
use super::forward::Forwarded;
use super::{AppState, MAX_CALLBACK_BODY};
use crate::login::Outcome;
use crate::metrics::{Metrics, Outcome as Label};
use crate::wechat::callback::{Callback, ScanEvent, classify};
use crate::wechat::crypto::{KeySlot, seal_reply, verify_msg_signature};
use crate::wechat::ids::short_openid;
use crate::wechat::reply::text_reply;
use crate::wechat::signature::{is_fresh, verify_signature};
use crate::wechat::xml::{self, CallbackXml};

/// How far a callback's `timestamp` may be from our clock.
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;

/// The query of the URL check.
#[derive(Debug, Deserialize)]
pub struct VerifyQuery {
    signature: Option<String>,
    timestamp: Option<String>,
    nonce: Option<String>,
    echostr: Option<String>,
}

/// The query of an event push, borrowed from the request's query string (this is the hot
/// path of a busy account: no copies unless a value is percent-encoded).
#[derive(Debug, Default)]
pub struct EventQuery<'a> {
    signature: Option<Cow<'a, str>>,
    timestamp: Option<Cow<'a, str>>,
    nonce: Option<Cow<'a, str>>,
    /// Safe and compatible mode: `aes`.
    encrypt_type: Option<Cow<'a, str>>,
    /// Safe and compatible mode: the signature over the `Encrypt` text.
    msg_signature: Option<Cow<'a, str>>,
}

impl<'a> EventQuery<'a> {
    /// Reads the fields wxlogin uses; the first of repeated names wins, others are ignored.
    /// Parsed as `application/x-www-form-urlencoded`, by hand: names and values are decoded
    /// only when the query holds `%` or `+`, which WeChat's never do (one SIMD search of the
    /// whole query instead of a byte loop over each part: a third of this parse, measured).
    pub fn parse(query: &'a str) -> Self {
        let encoded = memchr::memchr2(b'%', b'+', query.as_bytes()).is_some();
        let decoded = |s: &'a str| {
            if encoded {
                form_decoded(s)
            } else {
                Cow::Borrowed(s)
            }
        };
        let mut q = Self::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match decoded(name).as_ref() {
                "signature" => &mut q.signature,
                "timestamp" => &mut q.timestamp,
                "nonce" => &mut q.nonce,
                "encrypt_type" => &mut q.encrypt_type,
                "msg_signature" => &mut q.msg_signature,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(decoded(value));
            }
        }
        q
    }
}

/// One form-urlencoded name or value: `+` is a space, `%XX` a byte, invalid UTF-8 replaced.
fn form_decoded(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let spaced = s.replace('+', " ");
    Cow::Owned(
        percent_encoding::percent_decode_str(&spaced)
            .decode_utf8_lossy()
            .into_owned(),
    )
}

/// A plain-text answer. The header value is static: a `&str` would be copied into a fresh one
/// on every callback.
fn plain(status: StatusCode, body: impl IntoResponse) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

/// `GET /wechat_event`: answers `echostr` when the signature matches; 400 otherwise.
#[utoipa::path(get, path = "/wechat_event", tag = "wechat", operation_id = "wechat_url_check",
    params(
        ("signature" = String, Query, description = "hex SHA-1 of the sorted MP_TOKEN, timestamp, nonce"),
        ("timestamp" = String, Query), ("nonce" = String, Query),
        ("echostr" = String, Query, description = "Echoed back when the signature matches")),
    responses(
        (status = 200, description = "The echostr", body = String, content_type = "text/plain"),
        (status = 400, description = "Missing parameters or wrong signature", body = serde_json::Value)))]
pub async fn verify(
    State(state): State<AppState>,
    Query(q): Query<VerifyQuery>,
) -> Result<Response, HttpError> {
    let (Some(signature), Some(timestamp), Some(nonce), Some(echostr)) =
        (q.signature, q.timestamp, q.nonce, q.echostr)
    else {
        return Err(HttpError::BadRequest(
            "signature, timestamp, nonce and echostr are required".into(),
        ));
    };
    if !verify_signature(state.mp_token.expose(), &timestamp, &nonce, &signature) {
        tracing::warn!("URL check with a wrong signature");
        return Err(HttpError::BadRequest("signature mismatch".into()));
    }
    Ok(plain(StatusCode::OK, echostr))
}

/// How much longer a callback signed at `sent` would pass the timestamp check (plus a few
/// seconds of margin): its dedupe key is kept that long, no longer, so a busy account holds
/// only the last few minutes of keys.
fn replayable_for(sent: i64, now: i64) -> Duration {
    let left = sent
        .saturating_add_unsigned(MAX_CLOCK_SKEW_SECS + 5)
        .saturating_sub(now);
    Duration::from_secs(u64::try_from(left).unwrap_or(0))
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// A rejected callback: the reason for the metrics, and the answer.
struct Rejected(&'static str, HttpError);

/// Opens a safe-mode body: checks `msg_signature` over `Encrypt`, then decrypts it. Returns
/// the inner message and the key that opened it.
fn open_encrypted<'a>(
    state: &AppState,
    outer: CallbackXml<'a>,
    q: &EventQuery<'_>,
    timestamp: &str,
    nonce: &str,
) -> Result<(CallbackXml<'a>, Option<KeySlot>), Rejected> {
    let Some(keys) = &state.aes_keys else {
        // Compatible mode carries the plaintext too; without a key that is what we read.
        if outer.msg_type.is_some() {
            return Ok((outer, None));
        }
        return Err(Rejected(
            "safe_mode_off",
            HttpError::BadRequest(
                "encrypted callback, but safe mode (ENCODING_AES_KEY) is not configured".into(),
            ),
        ));
    };
    let encrypt = outer.encrypt.as_deref().ok_or_else(|| {
        Rejected(
            "no_encrypt",
            HttpError::BadRequest("encrypt_type=aes but no Encrypt element".into()),
        )
    })?;
    let msg_signature = q.msg_signature.as_deref().ok_or(Rejected(
        "bad_msg_signature",
        HttpError::Unauthorized("msg_signature is required"),
    ))?;
    if !verify_msg_signature(
        state.mp_token.expose(),
        timestamp,
        nonce,
        encrypt,
        msg_signature,
    ) {
        tracing::warn!("encrypted callback with a wrong msg_signature rejected");
        return Err(Rejected(
            "bad_msg_signature",
            HttpError::Unauthorized("msg_signature mismatch"),
        ));
    }
    // Which step failed stays in the log: telling the sender would make a padding oracle.
    let opened = keys.open(&state.appid, encrypt).map_err(|e| {
        tracing::warn!(error = %e, "encrypted callback does not decrypt");
        Rejected(
            "undecryptable",
            HttpError::BadRequest("the Encrypt element cannot be decrypted".into()),
        )
    })?;
    let inner = xml::parse(&opened.xml)
        .map_err(|e| Rejected("bad_xml", HttpError::BadRequest(e.to_string())))?
        .into_owned();
    Ok((inner, Some(opened.slot)))
}

/// `POST /wechat_event`: checks the callback and resolves a login scan.
#[utoipa::path(post, path = "/wechat_event", tag = "wechat", operation_id = "wechat_callback",
    params(
        ("signature" = String, Query), ("timestamp" = String, Query), ("nonce" = String, Query),
        ("openid" = Option<String>, Query),
        ("encrypt_type" = Option<String>, Query, description = "`aes` in safe and compatible mode"),
        ("msg_signature" = Option<String>, Query, description = "Safe mode: signature over Encrypt")),
    request_body(content = String, content_type = "text/xml", description = "WeChat's event XML (at most 64 KiB)"),
    responses(
        (status = 200, description = "`success`, a passive reply (REPLY_TEXT), or the FORWARD_URL's answer", body = String),
        (status = 400, description = "Malformed: not UTF-8, not XML, a DTD, undecryptable", body = serde_json::Value),
        (status = 401, description = "Missing or wrong signature, stale timestamp", body = serde_json::Value),
        (status = 413, description = "Body over 64 KiB"),
        (status = 503, description = "Cannot record the event now: WeChat retries", body = serde_json::Value)))]
pub async fn receive(State(state): State<AppState>, request: Request) -> Response {
    let started = Instant::now();
    // The request is taken apart here rather than by extractors, which would copy the query
    // string and the headers of every callback (the hot path of a busy account).
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_CALLBACK_BODY).await {
        Ok(body) => body,
        Err(e) => {
            let too_large = e
                .into_inner()
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            let (reason, error) = if too_large {
                ("too_large", HttpError::PayloadTooLarge)
            } else {
                (
                    "unreadable_body",
                    HttpError::BadRequest("the body was cut off".into()),
                )
            };
            state.metrics.reject_callback(reason);
            return error.into_response();
        }
    };
    let raw_query = parts.uri.query();
    let q = EventQuery::parse(raw_query.unwrap_or_default());
    // Pinned in place: awaited directly, its future would be stored twice over in this one,
    // which every callback allocates and copies (measured: 3.9 KiB against 2.5 KiB).
    let handled = std::pin::pin!(handle(&state, &q, raw_query, &parts.headers, body));
    let answer = match handled.await {
        Ok(answer) => answer,
        Err(Rejected(reason, error)) => {
            state.metrics.reject_callback(reason);
            error.into_response()
        }
    };
    Metrics::observe(&state.metrics.callback_seconds, started.elapsed());
    answer
}

async fn handle(
    state: &AppState,
    q: &EventQuery<'_>,
    raw_query: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, Rejected> {
    let (Some(signature), Some(timestamp), Some(nonce)) = (
        q.signature.as_deref(),
        q.timestamp.as_deref(),
        q.nonce.as_deref(),
    ) else {
        return Err(Rejected(
            "missing_signature",
            HttpError::Unauthorized("signature, timestamp and nonce are required"),
        ));
    };
    if !verify_signature(state.mp_token.expose(), timestamp, nonce, signature) {
        tracing::warn!("callback with a wrong signature rejected");
        return Err(Rejected(
            "bad_signature",
            HttpError::Unauthorized("signature mismatch"),
        ));
    }
    let sent: i64 = timestamp.parse().map_err(|_| {
        Rejected(
            "bad_timestamp",
            HttpError::BadRequest("timestamp is not a number".into()),
        )
    })?;
    let now = now_secs();
    if !is_fresh(sent, now, MAX_CLOCK_SKEW_SECS) {
        tracing::warn!(timestamp = sent, "callback with a stale timestamp rejected");
        return Err(Rejected(
            "stale_timestamp",
            HttpError::Unauthorized("timestamp is more than 5 minutes from now"),
        ));
    }
    let text = std::str::from_utf8(&body).map_err(|_| {
        Rejected(
            "not_utf8",
            HttpError::BadRequest("the body is not UTF-8".into()),
        )
    })?;
    let outer =
        xml::parse(text).map_err(|e| Rejected("bad_xml", HttpError::BadRequest(e.to_string())))?;
    let (message, slot) = if q.encrypt_type.as_deref() == Some("aes") {
        open_encrypted(state, outer, q, timestamp, nonce)?
    } else {
        (outer, None)
    };
    let scan = match classify(&message) {
        Callback::Scan(scan) if scan.scene.is_ours() => scan,
        // Not a login scan of ours: the account's own backend may want it.
        // Boxed: its future is larger than the rest of this handler, which every callback
        // would otherwise carry (and copy) for the few that are forwarded.
        _ => return Ok(Box::pin(forward(state, raw_query, headers, body)).await),
    };
    let outcome = state
        .login
        .complete(&scan, replayable_for(sent, now))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "cannot record the callback; WeChat will retry");
            Rejected(
                "store_unavailable",
                HttpError::Unavailable {
                    retry_after: Duration::from_secs(1),
                    message: "temporarily unable to process the event",
                },
            )
        })?;
    match outcome {
        Outcome::Delivered => {}
        Outcome::Parked => tracing::info!(
            scene = %scan.scene,
            openid = %short_openid(scan.openid),
            "scan while the stream is away: kept for its return"
        ),
        Outcome::Duplicate => tracing::debug!(scene = %scan.scene, "retry of a handled callback"),
        // Debug, not info: anyone may send scans of unknown scenes, at any rate; the
        // scans_total{outcome="undeliverable"} metric counts them.
        Outcome::NoWaiter => tracing::debug!(
            scene = %scan.scene,
            openid = %short_openid(scan.openid),
            "scan for a QR code no stream waits on: delivered to nobody"
        ),
    }
    match (&state.reply_text, outcome.is_login()) {
        (Some(template), true) => Ok(reply(state, &scan, template, slot)),
        _ => Ok(success()),
    }
}

fn success() -> Response {
    plain(StatusCode::OK, "success")
}

/// Passes a callback that is not ours on to `FORWARD_URL`, if set, and relays the answer.
async fn forward(
    state: &AppState,
    raw_query: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let Some(forwarder) = &state.forwarder else {
        return success();
    };
    let outcome = |o: &str| Label { outcome: o.into() };
    match forwarder.forward(raw_query, headers, body).await {
        Forwarded::Answer(answer) => {
            state
                .metrics
                .callbacks_forwarded
                .get_or_create(&outcome("relayed"))
                .inc();
            answer
        }
        Forwarded::Failed(why) => {
            tracing::warn!(error = %why, "FORWARD_URL gave no answer to relay; answering success");
            state
                .metrics
                .callbacks_forwarded
                .get_or_create(&outcome("failed"))
                .inc();
            success()
        }
    }
}

/// Fills `{time}` (HH:MM) and `{date}` (YYYY-MM-DD), in China Standard Time.
pub fn fill_reply(template: &str) -> String {
    let beijing =
        chrono::FixedOffset::east_opt(8 * 3600).map(|tz| chrono::Utc::now().with_timezone(&tz));
    match beijing {
        Some(now) => template
            .replace("{time}", &now.format("%H:%M").to_string())
            .replace("{date}", &now.format("%Y-%m-%d").to_string()),
        None => template.to_owned(),
    }
}

/// The passive text reply to a login scan, encrypted when the request was.
fn reply(
    state: &AppState,
    scan: &ScanEvent<'_>,
    template: &str,
    slot: Option<KeySlot>,
) -> Response {
    let xml = text_reply(scan.openid, scan.account, now_secs(), &fill_reply(template));
    let body = match (slot, &state.aes_keys) {
        (Some(slot), Some(keys)) => {
            let timestamp = now_secs().to_string();
            let nonce = crate::auth::random_id();
            match seal_reply(
                keys.key(slot),
                state.mp_token.expose(),
                &state.appid,
                &xml,
                &timestamp,
                &nonce,
            ) {
                Ok(sealed) => sealed,
                Err(e) => {
                    tracing::error!(error = %e, "cannot encrypt the reply; answering success");
                    return success();
                }
            }
        }
        _ => xml,
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dedupe_key_lives_while_its_timestamp_would_pass() {
        let now = 1_800_000_000;
        let secs = |sent| replayable_for(sent, now).as_secs();
        assert_eq!(secs(now), 305);
        assert_eq!(secs(now + 300), 605, "a clock ahead of ours");
        assert_eq!(secs(now - 300), 5);
        assert_eq!(secs(i64::MIN), 0);
        assert_eq!(secs(i64::MAX), u64::try_from(i64::MAX - now).unwrap());
        // Every accepted timestamp is covered until it goes stale.
        for sent in [now - 300, now - 1, now, now + 299, now + 300] {
            assert!(is_fresh(sent, now, MAX_CLOCK_SKEW_SECS));
            let stale_at = now + i64::try_from(secs(sent)).unwrap();
            assert!(!is_fresh(sent, stale_at, MAX_CLOCK_SKEW_SECS));
        }
    }

    proptest::proptest! {
        /// The hand-written reader gives what a form parser gives, for any mix of the names
        /// wxlogin reads (plain or encoded), other names, and odd values.
        #[test]
        fn the_query_reads_as_a_form_parser_reads_it(
            pairs in proptest::collection::vec(
                (
                    proptest::sample::select(vec![
                        "signature", "timestamp", "nonce", "encrypt_type", "msg_signature",
                        "openid", "sign%61ture", "non+ce", "nonce%", "", "=",
                    ]),
                    "[a-z0-9%+=&]{0,6}",
                ),
                0..6,
            ),
        ) {
            let query = pairs
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect::<Vec<_>>()
                .join("&");
            let q = EventQuery::parse(&query);
            let first = |name: &str| {
                form_urlencoded::parse(query.as_bytes())
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.into_owned())
            };
            let got = |v: &Option<Cow<'_, str>>| v.as_deref().map(str::to_owned);
            proptest::prop_assert_eq!(got(&q.signature), first("signature"));
            proptest::prop_assert_eq!(got(&q.timestamp), first("timestamp"));
            proptest::prop_assert_eq!(got(&q.nonce), first("nonce"));
            proptest::prop_assert_eq!(got(&q.encrypt_type), first("encrypt_type"));
            proptest::prop_assert_eq!(got(&q.msg_signature), first("msg_signature"));
        }
    }

    #[test]
    fn the_query_is_read_without_copies_and_decoded_when_needed() {
        let q = EventQuery::parse(
            "signature=abc&timestamp=123&nonce=4%205&openid=o1&encrypt_type=aes&signature=zzz",
        );
        assert_eq!(q.signature.as_deref(), Some("abc"), "the first wins");
        assert!(matches!(q.timestamp, Some(Cow::Borrowed("123"))));
        assert_eq!(q.nonce.as_deref(), Some("4 5"));
        assert_eq!(q.encrypt_type.as_deref(), Some("aes"));
        assert_eq!(q.msg_signature, None);
        // The same reading as a form parser's, for what WeChat never sends too.
        let odd = "sign%61ture=a+b%2B&&timestamp&nonce=%FF%zz=&msg_signature=";
        let q = EventQuery::parse(odd);
        let form: Vec<(Cow<'_, str>, Cow<'_, str>)> =
            form_urlencoded::parse(odd.as_bytes()).collect();
        assert_eq!(q.signature, Some(form[0].1.clone()));
        assert_eq!(q.signature.as_deref(), Some("a b+"));
        assert_eq!(q.timestamp.as_deref(), Some(""));
        assert_eq!(q.nonce, Some(form[2].1.clone()));
        assert_eq!(q.msg_signature.as_deref(), Some(""));
        let empty = EventQuery::parse("");
        assert!(empty.signature.is_none() && empty.timestamp.is_none());
    }
}
