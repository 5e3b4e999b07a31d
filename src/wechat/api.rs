//! The WeChat API client: `stable_token` and `qrcode/create`, with timeouts and retries of
//! WeChat's "busy" answer.

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, errcode};
use super::ids::{Scene, Ticket};
use super::secret::Secret;

/// The address of the real WeChat API.
pub const DEFAULT_BASE: &str = "https://api.weixin.qq.com";

/// Attempts for a call that WeChat answers with -1 (busy), and the first pause between them.
const BUSY_ATTEMPTS: u32 = 3;
const BUSY_FIRST_PAUSE: Duration = Duration::from_millis(100);

/// An access token and how long WeChat says it lives.
#[derive(Clone, Debug)]
pub struct AccessToken {
    /// The token; never logged.
    pub value: Secret,
    /// Seconds of life left, as WeChat reported.
    pub expires_in: u64,
}

/// A temporary QR code, as `qrcode/create` returned it.
#[derive(Clone, Debug)]
pub struct QrTicket {
    /// The ticket, for `showqrcode`.
    pub ticket: Ticket,
    /// The content of the code: render this to show the QR without hotlinking WeChat.
    pub url: String,
    /// Its life in seconds.
    pub expire_seconds: u32,
}

/// Told of every call's result: the API's name and `Ok` or the error (for metrics).
pub type Observer = Arc<dyn Fn(&'static str, Result<(), &ApiError>) + Send + Sync>;

/// A client of the WeChat API for one Official Account. Cheap to clone.
#[derive(Clone)]
pub struct WechatApi {
    http: reqwest::Client,
    base: String,
    appid: String,
    secret: Secret,
    observer: Option<Observer>,
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
    expires_in: u64,
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
    expire_seconds: u32,
    url: String,
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
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(3)))
            .pool_idle_timeout(Duration::from_secs(50))
            .user_agent(concat!("wxlogin/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(ApiError::Request)?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            appid: appid.into(),
            secret,
            observer: None,
        })
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
        Ok(AccessToken {
            value: Secret::new(reply.access_token),
            expires_in: reply.expires_in,
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
        Ok(QrTicket {
            ticket: Ticket::new(reply.ticket),
            url: reply.url,
            expire_seconds: reply.expire_seconds,
        })
    }

    async fn post_with_retry<B: Serialize, T: DeserializeOwned>(
        &self,
        api: &'static str,
        url: &str,
        body: &B,
    ) -> Result<T, ApiError> {
        let mut pause = BUSY_FIRST_PAUSE;
        let mut attempt = 1;
        loop {
            let result = self.post_once(url, body).await;
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

    async fn post_once<B: Serialize, T: DeserializeOwned>(
        &self,
        url: &str,
        body: &B,
    ) -> Result<T, ApiError> {
        let response = self
            .http
            .post(url)
            .json(body)
            .send()
            .await
            .map_err(|e| ApiError::Request(e.without_url()))?
            .error_for_status()
            .map_err(|e| ApiError::Request(e.without_url()))?;
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ApiError::Request(e.without_url()))?;
        parse_reply(&bytes)
    }
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
    fn an_unreadable_reply_keeps_the_start_of_the_body() {
        let e = parse_reply::<QrReply>(b"<html>gateway error</html>").unwrap_err();
        assert!(matches!(e, ApiError::Parse { ref body, .. } if body.starts_with("<html>")));
    }
}
