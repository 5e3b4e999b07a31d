//! Configuration: the only reader of the environment and `.env`.
//!
//! Values come from environment variables and a `.env` file in the working directory; a real
//! environment variable wins. They are read once into [`Settings`], which keeps them to itself
//! and hands each command the typed values it needs: the service's [`Config`], logging's
//! [`LogSettings`], the fake account's [`AccountSettings`]. Everything is parsed and checked
//! here: a missing or invalid setting stops start-up with one line naming it, and secrets are
//! wrapped in [`Secret`] so no `Debug` print can leak them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sha2::Digest as _;

use crate::login::code::CodeLength;
use crate::wechat::api::{DEFAULT_BASE, DEFAULT_OPEN_BASE};
use crate::wechat::crypto::KeyRing;
use crate::wechat::secret::Secret;

/// The longest life WeChat allows a temporary QR code (30 days).
pub const MAX_QR_TTL_SECS: u64 = 2_592_000;
/// The default of `SSE_PER_IP_OPEN`. Behind a carrier-grade NAT many visitors share one IPv4
/// address; at the default 60 new streams a minute and 120 s waits, a client within its rate
/// holds at most 120 streams, so the cap binds only on longer waits or a lifted rate limit.
pub const DEFAULT_PER_IP_OPEN: u32 = 120;
/// The largest `QR_DAILY_BUDGET`: a typo of a few digits too many is refused.
pub const MAX_QR_DAILY_BUDGET: u64 = 1_000_000_000;
/// A QR code is handed out only while it has the stream's wait plus this much life left.
pub const QR_LIFE_MARGIN: Duration = Duration::from_secs(60);

/// The validated configuration of one wxlogin process.
#[derive(Clone, Debug)]
pub struct Config {
    /// `API_TOKEN`: what a page passes to `/sse?token=`.
    pub api_token: Secret,
    /// `BIND`: where to listen.
    pub bind: SocketAddr,
    /// `WECHAT_API_BASE`: the WeChat API (tests and the sandbox point it at the fake).
    pub wechat_api_base: String,
    /// `SSE_TIMEOUT_SECS`: how long one stream waits for a scan.
    pub sse_timeout: Duration,
    /// `SSE_KEEPALIVE_SECS`: the interval of keep-alive comments on a stream (at most 15 s).
    pub sse_keepalive: Duration,
    /// `POOL_SIZE`: QR codes prepared ahead.
    pub pool_size: usize,
    /// `QR_TTL_SECS`: the life of a QR code, in seconds.
    pub qr_ttl_secs: u32,
    /// `WECHAT_TIMEOUT_MS`: the bound on one WeChat API call.
    pub wechat_timeout: Duration,
    /// `LOGIN_TOKEN_SECRET`: sign login tokens with HS256 and this secret instead of EdDSA.
    pub login_token_secret: Option<Secret>,
    /// `LOGIN_TOKEN_KEY_FILE`: the Ed25519 key (PKCS#8 PEM) for login tokens; generated at
    /// start-up when absent.
    pub login_token_key_file: Option<PathBuf>,
    /// `LOGIN_TOKEN_TTL_SECS`: the life of a login token.
    pub login_token_ttl: Duration,
    /// `LOGIN_TOKEN_AUDIENCE`: the `aud` of login tokens not bound to a page's origin.
    pub login_token_audience: String,
    /// `PAGE_TOKEN_TTL_SECS`: the default life of a page token from `POST /tokens`.
    pub page_token_ttl: Duration,
    /// `REDIS_URL`: share state with other instances through this Redis
    /// (`redis://[:password@]host:port[/db]`, `rediss://` for TLS); one process, in memory,
    /// when unset. A secret: it may carry a password.
    pub redis_url: Option<Secret>,
    /// `REDIS_SENTINELS` (with `REDIS_MASTER_NAME`, `REDIS_PASSWORD`, `REDIS_DB`): share state
    /// through the Redis primary that these sentinels name, followed across failovers.
    pub redis_sentinel: Option<RedisSentinel>,
    /// `REDIS_CLUSTER_URLS`: share state with other instances through this Redis Cluster
    /// (seed nodes, `redis://[:password@]host:port` each, comma-separated; the rest are found).
    pub redis_cluster: Option<Vec<Secret>>,
    /// `METRICS_TOKEN`: when set, `/metrics` needs `Authorization: Bearer <it>`.
    pub metrics_token: Option<Secret>,
    /// `SSE_PER_IP_PER_MIN`: new streams one client IP may open per minute (0: no limit).
    pub sse_per_ip_per_min: u32,
    /// `SSE_PER_IP_OPEN`: streams one client may hold open at once (0: no cap).
    pub sse_per_ip_open: u32,
    /// `SSE_IPV6_PREFIX`: the bits of an IPv6 address that name one client for the per-client
    /// limits (a subscriber is given a whole /64).
    pub sse_ipv6_prefix: u8,
    /// `QR_DAILY_BUDGET`: QR codes all instances together may make per day (China's day,
    /// when WeChat's quota resets); past it new streams get 503 until the next day.
    pub qr_daily_budget: u64,
    /// `TRUSTED_PROXIES`: peers whose `X-Forwarded-For` is believed (IPs or CIDRs).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `MAX_STREAMS`: streams held at once; derived from the open-files limit when unset.
    pub max_streams: Option<usize>,
    /// `SHUTDOWN_GRACE_SECS`: how long a shutdown may take before the process exits anyway.
    pub shutdown_grace: Duration,
    /// `RESULT_KEEP_SECS`: how long a result handed to its stream stays for that stream's
    /// reconnect (and for the status endpoint).
    pub result_keep: Duration,
    /// `DEMO_PAGE`: serve the demo page at `/` in serve mode.
    pub demo_page: bool,
    /// `TOKEN_BROKER_KEY`: when set, the company's other services may read an account's
    /// access token (`GET /wechat/{account}/access_token`) with this key, instead of fetching
    /// their own and invalidating each other's. Never `API_TOKEN`, which pages hold.
    pub token_broker_key: Option<Secret>,
    /// `CODE_DIGITS`: the length of login codes.
    pub code_digits: CodeLength,
    /// `CODE_ATTEMPTS_PER_MIN`: code attempts one sender may make per minute; past it their
    /// messages are not matched.
    pub code_attempts_per_min: u32,
    /// The account of the environment (`APPID`, `SECRET_KEY`...), named `default`; `None`
    /// when `ACCOUNTS_FILE` defines `default` instead.
    pub env_account: Option<AccountConfig>,
    /// `ACCOUNTS_FILE`: more Official Accounts, re-read on SIGHUP and when it changes.
    pub accounts_file: Option<PathBuf>,
    /// The Official Accounts served at start-up: the environment's and the file's.
    pub accounts: AccountSet,
    /// `PUBLIC_URL`: where browsers reach this service (`https://login.example.com`, no path);
    /// WeChat's web authorization returns to it. Required when an account's `LOGIN_MODES` has
    /// `oauth`.
    pub public_url: Option<String>,
    /// `WECHAT_OPEN_BASE`: WeChat's web authorization page (tests and the sandbox point it at
    /// the fake).
    pub wechat_open_base: String,
    /// `OAUTH_RETURN_ORIGINS`: the origins (`https://www.example.com`) a web authorization may
    /// return a browser to; any other `return_to` is refused.
    pub oauth_return_origins: Vec<String>,
}

/// A name of an account: what `/wechat_event/{account}` and `?account=` say. A short slug
/// (lower-case letters, digits, `-` and `_`, at most 32, starting with a letter or digit), so
/// that it is safe in a URL, a metric label and a log line as it is.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountName(Arc<str>);

impl AccountName {
    /// The longest name.
    pub const MAX_LEN: usize = 32;

    /// `default`: the account of the environment, and of the plain `/wechat_event`.
    pub fn default_name() -> Self {
        Self("default".into())
    }

