//! The WeChat API client: `stable_token`, `qrcode/create`, `user/info` and the web
//! authorization's code exchange (`sns/oauth2/access_token`), with timeouts and retries of
//! WeChat's "busy" answer.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::header::HeaderValue;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, RequestError, errcode};
use super::http::HttpClient;
use super::ids::{OpenId, Scene, Ticket, UnionId};
use super::secret::Secret;

/// The address of the real WeChat API.
pub const DEFAULT_BASE: &str = "https://api.weixin.qq.com";

/// The `User-Agent` sent unless [`WechatApi::with_user_agent`] names the application.
pub const DEFAULT_USER_AGENT: &str = concat!("wxlogin-wechat/", env!("CARGO_PKG_VERSION"));

/// Attempts for a call that WeChat answers with -1 (busy), and the first pause between them.
const BUSY_ATTEMPTS: u32 = 3;
const BUSY_FIRST_PAUSE: Duration = Duration::from_millis(100);

/// The most of a reply that is read: WeChat's answers to these calls are a few hundred bytes,
/// so anything longer is not WeChat speaking, and is not buffered.
pub const MAX_REPLY_BYTES: usize = 64 * 1024;

/// The range an access token's reported life is brought into, in seconds. WeChat says 7200;
/// the floor bounds how often a token is fetched (the cache stops using a token at half its
/// life when it is short: at most one fetch every 30 s), the ceiling keeps a token from being
/// trusted longer than WeChat ever lets one live.
pub const TOKEN_LIFE_MIN: u64 = 60;
/// See [`TOKEN_LIFE_MIN`].
pub const TOKEN_LIFE_MAX: u64 = 7200;

/// An access token and how long WeChat says it lives.
#[derive(Clone, Debug)]
pub struct AccessToken {
    /// The token; never logged.
    pub value: Secret,
    /// Seconds of life left, as WeChat reported, within [`TOKEN_LIFE_MIN`, `TOKEN_LIFE_MAX`].
    pub expires_in: u64,
}

/// A temporary QR code, as `qrcode/create` returned it.
#[derive(Clone, Debug)]
pub struct QrTicket {
    /// The ticket, for `showqrcode`.
    pub ticket: Ticket,
    /// The content of the code: render this to show the QR without hotlinking WeChat.
    pub url: String,
    /// Its life in seconds: as WeChat reported, but never more than was asked for.
    pub expire_seconds: u32,
}

/// What `user/info` says of a user that wxlogin uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserInfo {
    /// Whether the user follows the account.
    pub subscribed: bool,
    /// The user's id across the apps of the account's Open Platform account: present only
    /// when the account is bound to one. (WeChat no longer gives nicknames or avatars here.)
    pub unionid: Option<UnionId>,
}

/// Told of every call's result: the API's name and `Ok` or the error (for metrics).
pub type Observer = Arc<dyn Fn(&'static str, Result<(), &ApiError>) + Send + Sync>;

/// A client of the WeChat API for one Official Account. Cheap to clone.
#[derive(Clone)]
pub struct WechatApi {
    http: HttpClient,
    base: String,
    appid: String,
    secret: Secret,
    observer: Option<Observer>,
    /// Whether an out-of-range number from WeChat was logged already (once is enough).
    warned: Arc<Warned>,
}

#[derive(Default)]
struct Warned {
    token_life: AtomicBool,
    qr_life: AtomicBool,
}

impl Warned {
    /// `true` the first time for `flag`.
    fn first(flag: &AtomicBool) -> bool {
        !flag.swap(true, Ordering::Relaxed)
    }
}

impl std::fmt::Debug for WechatApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WechatApi")
            .field("base", &self.base)
            .field("appid", &self.appid)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct StableTokenRequest<'a> {
    grant_type: &'static str,
    appid: &'a str,
    secret: &'a str,
    force_refresh: bool,
}

