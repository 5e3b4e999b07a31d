//! What an operator should do about WeChat's refusals, in wxlogin's terms: the protocol crate
//! says which refusal it is ([`Refusal`]), this module names the setting to fix. Shared by the
//! QR stock's health (`/readyz`, the log) and `wxlogin check`.

use crate::wechat::error::{ApiError, Refusal};

/// A sentence for operators: what to fix.
pub fn advice(refusal: Refusal) -> &'static str {
    match refusal {
        Refusal::InvalidAppId => "APPID is not a valid appid",
        Refusal::WrongSecret => "SECRET_KEY (the appsecret) is wrong",
        Refusal::IpNotWhitelisted => {
            "this server's IP is not on the account's IP whitelist (WeChat console: 设置与开发 → 基本配置 → IP白名单)"
        }
        Refusal::NoPermission => {
            "the account may not create QR codes (a verified service account is needed)"
        }
        Refusal::DailyQuotaUsed => "the daily quota of this API is used up; it resets at midnight",
    }
}

/// The advice for `e`, when WeChat refused for a reason an operator can fix.
pub fn advice_for(e: &ApiError) -> Option<&'static str> {
    e.refusal().map(advice)
}

/// The error and, when there is one, the advice: for the log and `wxlogin check`.
pub fn explain(e: &ApiError) -> String {
    match advice_for(e) {
        Some(advice) => format!("{e} ({advice})"),
        None => e.to_string(),
    }
}

/// A sentence fit to be shown outside the log (`/readyz`): the crate's summary (never WeChat's
/// errmsg, which can name the server's egress IP) and the advice.
pub fn summary(e: &ApiError) -> String {
    match advice_for(e) {
        Some(advice) => format!("{} ({advice})", e.summary()),
        None => e.summary(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(errcode: i64) -> ApiError {
        ApiError::Wechat {
            errcode,
            errmsg: "invalid ip 203.0.113.7, not in whitelist".into(),
        }
    }

    #[test]
    fn a_refusal_is_explained_with_the_setting_to_fix() {
        assert_eq!(
            explain(&refused(40125)),
            "WeChat errcode 40125: invalid ip 203.0.113.7, not in whitelist (SECRET_KEY (the appsecret) is wrong)"
        );
        assert_eq!(
            summary(&refused(40013)),
            "WeChat refuses: errcode 40013 (APPID is not a valid appid)"
        );
    }

    #[test]
    fn the_summary_withholds_wechats_errmsg() {
        let s = summary(&refused(40164));
        assert!(s.starts_with("WeChat refuses: errcode 40164 (this server's IP"));
        assert!(!s.contains("203.0.113.7"));
    }

    #[test]
    fn an_errcode_without_advice_is_shown_as_it_is() {
        assert_eq!(summary(&refused(40001)), "WeChat refuses: errcode 40001");
        assert_eq!(advice_for(&refused(40001)), None);
    }
}
