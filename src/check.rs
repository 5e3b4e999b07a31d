//! `wxlogin check`: is this configuration going to work? Validates the settings, fetches an
//! access token and creates one QR code (unless `LOGIN_MODES=code`, which needs neither), pings
//! Redis when `REDIS_URL` is set, and reports each
//! step on one line, secrets never shown.

use std::fmt::Write as _;

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, ConfigError};
use crate::login::advice::explain;
use crate::login::policy::new_scene;
use crate::store::redis::{RedisStore, redact_url};
use crate::store::{Store as _, StoreError};

/// The outcome of the checks.
pub struct Report {
    /// One line per step, `ok` or `FAIL` first.
    pub text: String,
    /// Whether every step passed.
    pub passed: bool,
}

/// Runs the checks against `config`; a configuration that did not load is the first step,
/// failed.
pub async fn run(config: Result<Config, ConfigError>) -> Report {
    let mut text = String::new();
    let mut line = |ok: bool, what: &str| {
        let _ = writeln!(text, "{} {what}", if ok { "ok  " } else { "FAIL" });
        ok
    };
    let config = match config {
        Ok(config) => config,
        Err(e) => {
            line(false, &e.to_string());
            return Report {
                text,
                passed: false,
            };
        }
    };
    let mut passed = line(
        true,
        &format!(
            "configuration (appid {}, WeChat API {}, safe mode {})",
            config.default_account().appid,
            config.wechat_api_base,
            if config.default_account().aes_keys.is_some() {
                "on"
            } else {
                "off"
            }
        ),
    );
    let api = match crate::accounts::wechat_api(&config, config.default_account()) {
        Ok(api) => api,
        Err(e) => {
            line(false, &format!("WeChat client: {e}"));
            return Report {
                text,
                passed: false,
            };
        }
    };
    let token = if config.default_account().login_modes.qr {
        api.stable_token(false).await
    } else {
        // Code-only: WeChat's API is never called; what the mode needs (APPID, MP_TOKEN, the
        // safe-mode key) was checked with the configuration, and the callback URL is
        // checked by WeChat's console when the server configuration is saved.
        line(
            true,
            "login codes only (LOGIN_MODES=code): no access token or QR code needed; \
             WeChat checks the callback URL when the server configuration is saved",
        );
        return with_redis(&config, text, passed).await;
    };
    match token {
        Err(e) => passed &= line(false, &format!("access token: {}", explain(&e))),
        Ok(token) => {
            passed &= line(
                true,
                &format!("access token (valid {} s more)", token.expires_in),
            );
            match api.create_qr(&token, &new_scene(), 60).await {
                Ok(qr) => {
                    passed &= line(
                        true,
                        &format!("QR code created (lives {} s)", qr.expire_seconds),
                    )
                }
                Err(e) => passed &= line(false, &format!("QR code: {}", explain(&e))),
            }
        }
    }
    with_redis(&config, text, passed).await
}

/// Pings Redis when `REDIS_URL` or `REDIS_SENTINELS` is set, and closes the report.
async fn with_redis(config: &Config, mut text: String, mut passed: bool) -> Report {
    let mut line = |ok: bool, what: &str| {
        let _ = writeln!(text, "{} {what}", if ok { "ok  " } else { "FAIL" });
        ok
    };
    let appid = &config.default_account().appid;
    let (store, shown) = match (&config.redis_sentinel, &config.redis_url) {
        (Some(s), _) => (
            RedisStore::with_sentinel(s, appid, Arc::from("check")),
            format!("the primary {:?} of REDIS_SENTINELS", s.master_name),
        ),
        (None, Some(url)) => (
            RedisStore::new(url, appid, Arc::from("check")),
            redact_url(url.expose()),
        ),
        (None, None) => return Report { text, passed },
    };
    match store {
        Err(e) => passed &= line(false, &format!("Redis: {e}")),
        Ok(store) => {
            let pinged = tokio::time::timeout(
                Duration::from_secs(3),
                answers(&store, config.redis_sentinel.is_some()),
            )
            .await;
            match pinged {
                Ok(Ok(())) => passed &= line(true, &format!("Redis at {shown} answers")),
                Ok(Err(e)) => passed &= line(false, &format!("Redis at {shown}: {e}")),
                Err(_) => passed &= line(false, &format!("Redis at {shown}: no answer in 3 s")),
            }
        }
    }
    Report { text, passed }
}

/// Whether Redis answers a ping. Through Sentinel, asked again while no primary is known (the
/// sentinels are asked in the background). A check does not subscribe, so its inbox being
/// down is no fault.
async fn answers(store: &RedisStore, sentinel: bool) -> Result<(), StoreError> {
    loop {
        match store.ping().await {
            Ok(()) | Err(StoreError::InboxDown) => return Ok(()),
            Err(StoreError::Unavailable(e)) if sentinel && e.is_io_error() => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
}