#[derive(Deserialize)]
struct TokenReply {
    access_token: String,
    /// Any JSON number: WeChat's word is checked, not trusted to fit a type.
    expires_in: serde_json::Number,
}

#[derive(Deserialize)]
struct UserInfoReply {
    #[serde(default)]
    subscribe: i64,
    #[serde(default)]
    unionid: Option<String>,
}

#[derive(Serialize)]
struct QrRequest<'a> {
    expire_seconds: u32,
    action_name: &'static str,
    action_info: ActionInfo<'a>,
}

#[derive(Serialize)]
struct ActionInfo<'a> {
    scene: SceneStr<'a>,
}

#[derive(Serialize)]
struct SceneStr<'a> {
    scene_str: &'a str,
}

#[derive(Debug, Deserialize)]
struct QrReply {
    ticket: String,
    expire_seconds: serde_json::Number,
    url: String,
}

/// What `sns/oauth2/access_token` answers; only who the visitor is is read (the web access
/// token in the reply is not, so it cannot be printed).
#[derive(Debug, Deserialize)]
struct OauthReply {
    openid: String,
    #[serde(default)]
    unionid: Option<String>,
}

/// Who a web authorization named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OauthIdentity {
    /// The visitor's openid for this account: the same one a scan of its QR code gives.
    pub openid: OpenId,
    /// The visitor's unionid, when the account is bound to a WeChat Open Platform account (an
    /// empty or odd one is read as none).
    pub unionid: Option<UnionId>,
}

/// The address of WeChat's web authorization page (网页授权).
pub const DEFAULT_OPEN_BASE: &str = "https://open.weixin.qq.com";

/// The page WeChat shows (inside WeChat) to authorize `appid` silently (`snsapi_base`), which
/// then returns the browser to `redirect_uri?code=CODE&state=STATE`. `state` is given back as
/// it is: WeChat allows `a-zA-Z0-9`, at most 128 characters.
pub fn authorize_url(open_base: &str, appid: &str, redirect_uri: &str, state: &str) -> String {
    format!(
        "{}/connect/oauth2/authorize?appid={}&redirect_uri={}&response_type=code&scope=snsapi_base&state={}#wechat_redirect",
        open_base.trim_end_matches('/'),
        url_component(appid),
        url_component(redirect_uri),
        url_component(state),
    )
}

/// A number of seconds as WeChat sent it, saturated into an `i64` (fractions cut off).
fn seconds(n: &serde_json::Number) -> i64 {
    n.as_i64()
        .or_else(|| n.as_u64().map(|_| i64::MAX))
        // `as` saturates, and NaN becomes 0.
        .or_else(|| n.as_f64().map(|f| f as i64))
        .unwrap_or_default()
}

/// A token's reported life brought into [`TOKEN_LIFE_MIN`]..=[`TOKEN_LIFE_MAX`].
fn token_life(reported: i64) -> u64 {
    let (min, max) = (TOKEN_LIFE_MIN, TOKEN_LIFE_MAX);
    u64::try_from(reported).map_or(min, |s| s.clamp(min, max))
}

/// Every WeChat reply may carry these; a success has none or errcode 0.
#[derive(Deserialize)]
struct ErrorReply {
    errcode: Option<i64>,
    errmsg: Option<String>,
}

