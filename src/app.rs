//! The composition root: the one place that knows every part.
//!
//! `App::build` wires configuration, WeChat client, QR pool, store and routes; the caller
//! passes the listener (tests bind port 0) and the shutdown signal (tests use their own).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::accounts::reload::Reloader;
use crate::accounts::{Accounts, BuildError, Builder};
use crate::auth::login_token::{KeyError, LoginTokens};
use crate::auth::page_key::PageKeys;
use crate::config::Config;
use crate::http::broker::Broker;
use crate::http::limits::{LimitSettings, Limits, default_max_streams, reserve_fd_table};
use crate::http::{self, AppState, Shared};
use crate::login::LoginService;
use crate::login::pool::DAILY_QR_QUOTA;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::store::redis::{RedisSetupError, RedisStore, redact_url};

/// How often expired sessions and keys are purged.
const PURGE_INTERVAL: Duration = Duration::from_secs(1);

/// Why the app could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An account's runtime could not be built.
    #[error(transparent)]
    Account(#[from] BuildError),
    /// The login token key could not be loaded.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// `REDIS_URL` is not usable.
    #[error(transparent)]
    Redis(#[from] RedisSetupError),
    /// Serving failed.
    #[error("server error: {0}")]
    Serve(#[source] std::io::Error),
}

/// The login token issuer the configuration asks for: HS256 with `LOGIN_TOKEN_SECRET`, else
/// EdDSA with the key in `LOGIN_TOKEN_KEY_FILE`, else EdDSA with a key made now. Without
/// Redis the used token ids are kept in this process only, so it accepts only its own tokens.
/// Its appid is the default account's; each account issues with its own.
fn login_tokens(config: &Config) -> Result<LoginTokens, KeyError> {
    let (appid, audience, ttl) = (
        config.default_account().appid.as_str(),
        config.login_token_audience.as_str(),
        config.login_token_ttl,
    );
    let tokens = match (&config.login_token_secret, &config.login_token_key_file) {
        (Some(secret), _) => LoginTokens::hs256(secret, appid, audience, ttl),
        (None, Some(path)) => LoginTokens::ed25519_from_pem_file(path, appid, audience, ttl),
        (None, None) => LoginTokens::ed25519_generated(appid, audience, ttl),
    }?;
    Ok(if config.shares_state() {
        tokens
    } else {
        tokens.used_ids_kept_in_this_process()
    })
}

/// Pending connections the kernel may queue. A burst of browsers opening streams at once
/// (thousands after a page goes live) must not overflow the queue: a dropped SYN is retried
/// by the client only after a second. The kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` with a deep accept queue (`TcpListener::bind` asks for 1,024).
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// A built, not yet running, wxlogin.
pub struct App {
    listener: TcpListener,
    router: Router,
    accounts: Arc<Accounts>,
    /// Re-reads `ACCOUNTS_FILE`, when there is one.
    reloader: Option<Arc<Reloader>>,
    page_keys: Arc<PageKeys>,
    limits: Arc<Limits>,
    cancel: CancellationToken,
    grace: Duration,
}

/// The shared Redis when `REDIS_URL`, `REDIS_SENTINELS` or `REDIS_CLUSTER_URLS` is set (several instances), its keys those of the
/// default account; each account takes its own keys in it ([`RedisStore::for_appid`]).
/// Without, every account keeps its state in memory (one process).
fn redis(config: &Config) -> Result<Option<RedisStore>, RedisSetupError> {
    // Random per process: names this instance's streams and inbox in Redis.
    let instance: Arc<str> = crate::auth::random_id()[..12].into();
    let appid = &config.default_account().appid;
    if let Some(seeds) = &config.redis_cluster {
        tracing::info!(
            nodes = seeds.len(),
            %instance,
            "state is shared in a Redis Cluster"
        );
        return RedisStore::with_cluster(seeds, appid, instance).map(Some);
    }
    if let Some(sentinel) = &config.redis_sentinel {
        tracing::info!(
            master = %sentinel.master_name,
            sentinels = sentinel.sentinels.len(),
            %instance,
            "state is shared in Redis, its primary found through Sentinel"
        );
        return RedisStore::with_sentinel(sentinel, appid, instance).map(Some);
    }
    let Some(url) = &config.redis_url else {
        return Ok(None);
    };
    tracing::info!(redis = %redact_url(url.expose()), %instance, "state is shared in Redis");
    Ok(Some(RedisStore::new(url, appid, instance)?))
}

/// `wxlogin serve`: the service against the real WeChat API until `shutdown`; with
/// `DEMO_PAGE` the demo page at `/`.
pub async fn serve(
    config: &Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AppError> {
    // DEMO_PAGE puts API_TOKEN into a public page, as the FastAPI demo did: for trials only.
    let demo = config
        .demo_page
        .then(|| http::assets::demo_routes(config.api_token.clone(), false));
    let app = App::build(config, demo).await?;
    if let Some(reloader) = app.reloader() {
        tokio::spawn(reload_on_hangup(reloader));
    }
    let addr = app.local_addr().map_err(AppError::Serve)?;
    tracing::info!(%addr, "wxlogin serving");
    app.run_until(shutdown).await
}

/// Re-reads `ACCOUNTS_FILE` on every SIGHUP (the binary's; tests change the file instead).
async fn reload_on_hangup(reloader: Arc<Reloader>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; ACCOUNTS_FILE is re-read when it changes");
            return;
        };
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: re-reading ACCOUNTS_FILE");
            reloader.reload();
        }
    }
    #[cfg(not(unix))]
    drop(reloader);
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM: what the binary passes as the shutdown signal.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            // No SIGTERM handler: Ctrl-C still stops the process.
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

impl App {
    /// Builds the app and binds `config.bind`.
    pub async fn build(config: &Config, extra: Option<Router>) -> Result<Self, AppError> {
        let listener = bind(config.bind).map_err(|source| AppError::Bind {
            addr: config.bind,
            source,
        })?;
        Self::with_listener(config, listener, extra)
    }

    /// Builds the app on a listener the caller bound. `extra` routes (the sandbox's) are
    /// merged in. Must be called inside a tokio runtime.
    pub fn with_listener(
        config: &Config,
        listener: TcpListener,
        extra: Option<Router>,
    ) -> Result<Self, AppError> {
        let metrics = Metrics::new();
        let redis = redis(config)?;
        let cancel = CancellationToken::new();
        let accounts = Arc::new(Accounts::start(
            Builder::new(
                config,
                redis.clone(),
                login_tokens(config)?,
                Arc::clone(&metrics),
            ),
            cancel.clone(),
        )?);
        // Page tokens are the deployment's, not an account's: their key is kept with the
        // default account's state as it was at start-up.
        let page_store: Arc<dyn Store> = match &redis {
            Some(redis) => Arc::new(redis.clone()),
            None => Arc::clone(accounts.default_account().login.store()),
        };
        let page_keys = Arc::new(PageKeys::new(
            page_store,
            config.api_token.clone(),
            config.page_token_ttl,
        ));
        if !config.shares_state() {
            page_keys.load_from_memory();
        }
        if config.qr_daily_budget > DAILY_QR_QUOTA {
            tracing::warn!(
                budget = config.qr_daily_budget,
                quota = DAILY_QR_QUOTA,
                "QR_DAILY_BUDGET is above WeChat's daily quota: only WeChat's own refusal (45009) will stop QR codes running out"
            );
        }
        let max_streams = config.max_streams.unwrap_or_else(default_max_streams);
        if let Err(e) = reserve_fd_table(&listener, max_streams) {
            tracing::warn!(error = %e, "cannot size the file table at startup; it grows as streams come");
        }
        let limits = Arc::new(Limits::new(LimitSettings {
            per_client_per_min: config.sse_per_ip_per_min,
            per_client_open: config.sse_per_ip_open,
            ipv6_prefix: config.sse_ipv6_prefix,
            trusted: config.trusted_proxies.clone(),
            max_streams,
        }));
        let state = AppState::new(Shared {
            accounts: Arc::clone(&accounts),
            api_token: config.api_token.clone(),
            page_keys: Arc::clone(&page_keys),
            metrics,
            metrics_token: config.metrics_token.clone(),
            limits: Arc::clone(&limits),
            sse_keepalive: config.sse_keepalive,
            broker: config.token_broker_key.clone().map(Broker::new),
            shutdown: cancel.clone(),
        });
        let mut router = http::router(state);
        if let Some(extra) = extra {
            router = router.merge(extra);
        }
        Ok(Self {
            listener,
            router: http::common_layers(router),
            reloader: config.accounts_file.clone().map(|path| {
                Arc::new(Reloader::new(
                    Arc::clone(&accounts),
                    config.env_account.clone(),
                    path,
                ))
            }),
            accounts,
            page_keys,
            limits,
            cancel,
            grace: config.shutdown_grace,
        })
    }

    /// The address the app listens on (the real port when bound to port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The default account's login flow, for inspection (tests, the sandbox).
    pub fn login(&self) -> LoginService {
        self.accounts.default_account().login.clone()
    }

    /// The accounts served.
    pub fn accounts(&self) -> &Arc<Accounts> {
        &self.accounts
    }

    /// What re-reads `ACCOUNTS_FILE` (on SIGHUP, say), when there is one.
    pub fn reloader(&self) -> Option<Arc<Reloader>> {
        self.reloader.clone()
    }

    /// Serves until `shutdown` completes. Then the listener closes, open streams get an
    /// `event: shutdown` telling browsers to reconnect, in-flight requests finish, and the
    /// call returns; if that takes longer than `SHUTDOWN_GRACE_SECS` it returns anyway.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        let Self {
            listener,
            router,
            accounts,
            reloader,
            page_keys,
            limits,
            cancel,
            grace,
        } = self;
        let keys = tokio::spawn(page_keys.keep_loaded(cancel.child_token()));
        let watch = tokio::spawn({
            let cancel = cancel.child_token();
            async move {
                if let Some(reloader) = reloader {
                    reloader.watch(cancel).await;
                }
            }
        });
        let purge_cancel = cancel.child_token();
        let purge_accounts = Arc::clone(&accounts);
        let purge = tokio::spawn(async move {
            let mut tick = tokio::time::interval(PURGE_INTERVAL);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        purge_accounts.purge_expired();
                        limits.purge();
                    }
                    () = purge_cancel.cancelled() => return,
                }
            }
        });
        let stop = cancel.clone();
        let serving = http::serve::serve(listener, router, async move {
            shutdown.await;
            tracing::info!("shutting down: telling open streams to reconnect");
            stop.cancel();
        });
        let deadline = async {
            cancel.cancelled().await;
            tokio::time::sleep(grace).await;
        };
        let served = tokio::select! {
            served = serving => served,
            () = deadline => {
                tracing::warn!(grace_secs = grace.as_secs(), "shutdown grace elapsed; exiting with requests still open");
                Ok(())
            }
        };
        cancel.cancel();
        let _ = tokio::join!(purge, keys, watch, accounts.stopped());
        served.map_err(AppError::Serve)
    }
}