    /// `s` if it is a valid name.
    pub fn parse(s: &str) -> Option<Self> {
        let valid = !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && s.bytes().enumerate().all(|(i, b)| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || (i > 0 && (b == b'-' || b == b'_'))
            });
        valid.then(|| Self(s.into()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is `default`.
    pub fn is_default(&self) -> bool {
        &*self.0 == "default"
    }
}

impl std::fmt::Display for AccountName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Debug for AccountName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

/// One Official Account's settings: the environment's (`APPID`, `SECRET_KEY`, ...; the account
/// named `default`), or one `[[account]]` table of `ACCOUNTS_FILE`, which names the same
/// settings in lower case. Checked alike wherever they come from.
#[derive(Clone, Debug)]
pub struct AccountConfig {
    /// The account's name (`default` for the environment's).
    pub name: AccountName,
    /// `APPID`: the Official Account's appid.
    pub appid: String,
    /// `SECRET_KEY`: the account's appsecret (empty when only login codes are on).
    pub secret_key: Secret,
    /// `MP_TOKEN`: the callback Token set in the WeChat console.
    pub mp_token: Secret,
    /// `ENCODING_AES_KEY` (and `ENCODING_AES_KEY_PREVIOUS` during a rotation): safe mode.
    pub aes_keys: Option<KeyRing>,
    /// `LOGIN_MODES`: how visitors log in (QR code, login code, or both).
    pub login_modes: LoginModes,
    /// `REPLY_TEXT`: the text reply the user sees in WeChat after a login scan (`{time}` is
    /// replaced by the time); `success` (no reply) when unset.
    pub reply_text: Option<String>,
    /// `FORWARD_URL`: where callbacks that are not login scans are passed on.
    pub forward_url: Option<String>,
    /// `ACCOUNT_QRCODE_URL`: the account's own follow QR image, shown to visitors in code-only
    /// mode so that one who does not follow yet can.
    pub account_qrcode_url: Option<String>,
    /// `USER_INFO`: fetch the user's profile (unionid) at login.
    pub user_info: bool,
    /// A digest of every value above: an account whose digest is unchanged on a reload is
    /// kept as it runs.
    fingerprint: Fingerprint,
}

/// A digest of an account's settings, secrets included: compared, never printed.
#[derive(Clone, PartialEq, Eq)]
struct Fingerprint([u8; 32]);

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl AccountConfig {
    /// Whether `other` has the same name and the very same settings (secrets included).
    pub fn same_as(&self, other: &Self) -> bool {
        self.name == other.name && self.fingerprint == other.fingerprint
    }

    /// Reads an account's settings through `get`, which answers the environment variables'
    /// names (the file's lower-case keys are looked up under them), trimmed, empty as unset.
    fn read(name: AccountName, get: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let required = |k: &'static str| get(k).ok_or_else(|| problem(k, "is missing"));
        let aes_keys = aes_keys(get)?;
        let forward_url = get("FORWARD_URL");
        if forward_url
            .as_ref()
            .is_some_and(|u| !(u.starts_with("http://") || u.starts_with("https://")))
        {
            return Err(problem("FORWARD_URL", "must be an http(s) URL"));
        }
        let login_modes = match get("LOGIN_MODES") {
            None => LoginModes::BOTH,
            Some(v) => LoginModes::parse(&v).ok_or_else(|| {
                problem(
                    "LOGIN_MODES",
                    format!(
                        "must be qr, code or qr,code, optionally with oauth (qr,code,oauth), not {v:?}"
                    ),
                )
            })?,
        };
        let account_qrcode_url = get("ACCOUNT_QRCODE_URL");
        if account_qrcode_url.as_ref().is_some_and(|u| {
            !(u.starts_with("http://") || u.starts_with("https://") || u.starts_with('/'))
        }) {
            return Err(problem(
                "ACCOUNT_QRCODE_URL",
                "must be an http(s) URL or a path",
            ));
        }
        let user_info = match get("USER_INFO").as_deref() {
            None | Some("false" | "0" | "no") => false,
            Some("true" | "1" | "yes") => true,
            Some(_) => return Err(problem("USER_INFO", "must be true or false")),
        };
        // Without QR codes nor web authorization (nor the unionid's look-up, which takes an
        // access token) no WeChat API call is made, hence no appsecret.
        let secret_key = if login_modes.qr || login_modes.oauth || user_info {
            required("SECRET_KEY")?
        } else {
            get("SECRET_KEY").unwrap_or_default()
        };
        let appid = required("APPID")?;
        let mp_token = required("MP_TOKEN")?;
        let mut digest = sha2::Sha256::new();
        for k in ACCOUNT_SETTINGS {
            digest.update(k.as_bytes());
            digest.update([0]);
            digest.update(get(k).unwrap_or_default().as_bytes());
            digest.update([0]);
        }
        Ok(Self {
            name,
            appid,
            secret_key: Secret::new(secret_key),
            mp_token: Secret::new(mp_token),
            aes_keys,
            login_modes,
            reply_text: get("REPLY_TEXT"),
            forward_url,
            account_qrcode_url,
            user_info,
            fingerprint: Fingerprint(digest.finalize().into()),
        })
    }
}

/// The settings of one account, by their environment variables' names.
pub const ACCOUNT_SETTINGS: [&str; 10] = [
    "APPID",
    "SECRET_KEY",
    "MP_TOKEN",
    "ENCODING_AES_KEY",
    "ENCODING_AES_KEY_PREVIOUS",
    "LOGIN_MODES",
    "REPLY_TEXT",
    "FORWARD_URL",
    "ACCOUNT_QRCODE_URL",
    "USER_INFO",
];

/// The safe-mode keys of `ENCODING_AES_KEY` and `ENCODING_AES_KEY_PREVIOUS`, if set.
fn aes_keys(get: &impl Fn(&str) -> Option<String>) -> Result<Option<KeyRing>, ConfigError> {
    let Some(current) = get("ENCODING_AES_KEY") else {
        if get("ENCODING_AES_KEY_PREVIOUS").is_some() {
            return Err(problem(
                "ENCODING_AES_KEY_PREVIOUS",
                "is set without ENCODING_AES_KEY",
            ));
        }
        return Ok(None);
    };
    let check = |k: &'static str, v: &str| {
        crate::wechat::crypto::AesKey::from_encoding_aes_key(v).map_err(|_| {
            problem(
                k,
                "must be the 43-character EncodingAESKey from the WeChat console",
            )
        })
    };
    let current_key = check("ENCODING_AES_KEY", &current)?;
    let previous_key = match get("ENCODING_AES_KEY_PREVIOUS").as_deref() {
        Some(p) => Some(check("ENCODING_AES_KEY_PREVIOUS", p)?),
        None => None,
    };
    Ok(Some(KeyRing::new(current_key, previous_key)))
}

/// The accounts of the environment's account `env` (if any) and of the accounts file at
/// `path`, checked: what start-up and every reload read. A file that cannot be read, does
/// not parse or does not validate is refused with one line naming the account and setting
/// at fault, never a value (the file holds secrets).
pub fn read_accounts(env: Option<&AccountConfig>, path: &Path) -> Result<AccountSet, ConfigError> {
    let at_fault = |p: String| problem("ACCOUNTS_FILE", format!("{}: {p}", path.display()));
    let text =
        std::fs::read_to_string(path).map_err(|e| at_fault(format!("cannot be read: {e}")))?;
    let mut accounts: Vec<AccountConfig> = env.into_iter().cloned().collect();
    accounts.extend(parse_accounts(&text).map_err(at_fault)?);
    if env.is_some() && accounts.iter().skip(1).any(|a| a.name.is_default()) {
        return Err(at_fault(
            "defines the account default, which the environment (APPID) defines already: \
             define it in one place"
                .into(),
        ));
    }
    AccountSet::new(accounts).map_err(|e| {
        at_fault(if env.is_none() && e.contains("named default") {
            "no account is named default (define one, or set APPID in the environment)".into()
        } else {
            e
        })
    })
}

/// The `[[account]]` tables of an accounts file.
fn parse_accounts(text: &str) -> Result<Vec<AccountConfig>, String> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        // The message and the line only: toml's own rendering quotes the line, which may
        // hold a secret.
        let line = e
            .span()
            .map(|span| text[..span.start.min(text.len())].lines().count().max(1));
        let message = e.message().lines().next().unwrap_or("invalid").to_owned();
        match line {
            Some(line) => format!("is not valid TOML (line {line}): {message}"),
            None => format!("is not valid TOML: {message}"),
        }
    })?;
    if let Some(key) = table.keys().find(|k| *k != "account") {
        return Err(format!(
            "has an unknown top-level key {key:?} (accounts are [[account]] tables)"
        ));
    }
    let Some(list) = table.get("account") else {
        return Ok(Vec::new());
    };
    let list = list
        .as_array()
        .ok_or("account must be an array of tables ([[account]])")?;
    list.iter()
        .enumerate()
        .map(|(i, entry)| {
            let entry = entry
                .as_table()
                .ok_or_else(|| format!("account #{} is not a table", i + 1))?;
            file_account(i + 1, entry)
        })
        .collect()
}

