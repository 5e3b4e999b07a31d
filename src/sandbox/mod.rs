//! The sandbox: wxlogin against an in-process fake WeChat, with a demo page.
//!
//! - [`fake`]: the fake WeChat API server (token, QR codes, errcodes, fault injection).
//! - [`phone`]: the fake phone that scans a code and sends the signed callback; its route is
//!   `/sandbox/scan`.
//! - the page: the demo page of [`crate::http::assets`], in its sandbox form.
//!
//! Neither piece knows the others' routes: this module puts them together, for
//! `wxlogin sandbox` (wxlogin, the page and the phone on one port, the fake on another) and
//! `wxlogin fake-wechat` (the fake and the phone on one port).
//!
//! `wxlogin sandbox` needs no configuration and never talks to the real WeChat, whatever is
//! configured: the account's credentials are made up and `WECHAT_API_BASE` points at the fake.
//! Nor does it use a deployment's secrets, should it start in a production folder: it makes
//! its own `API_TOKEN` and login-token key and keeps its state in memory ([`IGNORED`]), so
//! nothing it mints is accepted by a real deployment. The integration tests use the same fake.

pub mod fake;
pub mod phone;

use std::net::SocketAddr;

use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use self::fake::{FakeAccount, FakeWechat};
use self::phone::Phone;
use crate::app::{App, AppError};
use crate::config::{AccountSettings, Config, ConfigError, Settings};
use crate::wechat::secret::Secret;

/// Why the sandbox could not start.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A setting is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The app failed.
    #[error(transparent)]
    App(#[from] AppError),
    /// A socket could not be bound.
    #[error("cannot listen: {0}")]
    Io(#[from] std::io::Error),
}

/// Binds the fake WeChat API on a free loopback port and serves it until `cancel`.
pub async fn spawn_fake(
    fake: &FakeWechat,
    cancel: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    serve_fake(fake, listener, cancel)
}

/// Serves the fake WeChat API on `listener` until `cancel`.
pub fn serve_fake(
    fake: &FakeWechat,
    listener: TcpListener,
    cancel: CancellationToken,
) -> std::io::Result<SocketAddr> {
    serve_router(fake.router(), listener, cancel)
}

/// Serves `router` on `listener` until `cancel`, in a task of its own.
fn serve_router(
    router: Router,
    listener: TcpListener,
    cancel: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "fake WeChat stopped");
        }
    });
    Ok(addr)
}

/// The settings of a deployment that the sandbox never uses: with them it could mint page
/// or login tokens a real deployment accepts, write into its Redis, or hand real accounts'
/// secrets (`ACCOUNTS_FILE`) to the fake.
pub const IGNORED: [&str; 5] = [
    "API_TOKEN",
    "ACCOUNTS_FILE",
    "LOGIN_TOKEN_SECRET",
    "LOGIN_TOKEN_KEY_FILE",
    "REDIS_URL",
];

/// The configuration of a sandbox: the fake account's credentials and API, a random
/// `API_TOKEN`, a login-token key made now, the memory store, and the rest (`BIND`,
/// `SSE_TIMEOUT_SECS`, `POOL_SIZE`, ...) from `vars`; [`IGNORED`] settings in `vars` are
/// ignored. The sandbox listens on 127.0.0.1:8000 unless `BIND` says otherwise.
pub fn sandbox_config(
    settings: &Settings,
    account: &FakeAccount,
    fake_addr: SocketAddr,
) -> Result<Config, ConfigError> {
    let mut overrides: Vec<(&str, String)> = vec![
        ("APPID", account.appid.clone()),
        ("SECRET_KEY", account.secret.expose().to_owned()),
        ("MP_TOKEN", account.mp_token.expose().to_owned()),
        ("WECHAT_API_BASE", format!("http://{fake_addr}")),
        // The sandbox's mode is the fake account's, never a real account's key.
        ("ENCODING_AES_KEY", String::new()),
        ("ENCODING_AES_KEY_PREVIOUS", String::new()),
    ];
    // Unset, so that the configuration falls back to a key made now and to memory; a later
    // override of the same setting wins.
    overrides.extend(IGNORED.map(|setting| (setting, String::new())));
    overrides.push(("API_TOKEN", format!("sandbox-{}", crate::auth::random_id())));
    if let Some(key) = &account.encoding_aes_key {
        overrides.push(("ENCODING_AES_KEY", key.expose().to_owned()));
    }
    overrides.push(("WECHAT_OPEN_BASE", format!("http://{fake_addr}")));
    // Login inside WeChat is on unless LOGIN_MODES says otherwise; the fake's authorize page
    // returns browsers to the sandbox's own address (a fixed BIND: the default 8000).
    let bind = settings
        .config_with(
            &overrides,
            &[
                ("BIND", "127.0.0.1:8000"),
                ("PUBLIC_URL", "http://127.0.0.1"),
                ("OAUTH_RETURN_ORIGINS", "http://127.0.0.1"),
            ],
        )?
        .bind;
    let host = if bind.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], bind.port()))
    } else {
        bind
    };
    let own = format!("http://{host}");
    settings.config_with(
        &overrides,
        &[
            ("BIND", "127.0.0.1:8000"),
            ("LOGIN_MODES", "qr,code,oauth"),
            ("PUBLIC_URL", &own),
            ("OAUTH_RETURN_ORIGINS", &own),
        ],
    )
}

