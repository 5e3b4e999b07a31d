//! Login inside WeChat's browser: WeChat's web authorization (网页授权, `snsapi_base`) names
//! the visitor's openid silently, with no QR code and no login code.
//!
//! Three steps, each single use and short-lived, each kept in the store (any instance may
//! serve any step):
//! 1. [`OauthFlow::begin`]: a `state` for WeChat and a key for the browser (its cookie), kept
//!    together with where the browser returns (`return_to`, on an allowed origin);
//! 2. [`OauthFlow::finish`]: WeChat returns with `code` and `state`; the state is taken with
//!    the browser's key (another browser's, or a second use, finds nothing), the code is
//!    claimed once, then exchanged for the openid; the result is kept under a fresh handle,
//!    which goes back to `return_to` in the URL fragment (never sent to a server);
//! 3. [`OauthFlow::redeem`]: the page trades the handle, once, from `return_to`'s origin, for
//!    the login (`{userId, event: "oauth", login_token}`).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::auth::login_token::LoginTokens;
use crate::auth::random_id;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use crate::wechat::api::{WechatApi, authorize_url};
use crate::wechat::error::{ApiError, errcode};
use crate::wechat::ids::UnionId;

/// How long a browser may take from leaving for WeChat to coming back: WeChat's code lives 5
/// minutes, and `snsapi_base` asks the visitor nothing.
pub const STATE_TTL: Duration = Duration::from_secs(300);
/// How long a code is remembered as used: its life at WeChat.
const CODE_TTL: Duration = Duration::from_secs(300);
/// How long the page has to trade its handle, once it is back.
pub const RESULT_TTL: Duration = Duration::from_secs(60);
/// The longest `return_to` accepted.
const MAX_RETURN_TO: usize = 2048;
/// The `scene` claim of a login token from a web authorization: there is no QR code.
const SCENE: &str = "oauth";
/// The event name the page receives (and the login token's `event`).
pub const EVENT: &str = "oauth";

/// Why a step of the web authorization was refused.
#[derive(Debug, thiserror::Error)]
pub enum OauthError {
    /// `return_to` is not an http(s) URL on an allowed origin, or has a fragment.
    #[error(
        "return_to must be an http(s) URL without a fragment on an origin of OAUTH_RETURN_ORIGINS"
    )]
    ReturnTo,
    /// No login waits on this state for this browser: unknown, used, expired, or started in
    /// another browser.
    #[error("unknown, expired or used state, or a login started in another browser")]
    State,
    /// The code was used before (here, or at WeChat: errcode 40163).
    #[error("the code has been used already")]
    CodeUsed,
    /// WeChat does not know the code (errcode 40029): wrong, or past its 5 minutes.
    #[error("the code is invalid or expired")]
    CodeInvalid,
    /// No result waits under this handle: unknown, taken, or expired.
    #[error("unknown, expired or used result handle")]
    Handle,
    /// The handle was presented by a page of another origin than the login's.
    #[error("the result belongs to another origin")]
    Origin,
    /// WeChat refused or failed the exchange otherwise (logged).
    #[error("WeChat cannot exchange the code now")]
    Wechat(#[source] ApiError),
    /// The store cannot answer.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What leaving for WeChat needs.
#[derive(Debug)]
pub struct Started {
    /// WeChat's authorize page, to redirect the browser to.
    pub authorize_url: String,
    /// The `state` sent to WeChat (32 hex digits: WeChat takes `a-zA-Z0-9` only).
    pub state: String,
    /// The browser's key: it goes into the browser's cookie, never into a URL.
    pub browser_key: String,
}

/// Where the browser goes once WeChat returned it.
#[derive(Debug, PartialEq, Eq)]
pub enum Finished {
    /// Logged in: `return_to` with the handle in its fragment.
    LoggedIn(String),
    /// The visitor declined (no `code`): `return_to` with the refusal in its fragment.
    Declined(String),
}

/// A login through the web authorization, as the page receives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OauthLogin {
    /// The openid.
    #[serde(rename = "userId")]
    pub user_id: String,
    /// Always `oauth`.
    pub event: String,
    /// The signed proof of this login for the site's backend (absent only if signing failed,
    /// which is logged).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login_token: Option<String>,
    /// The unionid, when WeChat gave one.
    #[serde(rename = "unionId", skip_serializing_if = "Option::is_none")]
    pub union_id: Option<String>,
}

