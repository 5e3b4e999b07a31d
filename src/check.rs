//! `wxlogin check`: is this configuration going to work? Validates the settings (the accounts
//! file's included), fetches an access token and creates one QR code for each account (unless
//! its `LOGIN_MODES` is `code`, which needs neither), pings
//! Redis when `REDIS_URL` is set, and reports each
//! step on one line, secrets never shown.

use std::fmt::Write as _;

use std::sync::Arc;
use std::time::Duration;

use crate::config::{AccountConfig, Config, ConfigError};
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
    // With several accounts (ACCOUNTS_FILE) each is checked, its lines naming it.
    let several = config.accounts.iter().count() > 1;
    let mut passed = true;
    for account in config.accounts.iter() {
        let prefix = if several {
            format!("account {}: ", account.name)
        } else {
            String::new()
        };
        passed &= check_account(&config, account, &prefix, &mut text).await;
    }
    with_redis(&config, text, passed).await
}

/// Checks one account: its WeChat client, an access token and a QR code (unless it has login
/// codes only), each step a line of `text` starting with `prefix`. Whether all passed.
async fn check_account(
    config: &Config,
    account: &AccountConfig,
    prefix: &str,
    text: &mut String,
) -> bool {
    let mut line = |ok: bool, what: &str| {
        let _ = writeln!(text, "{} {prefix}{what}", if ok { "ok  " } else { "FAIL" });
        ok
    };
    line(
        true,
        &format!(
            "configuration (appid {}, WeChat API {}, safe mode {})",
            account.appid,
            config.wechat_api_base,
            if account.aes_keys.is_some() {
                "on"
            } else {
                "off"
            }
        ),
    );
    let api = match crate::accounts::wechat_api(config, account) {
        Ok(api) => api,
        Err(e) => return line(false, &format!("WeChat client: {e}")),
    };
    if !account.login_modes.qr {
        // Code-only: WeChat's API is never called; what the mode needs (APPID, MP_TOKEN, the
        // safe-mode key) was checked with the configuration, and the callback URL is
        // checked by WeChat's console when the server configuration is saved.
        return line(
            true,
            "login codes only (LOGIN_MODES=code): no access token or QR code needed; \
             WeChat checks the callback URL when the server configuration is saved",
        );
    }
    match api.stable_token(false).await {
        Err(e) => line(false, &format!("access token: {}", explain(&e))),
        Ok(token) => {
            line(
                true,
                &format!("access token (valid {} s more)", token.expires_in),
            );
            match api.create_qr(&token, &new_scene(), 60).await {
                Ok(qr) => line(
                    true,
                    &format!("QR code created (lives {} s)", qr.expire_seconds),
                ),
                Err(e) => line(false, &format!("QR code: {}", explain(&e))),
            }
        }
    }
}

/// Pings Redis when `REDIS_URL`, `REDIS_SENTINELS` or `REDIS_CLUSTER_URLS` is set (every
/// primary of a Cluster), and closes the report.
async fn with_redis(config: &Config, mut text: String, mut passed: bool) -> Report {
    let mut line = |ok: bool, what: &str| {
        let _ = writeln!(text, "{} {what}", if ok { "ok  " } else { "FAIL" });
        ok
    };
    let appid = &config.default_account().appid;
    let (store, shown) = match (&config.redis_sentinel, &config.redis_url) {
        _ if config.redis_cluster.is_some() => {
            let seeds = config.redis_cluster.as_deref().unwrap_or_default();
            (
                RedisStore::with_cluster(seeds, appid, Arc::from("check")),
                format!("the Redis Cluster of {} seed nodes", seeds.len()),
            )
        }
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
