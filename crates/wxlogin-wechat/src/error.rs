//! Errors of the WeChat API client, typed the way the protocol is: WeChat said no (with its
//! errcode), the request failed, or the reply did not parse.

pub use crate::http::RequestError;

/// errcodes the client acts on. See DESIGN.md, "WeChat facts".
pub mod errcode {
    /// System busy: retry with backoff.
    pub const BUSY: i64 = -1;
    /// Access token invalid or not the latest.
    pub const INVALID_CREDENTIAL: i64 = 40001;
    /// Access token malformed.
    pub const INVALID_ACCESS_TOKEN: i64 = 40014;
    /// Access token expired.
    pub const ACCESS_TOKEN_EXPIRED: i64 = 42001;
    /// Bad appid.
    pub const INVALID_APPID: i64 = 40013;
    /// Bad appsecret.
    pub const INVALID_SECRET: i64 = 40125;
    /// The caller's IP is not on the account's whitelist.
    pub const IP_NOT_WHITELISTED: i64 = 40164;
    /// Daily quota of this API reached.
    pub const DAILY_QUOTA: i64 = 45009;
    /// Per-minute quota reached.
    pub const MINUTE_QUOTA: i64 = 45011;
    /// The account may not use this API.
    pub const NO_PERMISSION: i64 = 48001;
    /// A web authorization code that WeChat does not know (wrong, or past its 5 minutes).
    pub const INVALID_CODE: i64 = 40029;
    /// A web authorization code exchanged before: a code is good for one exchange.
    pub const CODE_USED: i64 = 40163;
}

/// Why a WeChat API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// WeChat answered with a non-zero errcode.
    #[error("WeChat errcode {errcode}: {errmsg}")]
    Wechat {
        /// WeChat's errcode.
        errcode: i64,
        /// WeChat's errmsg.
        errmsg: String,
    },
    /// The request did not complete (connect, timeout, non-2xx transport status).
    #[error("request to WeChat failed: {0}")]
    Request(#[source] RequestError),
    /// WeChat answered something we could not read; `body` keeps (the start of) it.
    #[error("unreadable reply from WeChat: {source}; body starts {body:?}")]
    Parse {
        /// Why it did not parse.
        #[source]
        source: serde_json::Error,
        /// The first bytes of the body, for the log.
        body: String,
    },
    /// WeChat's reply is longer than any reply of the API can be; reading stopped at `limit`.
    #[error("WeChat's reply is larger than {limit} bytes")]
    TooLarge {
        /// The most a reply may be, in bytes.
        limit: usize,
    },
    /// WeChat made a QR code whose reported life is too short to hand out.
    #[error("WeChat made a QR code that lives {expire_seconds} s, too short to use")]
    ShortLived {
        /// The life WeChat reported, in seconds.
        expire_seconds: i64,
    },
    /// Forced refreshes are rationed (20 a day, 30 s apart) and none is left now.
    #[error("the access token was rejected and no forced refresh is allowed right now")]
    ForceRefreshRationed,
}

/// How an error should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The access token is bad: refresh and retry once.
    Token,
    /// WeChat is busy or unreachable: retry later.
    Transient,
    /// A quota is used up: back off for longer.
    Quota,
    /// The account or deployment is misconfigured (secret, whitelist, permission): an
    /// operator must act; retrying will not help.
    Config,
    /// Anything else.
    Other,
}

impl ApiError {
    /// WeChat's errcode, when WeChat gave one.
    pub fn errcode(&self) -> Option<i64> {
        match self {
            Self::Wechat { errcode, .. } => Some(*errcode),
            _ => None,
        }
    }

    /// What this error means for the caller.
    pub fn kind(&self) -> ErrorKind {
        use errcode::*;
        match self {
            Self::Wechat { errcode, .. } => match *errcode {
                INVALID_CREDENTIAL | INVALID_ACCESS_TOKEN | ACCESS_TOKEN_EXPIRED => {
                    ErrorKind::Token
                }
                BUSY => ErrorKind::Transient,
                DAILY_QUOTA | MINUTE_QUOTA => ErrorKind::Quota,
                INVALID_APPID | INVALID_SECRET | IP_NOT_WHITELISTED | NO_PERMISSION => {
                    ErrorKind::Config
                }
                _ => ErrorKind::Other,
            },
            Self::Request(_) | Self::Parse { .. } | Self::TooLarge { .. } => ErrorKind::Transient,
            Self::ShortLived { .. } => ErrorKind::Other,
            Self::ForceRefreshRationed => ErrorKind::Token,
        }
    }

    /// A sentence fit to be shown outside the log (a readiness probe): the errcode, but never
    /// WeChat's errmsg (it can name the server's egress IP) nor a transport error's text.
    pub fn summary(&self) -> String {
        match self {
            Self::Wechat { errcode, .. } => format!("WeChat refuses: errcode {errcode}"),
            Self::Request(e) if e.is_timeout() => "WeChat does not answer in time".to_owned(),
            Self::Request(_) => "cannot reach WeChat".to_owned(),
            Self::Parse { .. } => "WeChat's reply is unreadable".to_owned(),
            Self::TooLarge { .. } | Self::ShortLived { .. } | Self::ForceRefreshRationed => {
                self.to_string()
            }
        }
    }

    /// What an operator must change for WeChat to say yes, when the errcode says so.
    pub fn refusal(&self) -> Option<Refusal> {
        use errcode::*;
        match self.errcode()? {
            INVALID_APPID => Some(Refusal::InvalidAppId),
            INVALID_SECRET => Some(Refusal::WrongSecret),
            IP_NOT_WHITELISTED => Some(Refusal::IpNotWhitelisted),
            NO_PERMISSION => Some(Refusal::NoPermission),
            DAILY_QUOTA => Some(Refusal::DailyQuotaUsed),
            _ => None,
        }
    }
}

/// A refusal from WeChat that no retry soon will overcome: the account's settings, the
/// deployment, or the day's quota. The application words the advice in its own terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The appid is not a valid appid (errcode 40013).
    InvalidAppId,
    /// The appsecret does not belong to the appid (errcode 40125).
    WrongSecret,
    /// The caller's IP is not on the account's IP whitelist (errcode 40164).
    IpNotWhitelisted,
    /// The account may not use this API, e.g. QR codes need a verified service account
    /// (errcode 48001).
    NoPermission,
    /// The daily quota of this API is used up; it resets at midnight (errcode 45009).
    DailyQuotaUsed,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(errcode: i64) -> ApiError {
        ApiError::Wechat {
            errcode,
            errmsg: "errmsg".into(),
        }
    }

    #[test]
    fn configuration_errcodes_are_refusals() {
        let cases = [
            (errcode::INVALID_APPID, Some(Refusal::InvalidAppId)),
            (errcode::INVALID_SECRET, Some(Refusal::WrongSecret)),
            (errcode::IP_NOT_WHITELISTED, Some(Refusal::IpNotWhitelisted)),
            (errcode::NO_PERMISSION, Some(Refusal::NoPermission)),
            (errcode::DAILY_QUOTA, Some(Refusal::DailyQuotaUsed)),
            (errcode::BUSY, None),
            (errcode::INVALID_CREDENTIAL, None),
        ];
        for (code, refusal) in cases {
            assert_eq!(refused(code).refusal(), refusal, "{code}");
        }
        assert_eq!(ApiError::ForceRefreshRationed.refusal(), None);
    }

    #[test]
    fn the_summary_names_the_errcode_but_not_the_errmsg() {
        assert_eq!(refused(40164).summary(), "WeChat refuses: errcode 40164");
    }
}
