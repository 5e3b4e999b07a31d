//! The Official Accounts one deployment serves, each with its own runtime.
//!
//! An [`Account`] is one Official Account as it runs: its settings ([`AccountConfig`]), its
//! WeChat API client and access-token cache, its login flow (QR stock, sessions, login codes,
//! login tokens with its appid), its callback checker and its forwarder. Nothing of one
//! account reaches another's: each has its own store keys (`wxlogin:<appid>:` in Redis, its
//! own maps in memory), so a scan or a code on one account's callback URL can only resolve
//! that account's streams.
//!
//! [`Accounts`] is the registry, by name. Look an account up with
//! [`Accounts::get`] (`state.accounts.get(name)`) or take [`Accounts::default_account`] (the
//! account of the environment, of the plain `/wechat_event` and of `/sse` without
//! `?account=`). Hold the `Arc<Account>` for the length of one request or stream: the set can
//! be replaced while the process runs, and a replaced account keeps serving whoever holds it.
//!
//! - [`reload`]: re-reading `ACCOUNTS_FILE` on SIGHUP and when it changes.

pub mod reload;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::login_token::LoginTokens;
use crate::config::{AccountConfig, AccountName, AccountSet, Config, QR_LIFE_MARGIN};
use crate::http::forward::Forwarder;
use crate::login::oauth::{OauthFlow, OauthSettings};
use crate::login::pool::QrPool;
use crate::login::{CodePolicy, LoginService};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::store::memory::MemoryStore;
use crate::store::redis::RedisStore;
use crate::wechat::api::WechatApi;
use crate::wechat::callback::Checker;
use crate::wechat::error::ApiError;
use crate::wechat::token::TokenCache;

/// Why an account's runtime could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The WeChat client could not be built.
    #[error("cannot set up the WeChat client of account {account}: {source}")]
    Wechat {
        /// The account.
        account: AccountName,
        /// Why.
        #[source]
        source: ApiError,
    },
    /// The account logs in inside WeChat (`login_modes` with `oauth`), which needs
    /// `PUBLIC_URL`, unset: added by a reload, since start-up refuses it.
    #[error(
        "configuration: PUBLIC_URL is missing (LOGIN_MODES of account {account} has oauth: WeChat returns visitors to it)"
    )]
    NoPublicUrl {
        /// The account.
        account: AccountName,
    },
    /// The HTTP client for `FORWARD_URL` could not be built.
    #[error("cannot set up the client for FORWARD_URL of account {account}: {source}")]
    Forward {
        /// The account.
        account: AccountName,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
}

/// One Official Account as it runs. Shared as `Arc<Account>`.
pub struct Account {
    /// Its name: `default`, or the name its `[[account]]` table gives.
    pub name: AccountName,
    /// Its settings as read.
    pub settings: AccountConfig,
    /// Its WeChat API client (user info, OAuth code exchange, QR codes).
    pub wechat: WechatApi,
    /// Its access token, fetched once for all callers (single flight, shared through the
    /// store with the other instances).
    pub tokens: TokenCache,
    /// Its login flow: QR stock, sessions, login codes, login tokens.
    pub login: LoginService,
    /// What checking its callbacks needs: `mp_token`, the appid, the safe-mode keys.
    pub callbacks: Checker,
    /// Its `forward_url`'s client, when set.
    pub forwarder: Option<Forwarder>,
    /// Login inside WeChat's browser, when its `login_modes` has `oauth`.
    pub oauth: Option<OauthFlow>,
    /// Its metrics, labelled with its name at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Ends its background tasks (QR refill, inbox) when it is removed or replaced.
    cancel: CancellationToken,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("name", &self.name)
            .field("appid", &self.settings.appid)
            .finish_non_exhaustive()
    }
}

impl Account {
    /// Starts its background work on `tasks`: the refill of its QR stock (not without QR
    /// codes: no access token, no WeChat API call at all) and its inbox (results for its
    /// streams published by other instances). Both end when the account is retired or the
    /// app stops.
    fn start(&self, tasks: &TaskTracker) {
        if self.login.shows_qr() {
            tasks.spawn(
                self.login
                    .pool()
                    .clone()
                    .run_refill(self.cancel.child_token()),
            );
        }
        tasks.spawn(self.login.clone().run_inbox(self.cancel.child_token()));
    }

