//! The fake phone: scans a code the fake WeChat made and sends wxlogin the callback that
//! WeChat would send: the event XML, signed with `MP_TOKEN`, retried like WeChat retries (5 s
//! per attempt, three attempts, the same event each time).
//!
//! It reads codes from the fake WeChat as a camera would, through the fake's public view of
//! the codes it made, and serves nothing of the fake's: its own routes are `/sandbox/scan`
//! and `/sandbox/text` (a text message typed on the phone, a login code say).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::fake::{FakeAccount, FakeWechat, TicketInfo};
use crate::wechat::crypto::{AesKey, msg_signature};
use crate::wechat::ids::{InvalidUnionId, Scene, UnionId};
use crate::wechat::xml::push_cdata;

/// What the phone sends: a scan event and its signed query, written by the protocol's builders.
pub use crate::wechat::test_util::{scan_xml, signed_query};

/// WeChat's wait for an answer, and its attempts per event.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts WeChat makes for one event.
pub const ATTEMPTS: u32 = 3;

/// Seconds since the epoch.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// A random nonce as WeChat sends them (digits).
pub fn nonce() -> String {
    rand::rng()
        .random_range(100_000_000u64..10_000_000_000)
        .to_string()
}

/// What wxlogin answered the (last) attempt.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    /// The HTTP status.
    pub status: u16,
    /// The body.
    pub body: String,
    /// Attempts made.
    pub attempts: u32,
    /// The passive reply's XML (decrypted in safe mode), when wxlogin sent one.
    pub reply: Option<String>,
}

/// The reply's XML: the body itself, or in safe mode the decrypted `Encrypt` of it.
fn read_reply(body: &str, key: Option<&AesKey>, appid: &str) -> Option<String> {
    if !body.starts_with("<xml") {
        return None;
    }
    match key {
        None => Some(body.to_owned()),
        Some(key) => {
            let outer = crate::wechat::xml::parse(body).ok()?;
            key.decrypt(appid, outer.encrypt.as_deref()?).ok()
        }
    }
}

/// Why the phone could not send a callback.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The fake never made that code.
    #[error("no such QR code")]
    UnknownCode,
    /// The code has expired: WeChat shows the user an error and sends nothing.
    #[error("the QR code has expired")]
    Expired,
    /// No callback URL is set.
    #[error("no callback URL is configured")]
    NoCallback,
    /// Every attempt failed to get an answer.
    #[error("wxlogin did not answer: {0}")]
    Unreachable(String),
}

/// What the phone points at.
#[derive(Clone, Debug)]
pub enum ScanTarget {
    /// A code by its scene (the sandbox page knows the scene).
    Scene(Scene),
    /// A code by its content, as a camera reads it.
    Url(String),
}

/// The fake phone: scans codes the fake WeChat made and sends wxlogin WeChat's callbacks
/// for the fake's account. Cheap to clone; clones share the callback URL.
#[derive(Clone)]
pub struct Phone {
    inner: Arc<PhoneInner>,
}

struct PhoneInner {
    /// The WeChat whose codes the phone reads and whose account it signs for.
    wechat: FakeWechat,
    /// wxlogin's callback URL of each account, by appid; callbacks fail until it is set.
    callback_urls: Mutex<HashMap<String, String>>,
    http: reqwest::Client,
}

impl Phone {
    /// A phone for the codes and account of `wechat`; it needs [`Phone::set_callback`].
    pub fn new(wechat: FakeWechat) -> Self {
        Self {
            inner: Arc::new(PhoneInner {
                wechat,
                callback_urls: Mutex::new(HashMap::new()),
                http: reqwest::Client::new(),
            }),
        }
    }

    /// Where the (first) account's callbacks go (wxlogin's `/wechat_event` URL).
    pub fn set_callback(&self, url: impl Into<String>) {
        let appid = self.inner.wechat.account().appid.clone();
        self.set_callback_for(&appid, url);
    }

    /// Where the callbacks of the account `appid` go (wxlogin's `/wechat_event/{account}`).
    pub fn set_callback_for(&self, appid: &str, url: impl Into<String>) {
        self.inner
            .callback_urls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(appid.to_owned(), url.into());
    }