impl WechatApi {
    /// A client for the account `appid` at `base` (normally [`DEFAULT_BASE`]).
    /// `timeout` bounds every call.
    pub fn new(
        base: &str,
        appid: impl Into<String>,
        secret: Secret,
        timeout: Duration,
    ) -> Result<Self, ApiError> {
        let user_agent = HeaderValue::from_static(DEFAULT_USER_AGENT);
        let http = HttpClient::new(timeout, user_agent).map_err(ApiError::Request)?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            appid: appid.into(),
            secret,
            observer: None,
            warned: Arc::default(),
        })
    }

    /// Sends `user_agent` (visible ASCII) as the `User-Agent` of every call.
    pub fn with_user_agent(mut self, user_agent: &str) -> Result<Self, ApiError> {
        let value = HeaderValue::from_str(user_agent)
            .map_err(|e| ApiError::Request(RequestError::Build(Box::new(e))))?;
        self.http.set_user_agent(value);
        Ok(self)
    }

    /// Calls `observer` after every request with its outcome.
    pub fn with_observer(mut self, observer: Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The account's appid.
    pub fn appid(&self) -> &str {
        &self.appid
    }

    /// `POST /cgi-bin/stable_token`. Unlike `/cgi-bin/token` it does not invalidate a token
    /// that other programs of the same account hold. `force_refresh` is rationed by WeChat.
    pub async fn stable_token(&self, force_refresh: bool) -> Result<AccessToken, ApiError> {
        let url = format!("{}/cgi-bin/stable_token", self.base);
        let body = StableTokenRequest {
            grant_type: "client_credential",
            appid: &self.appid,
            secret: self.secret.expose(),
            force_refresh,
        };
        let reply: TokenReply = self.post_with_retry("stable_token", &url, &body).await?;
        let reported = seconds(&reply.expires_in);
        let expires_in = token_life(reported);
        if i64::try_from(expires_in) != Ok(reported) && Warned::first(&self.warned.token_life) {
            tracing::warn!(
                reported,
                used = expires_in,
                "WeChat reported an access token life out of range; using the nearest sane one"
            );
        }
        Ok(AccessToken {
            value: Secret::new(reply.access_token),
            expires_in,
        })
    }

    /// `POST /cgi-bin/qrcode/create`: a temporary `QR_STR_SCENE` code for `scene`.
    pub async fn create_qr(
        &self,
        token: &AccessToken,
        scene: &Scene,
        expire_seconds: u32,
    ) -> Result<QrTicket, ApiError> {
        let url = format!(
            "{}/cgi-bin/qrcode/create?access_token={}",
            self.base,
            token.value.expose()
        );
        let body = QrRequest {
            expire_seconds,
            action_name: "QR_STR_SCENE",
            action_info: ActionInfo {
                scene: SceneStr {
                    scene_str: scene.as_str(),
                },
            },
        };
        let reply: QrReply = self.post_with_retry("qrcode_create", &url, &body).await?;
        let reported = seconds(&reply.expire_seconds);
        // A code lives no longer than asked for, whatever the reply says; one that is said to
        // be dead already is of no use.
        let life = reported.min(i64::from(expire_seconds));
        if reported != i64::from(expire_seconds) && Warned::first(&self.warned.qr_life) {
            tracing::warn!(
                reported,
                requested = expire_seconds,
                "WeChat reported a QR code life other than the one asked for"
            );
        }
        let Some(life) = u32::try_from(life).ok().filter(|l| *l > 0) else {
            return Err(ApiError::ShortLived {
                expire_seconds: reported,
            });
        };
        Ok(QrTicket {
            ticket: Ticket::new(reply.ticket),
            url: reply.url,
            expire_seconds: life,
        })
    }

    /// `GET /sns/oauth2/access_token`: the openid (and unionid) behind a web authorization
    /// `code` (网页授权), which WeChat accepts once and for 5 minutes: errcode 40029 for a code
    /// it does not know, 40163 for one exchanged before. The web access token in the reply is
    /// not kept: `snsapi_base` asks for nothing more than who the visitor is.
    pub async fn oauth_access_token(&self, code: &str) -> Result<OauthIdentity, ApiError> {
        let url = format!(
            "{}/sns/oauth2/access_token?appid={}&secret={}&code={}&grant_type=authorization_code",
            self.base,
            url_component(&self.appid),
            url_component(self.secret.expose()),
            url_component(code),
        );
        let reply: OauthReply = self.get_with_retry("oauth_access_token", &url).await?;
        Ok(OauthIdentity {
            openid: OpenId::new(reply.openid),
            unionid: reply
                .unionid
                .as_deref()
                .and_then(|u| UnionId::parse(u).ok()),
        })
    }

    /// `GET /cgi-bin/user/info`: what WeChat says of the follower `openid` (for wxlogin, its
    /// `unionid`). An empty or odd `unionid` is read as none.
    pub async fn user_info(
        &self,
        token: &AccessToken,
        openid: &OpenId,
    ) -> Result<UserInfo, ApiError> {
        let url = format!(
            "{}/cgi-bin/user/info?access_token={}&openid={}&lang=zh_CN",
            self.base,
            token.value.expose(),
            // An openid is URL-safe base64 (checked when parsed); encoded anyway.
            url_component(openid.as_str()),
        );
        let reply: UserInfoReply = self.get_with_retry("user_info", &url).await?;
        Ok(UserInfo {
            subscribed: reply.subscribe == 1,
            unionid: reply
                .unionid
                .as_deref()
                .and_then(|u| UnionId::parse(u).ok()),
        })
    }

    async fn get_with_retry<T: DeserializeOwned>(
        &self,
        api: &'static str,
        url: &str,
    ) -> Result<T, ApiError> {
        self.with_retry(api, || self.get_once(url)).await
    }

    async fn post_with_retry<B: Serialize, T: DeserializeOwned>(
        &self,
        api: &'static str,
        url: &str,
        body: &B,
    ) -> Result<T, ApiError> {
        self.with_retry(api, || self.post_once(url, body)).await
    }

    /// Calls `call` until WeChat is not busy (a few times, with growing pauses), telling the
    /// observer of each outcome as `api`.
    async fn with_retry<T, F, Fut>(&self, api: &'static str, call: F) -> Result<T, ApiError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let mut pause = BUSY_FIRST_PAUSE;
        let mut attempt = 1;
        loop {
            let result = call().await;
            if let Some(observer) = &self.observer {
                observer(api, result.as_ref().map(|_| ()));
            }
            match result {
                Err(e) if e.errcode() == Some(errcode::BUSY) && attempt < BUSY_ATTEMPTS => {
                    tracing::debug!(attempt, "WeChat is busy; retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 3;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn get_once<T: DeserializeOwned>(&self, url: &str) -> Result<T, ApiError> {
        let bytes = self
            .http
            .get_json(url, MAX_REPLY_BYTES)
            .await
            .map_err(ApiError::Request)?
            .ok_or(ApiError::TooLarge {
                limit: MAX_REPLY_BYTES,
            })?;
        parse_reply(&bytes)
    }

    async fn post_once<B: Serialize, T: DeserializeOwned>(
        &self,
        url: &str,
        body: &B,
    ) -> Result<T, ApiError> {
        let json = serde_json::to_vec(body)
            .map_err(|e| ApiError::Request(RequestError::Build(Box::new(e))))?;
        let bytes = self
            .http
            .post_json(url, json, MAX_REPLY_BYTES)
            .await
            .map_err(ApiError::Request)?
            .ok_or(ApiError::TooLarge {
                limit: MAX_REPLY_BYTES,
            })?;
        parse_reply(&bytes)
    }
}

/// `s` percent-encoded for a query (every byte but the unreserved ones).
fn url_component(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Reads a WeChat reply: an error object, or the expected value.
fn parse_reply<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let parse_error = |source| {
        let text = String::from_utf8_lossy(bytes);
        // An odd-shaped token reply must not put the token into the logs.
        let body = if text.contains("access_token") {
            "(withheld: it holds an access token)".to_owned()
        } else {
            text.chars().take(120).collect()
        };
        ApiError::Parse { source, body }
    };
    let err: ErrorReply = serde_json::from_slice(bytes).map_err(parse_error)?;
    if let Some(code) = err.errcode.filter(|c| *c != 0) {
        return Err(ApiError::Wechat {
            errcode: code,
            errmsg: err.errmsg.unwrap_or_default(),
        });
    }
    serde_json::from_slice(bytes).map_err(parse_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_errcode_reply_is_a_wechat_error() {
        let e = parse_reply::<QrReply>(br#"{"errcode":45009,"errmsg":"api freq out of limit"}"#)
            .unwrap_err();
        assert_eq!(e.errcode(), Some(45009));
        assert_eq!(e.kind(), super::super::error::ErrorKind::Quota);
    }

    #[test]
    fn errcode_zero_with_the_fields_is_a_success() {
        let r: QrReply =
            parse_reply(br#"{"errcode":0,"ticket":"t","expire_seconds":60,"url":"u"}"#).unwrap();
        assert_eq!(r.ticket, "t");
    }

    #[test]
    fn an_unreadable_token_reply_does_not_leak_the_token() {
        let Err(e) = parse_reply::<TokenReply>(br#"{"access_token":"SECRET123","expires_in":"x"}"#)
        else {
            panic!("parsed")
        };
        assert!(!e.to_string().contains("SECRET123"));
    }

    #[test]
    fn a_token_life_out_of_range_is_brought_into_range() {
        let life = |json: &str| {
            let r: TokenReply = serde_json::from_str(json).unwrap();
            token_life(seconds(&r.expires_in))
        };
        assert_eq!(life(r#"{"access_token":"t","expires_in":7200}"#), 7200);
        assert_eq!(
            life(r#"{"access_token":"t","expires_in":0}"#),
            TOKEN_LIFE_MIN
        );
        assert_eq!(
            life(r#"{"access_token":"t","expires_in":-7200}"#),
            TOKEN_LIFE_MIN
        );
        assert_eq!(
            life(r#"{"access_token":"t","expires_in":4611686018427387904}"#),
            TOKEN_LIFE_MAX
        );
        assert_eq!(
            life(r#"{"access_token":"t","expires_in":18446744073709551615}"#),
            TOKEN_LIFE_MAX
        );
        assert_eq!(
            life(r#"{"access_token":"t","expires_in":1e300}"#),
            TOKEN_LIFE_MAX
        );
        assert_eq!(life(r#"{"access_token":"t","expires_in":3600.5}"#), 3600);
    }

    #[test]
    fn the_authorize_url_encodes_the_redirect_and_ends_with_wechat_redirect() {
        let url = authorize_url(
            "https://open.weixin.qq.com/",
            "wx1",
            "https://login.example.com/oauth/callback",
            "abc123",
        );
        assert_eq!(
            url,
            "https://open.weixin.qq.com/connect/oauth2/authorize?appid=wx1&redirect_uri=https%3A%2F%2Flogin.example.com%2Foauth%2Fcallback&response_type=code&scope=snsapi_base&state=abc123#wechat_redirect"
        );
    }

    #[test]
    fn an_oauth_reply_gives_the_openid_and_a_unionid_when_there_is_one() {
        let r: OauthReply = parse_reply(
            br#"{"access_token":"T","expires_in":7200,"refresh_token":"R","openid":"oX","scope":"snsapi_base","unionid":"uY"}"#,
        )
        .unwrap();
        assert_eq!(
            (r.openid.as_str(), r.unionid.as_deref()),
            ("oX", Some("uY"))
        );
        let e = parse_reply::<OauthReply>(br#"{"errcode":40163,"errmsg":"code been used"}"#)
            .unwrap_err();
        assert_eq!(e.errcode(), Some(errcode::CODE_USED));
    }

    #[test]
    fn an_unreadable_reply_keeps_the_start_of_the_body() {
        let e = parse_reply::<QrReply>(b"<html>gateway error</html>").unwrap_err();
        assert!(matches!(e, ApiError::Parse { ref body, .. } if body.starts_with("<html>")));
    }
}
