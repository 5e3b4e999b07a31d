//! What the browser receives: the JSON of each data event on the stream.
//!
//! The shapes are the FastAPI service's, so its pages keep working; fields are only added.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::wechat::callback::ScanKind;
use crate::wechat::ids::{OpenId, Scene, UnionId};

/// The secret of one login stream: 128 random bits, base64url (22 characters). Only the
/// stream's browser learns it (in the event ids); resuming the stream or reading its result
/// needs it, while the scene is an address that WeChat, logs and the QR image's URL carry.
#[derive(Clone, PartialEq, Eq)]
pub struct StreamKey(String);

/// The length of a [`StreamKey`].
const STREAM_KEY_LEN: usize = 22;

impl StreamKey {
    /// A fresh key.
    pub fn random() -> Self {
        Self(crate::auth::random_id())
    }

    /// A key as a client sends it back; `None` unless it has a key's shape.
    pub fn parse(s: &str) -> Option<Self> {
        let shaped = s.len() == STREAM_KEY_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        shaped.then(|| Self(s.to_owned()))
    }

    /// The key itself (for the event ids of its stream only).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// What the store keeps of it: 128 bits of its SHA-256, in hex. A copy of the store
    /// (a Redis dump, a replica) does not give the key away.
    pub fn digest(&self) -> String {
        hex::encode(&sha2::Sha256::digest(self.0.as_bytes())[..16])
    }
}

impl fmt::Debug for StreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StreamKey([redacted])")
    }
}

/// The id of a stream's event: `<scene>.<key>.<n>`, `n` being 0 for the QR code and 1 for
/// the last event. EventSource sends the last one back as `Last-Event-ID` when it
/// reconnects; clients that cannot set that header pass it as `?id=`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventId {
    /// The stream's scene.
    pub scene: Scene,
    /// The stream's key.
    pub key: StreamKey,
    /// Whether the client saw the last event (the result) already.
    pub seen_last: bool,
}

impl EventId {
    /// The id of the QR code's event (`last` false) or of the last event.
    pub fn format(scene: &Scene, key: &StreamKey, last: bool) -> String {
        format!("{scene}.{}.{}", key.expose(), u8::from(last))
    }

    /// Parses an id a client sends back; `None` unless it is one of ours in shape.
    pub fn parse(s: &str) -> Option<Self> {
        let (rest, seq) = s.rsplit_once('.')?;
        let (scene, key) = rest.rsplit_once('.')?;
        let seen_last = match seq {
            "0" => false,
            "1" => true,
            _ => return None,
        };
        Some(Self {
            scene: Scene::parse(scene).ok()?,
            key: StreamKey::parse(key)?,
            seen_last,
        })
    }
}

/// The first event: the QR code to show (and the login code, with `LOGIN_MODES` `code`).
#[derive(Debug, Serialize)]
pub struct QrIssued<'a> {
    /// The QR code's scene (opaque to the page).
    pub scene_id: &'a str,
    /// WeChat's image of the code (`showqrcode?ticket=`), for drop-in pages; absent in
    /// code-only mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qrcode_url: Option<String>,
    /// Seconds of life the QR code has left.
    pub expire_seconds: u64,
    /// Seconds this stream waits for a scan before it ends with a timeout event.
    pub timeout_seconds: u64,
    /// The same code rendered by wxlogin as SVG (no hotlinking of mp.weixin.qq.com); absent
    /// in code-only mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qrcode_svg: Option<String>,
    /// The login code to send to the account as a message, when codes are on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login_code: Option<&'a str>,
    /// The account's own follow QR image (`ACCOUNT_QRCODE_URL`), in code-only mode: a visitor
    /// who does not follow the account yet can, and then send the code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_qrcode_url: Option<&'a str>,
    /// The Official Account the stream logs in with (its name: `default`, or one of
    /// `ACCOUNTS_FILE`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<&'a str>,
    /// `true` when the account offers login inside WeChat's browser (`LOGIN_MODES` with
    /// `oauth`): a page there may send the visitor to `/oauth/authorize` instead.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub oauth: bool,
}

/// How a visitor logged in: a scan (as WeChat names its kinds) or a login code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoginKind {
    /// A scan by a follower (`SCAN`).
    #[serde(rename = "SCAN")]
    Scan,
    /// A scan that made the user a follower (`subscribe`).
    #[serde(rename = "subscribe")]
    Subscribe,
    /// A login code sent to the account as a text message.
    #[serde(rename = "code")]
    Code,
}

impl LoginKind {
    /// The event name the browser receives (and the login token's `event`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scan => "SCAN",
            Self::Subscribe => "subscribe",
            Self::Code => "code",
        }
    }
}