/// The sandbox's own routes: the demo page at `/` and the phone at `/sandbox/scan`.
pub fn sandbox_routes(phone: &Phone, api_token: &Secret) -> Router {
    crate::http::assets::demo_routes(api_token.clone(), true).merge(phone.router())
}

/// `wxlogin sandbox`: the whole service against the fake WeChat, until `shutdown`. With
/// `safe_mode` the fake account encrypts its callbacks (安全模式) and wxlogin decrypts them.
pub async fn run(
    settings: &Settings,
    safe_mode: bool,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), SandboxError> {
    let account = if safe_mode {
        FakeAccount::random().with_safe_mode()
    } else {
        FakeAccount::random()
    };
    let fake = FakeWechat::new(account.clone());
    let cancel = CancellationToken::new();
    let fake_addr = spawn_fake(&fake, cancel.clone()).await?;
    let config = sandbox_config(settings, &account, fake_addr)?;
    let phone = Phone::new(fake.clone());
    let app = App::build(&config, Some(sandbox_routes(&phone, &config.api_token))).await?;
    let addr = app.local_addr()?;
    let callback_host = if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    phone.set_callback(format!("http://{callback_host}/wechat_event"));
    let mode = if safe_mode {
        "safe mode (encrypted callbacks)"
    } else {
        "plaintext mode"
    };
    eprintln!(
        "\n  wxlogin SANDBOX ({mode}): a fake WeChat runs in this process; the real WeChat is never contacted.\n  \
         Ignored here: {} (a random API token and a login-token key made now, state in memory:\n  \
         nothing minted here is accepted by a real deployment).\n  \
         Open http://{callback_host}/ and press \"scan\".\n  \
         Streams: GET http://{callback_host}/sse?token={}\n",
        IGNORED.join(", "),
        config.api_token.expose()
    );
    tracing::info!(%addr, fake = %fake_addr, "sandbox running");
    let result = app.run_until(shutdown).await;
    cancel.cancel();
    result.map_err(Into::into)
}

/// `wxlogin fake-wechat`: only the fake WeChat API, on 127.0.0.1:`port`, playing `account`
/// (read from wxlogin's own settings, so a wxlogin with the same settings can use it).
pub async fn run_fake(
    account: AccountSettings,
    port: u16,
    callback: String,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), SandboxError> {
    let account = FakeAccount {
        appid: account.appid,
        secret: account.secret_key,
        mp_token: account.mp_token,
        gh_id: "gh_sandbox000001".into(),
        encoding_aes_key: account.encoding_aes_key,
    };
    let fake = FakeWechat::new(account);
    let phone = Phone::new(fake.clone());
    phone.set_callback(callback);
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let cancel = CancellationToken::new();
    let addr = serve_router(
        fake.router().merge(phone.router()),
        listener,
        cancel.clone(),
    )?;
    tracing::info!(%addr, "fake WeChat listening; POST /sandbox/scan to scan");
    shutdown.await;
    cancel.cancel();
    Ok(())
}

/// Counters of the fake, as JSON (handy when poking the sandbox by hand).
pub fn counters_json(fake: &FakeWechat) -> Json<serde_json::Value> {
    use std::sync::atomic::Ordering::Relaxed;
    let c = fake.counters();
    Json(serde_json::json!({
        "token_requests": c.token_requests.load(Relaxed),
        "tokens_issued": c.tokens_issued.load(Relaxed),
        "qr_created": c.qr_created.load(Relaxed),
    }))
}