/// One `[[account]]` table (the `n`th), its keys the settings' names in lower case.
fn file_account(n: usize, entry: &toml::Table) -> Result<AccountConfig, String> {
    let name = match entry.get("name") {
        None => return Err(format!("account #{n} has no name")),
        Some(toml::Value::String(name)) => AccountName::parse(name.trim()).ok_or_else(|| {
            format!(
                "account #{n}: name must be lower-case letters, digits, - and _ (at most {} \
                 characters, starting with a letter or digit)",
                AccountName::MAX_LEN
            )
        })?,
        Some(_) => return Err(format!("account #{n}: name must be a string")),
    };
    let mut values = HashMap::new();
    for (key, value) in entry {
        if key == "name" {
            continue;
        }
        let setting = ACCOUNT_SETTINGS
            .iter()
            .find(|s| s.eq_ignore_ascii_case(key) && key.bytes().all(|b| !b.is_ascii_uppercase()))
            .ok_or_else(|| format!("account {name}: unknown setting {key:?}"))?;
        let value = match value {
            toml::Value::String(s) => s.trim().to_owned(),
            toml::Value::Boolean(b) => b.to_string(),
            _ => return Err(format!("account {name}: {key} must be a string")),
        };
        if !value.is_empty() {
            values.insert(*setting, value);
        }
    }
    AccountConfig::read(name.clone(), &|k: &str| values.get(k).cloned()).map_err(|e| {
        format!(
            "account {name}: {} {}",
            e.setting.to_ascii_lowercase(),
            e.problem
        )
    })
}

/// The digest of the accounts file's content, `None` when it cannot be read: how a reload
/// tells that the file changed.
pub fn accounts_file_digest(path: &Path) -> Option<[u8; 32]> {
    std::fs::read(path)
        .ok()
        .map(|bytes| sha2::Sha256::digest(bytes).into())
}

/// A warning when the accounts file at `path` can be read by users other than its owner
/// and group: it holds the accounts' secrets.
#[cfg(unix)]
pub fn accounts_file_warning(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o004 != 0).then(|| {
        format!(
            "ACCOUNTS_FILE {} can be read by any user (mode {:o}): it holds secrets; chmod 600 it",
            path.display(),
            mode & 0o777
        )
    })
}

/// Permissions are not checked on this platform.
#[cfg(not(unix))]
pub fn accounts_file_warning(_path: &Path) -> Option<String> {
    None
}

/// The accounts a process serves: names and appids unique, `default` among them.
#[derive(Clone, Debug)]
pub struct AccountSet {
    /// `default` first.
    accounts: Vec<AccountConfig>,
}

impl AccountSet {
    /// The set of `accounts`, checked: exactly one named `default`, no name or appid twice.
    pub fn new(mut accounts: Vec<AccountConfig>) -> Result<Self, String> {
        accounts
            .sort_by(|a, b| (!a.name.is_default(), &a.name).cmp(&(!b.name.is_default(), &b.name)));
        if !accounts.first().is_some_and(|a| a.name.is_default()) {
            return Err("no account is named default".into());
        }
        for pair in accounts.windows(2) {
            if pair[0].name == pair[1].name {
                return Err(format!("the account {} is defined twice", pair[0].name));
            }
        }
        for (i, a) in accounts.iter().enumerate() {
            if let Some(b) = accounts[..i].iter().find(|b| b.appid == a.appid) {
                return Err(format!(
                    "the accounts {} and {} have the same appid",
                    b.name, a.name
                ));
            }
        }
        Ok(Self { accounts })
    }

    /// The account named `default`.
    pub fn default_account(&self) -> &AccountConfig {
        // `new` put it first, and there is always one.
        &self.accounts[0]
    }

    /// Every account, `default` first.
    pub fn iter(&self) -> impl Iterator<Item = &AccountConfig> {
        self.accounts.iter()
    }
}

/// `LOGIN_MODES`: which ways of logging in the account offers. At least one of `qr` and
/// `code` is on: a visitor outside WeChat needs one of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginModes {
    /// A QR code to scan (needs the QR API, hence `SECRET_KEY` and an access token).
    pub qr: bool,
    /// A login code to send to the account as a message.
    pub code: bool,
    /// Inside WeChat's browser, WeChat's web authorization (`snsapi_base`): no QR code, no
    /// code. Service accounts only; needs `SECRET_KEY`, `PUBLIC_URL` and
    /// `OAUTH_RETURN_ORIGINS`.
    pub oauth: bool,
}

impl LoginModes {
    /// QR codes and login codes: the default.
    pub const BOTH: Self = Self {
        qr: true,
        code: true,
        oauth: false,
    };

    /// `qr`, `code`, `oauth`, comma-separated in any order (spaces allowed), each at most once,
    /// with `qr` or `code` among them; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        let mut modes = Self {
            qr: false,
            code: false,
            oauth: false,
        };
        for part in s.split(',').map(str::trim) {
            match part.to_ascii_lowercase().as_str() {
                "qr" if !modes.qr => modes.qr = true,
                "code" if !modes.code => modes.code = true,
                "oauth" if !modes.oauth => modes.oauth = true,
                _ => return None,
            }
        }
        (modes.qr || modes.code).then_some(modes)
    }
}

/// A Redis primary found through Redis Sentinel.
#[derive(Clone, Debug)]
pub struct RedisSentinel {
    /// `REDIS_SENTINELS`: the sentinels, `host:port` each.
    pub sentinels: Vec<(String, u16)>,
    /// `REDIS_MASTER_NAME`: the name the sentinels know the primary by.
    pub master_name: String,
    /// `REDIS_PASSWORD`: the password of the primary (and its replicas), if it needs one.
    pub password: Option<Secret>,
    /// `REDIS_DB`: the database number on the primary.
    pub db: i64,
}

/// `REDIS_CLUSTER_URLS`: the seed nodes of a Redis Cluster, never with `REDIS_URL` or
/// `REDIS_SENTINELS`. The URLs may hold passwords: a bad one is named by its place, not shown.
fn redis_cluster(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<Option<Vec<Secret>>, ConfigError> {
    let Some(list) = get("REDIS_CLUSTER_URLS") else {
        return Ok(None);
    };
    for other in ["REDIS_URL", "REDIS_SENTINELS"] {
        if get(other).is_some() {
            return Err(problem(
                "REDIS_CLUSTER_URLS",
                format!("and {other} are both set: set one"),
            ));
        }
    }
    let seeds: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if seeds.is_empty() {
        return Err(problem("REDIS_CLUSTER_URLS", "names no node"));
    }
    for (n, seed) in seeds.iter().enumerate() {
        if !["redis://", "rediss://"]
            .iter()
            .any(|s| seed.starts_with(s))
        {
            return Err(problem(
                "REDIS_CLUSTER_URLS",
                format!("node {} must be a redis:// or rediss:// URL", n + 1),
            ));
        }
    }
    Ok(Some(seeds.into_iter().map(Secret::new).collect()))
}

/// `REDIS_SENTINELS` and its companions, which apply only with it and never with `REDIS_URL`.
fn redis_sentinel(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<Option<RedisSentinel>, ConfigError> {
    let Some(list) = get("REDIS_SENTINELS") else {
        for companion in ["REDIS_MASTER_NAME", "REDIS_PASSWORD", "REDIS_DB"] {
            if get(companion).is_some() {
                return Err(problem(companion, "applies only with REDIS_SENTINELS"));
            }
        }
        return Ok(None);
    };
    if get("REDIS_URL").is_some() {
        return Err(problem(
            "REDIS_SENTINELS",
            "and REDIS_URL are both set: set one (the sentinels name the primary)",
        ));
    }
    let sentinels = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let bad = || {
                problem(
                    "REDIS_SENTINELS",
                    format!("has an invalid host:port: {s:?}"),
                )
            };
            let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = port
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(bad)?;
            if host.is_empty() || host.contains(['/', '@', '?', '#', ' ']) {
                return Err(bad());
            }
            Ok((host.to_owned(), port))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if sentinels.is_empty() {
        return Err(problem("REDIS_SENTINELS", "names no sentinel"));
    }
    let master_name = get("REDIS_MASTER_NAME").ok_or_else(|| {
        problem(
            "REDIS_MASTER_NAME",
            "is missing (REDIS_SENTINELS is set: the name the sentinels monitor)",
        )
    })?;
    let db = parse_or(get, "REDIS_DB", 0_i64)?;
    if db < 0 {
        return Err(problem("REDIS_DB", "must be 0 or more"));
    }
    Ok(Some(RedisSentinel {
        sentinels,
        master_name,
        password: get("REDIS_PASSWORD").map(Secret::new),
        db,
    }))
}

/// A setting that is missing or invalid: start-up stops with this one line.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {setting} {problem}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub setting: &'static str,
    /// What is wrong with it (never its value when it is a secret).
    pub problem: String,
}

fn problem(setting: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        problem: problem.into(),
    }
}