/// What the store keeps under a state.
#[derive(Serialize, Deserialize)]
struct Pending {
    return_to: String,
    audience: Option<String>,
}

/// What the store keeps under a handle.
#[derive(Serialize, Deserialize)]
struct Kept {
    login: OauthLogin,
    /// The origin of `return_to`: only its pages may trade the handle.
    origin: String,
}

/// The web authorization of the account. Cheap to clone.
#[derive(Clone)]
pub struct OauthFlow {
    inner: Arc<Inner>,
}

struct Inner {
    api: WechatApi,
    store: Arc<dyn Store>,
    tokens: Arc<LoginTokens>,
    /// `WECHAT_OPEN_BASE`.
    open_base: String,
    /// `PUBLIC_URL` + `/oauth/callback` (and the account).
    redirect_uri: String,
    /// `OAUTH_RETURN_ORIGINS`.
    return_origins: Vec<String>,
    metrics: Arc<Metrics>,
}

/// The settings of [`OauthFlow`].
pub struct OauthSettings {
    /// `WECHAT_OPEN_BASE`.
    pub open_base: String,
    /// Where WeChat returns the browser: `PUBLIC_URL` + `/oauth/callback` (and the account).
    pub redirect_uri: String,
    /// `OAUTH_RETURN_ORIGINS`.
    pub return_origins: Vec<String>,
}

/// 128 bits of a value's SHA-256, hex: what the store keys on, so that a copy of the store
/// gives away no state, key, code or handle.
fn digest(parts: &[&str]) -> String {
    let mut hash = sha2::Sha256::new();
    for part in parts {
        hash.update(part.as_bytes());
        hash.update(b"\n");
    }
    hex::encode(&hash.finalize()[..16])
}

