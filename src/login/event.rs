//! What the browser receives: the JSON of each data event on the stream.
//!
//! The shapes are the FastAPI service's, so its pages keep working; fields are only added.

use serde::{Deserialize, Serialize};

use crate::wechat::callback::ScanKind;
use crate::wechat::ids::OpenId;

/// The first event: the QR code to show.
#[derive(Debug, Serialize)]
pub struct QrIssued<'a> {
    /// The QR code's scene (opaque to the page).
    pub scene_id: &'a str,
    /// WeChat's image of the code (`showqrcode?ticket=`), for drop-in pages.
    pub qrcode_url: String,
    /// Seconds of life the QR code has left.
    pub expire_seconds: u64,
    /// Seconds this stream waits for a scan before it ends with a timeout event.
    pub timeout_seconds: u64,
    /// The same code rendered by wxlogin as SVG (no hotlinking of mp.weixin.qq.com).
    pub qrcode_svg: String,
}

/// The result of a scan, pushed to the stream that waits on the scene (and kept in the
/// store, as JSON, for a stream that reconnects).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginResult {
    /// Who scanned.
    pub openid: OpenId,
    /// Follower (`SCAN`) or new follower (`subscribe`).
    pub kind: ScanKind,
    /// The signed proof of this login for the site's backend (absent only if signing
    /// failed, which is logged).
    pub login_token: Option<String>,
    /// When the callback was resolved (for the scan-to-push latency). Not sent between
    /// instances (their clocks differ): a result from another instance counts from arrival.
    #[serde(skip, default = "std::time::Instant::now")]
    pub resolved_at: std::time::Instant,
}

/// The JSON of a [`LoginResult`]:
/// `{"userId": openid, "event": "SCAN" | "subscribe", "login_token": "…"}`.
#[derive(Debug, Serialize)]
pub struct LoginEvent<'a> {
    /// The openid.
    #[serde(rename = "userId")]
    pub user_id: &'a str,
    /// `SCAN` or `subscribe`.
    pub event: &'static str,
    /// The signed login token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login_token: Option<&'a str>,
}

impl<'a> From<&'a LoginResult> for LoginEvent<'a> {
    fn from(r: &'a LoginResult) -> Self {
        Self {
            user_id: r.openid.as_str(),
            event: r.kind.as_str(),
            login_token: r.login_token.as_deref(),
        }
    }
}

/// The last event when nobody scanned in time.
#[derive(Debug, Serialize)]
pub struct TimeoutEvent {
    /// Always `timeout`.
    pub event: &'static str,
    /// A sentence for the visitor.
    pub message: &'static str,
}

/// Languages of the texts a site's visitors see: Chinese by default, English on request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Lang {
    /// 简体中文.
    #[default]
    Zh,
    /// English.
    En,
}

impl Lang {
    /// `en…` picks English; anything else Chinese.
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some(s) if s.to_ascii_lowercase().starts_with("en") => Self::En,
            _ => Self::Zh,
        }
    }
}

impl TimeoutEvent {
    /// The timeout event in `lang`.
    pub fn new(lang: Lang) -> Self {
        Self {
            event: "timeout",
            message: match lang {
                Lang::Zh => "二维码已过期，请刷新后重新扫码",
                Lang::En => "The QR code has expired. Refresh to get a new one.",
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_login_event_has_the_fastapi_shape() {
        let r = LoginResult {
            openid: OpenId::new("oAbc"),
            kind: ScanKind::Subscribe,
            login_token: Some("a.b.c".into()),
            resolved_at: std::time::Instant::now(),
        };
        let json = serde_json::to_value(LoginEvent::from(&r)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"userId": "oAbc", "event": "subscribe", "login_token": "a.b.c"})
        );
    }

    #[test]
    fn the_timeout_event_is_chinese_unless_english_is_asked() {
        let zh = serde_json::to_value(TimeoutEvent::new(Lang::parse(None))).unwrap();
        assert_eq!(zh["event"], "timeout");
        assert!(zh["message"].as_str().unwrap().contains("二维码"));
        let en = TimeoutEvent::new(Lang::parse(Some("en-US")));
        assert!(en.message.contains("expired"));
    }
}