/// The settings of this process as read once: `.env` overlaid by the environment. Nothing
/// outside this module reads them raw; commands take typed values from them.
#[derive(Clone, Default)]
pub struct Settings {
    vars: HashMap<String, String>,
}

/// Values only, never printed: some are secrets.
impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("count", &self.vars.len())
            .finish_non_exhaustive()
    }
}

impl FromIterator<(String, String)> for Settings {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        Self {
            vars: iter.into_iter().collect(),
        }
    }
}

/// How logging is set up: `LOG_YAML` and `RUST_LOG`.
#[derive(Clone, Debug, Default)]
pub struct LogSettings {
    /// `LOG_YAML`: the logging configuration file, which decides everything when set.
    pub yaml: Option<PathBuf>,
    /// `RUST_LOG`: the level directives when there is no `LOG_YAML`.
    pub filter: Option<String>,
}

/// The Official Account a fake WeChat plays, read from the service's own setting names so
/// that a wxlogin with the same settings can use the fake.
#[derive(Clone, Debug)]
pub struct AccountSettings {
    /// `APPID`.
    pub appid: String,
    /// `SECRET_KEY`.
    pub secret_key: Secret,
    /// `MP_TOKEN`.
    pub mp_token: Secret,
    /// `ENCODING_AES_KEY`: safe mode when set.
    pub encoding_aes_key: Option<Secret>,
}

impl Settings {
    /// The variables of the `.env` file at `path` (if there is one) overlaid by the process
    /// environment.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let mut vars = HashMap::new();
        match dotenvy::from_path_iter(path.as_ref()) {
            Ok(iter) => {
                for item in iter {
                    let (k, v) =
                        item.map_err(|e| problem("(.env)", format!("is unreadable: {e}")))?;
                    vars.insert(k, v);
                }
            }
            Err(e) if e.not_found() => {}
            Err(e) => return Err(problem("(.env)", format!("is unreadable: {e}"))),
        }
        vars.extend(std::env::vars());
        Ok(Self { vars })
    }

    /// A setting as given, unchecked.
    fn raw(&self, setting: &str) -> Option<String> {
        self.vars.get(setting).cloned()
    }

    /// The service's configuration.
    pub fn config(&self) -> Result<Config, ConfigError> {
        Config::from_lookup(|k| self.raw(k))
    }

    /// The service's configuration with `overrides` in place of what was read (an empty
    /// value unsets a setting) and `defaults` for settings that were not given at all.
    pub fn config_with(
        &self,
        overrides: &[(&str, String)],
        defaults: &[(&str, &str)],
    ) -> Result<Config, ConfigError> {
        let find = |list: &[(&str, String)], k: &str| {
            list.iter()
                .rev()
                .find(|(s, _)| *s == k)
                .map(|(_, v)| v.clone())
        };
        Config::from_lookup(|k| {
            find(overrides, k).or_else(|| self.raw(k)).or_else(|| {
                defaults
                    .iter()
                    .find(|(s, _)| *s == k)
                    .map(|(_, v)| (*v).to_owned())
            })
        })
    }

    /// How logging is set up.
    pub fn log(&self) -> LogSettings {
        let get = |k: &str| {
            self.raw(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        LogSettings {
            yaml: get("LOG_YAML").map(PathBuf::from),
            filter: get("RUST_LOG"),
        }
    }

    /// The account a fake WeChat plays: `APPID`, `SECRET_KEY` and `MP_TOKEN` are required,
    /// `ENCODING_AES_KEY` makes it a safe-mode account.
    pub fn fake_account(&self) -> Result<AccountSettings, ConfigError> {
        let get = |k: &str| self.raw(k).filter(|v| !v.is_empty());
        let required = |k: &'static str| {
            get(k).ok_or_else(|| problem(k, "is missing (the fake account uses it)"))
        };
        Ok(AccountSettings {
            appid: required("APPID")?,
            secret_key: Secret::new(required("SECRET_KEY")?),
            mp_token: Secret::new(required("MP_TOKEN")?),
            encoding_aes_key: get("ENCODING_AES_KEY").map(Secret::new),
        })
    }
}

impl Config {
    /// The account named `default` (the plain `/wechat_event`, `/sse` without `?account=`).
    pub fn default_account(&self) -> &AccountConfig {
        self.accounts.default_account()
    }

    /// Whether state is shared in Redis (`REDIS_URL`, `REDIS_SENTINELS` or
    /// `REDIS_CLUSTER_URLS`): several instances may run.
    pub fn shares_state(&self) -> bool {
        self.redis_url.is_some() || self.redis_sentinel.is_some() || self.redis_cluster.is_some()
    }

    /// Reads `.env` (if present in the working directory) and the environment.
    pub fn load() -> Result<Self, ConfigError> {
        Settings::load(".env")?.config()
    }