    /// `POST /sandbox/scan` and `POST /sandbox/text`: the phone over HTTP.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/sandbox/scan", post(scan_handler))
            .route("/sandbox/text", post(text_handler))
            .with_state(self.clone())
    }

    /// The code `target` names, as the fake WeChat made it.
    fn read(&self, target: &ScanTarget) -> Option<TicketInfo> {
        match target {
            ScanTarget::Scene(scene) => self.inner.wechat.ticket_for_scene(scene.as_str()),
            ScanTarget::Url(url) => self.inner.wechat.ticket_for_url(url),
        }
    }

    /// Scans `target` as `openid` (a new follower when `new_follower`) and delivers the
    /// callback to wxlogin, retrying like WeChat.
    pub async fn scan(
        &self,
        target: &ScanTarget,
        openid: &str,
        new_follower: bool,
    ) -> Result<Delivery, ScanError> {
        let info = self.read(target).ok_or(ScanError::UnknownCode)?;
        if info.expires_at <= Instant::now() {
            return Err(ScanError::Expired);
        }
        // WeChat calls the callback URL of the account whose code was scanned.
        let account = self
            .inner
            .wechat
            .account_of(&info.appid)
            .ok_or(ScanError::UnknownCode)?;
        let xml = scan_xml(
            &account.gh_id,
            openid,
            now_secs(),
            new_follower,
            &info.scene,
            &info.ticket,
        );
        self.push_for(&account, openid, xml).await
    }

    /// Sends the text message `content` to the account as `openid`, with a fresh `MsgId`,
    /// and delivers the callback to wxlogin, retrying like WeChat (the same message each
    /// time). The delivery holds the passive reply, decrypted in safe mode.
    pub async fn send_text(&self, openid: &str, content: &str) -> Result<Delivery, ScanError> {
        let msg_id = rand::rng().random_range(10_000_000_000_000_000u64..u64::MAX);
        let xml = text_xml(
            &self.inner.wechat.account().gh_id,
            openid,
            now_secs(),
            content,
            msg_id,
        );
        self.push(openid, xml).await
    }

    /// Sends `xml` as a signed callback from `openid` to the (first) account, retrying like
    /// WeChat.
    pub async fn push(&self, openid: &str, xml: String) -> Result<Delivery, ScanError> {
        let account = self.inner.wechat.account().clone();
        self.push_for(&account, openid, xml).await
    }

    /// Sends `xml` as `account`'s signed callback from `openid`, retrying like WeChat.
    async fn push_for(
        &self,
        account: &FakeAccount,
        openid: &str,
        xml: String,
    ) -> Result<Delivery, ScanError> {
        let url = self
            .inner
            .callback_urls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&account.appid)
            .cloned()
            .ok_or(ScanError::NoCallback)?;
        let token = account.mp_token.expose();
        // Safe mode: the body is the encrypted envelope, as WeChat sends it.
        let key = match &account.encoding_aes_key {
            Some(k) => Some(
                AesKey::from_encoding_aes_key(k.expose())
                    .map_err(|e| ScanError::Unreachable(format!("bad EncodingAESKey: {e}")))?,
            ),
            None => None,
        };
        let (body, encrypted) = match &key {
            Some(key) => {
                let encrypted = key
                    .encrypt(&account.appid, &xml)
                    .map_err(|e| ScanError::Unreachable(e.to_string()))?;
                let mut body = String::from("<xml><ToUserName>");
                push_cdata(&mut body, &account.gh_id);
                body.push_str("</ToUserName><Encrypt>");
                push_cdata(&mut body, &encrypted);
                body.push_str("</Encrypt></xml>");
                (body, Some(encrypted))
            }
            None => (xml, None),
        };
        let mut last_error = String::new();
        for attempt in 1..=ATTEMPTS {
            // Each retry is signed afresh, as WeChat does; the event (and CreateTime) stays.
            let (timestamp, nonce) = (now_secs(), nonce());
            let mut query = signed_query(token, timestamp, &nonce, openid);
            if let Some(encrypted) = &encrypted {
                let signature = msg_signature(token, &timestamp.to_string(), &nonce, encrypted);
                query.push_str(&format!("&encrypt_type=aes&msg_signature={signature}"));
            }
            let sent = self
                .inner
                .http
                .post(format!("{url}?{query}"))
                .header("content-type", "text/xml")
                .timeout(ATTEMPT_TIMEOUT)
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(response) if !response.status().is_server_error() => {
                    let status = response.status().as_u16();
                    let body = response.text().await.unwrap_or_default();
                    let reply = read_reply(&body, key.as_ref(), &account.appid);
                    return Ok(Delivery {
                        status,
                        body,
                        attempts: attempt,
                        reply,
                    });
                }
                Ok(response) => last_error = format!("status {}", response.status()),
                Err(e) => last_error = e.without_url().to_string(),
            }
        }
        Err(ScanError::Unreachable(last_error))
    }
}

/// The XML of a text message to the account (`gh_id`) from `openid`, as WeChat writes it.
pub fn text_xml(gh_id: &str, openid: &str, create_time: i64, content: &str, msg_id: u64) -> String {
    let mut xml = String::from("<xml><ToUserName>");
    push_cdata(&mut xml, gh_id);
    xml.push_str("</ToUserName>\n<FromUserName>");
    push_cdata(&mut xml, openid);
    xml.push_str(&format!(
        "</FromUserName>\n<CreateTime>{create_time}</CreateTime>\n\
         <MsgType><![CDATA[text]]></MsgType>\n<Content>"
    ));
    push_cdata(&mut xml, content);
    xml.push_str(&format!("</Content>\n<MsgId>{msg_id}</MsgId>\n</xml>"));
    xml
}