impl From<ScanKind> for LoginKind {
    fn from(kind: ScanKind) -> Self {
        match kind {
            ScanKind::Scan => Self::Scan,
            ScanKind::Subscribe => Self::Subscribe,
        }
    }
}

/// The result of a scan, pushed to the stream that waits on the scene (and kept in the
/// store, as JSON, for a stream that reconnects).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginResult {
    /// Who scanned.
    pub openid: OpenId,
    /// Follower (`SCAN`), new follower (`subscribe`), or a login code (`code`).
    pub kind: LoginKind,
    /// The signed proof of this login for the site's backend (absent only if signing
    /// failed, which is logged).
    pub login_token: Option<String>,
    /// The user's unionid, when `USER_INFO` is on and WeChat gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unionid: Option<UnionId>,
    /// When the callback was resolved (for the scan-to-push latency). Not sent between
    /// instances (their clocks differ): a result from another instance counts from arrival.
    #[serde(skip, default = "std::time::Instant::now")]
    pub resolved_at: std::time::Instant,
}

/// The JSON of a [`LoginResult`]:
/// `{"userId": openid, "event": "SCAN" | "subscribe", "login_token": "…"}`, and
/// `"unionId"` when there is one.
#[derive(Debug, Serialize)]
pub struct LoginEvent<'a> {
    /// The openid.
    #[serde(rename = "userId")]
    pub user_id: &'a str,
    /// `SCAN`, `subscribe` or `code`.
    pub event: &'static str,
    /// The signed login token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login_token: Option<&'a str>,
    /// The user's unionid (`USER_INFO`), when WeChat gave one.
    #[serde(rename = "unionId", skip_serializing_if = "Option::is_none")]
    pub union_id: Option<&'a str>,
    /// The Official Account the visitor logged in with (its name), when told.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<&'a str>,
}

impl<'a> From<&'a LoginResult> for LoginEvent<'a> {
    fn from(r: &'a LoginResult) -> Self {
        Self {
            user_id: r.openid.as_str(),
            event: r.kind.as_str(),
            login_token: r.login_token.as_deref(),
            union_id: r.unionid.as_ref().map(UnionId::as_str),
            account: None,
        }
    }
}

impl<'a> LoginEvent<'a> {
    /// The same, naming the account the visitor logged in with.
    #[must_use]
    pub fn with_account(self, account: &'a str) -> Self {
        Self {
            account: Some(account),
            ..self
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

    /// The timeout event of a stream that showed a login code and no QR code.
    pub fn code_only(lang: Lang) -> Self {
        Self {
            event: "timeout",
            message: match lang {
                Lang::Zh => "验证码已过期，请刷新后重试",
                Lang::En => "The login code has expired. Refresh to get a new one.",
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::login::policy::new_scene;

    #[test]
    fn event_ids_carry_the_scene_and_the_key_and_parse_back() {
        let scene = new_scene();
        let key = StreamKey::random();
        assert_ne!(key, StreamKey::random());
        let first = EventId::format(&scene, &key, false);
        let parsed = EventId::parse(&first).unwrap();
        assert_eq!(
            (&parsed.scene, &parsed.key, parsed.seen_last),
            (&scene, &key, false)
        );
        assert!(
            EventId::parse(&EventId::format(&scene, &key, true))
                .unwrap()
                .seen_last
        );
        // The scene alone, the old `<scene>.0`, a short key or another sequence: not ids.
        for bad in [
            scene.to_string(),
            format!("{scene}.0"),
            format!("{scene}.{}.0", &key.expose()[1..]),
            format!("{scene}.{}.2", key.expose()),
            format!("{scene}.{}!.0", &key.expose()[1..]),
        ] {
            assert_eq!(EventId::parse(&bad), None, "{bad}");
        }
        assert_eq!(key.digest().len(), 32);
        assert!(!format!("{key:?}").contains(key.expose()));
    }

    #[test]
    fn the_login_event_has_the_fastapi_shape() {
        let r = LoginResult {
            openid: OpenId::new("oAbc"),
            kind: ScanKind::Subscribe.into(),
            login_token: Some("a.b.c".into()),
            unionid: None,
            resolved_at: std::time::Instant::now(),
        };
        let json = serde_json::to_value(LoginEvent::from(&r)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"userId": "oAbc", "event": "subscribe", "login_token": "a.b.c"})
        );
        let with_unionid = LoginResult {
            unionid: UnionId::parse("uAbc").ok(),
            ..r
        };
        let json = serde_json::to_value(LoginEvent::from(&with_unionid)).unwrap();
        assert_eq!(json["unionId"], "uAbc");
        // Kept in the store as JSON, and read back with it.
        let stored = serde_json::to_string(&with_unionid).unwrap();
        let back: LoginResult = serde_json::from_str(&stored).unwrap();
        assert_eq!(back.unionid, with_unionid.unionid);
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