    /// Builds the configuration from a lookup of variable names (tests pass a map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |k: &str| {
            lookup(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let required = |k: &'static str| get(k).ok_or_else(|| problem(k, "is missing"));

        let sse_timeout_secs: u64 = parse_or(&get, "SSE_TIMEOUT_SECS", 120)?;
        if !(1..=86_400).contains(&sse_timeout_secs) {
            return Err(problem("SSE_TIMEOUT_SECS", "must be between 1 and 86400"));
        }
        let keepalive_secs: u64 = parse_or(&get, "SSE_KEEPALIVE_SECS", 15)?;
        if !(1..=15).contains(&keepalive_secs) {
            return Err(problem("SSE_KEEPALIVE_SECS", "must be between 1 and 15"));
        }
        let pool_size: usize = parse_or(&get, "POOL_SIZE", 10)?;
        if pool_size > 10_000 {
            return Err(problem("POOL_SIZE", "must be at most 10000"));
        }
        let qr_ttl: u64 = parse_or(&get, "QR_TTL_SECS", 1800)?;
        if qr_ttl > MAX_QR_TTL_SECS {
            return Err(problem("QR_TTL_SECS", "must be at most 2592000 (30 days)"));
        }
        let needed = sse_timeout_secs + QR_LIFE_MARGIN.as_secs();
        if qr_ttl < needed {
            return Err(problem(
                "QR_TTL_SECS",
                format!("must be at least SSE_TIMEOUT_SECS + 60 = {needed}"),
            ));
        }
        let wechat_timeout_ms: u64 = parse_or(&get, "WECHAT_TIMEOUT_MS", 3000)?;
        if !(100..=30_000).contains(&wechat_timeout_ms) {
            return Err(problem(
                "WECHAT_TIMEOUT_MS",
                "must be between 100 and 30000",
            ));
        }
        let base = get("WECHAT_API_BASE").unwrap_or_else(|| DEFAULT_BASE.to_owned());
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(problem("WECHAT_API_BASE", "must be an http(s) URL"));
        }
        let login_token_ttl: u64 = parse_or(&get, "LOGIN_TOKEN_TTL_SECS", 300)?;
        if !(10..=86_400).contains(&login_token_ttl) {
            return Err(problem(
                "LOGIN_TOKEN_TTL_SECS",
                "must be between 10 and 86400",
            ));
        }
        let page_token_ttl: u64 = parse_or(&get, "PAGE_TOKEN_TTL_SECS", 300)?;
        if !(10..=3600).contains(&page_token_ttl) {
            return Err(problem(
                "PAGE_TOKEN_TTL_SECS",
                "must be between 10 and 3600",
            ));
        }
        let login_token_secret = get("LOGIN_TOKEN_SECRET");
        if login_token_secret.as_ref().is_some_and(|s| s.len() < 32) {
            return Err(problem(
                "LOGIN_TOKEN_SECRET",
                "must be at least 32 characters",
            ));
        }
        let redis_url = get("REDIS_URL");
        let redis_sentinel = redis_sentinel(&get)?;
        let redis_cluster = redis_cluster(&get)?;
        for (setting, set) in [
            ("REDIS_SENTINELS", redis_sentinel.is_some()),
            ("REDIS_CLUSTER_URLS", redis_cluster.is_some()),
        ] {
            if set && login_token_secret.is_none() && get("LOGIN_TOKEN_KEY_FILE").is_none() {
                return Err(problem(
                    setting,
                    "is set, so several instances may run: set LOGIN_TOKEN_SECRET or \
                     LOGIN_TOKEN_KEY_FILE so that they all sign login tokens with one key",
                ));
            }
        }
        if let Some(url) = &redis_url {
            let scheme_ok = ["redis://", "rediss://", "redis+unix://", "unix://"]
                .iter()
                .any(|s| url.starts_with(s));
            if !scheme_ok {
                return Err(problem(
                    "REDIS_URL",
                    "must be a redis://, rediss:// or unix:// URL",
                ));
            }
            if login_token_secret.is_none() && get("LOGIN_TOKEN_KEY_FILE").is_none() {
                return Err(problem(
                    "REDIS_URL",
                    "is set, so several instances may run: set LOGIN_TOKEN_SECRET or \
                     LOGIN_TOKEN_KEY_FILE so that they all sign login tokens with one key",
                ));
            }
        }
        let trusted_proxies = match get("TRUSTED_PROXIES") {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| {
                    s.parse::<ipnet::IpNet>()
                        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                        .map_err(|_| {
                            problem("TRUSTED_PROXIES", format!("has an invalid address: {s:?}"))
                        })
                })
                .collect::<Result<_, _>>()?,
        };
        let max_streams: Option<usize> = match get("MAX_STREAMS") {
            None => None,
            Some(_) => Some(parse_or(&get, "MAX_STREAMS", 0)?).filter(|n| *n > 0),
        };
        if get("MAX_STREAMS").is_some() && max_streams.is_none() {
            return Err(problem("MAX_STREAMS", "must be at least 1"));
        }
        let sse_per_ip_open: u32 = parse_or(&get, "SSE_PER_IP_OPEN", DEFAULT_PER_IP_OPEN)?;
        let sse_ipv6_prefix: u8 = parse_or(&get, "SSE_IPV6_PREFIX", 64)?;
        if !(32..=128).contains(&sse_ipv6_prefix) {
            return Err(problem("SSE_IPV6_PREFIX", "must be between 32 and 128"));
        }
        let qr_daily_budget: u64 = parse_or(&get, "QR_DAILY_BUDGET", 90_000)?;
        // Above WeChat's quota only against a fake WeChat (load tests) or an account whose
        // quota was raised: allowed, and warned of at start-up.
        if !(1..=MAX_QR_DAILY_BUDGET).contains(&qr_daily_budget) {
            return Err(problem(
                "QR_DAILY_BUDGET",
                "must be between 1 and 1000000000 (WeChat's daily quota is 100000)",
            ));
        }
        let shutdown_grace: u64 = parse_or(&get, "SHUTDOWN_GRACE_SECS", 10)?;
        if !(1..=600).contains(&shutdown_grace) {
            return Err(problem("SHUTDOWN_GRACE_SECS", "must be between 1 and 600"));
        }
        let result_keep: u64 = parse_or(&get, "RESULT_KEEP_SECS", 60)?;
        if !(1..=3600).contains(&result_keep) {
            return Err(problem("RESULT_KEEP_SECS", "must be between 1 and 3600"));
        }
        let demo_page = match get("DEMO_PAGE").as_deref() {
            None | Some("false" | "0" | "no") => false,
            Some("true" | "1" | "yes") => true,
            Some(_) => return Err(problem("DEMO_PAGE", "must be true or false")),
        };
        let code_digits: u8 = parse_or(&get, "CODE_DIGITS", CodeLength::DEFAULT.digits())?;
        let code_digits = CodeLength::new(code_digits).ok_or_else(|| {
            problem(
                "CODE_DIGITS",
                format!(
                    "must be between {} and {}",
                    CodeLength::MIN,
                    CodeLength::MAX
                ),
            )
        })?;
        let code_attempts_per_min: u32 = parse_or(&get, "CODE_ATTEMPTS_PER_MIN", 5)?;
        if !(1..=1000).contains(&code_attempts_per_min) {
            return Err(problem(
                "CODE_ATTEMPTS_PER_MIN",
                "must be between 1 and 1000",
            ));
        }
        let accounts_file = get("ACCOUNTS_FILE").map(PathBuf::from);
        // With a file, the environment may leave the account to it (the file's `default`).
        let env_account = match (&accounts_file, get("APPID")) {
            (Some(_), None) => None,
            _ => Some(AccountConfig::read(AccountName::default_name(), &get)?),
        };
        let accounts = match &accounts_file {
            Some(path) => read_accounts(env_account.as_ref(), path)?,
            None => AccountSet::new(env_account.iter().cloned().collect())
                .map_err(|e| problem("APPID", e))?,
        };
        let oauth = oauth_settings(&get, accounts.iter().any(|a| a.login_modes.oauth))?;
        let api_token = required("API_TOKEN")?;
        if api_token.len() < 8 {
            return Err(problem("API_TOKEN", "must be at least 8 characters"));
        }
        let token_broker_key = get("TOKEN_BROKER_KEY");
        if let Some(key) = &token_broker_key {
            if key.len() < 16 {
                return Err(problem(
                    "TOKEN_BROKER_KEY",
                    "must be at least 16 characters",
                ));
            }
            if *key == api_token || get("METRICS_TOKEN").as_ref() == Some(key) {
                return Err(problem(
                    "TOKEN_BROKER_KEY",
                    "must differ from API_TOKEN and METRICS_TOKEN (it grants the access token)",
                ));
            }
        }
        Ok(Self {
            api_token: Secret::new(api_token),
            bind: parse_or(&get, "BIND", SocketAddr::from(([0, 0, 0, 0], 8000)))?,
            wechat_api_base: base,
            sse_timeout: Duration::from_secs(sse_timeout_secs),
            sse_keepalive: Duration::from_secs(keepalive_secs),
            pool_size,
            // Checked above to be at most MAX_QR_TTL_SECS, which fits.
            qr_ttl_secs: u32::try_from(qr_ttl).unwrap_or(u32::MAX),
            wechat_timeout: Duration::from_millis(wechat_timeout_ms),
            login_token_secret: login_token_secret.map(Secret::new),
            login_token_key_file: get("LOGIN_TOKEN_KEY_FILE").map(PathBuf::from),
            login_token_ttl: Duration::from_secs(login_token_ttl),
            login_token_audience: get("LOGIN_TOKEN_AUDIENCE").unwrap_or_else(|| "wxlogin".into()),
            page_token_ttl: Duration::from_secs(page_token_ttl),
            redis_url: redis_url.map(Secret::new),
            redis_sentinel,
            redis_cluster,
            metrics_token: get("METRICS_TOKEN").map(Secret::new),
            sse_per_ip_per_min: parse_or(&get, "SSE_PER_IP_PER_MIN", 60)?,
            sse_per_ip_open,
            sse_ipv6_prefix,
            qr_daily_budget,
            trusted_proxies,
            max_streams,
            shutdown_grace: Duration::from_secs(shutdown_grace),
            result_keep: Duration::from_secs(result_keep),
            demo_page,
            token_broker_key: token_broker_key.map(Secret::new),
            code_digits,
            code_attempts_per_min,
            env_account,
            accounts_file,
            accounts,
            public_url: oauth.public_url,
            wechat_open_base: oauth.open_base,
            oauth_return_origins: oauth.return_origins,
        })
    }
}
/// The web authorization's settings, read together: with `oauth` on, `PUBLIC_URL` and
/// `OAUTH_RETURN_ORIGINS` are required.
struct OauthSettings {
    public_url: Option<String>,
    open_base: String,
    return_origins: Vec<String>,
}