/// The body of `POST /sandbox/text`.
#[derive(Debug, Deserialize)]
pub struct TextRequest {
    /// Who sends it; random when absent.
    pub openid: Option<String>,
    /// The sender's unionid from now on (what `user/info` gives with `USER_INFO`).
    pub unionid: Option<String>,
    /// What the message says.
    pub content: String,
}

/// The openid a request names (random when absent), given `unionid` at the fake WeChat when
/// the request names one; `Err` for a unionid WeChat would never make.
fn sender(
    phone: &Phone,
    openid: Option<String>,
    unionid: Option<&str>,
) -> Result<String, InvalidUnionId> {
    let openid = openid
        .filter(|o| !o.is_empty())
        .unwrap_or_else(random_openid);
    if let Some(unionid) = unionid {
        let unionid = UnionId::parse(unionid)?;
        phone.inner.wechat.give_unionid(&openid, unionid.as_str());
    }
    Ok(openid)
}

/// `POST /sandbox/text`: sends a text message from the phone; answers the openid and the
/// passive reply's text (`reply`, null when wxlogin answered `success`).
async fn text_handler(
    State(phone): State<Phone>,
    body: Result<Json<TextRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return (StatusCode::BAD_REQUEST, e.body_text()).into_response(),
    };
    if req.content.chars().count() > MAX_TEXT_CHARS {
        return (StatusCode::BAD_REQUEST, "content is too long").into_response();
    }
    let openid = match sender(&phone, req.openid, req.unionid.as_deref()) {
        Ok(openid) => openid,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    match phone.send_text(&openid, &req.content).await {
        Ok(delivery) => {
            let reply = delivery.reply.as_deref().and_then(reply_content);
            Json(json!({"openid": openid, "reply": reply, "delivery": delivery})).into_response()
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

/// WeChat's limit on a text message's length.
const MAX_TEXT_CHARS: usize = 2048;

/// The `Content` of a passive text reply's XML.
pub fn reply_content(xml: &str) -> Option<String> {
    let parsed = crate::wechat::xml::parse(xml).ok()?;
    parsed.content.as_deref().map(str::to_owned)
}

/// The body of `POST /sandbox/scan`.
#[derive(Debug, Deserialize)]
pub struct ScanRequest {
    /// The code's scene (what the sandbox page knows).
    pub scene: Option<String>,
    /// Or the code's content (what a camera reads).
    pub url: Option<String>,
    /// Who scans; random when absent.
    pub openid: Option<String>,
    /// The scanner's unionid from now on (what `user/info` gives with `USER_INFO`).
    pub unionid: Option<String>,
    /// Scan as a new follower (`subscribe`) instead of a follower (`SCAN`).
    #[serde(default)]
    pub new_follower: bool,
}

/// `POST /sandbox/scan`: scans the code the body names.
async fn scan_handler(
    State(phone): State<Phone>,
    body: Result<Json<ScanRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return (StatusCode::BAD_REQUEST, e.body_text()).into_response(),
    };
    let target = match (req.scene, req.url) {
        (Some(scene), _) => match Scene::parse(&scene) {
            Ok(scene) => ScanTarget::Scene(scene),
            Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
        },
        (None, Some(url)) => ScanTarget::Url(url),
        (None, None) => {
            return (StatusCode::BAD_REQUEST, "scene or url is required").into_response();
        }
    };
    let openid = match sender(&phone, req.openid, req.unionid.as_deref()) {
        Ok(openid) => openid,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    match phone.scan(&target, &openid, req.new_follower).await {
        Ok(delivery) => Json(json!({"openid": openid, "delivery": delivery})).into_response(),
        Err(e @ (ScanError::UnknownCode | ScanError::Expired)) => {
            (StatusCode::GONE, e.to_string()).into_response()
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

/// A random openid of the usual shape (28 characters starting with `o`).
pub fn random_openid() -> String {
    use base64::Engine as _;
    let mut bytes = [0u8; 21];
    rand::rng().fill(&mut bytes);
    let mut id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    id.truncate(27);
    format!("o{id}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wechat::callback::{Callback, ScanKind, classify};
    use crate::wechat::xml::parse;

    #[test]
    fn the_phone_writes_what_wxlogin_reads() {
        let xml = scan_xml("gh_1", "oUser", 1_409_735_668, true, "abc", "T+/=");
        let parsed = parse(&xml).unwrap();
        let Callback::Scan(scan) = classify(&parsed) else {
            panic!("not a scan")
        };
        assert_eq!(scan.kind, ScanKind::Subscribe);
        assert_eq!(scan.scene.as_str(), "abc");
        assert_eq!(scan.openid, "oUser");
    }

    #[test]
    fn random_openids_look_like_wechat_ones() {
        let id = random_openid();
        assert_eq!(id.len(), 28);
        assert!(id.starts_with('o'));
    }
}