    /// Ends its background work. Streams that hold it finish on their own.
    fn retire(&self) {
        self.cancel.cancel();
    }
}

/// The `User-Agent` of wxlogin's calls to the WeChat API.
pub const USER_AGENT: &str = concat!("wxlogin/", env!("CARGO_PKG_VERSION"));

/// The WeChat API client of `account` (for the app and `wxlogin check`).
pub fn wechat_api(config: &Config, account: &AccountConfig) -> Result<WechatApi, ApiError> {
    WechatApi::new(
        &config.wechat_api_base,
        account.appid.clone(),
        account.secret_key.clone(),
        config.wechat_timeout,
    )?
    .with_user_agent(USER_AGENT)
}

/// What every account's runtime is made from: the process's settings and shared parts.
pub struct Builder {
    config: Config,
    /// Redis, when state is shared; each account takes its own keys in it.
    redis: Option<RedisStore>,
    /// The login-token issuer; each account's is a copy with its appid.
    login_tokens: LoginTokens,
    /// The default account's metrics, which also count what happens before an account is
    /// known (a stream refused for its token, a callback to an unknown account).
    metrics: Arc<Metrics>,
    /// With the memory store, callbacks signed before the process started are refused (their
    /// bindings died with the previous process). Unix seconds.
    started: i64,
}

impl Builder {
    /// A builder of accounts for `config`'s process.
    pub fn new(
        config: &Config,
        redis: Option<RedisStore>,
        login_tokens: LoginTokens,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            config: config.clone(),
            redis,
            login_tokens,
            metrics,
            started: i64::try_from(crate::auth::unix_now()).unwrap_or(i64::MAX),
        }
    }

    /// The web authorization of `settings`' account, when its `login_modes` has `oauth` (the
    /// configuration checked that `PUBLIC_URL` is set then). WeChat returns the browser to
    /// `/oauth/callback`, with `?account=` for an account other than `default`.
    fn oauth(
        &self,
        settings: &AccountConfig,
        wechat: &WechatApi,
        store: &Arc<dyn Store>,
        tokens: &Arc<LoginTokens>,
        metrics: &Arc<Metrics>,
    ) -> Option<OauthFlow> {
        let public_url = self
            .config
            .public_url
            .as_ref()
            .filter(|_| settings.login_modes.oauth)?;
        let callback = if settings.name.is_default() {
            format!("{public_url}/oauth/callback")
        } else {
            format!("{public_url}/oauth/callback?account={}", settings.name)
        };
        Some(OauthFlow::new(
            wechat.clone(),
            Arc::clone(store),
            Arc::clone(tokens),
            OauthSettings {
                open_base: self.config.wechat_open_base.clone(),
                redirect_uri: callback,
                return_origins: self.config.oauth_return_origins.clone(),
            },
            Arc::clone(metrics),
        ))
    }

    /// What checking the callbacks of `settings`' account needs. In memory, the bindings of
    /// callbacks' queries die with the process: callbacks signed before it started are
    /// refused, so none can be replayed.
    fn checker(&self, settings: &AccountConfig) -> Checker {
        let checker = Checker::new(
            settings.mp_token.clone(),
            settings.appid.clone(),
            settings.aes_keys.clone(),
        );
        match &self.redis {
            Some(_) => checker,
            None => checker.refusing_signed_before(self.started),
        }
    }

    /// `running` under new `settings` that leave its login flow as it is (the same appid,
    /// appsecret, login modes and `user_info`): its callback checker and forwarder are made
    /// anew, while its login flow, access token, QR stock and background work carry on, so
    /// that its open streams are untouched by a new `mp_token`, `encoding_aes_key`,
    /// `reply_text`, `forward_url` or `account_qrcode_url`. `None` when the flow must be
    /// rebuilt.
    fn refresh(
        &self,
        running: &Account,
        settings: &AccountConfig,
    ) -> Result<Option<Account>, BuildError> {
        let old = &running.settings;
        let same_flow = old.appid == settings.appid
            && old.secret_key.ct_eq(settings.secret_key.expose())
            && old.login_modes == settings.login_modes
            && old.user_info == settings.user_info;
        if !same_flow {
            return Ok(None);
        }
        Ok(Some(Account {
            name: settings.name.clone(),
            settings: settings.clone(),
            wechat: running.wechat.clone(),
            tokens: running.tokens.clone(),
            login: running.login.clone(),
            callbacks: self.checker(settings),
            forwarder: forwarder(settings)?,
            oauth: running.oauth.clone(),
            metrics: Arc::clone(&running.metrics),
            // Its background work is the running account's, which goes on.
            cancel: running.cancel.clone(),
        }))
    }

    /// The runtime of `settings`, not yet started, counting into `metrics` (the account's
    /// own: `/metrics` labels them with its name).
    pub fn build(
        &self,
        settings: AccountConfig,
        metrics: Arc<Metrics>,
        parent: &CancellationToken,
    ) -> Result<Account, BuildError> {
        let config = &self.config;
        let name = settings.name.clone();
        if settings.login_modes.oauth && config.public_url.is_none() {
            return Err(BuildError::NoPublicUrl { account: name });
        }
        let observed = Arc::clone(&metrics);
        let wechat = wechat_api(config, &settings)
            .map_err(|source| BuildError::Wechat {
                account: name.clone(),
                source,
            })?
            .with_observer(Arc::new(move |api, result| {
                let result = match result {
                    Ok(()) => "ok".to_owned(),
                    Err(ApiError::Wechat { errcode, .. }) => errcode.to_string(),
                    Err(ApiError::Parse { .. } | ApiError::TooLarge { .. }) => {
                        "unreadable".to_owned()
                    }
                    Err(_) => "request_error".to_owned(),
                };
                observed.wechat_call(api, &result);
            }));
        let store: Arc<dyn Store> = match &self.redis {
            Some(redis) => Arc::new(redis.for_appid(&settings.appid)),
            None => Arc::new(MemoryStore::new()),
        };
        let tokens = TokenCache::new(wechat.clone(), store.token_share());
        let pool = QrPool::new(
            tokens.clone(),
            Arc::clone(&store),
            (config.pool_size, config.qr_ttl_secs),
            config.sse_timeout + QR_LIFE_MARGIN,
            config.qr_daily_budget,
            Arc::clone(&metrics),
        );
        let login_tokens = Arc::new(self.login_tokens.for_appid(&settings.appid));
        let oauth = self.oauth(&settings, &wechat, &store, &login_tokens, &metrics);
        let login = LoginService::new(
            pool,
            store,
            login_tokens,
            (config.sse_timeout, config.result_keep),
            settings.login_modes.qr,
            settings.login_modes.code.then_some(CodePolicy {
                length: config.code_digits,
                attempts_per_min: config.code_attempts_per_min,
            }),
            Arc::clone(&metrics),
        );
        let login = if settings.user_info {
            login.with_user_info(tokens.clone())
        } else {
            login
        };
        let forwarder = forwarder(&settings)?;
        let callbacks = self.checker(&settings);
        Ok(Account {
            name,
            settings,
            wechat,
            tokens,
            login,
            callbacks,
            forwarder,
            oauth,
            metrics,
            cancel: parent.child_token(),
        })
    }
}