fn oauth_settings(
    get: &impl Fn(&str) -> Option<String>,
    oauth: bool,
) -> Result<OauthSettings, ConfigError> {
    let open_base = get("WECHAT_OPEN_BASE").unwrap_or_else(|| DEFAULT_OPEN_BASE.to_owned());
    if !(open_base.starts_with("https://") || open_base.starts_with("http://")) {
        return Err(problem("WECHAT_OPEN_BASE", "must be an http(s) URL"));
    }
    let public_url = get("PUBLIC_URL")
        .map(|u| {
            origin(u.trim_end_matches('/')).ok_or_else(|| {
                problem(
                    "PUBLIC_URL",
                    "must be an http(s) URL without a path, like https://login.example.com",
                )
            })
        })
        .transpose()?;
    let return_origins = get("OAUTH_RETURN_ORIGINS")
        .map(|list| {
            list.split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(|o| {
                    origin(o.trim_end_matches('/')).ok_or_else(|| {
                        problem(
                            "OAUTH_RETURN_ORIGINS",
                            format!("must list origins like https://www.example.com, not {o:?}"),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?
        .unwrap_or_default();
    if oauth && public_url.is_none() {
        return Err(problem(
            "PUBLIC_URL",
            "is missing (LOGIN_MODES has oauth: WeChat returns visitors to it)",
        ));
    }
    if oauth && return_origins.is_empty() {
        return Err(problem(
            "OAUTH_RETURN_ORIGINS",
            "is missing (LOGIN_MODES has oauth: the sites visitors may return to)",
        ));
    }
    Ok(OauthSettings {
        public_url,
        open_base,
        return_origins,
    })
}

/// `s` when it is an origin (`scheme://host[:port]`, http or https, nothing after it),
/// lowercased as browsers send it.
fn origin(s: &str) -> Option<String> {
    let url = url::Url::parse(s).ok()?;
    let is_origin = matches!(url.scheme(), "http" | "https")
        && url.host().is_some()
        && url.username().is_empty()
        && url.password().is_none()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none()
        && !s.ends_with('/');
    is_origin.then(|| url.origin().ascii_serialization())
}

fn parse_or<T: FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    setting: &'static str,
    default: T,
) -> Result<T, ConfigError> {
    match get(setting) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| problem(setting, format!("is not valid: {v:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> HashMap<String, String> {
        [
            ("API_TOKEN", "page-token-123"),
            ("APPID", "wx123"),
            ("SECRET_KEY", "s3cret-value"),
            ("MP_TOKEN", "mp-token"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    fn load(vars: &HashMap<String, String>) -> Result<Config, ConfigError> {
        Config::from_lookup(|k| vars.get(k).cloned())
    }

    #[test]
    fn every_setting_read_is_in_the_example_environment_file() {
        let asked = std::cell::RefCell::new(std::collections::BTreeSet::new());
        let vars = base();
        Config::from_lookup(|k| {
            asked.borrow_mut().insert(k.to_owned());
            vars.get(k).cloned()
        })
        .unwrap();
        let mut asked = asked.into_inner();
        // Read by `Settings::log`, not by `Config`.
        asked.extend(["LOG_YAML".to_owned(), "RUST_LOG".to_owned()]);
        let example = include_str!("../deploy/env.example");
        let missing: Vec<_> = asked
            .iter()
            .filter(|k| {
                !example.lines().any(|line| {
                    line.trim_start_matches(['#', ' '])
                        .strip_prefix(k.as_str())
                        .is_some_and(|rest| rest.starts_with('='))
                })
            })
            .collect();
        assert!(missing.is_empty(), "deploy/env.example lacks {missing:?}");
    }

    #[test]
    fn defaults_apply_when_only_credentials_are_set() {
        let c = load(&base()).unwrap();
        assert_eq!(c.bind.to_string(), "0.0.0.0:8000");
        assert_eq!(c.sse_timeout, Duration::from_secs(120));
        assert_eq!(c.pool_size, 10);
        assert_eq!(c.qr_ttl_secs, 1800);
        assert_eq!(c.wechat_api_base, DEFAULT_BASE);
        assert_eq!(c.sse_per_ip_open, DEFAULT_PER_IP_OPEN);
        assert_eq!(c.sse_ipv6_prefix, 64);
        assert_eq!(c.qr_daily_budget, 90_000);
    }

    #[test]
    fn a_missing_setting_is_named() {
        let mut vars = base();
        vars.remove("MP_TOKEN");
        let e = load(&vars).unwrap_err();
        assert_eq!(e.to_string(), "configuration: MP_TOKEN is missing");
    }

    #[test]
    fn invalid_numbers_and_bounds_are_refused_with_the_setting_named() {
        for (k, v) in [
            ("SSE_TIMEOUT_SECS", "abc"),
            ("SSE_TIMEOUT_SECS", "0"),
            ("QR_TTL_SECS", "2592001"),
            ("QR_TTL_SECS", "100"),
            ("POOL_SIZE", "-1"),
            ("BIND", "nowhere"),
            ("WECHAT_API_BASE", "ftp://x"),
            ("ENCODING_AES_KEY", "too-short"),
            (
                "ENCODING_AES_KEY",
                "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH",
            ),
            (
                "ENCODING_AES_KEY_PREVIOUS",
                "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
            ),
            ("LOGIN_TOKEN_SECRET", "short"),
            ("LOGIN_TOKEN_TTL_SECS", "0"),
            ("TRUSTED_PROXIES", "10.0.0.0/8, nonsense"),
            ("MAX_STREAMS", "0"),
            ("SSE_PER_IP_PER_MIN", "-5"),
            ("SHUTDOWN_GRACE_SECS", "0"),
            ("RESULT_KEEP_SECS", "0"),
            ("FORWARD_URL", "ftp://x"),
            ("DEMO_PAGE", "maybe"),
            ("LOGIN_MODES", "sms"),
            ("LOGIN_MODES", "qr,qr"),
            ("LOGIN_MODES", "qr,code,"),
            ("CODE_DIGITS", "5"),
            ("CODE_DIGITS", "11"),
            ("CODE_DIGITS", "six"),
            ("CODE_ATTEMPTS_PER_MIN", "0"),
            ("CODE_ATTEMPTS_PER_MIN", "-1"),
            ("ACCOUNT_QRCODE_URL", "ftp://x"),
            ("LOGIN_MODES", "oauth"),
            ("PUBLIC_URL", "https://login.example.com/path"),
            ("PUBLIC_URL", "login.example.com"),
            ("WECHAT_OPEN_BASE", "ftp://x"),
            ("OAUTH_RETURN_ORIGINS", "https://www.example.com/app"),
            ("OAUTH_RETURN_ORIGINS", "www.example.com"),
        ] {
            let mut vars = base();
            vars.insert(k.into(), v.into());
            let e = load(&vars).unwrap_err();
            assert_eq!(e.setting, k, "{k}={v}");
        }
    }

    #[test]
    fn login_modes_default_to_both_and_code_alone_needs_no_appsecret() {
        let c = load(&base()).unwrap();
        assert_eq!(c.default_account().login_modes, LoginModes::BOTH);
        assert_eq!(c.code_digits, CodeLength::DEFAULT);
        assert_eq!(c.code_attempts_per_min, 5);
        assert_eq!(c.default_account().account_qrcode_url, None);
        for (v, qr, code) in [
            ("qr", true, false),
            ("code", false, true),
            ("qr,code", true, true),
            (" code , qr ", true, true),
        ] {
            let c = accepted("LOGIN_MODES", v);
            assert_eq!(
                (
                    c.default_account().login_modes.qr,
                    c.default_account().login_modes.code
                ),
                (qr, code),
                "{v}"
            );
        }
        assert!(refusal("LOGIN_MODES", "sms").contains("qr, code or qr,code"));
        assert_eq!(accepted("CODE_DIGITS", "10").code_digits.get(), 10);
        let mut vars = base();
        vars.remove("SECRET_KEY");
        assert_eq!(load(&vars).unwrap_err().setting, "SECRET_KEY");
        vars.insert("LOGIN_MODES".into(), "code".into());
        assert!(!load(&vars).unwrap().default_account().login_modes.qr);
        // The unionid is asked with an access token, which takes the appsecret.
        vars.insert("USER_INFO".into(), "true".into());
        assert_eq!(load(&vars).unwrap_err().setting, "SECRET_KEY");
    }

    /// Loads `base()` with `setting=value` and returns the refusal, naming `setting`.
    fn refusal(setting: &str, value: &str) -> String {
        let mut vars = base();
        vars.insert(setting.into(), value.into());
        let e = load(&vars).unwrap_err();
        assert_eq!(e.setting, setting, "{setting}={value}");
        e.to_string()
    }

    fn accepted(setting: &str, value: &str) -> Config {
        let mut vars = base();
        vars.insert(setting.into(), value.into());
        load(&vars).unwrap()
    }

    #[test]
    fn oauth_needs_a_public_url_and_return_origins() {
        let mut vars = base();
        vars.insert("LOGIN_MODES".into(), "qr,oauth".into());
        assert_eq!(load(&vars).unwrap_err().setting, "PUBLIC_URL");
        vars.insert("PUBLIC_URL".into(), "https://Login.example.com/".into());
        assert_eq!(load(&vars).unwrap_err().setting, "OAUTH_RETURN_ORIGINS");
        vars.insert(
            "OAUTH_RETURN_ORIGINS".into(),
            "https://www.example.com, http://localhost:3000/".into(),
        );
        let c = load(&vars).unwrap();
        assert!(
            c.default_account().login_modes.oauth
                && c.default_account().login_modes.qr
                && !c.default_account().login_modes.code
        );
        assert_eq!(c.public_url.as_deref(), Some("https://login.example.com"));
        assert_eq!(
            c.oauth_return_origins,
            ["https://www.example.com", "http://localhost:3000"]
        );
        assert_eq!(c.wechat_open_base, DEFAULT_OPEN_BASE);
        // Web authorization exchanges codes with the appsecret.
        vars.insert("LOGIN_MODES".into(), "code,oauth".into());
        vars.remove("SECRET_KEY");
        assert_eq!(load(&vars).unwrap_err().setting, "SECRET_KEY");
        assert!(!load(&base()).unwrap().default_account().login_modes.oauth);
    }

    #[test]
    fn sse_per_ip_open_must_be_a_count() {
        for bad in ["-1", "many", "1.5", "4294967296"] {
            refusal("SSE_PER_IP_OPEN", bad);
        }
        assert_eq!(accepted("SSE_PER_IP_OPEN", "0").sse_per_ip_open, 0);
        assert_eq!(accepted("SSE_PER_IP_OPEN", "8").sse_per_ip_open, 8);
    }

    #[test]
    fn sse_ipv6_prefix_must_be_between_32_and_128_bits() {
        for bad in ["31", "129", "0", "/64", "-64"] {
            refusal("SSE_IPV6_PREFIX", bad);
        }
        assert!(refusal("SSE_IPV6_PREFIX", "129").contains("between 32 and 128"));
        assert_eq!(accepted("SSE_IPV6_PREFIX", "48").sse_ipv6_prefix, 48);
        assert_eq!(accepted("SSE_IPV6_PREFIX", "128").sse_ipv6_prefix, 128);
    }

    #[test]
    fn qr_daily_budget_must_be_a_positive_count() {
        for bad in ["0", "90k", "-3", "1e5", "1000000001"] {
            refusal("QR_DAILY_BUDGET", bad);
        }
        assert!(refusal("QR_DAILY_BUDGET", "0").contains("between 1 and"));
        assert_eq!(accepted("QR_DAILY_BUDGET", "3").qr_daily_budget, 3);
        // Above WeChat's quota for a fake WeChat or a raised quota (warned of at start-up).
        let raised = accepted("QR_DAILY_BUDGET", "500000");
        assert_eq!(raised.qr_daily_budget, 500_000);
    }

    #[test]
    fn safe_mode_keys_are_read_with_rotation() {
        let mut vars = base();
        vars.insert(
            "ENCODING_AES_KEY".into(),
            "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG".into(),
        );
        assert!(
            load(&vars)
                .unwrap()
                .default_account()
                .aes_keys
                .clone()
                .is_some()
        );
        vars.insert(
            "ENCODING_AES_KEY_PREVIOUS".into(),
            "bcdefghijklmnopqrstuvwxyz0123456789ABCDEFGa".into(),
        );
        let keys = load(&vars)
            .unwrap()
            .default_account()
            .aes_keys
            .clone()
            .unwrap();
        assert!(keys.previous().is_some());
        assert!(!format!("{keys:?}").contains("abcdefghijklmnop"));
    }

    #[test]
    fn secrets_never_appear_in_debug_or_errors() {
        let c = load(&base()).unwrap();
        let printed = format!("{c:?}");
        for secret in ["page-token-123", "s3cret-value", "mp-token"] {
            assert!(!printed.contains(secret), "{secret} leaked");
        }
        let mut vars = base();
        vars.insert("API_TOKEN".into(), "short".into());
        assert!(!load(&vars).unwrap_err().to_string().contains("short"));
    }

    #[test]
    fn the_token_broker_key_is_long_and_apart_from_the_other_tokens() {
        let mut vars = base();
        assert!(load(&vars).unwrap().token_broker_key.is_none());
        for bad in [
            "too-short",
            "page-token-123-and-more",
            "metrics-token-0123456789",
        ] {
            vars.insert("API_TOKEN".into(), "page-token-123-and-more".into());
            vars.insert("METRICS_TOKEN".into(), "metrics-token-0123456789".into());
            vars.insert("TOKEN_BROKER_KEY".into(), bad.into());
            let e = load(&vars).unwrap_err().to_string();
            assert!(e.contains("TOKEN_BROKER_KEY") && !e.contains(bad), "{e}");
        }
        vars.insert("TOKEN_BROKER_KEY".into(), "broker-key-0123456789".into());
        let key = load(&vars).unwrap().token_broker_key.unwrap();
        assert!(key.ct_eq("broker-key-0123456789"));
    }

    #[test]
    fn redis_url_needs_a_shared_login_token_key_and_is_never_printed() {
        let mut vars = base();
        vars.insert("REDIS_URL".into(), "redis://:hunter2@cache:6379".into());
        let e = load(&vars).unwrap_err();
        assert_eq!(e.setting, "REDIS_URL");
        assert!(!e.to_string().contains("hunter2"));
        vars.insert(
            "LOGIN_TOKEN_SECRET".into(),
            "0123456789abcdef0123456789abcdef".into(),
        );
        let c = load(&vars).unwrap();
        assert!(c.redis_url.is_some());
        assert!(!format!("{c:?}").contains("hunter2"));
        vars.insert("REDIS_URL".into(), "http://hunter2@cache".into());
        let e = load(&vars).unwrap_err();
        assert_eq!(e.setting, "REDIS_URL");
        assert!(!e.to_string().contains("hunter2"));
    }

    #[test]
    fn redis_cluster_urls_name_seed_nodes_alone_and_never_print_a_password() {
        let mut vars = base();
        vars.insert(
            "REDIS_CLUSTER_URLS".into(),
            "redis://:hunter2@n1:6379, rediss://n2:6380,".into(),
        );
        assert_eq!(load(&vars).unwrap_err().setting, "REDIS_CLUSTER_URLS");
        vars.insert(
            "LOGIN_TOKEN_SECRET".into(),
            "0123456789abcdef0123456789abcdef".into(),
        );
        let c = load(&vars).unwrap();
        let seeds = c.redis_cluster.as_ref().unwrap();
        assert_eq!(seeds.len(), 2);
        assert_eq!(seeds[1].expose(), "rediss://n2:6380");
        assert!(c.shares_state() && c.redis_url.is_none() && c.redis_sentinel.is_none());
        assert!(!format!("{c:?}").contains("hunter2"));
        for bad in [",", "n1:6379", "redis://n1,http://:hunter2@n2"] {
            vars.insert("REDIS_CLUSTER_URLS".into(), bad.into());
            let e = load(&vars).unwrap_err();
            assert_eq!(e.setting, "REDIS_CLUSTER_URLS", "{bad}");
            assert!(!e.to_string().contains("hunter2"));
        }
        vars.insert("REDIS_CLUSTER_URLS".into(), "redis://n1".into());
        for other in [("REDIS_URL", "redis://n1"), ("REDIS_SENTINELS", "s1:26379")] {
            let mut both = vars.clone();
            both.insert(other.0.into(), other.1.into());
            if other.0 == "REDIS_SENTINELS" {
                both.insert("REDIS_MASTER_NAME".into(), "mymaster".into());
            }
            assert_eq!(load(&both).unwrap_err().setting, "REDIS_CLUSTER_URLS");
        }
    }

    #[test]
    fn redis_sentinels_name_the_primary_with_its_companions_and_never_print_the_password() {
        let mut vars = base();
        vars.insert(
            "LOGIN_TOKEN_SECRET".into(),
            "0123456789abcdef0123456789abcdef".into(),
        );
        vars.insert(
            "REDIS_SENTINELS".into(),
            " s1:26379, [::1]:26380 ,10.0.0.3:26381".into(),
        );
        assert_eq!(load(&vars).unwrap_err().setting, "REDIS_MASTER_NAME");
        vars.insert("REDIS_MASTER_NAME".into(), "mymaster".into());
        vars.insert("REDIS_PASSWORD".into(), "hunter2".into());
        vars.insert("REDIS_DB".into(), "2".into());
        let c = load(&vars).unwrap();
        let s = c.redis_sentinel.as_ref().unwrap();
        assert_eq!(s.sentinels[0], ("s1".to_owned(), 26379));
        assert_eq!(s.sentinels[1], ("::1".to_owned(), 26380));
        assert_eq!((s.master_name.as_str(), s.db), ("mymaster", 2));
        assert!(c.shares_state() && c.redis_url.is_none());
        assert!(!format!("{c:?}").contains("hunter2"));
        for bad in ["s1", "s1:0", "s1:x", ":26379", "a@b:1", ","] {
            vars.insert("REDIS_SENTINELS".into(), bad.into());
            assert_eq!(load(&vars).unwrap_err().setting, "REDIS_SENTINELS", "{bad}");
        }
        vars.insert("REDIS_SENTINELS".into(), "s1:26379".into());
        vars.insert("REDIS_DB".into(), "-1".into());
        assert_eq!(load(&vars).unwrap_err().setting, "REDIS_DB");
        vars.insert("REDIS_DB".into(), "0".into());
        vars.insert("REDIS_URL".into(), "redis://cache:6379".into());
        assert_eq!(load(&vars).unwrap_err().setting, "REDIS_SENTINELS");
        vars.remove("REDIS_URL");
        vars.remove("LOGIN_TOKEN_SECRET");
        assert_eq!(load(&vars).unwrap_err().setting, "REDIS_SENTINELS");
        // The companions without the sentinels would be ignored: refused instead.
        let mut vars = base();
        vars.insert("REDIS_PASSWORD".into(), "hunter2".into());
        let e = load(&vars).unwrap_err();
        assert_eq!(e.setting, "REDIS_PASSWORD");
        assert!(!e.to_string().contains("hunter2"));
    }

    #[test]
    fn dotenv_values_are_read_and_the_environment_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        std::fs::write(&path, "APPID=wx-from-file\nPATH=overridden\n").unwrap();
        let settings = Settings::load(&path).unwrap();
        assert_eq!(settings.raw("APPID").as_deref(), Some("wx-from-file"));
        assert_ne!(settings.raw("PATH").as_deref(), Some("overridden"));
    }

    /// `base()` with `ACCOUNTS_FILE` holding `text` (mode 600), without the environment's
    /// account when `env_account` is false.
    fn with_file(
        text: &str,
        env_account: bool,
    ) -> (tempfile::TempDir, Result<Config, ConfigError>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("accounts.toml");
        std::fs::write(&path, text).unwrap();
        let mut vars = base();
        if !env_account {
            for k in ["APPID", "SECRET_KEY", "MP_TOKEN"] {
                vars.remove(k);
            }
        }
        vars.insert("ACCOUNTS_FILE".into(), path.to_string_lossy().into_owned());
        let loaded = load(&vars);
        (dir, loaded)
    }

    const SHOP: &str = r#"
[[account]]
name = "shop"
appid = "wxshop"
secret_key = "shop-secret-value"
mp_token = "shop-mp-token"
login_modes = "code"
reply_text = "欢迎"
user_info = true
"#;

    #[test]
    fn the_accounts_file_adds_accounts_beside_the_environments_default() {
        let (_dir, c) = with_file(SHOP, true);
        let c = c.unwrap();
        let names: Vec<_> = c.accounts.iter().map(|a| a.name.to_string()).collect();
        assert_eq!(names, ["default", "shop"]);
        let shop = c.accounts.iter().nth(1).unwrap();
        assert_eq!(shop.appid, "wxshop");
        assert!(!shop.login_modes.qr && shop.login_modes.code);
        assert_eq!(shop.reply_text.as_deref(), Some("欢迎"));
        assert!(shop.user_info);
        assert!(!c.default_account().user_info);
        assert!(!format!("{c:?}").contains("shop-secret-value"));
        assert!(!format!("{c:?}").contains("shop-mp-token"));
    }

    #[test]
    fn the_file_may_define_default_instead_of_the_environment_but_not_both() {
        let file = SHOP.replace("\"shop\"", "\"default\"");
        let (_dir, c) = with_file(&file, false);
        assert_eq!(c.unwrap().default_account().appid, "wxshop");
        let (_dir, c) = with_file(&file, true);
        assert!(c.unwrap_err().problem.contains("define it in one place"));
        let (_dir, c) = with_file(SHOP, false);
        assert!(
            c.unwrap_err()
                .problem
                .contains("no account is named default")
        );
    }

    #[test]
    fn a_bad_accounts_file_is_refused_with_one_line_and_no_secret() {
        for (text, says) in [
            (
                "[[account]\nsecret_key = \"shop-secret-value\"",
                "not valid TOML (line 1)",
            ),
            ("[[account]]\nname = \"Shop!\"", "name must be lower-case"),
            ("[[account]]\nappid = \"wxshop\"", "account #1 has no name"),
            (
                "[[account]]\nname = \"shop\"\nsecret_key = \"shop-secret-value\"\nmp_token = \"t\"",
                "account shop: appid is missing",
            ),
            (
                &SHOP.replace("user_info = true", "appsecret = \"shop-secret-value\""),
                "unknown setting \"appsecret\"",
            ),
            (
                &SHOP.replace("login_modes = \"code\"", "forward_url = \"ftp://x\""),
                "account shop: forward_url must be an http(s) URL",
            ),
            (
                &format!("{SHOP}{SHOP}"),
                "the account shop is defined twice",
            ),
            (
                &format!("{SHOP}{}", SHOP.replace("\"shop\"", "\"blog\"")),
                "the accounts blog and shop have the same appid",
            ),
            ("[account]\nname = \"shop\"", "array of tables"),
            ("accounts = 1", "unknown top-level key"),
        ] {
            let (_dir, c) = with_file(text, true);
            let e = c.unwrap_err();
            assert_eq!(e.setting, "ACCOUNTS_FILE", "{text}");
            let line = e.to_string();
            assert!(line.contains(says), "{line} lacks {says}");
            assert!(!line.contains("shop-secret-value"), "{line}");
            assert_eq!(line.lines().count(), 1, "{line}");
        }
        let mut vars = base();
        vars.insert("ACCOUNTS_FILE".into(), "/nonexistent/accounts.toml".into());
        assert!(load(&vars).unwrap_err().problem.contains("cannot be read"));
    }

    #[cfg(unix)]
    #[test]
    fn an_accounts_file_others_can_read_is_warned_of() {
        use std::os::unix::fs::PermissionsExt as _;
        let (dir, _) = with_file(SHOP, true);
        let path = dir.path().join("accounts.toml");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(accounts_file_warning(&path), None);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let warning = accounts_file_warning(&path).unwrap();
        assert!(warning.contains("chmod 600"), "{warning}");
    }

    #[test]
    fn account_names_are_short_slugs() {
        for good in ["default", "shop", "shop-2", "a_b", "0"] {
            assert!(AccountName::parse(good).is_some(), "{good}");
        }
        for bad in [
            "",
            "Shop",
            "-shop",
            "shop/1",
            "shop 1",
            &"a".repeat(33),
            "店",
        ] {
            assert!(AccountName::parse(bad).is_none(), "{bad}");
        }
    }
}