/// A fresh state: 128 random bits in hex.
fn new_state() -> String {
    use rand::RngCore as _;
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

impl OauthFlow {
    /// The flow of the account `api` speaks for.
    pub fn new(
        api: WechatApi,
        store: Arc<dyn Store>,
        tokens: Arc<LoginTokens>,
        settings: OauthSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                api,
                store,
                tokens,
                open_base: settings.open_base,
                redirect_uri: settings.redirect_uri,
                return_origins: settings.return_origins,
                metrics,
            }),
        }
    }

    /// Whether the browser's cookie must be `Secure`: `PUBLIC_URL` is https.
    pub fn secure_cookie(&self) -> bool {
        self.inner.redirect_uri.starts_with("https://")
    }

    /// The origin of `return_to` if the browser may be returned there: an http(s) URL on an
    /// origin of `OAUTH_RETURN_ORIGINS`, without credentials or a fragment (the handle goes
    /// there).
    pub fn return_origin(&self, return_to: &str) -> Result<String, OauthError> {
        let url = (return_to.len() <= MAX_RETURN_TO)
            .then(|| url::Url::parse(return_to).ok())
            .flatten()
            .ok_or(OauthError::ReturnTo)?;
        let origin = url.origin().ascii_serialization();
        let allowed = matches!(url.scheme(), "http" | "https")
            && url.username().is_empty()
            && url.password().is_none()
            && url.fragment().is_none()
            && self.inner.return_origins.contains(&origin);
        allowed.then_some(origin).ok_or(OauthError::ReturnTo)
    }

    /// Step 1: a state bound to a new browser key, kept with `return_to` (checked here) and
    /// `audience` (who the login token will be for).
    pub async fn begin(
        &self,
        return_to: &str,
        audience: Option<&str>,
    ) -> Result<Started, OauthError> {
        self.return_origin(return_to)?;
        let state = new_state();
        let browser_key = random_id();
        let pending = Pending {
            return_to: return_to.to_owned(),
            audience: audience.map(str::to_owned),
        };
        let value = serde_json::to_string(&pending).map_err(|source| StoreError::Encode {
            what: "web authorization state",
            source,
        })?;
        let key = format!("oauth_state:{}", digest(&[&state, &browser_key]));
        // 128 random bits: a clash is not going to happen, and would only fail this login.
        if !self.inner.store.once_put(&key, &value, STATE_TTL).await? {
            return Err(OauthError::State);
        }
        let authorize_url = authorize_url(
            &self.inner.open_base,
            self.inner.api.appid(),
            &self.inner.redirect_uri,
            &state,
        );
        Ok(Started {
            authorize_url,
            state,
            browser_key,
        })
    }

    /// Step 2: WeChat returned the browser with `state` and, unless the visitor declined,
    /// `code`; `browser_key` is the browser's cookie.
    pub async fn finish(
        &self,
        state: &str,
        browser_key: &str,
        code: Option<&str>,
    ) -> Result<Finished, OauthError> {
        let key = format!("oauth_state:{}", digest(&[state, browser_key]));
        let stored = self
            .inner
            .store
            .once_take(&key)
            .await?
            .ok_or(OauthError::State)?;
        let pending: Pending = serde_json::from_str(&stored).map_err(|_| StoreError::Corrupt {
            what: "web authorization state",
        })?;
        let Some(code) = code else {
            self.inner.metrics.scan("oauth_declined");
            return Ok(Finished::Declined(format!(
                "{}#wxlogin_oauth_error=declined",
                pending.return_to
            )));
        };
        let origin = self.return_origin(&pending.return_to)?;
        // Refused here before WeChat is asked: a code seen once is never exchanged again,
        // whatever WeChat would say.
        let first = self
            .inner
            .store
            .claim_once(&format!("oauth_code:{}", digest(&[code])), CODE_TTL)
            .await?;
        if !first {
            return Err(OauthError::CodeUsed);
        }
        let identity =
            self.inner
                .api
                .oauth_access_token(code)
                .await
                .map_err(|e| match e.errcode() {
                    Some(errcode::CODE_USED) => OauthError::CodeUsed,
                    Some(errcode::INVALID_CODE) => OauthError::CodeInvalid,
                    _ => {
                        tracing::warn!(error = %e, "WeChat's code exchange failed");
                        OauthError::Wechat(e)
                    }
                })?;
        let openid = identity.openid.as_str();
        let union_id = identity.unionid.as_ref().map(UnionId::as_str);
        let login_token = self
            .inner
            .tokens
            .issue_with_unionid(openid, SCENE, EVENT, pending.audience.as_deref(), union_id)
            .map_err(|e| tracing::error!(error = %e, "cannot sign a login token"))
            .ok();
        let kept = Kept {
            login: OauthLogin {
                user_id: openid.to_owned(),
                event: EVENT.to_owned(),
                login_token,
                union_id: union_id.map(str::to_owned),
            },
            origin,
        };
        let value = serde_json::to_string(&kept).map_err(|source| StoreError::Encode {
            what: "web authorization result",
            source,
        })?;
        let handle = random_id();
        let key = format!("oauth_result:{}", digest(&[&handle]));
        if !self.inner.store.once_put(&key, &value, RESULT_TTL).await? {
            return Err(OauthError::Handle);
        }
        self.inner.metrics.scan("oauth");
        tracing::info!(openid = %identity.openid.short(), "logged in inside WeChat");
        Ok(Finished::LoggedIn(format!(
            "{}#wxlogin_oauth={handle}",
            pending.return_to
        )))
    }

    /// Step 3: the login kept under `handle`, once, for a page of `origin` (the request's).
    pub async fn redeem(
        &self,
        handle: &str,
        origin: Option<&str>,
    ) -> Result<OauthLogin, OauthError> {
        let key = format!("oauth_result:{}", digest(&[handle]));
        let stored = self
            .inner
            .store
            .once_take(&key)
            .await?
            .ok_or(OauthError::Handle)?;
        let kept: Kept = serde_json::from_str(&stored).map_err(|_| StoreError::Corrupt {
            what: "web authorization result",
        })?;
        if origin != Some(kept.origin.as_str()) {
            return Err(OauthError::Origin);
        }
        Ok(kept.login)
    }
}