/// The client for `settings`' `forward_url`, when set.
fn forwarder(settings: &AccountConfig) -> Result<Option<Forwarder>, BuildError> {
    settings
        .forward_url
        .as_deref()
        .map(Forwarder::new)
        .transpose()
        .map_err(|source| BuildError::Forward {
            account: settings.name.clone(),
            source,
        })
}

/// What [`Accounts::replace`] changed, by account name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Accounts served from now on.
    pub added: Vec<AccountName>,
    /// Accounts rebuilt with new settings (their open streams are those of the old runtime).
    pub changed: Vec<AccountName>,
    /// Accounts no longer served.
    pub removed: Vec<AccountName>,
}

/// One set of running accounts: `default` always among them.
struct Set {
    default: Arc<Account>,
    by_name: BTreeMap<AccountName, Arc<Account>>,
}

/// The accounts served now, by name. Cheap to read: a lookup takes a read lock for the
/// length of a map access and hands out an `Arc`.
pub struct Accounts {
    current: RwLock<Arc<Set>>,
    builder: Builder,
    /// Where accounts' background tasks run; awaited at shutdown.
    tasks: TaskTracker,
    /// The app's: cancelled at shutdown.
    cancel: CancellationToken,
}

impl Accounts {
    /// Builds and starts every account of `config` (`default` among them).
    pub fn start(builder: Builder, cancel: CancellationToken) -> Result<Self, BuildError> {
        let tasks = TaskTracker::new();
        let default = Arc::new(builder.build(
            builder.config.accounts.default_account().clone(),
            Arc::clone(&builder.metrics),
            &cancel,
        )?);
        let mut by_name = BTreeMap::new();
        by_name.insert(default.name.clone(), Arc::clone(&default));
        for settings in builder.config.accounts.iter().skip(1) {
            let account = Arc::new(builder.build(settings.clone(), Metrics::new(), &cancel)?);
            by_name.insert(account.name.clone(), account);
        }
        for account in by_name.values() {
            account.start(&tasks);
        }
        Ok(Self {
            current: RwLock::new(Arc::new(Set { default, by_name })),
            builder,
            tasks,
            cancel,
        })
    }

    fn set(&self) -> Arc<Set> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The account named `name`, if it is served now.
    pub fn get(&self, name: &str) -> Option<Arc<Account>> {
        let name = AccountName::parse(name)?;
        self.set().by_name.get(&name).cloned()
    }

    /// The account named `default`: the environment's (or the file's `default`).
    pub fn default_account(&self) -> Arc<Account> {
        Arc::clone(&self.set().default)
    }

    /// Every account served now, by name.
    pub fn all(&self) -> Vec<Arc<Account>> {
        self.set().by_name.values().cloned().collect()
    }

    /// The account whose appid is `appid`, if served now.
    pub fn by_appid(&self, appid: &str) -> Option<Arc<Account>> {
        self.set()
            .by_name
            .values()
            .find(|a| a.settings.appid == appid)
            .cloned()
    }

    /// Removes expired sessions and keys from every account's store (the memory store).
    pub fn purge_expired(&self) {
        for account in self.set().by_name.values() {
            account.login.purge_expired();
        }
    }

    /// Serves `accounts` from now on in place of the set served now. Accounts whose settings
    /// are unchanged keep running as they are (their open streams untouched); changed ones
    /// keep their login flow when it is unchanged (see [`Builder::refresh`]: their open
    /// streams are untouched too), else are rebuilt; new ones are built and started; removed
    /// and rebuilt ones are retired: their background work ends, and streams that hold them
    /// finish on their own. When an account cannot be built, nothing changes.
    pub fn replace(&self, accounts: &AccountSet) -> Result<Changes, BuildError> {
        let old = self.set();
        let mut changes = Changes::default();
        let mut by_name = BTreeMap::new();
        let mut fresh = Vec::new();
        // Accounts whose running flow carries on under new settings: not retired.
        let mut carried = Vec::new();
        for settings in accounts.iter() {
            let name = settings.name.clone();
            let account = match old.by_name.get(&name) {
                Some(running) if running.settings.same_as(settings) => Arc::clone(running),
                Some(running) => {
                    changes.changed.push(name.clone());
                    match self.builder.refresh(running, settings)? {
                        Some(refreshed) => {
                            carried.push(name.clone());
                            Arc::new(refreshed)
                        }
                        None => {
                            // A rebuilt account keeps counting where it was.
                            let metrics = Arc::clone(&running.metrics);
                            let built = Arc::new(self.builder.build(
                                settings.clone(),
                                metrics,
                                &self.cancel,
                            )?);
                            fresh.push(Arc::clone(&built));
                            built
                        }
                    }
                }
                None => {
                    changes.added.push(name.clone());
                    let built = Arc::new(self.builder.build(
                        settings.clone(),
                        Metrics::new(),
                        &self.cancel,
                    )?);
                    fresh.push(Arc::clone(&built));
                    built
                }
            };
            by_name.insert(name, account);
        }
        let Some(default) = by_name.get(&AccountName::default_name()).cloned() else {
            // An `AccountSet` always holds `default`: nothing to install otherwise.
            return Ok(changes);
        };
        for account in &fresh {
            account.start(&self.tasks);
        }
        for (name, running) in &old.by_name {
            let kept = by_name.get(name).is_some_and(|a| Arc::ptr_eq(a, running))
                || carried.contains(name);
            if !kept {
                running.retire();
                if !by_name.contains_key(name) {
                    changes.removed.push(name.clone());
                }
            }
        }
        *self.current.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(Set { default, by_name });
        Ok(changes)
    }

    /// Waits for every account's background work to end, after the app's cancellation.
    pub async fn stopped(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}
