//! `spawn_app()`: a wxlogin on 127.0.0.1:0 talking to its own fake WeChat, and clients for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use wxlogin::app::App;
use wxlogin::config::Config;
use wxlogin::login::LoginService;
use wxlogin::sandbox::fake::{FakeAccount, FakeWechat};
use wxlogin::sandbox::phone::{self, Phone};

use crate::common::redis_server::RedisServer;
use crate::common::sentinel::{MASTER_NAME, SentinelSet};
pub use crate::common::sse::Stream;
use wxlogin::config::RedisSentinel;
use wxlogin::store::redis::RedisStore;
use wxlogin::store::{Store as _, StoreError};
use wxlogin::wechat::secret::Secret;

/// Where a test's wxlogin keeps its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// In memory (the default).
    Memory,
    /// A redis-server of the test's own.
    Redis,
    /// A primary, a replica and three sentinels of the test's own (`REDIS_SENTINELS`).
    Sentinel,
}

/// The Redis processes of a test on a Redis backend, stopped when dropped.
pub enum Servers {
    Redis(RedisServer),
    Sentinel(SentinelSet),
}

impl Servers {
    /// The processes `backend` needs; none in memory.
    pub fn start(backend: Backend) -> Option<Self> {
        match backend {
            Backend::Memory => None,
            Backend::Redis => Some(Self::Redis(RedisServer::start())),
            Backend::Sentinel => Some(Self::Sentinel(SentinelSet::start())),
        }
    }

    /// A store on them for `appid`, as instance `name`, once it found its Redis.
    pub async fn store(&self, appid: &str, name: &str) -> RedisStore {
        let store = match self {
            Self::Redis(redis) => {
                RedisStore::new(&Secret::new(redis.url()), appid, name.into()).unwrap()
            }
            Self::Sentinel(set) => {
                RedisStore::with_sentinel(&sentinel_settings(set), appid, name.into()).unwrap()
            }
        };
        // Through Sentinel the primary is found in the background: wait for it.
        wait_until(Duration::from_secs(5), || async {
            matches!(store.ping().await, Ok(()) | Err(StoreError::InboxDown))
        })
        .await;
        store
    }
}

/// The settings of `set`, as `REDIS_SENTINELS` and `REDIS_MASTER_NAME` give them.
pub fn sentinel_settings(set: &SentinelSet) -> RedisSentinel {
    RedisSentinel {
        sentinels: set
            .sentinel_ports()
            .into_iter()
            .map(|p| ("127.0.0.1".to_owned(), p))
            .collect(),
        master_name: MASTER_NAME.to_owned(),
        password: None,
        db: 0,
    }
}

tokio::task_local! {
    /// The backend of the running test: set by [`on_every_backend!`], memory otherwise.
    pub static BACKEND: Backend;
}

/// Runs each named `async fn()` test once per backend: `name::memory`, `name::redis` and
/// `name::sentinel`.
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn memory() {
                crate::helpers::BACKEND
                    .scope(crate::helpers::Backend::Memory, super::$name())
                    .await
            }
            #[tokio::test]
            async fn redis() {
                crate::helpers::BACKEND
                    .scope(crate::helpers::Backend::Redis, super::$name())
                    .await
            }
            #[tokio::test]
            async fn sentinel() {
                crate::helpers::BACKEND
                    .scope(crate::helpers::Backend::Sentinel, super::$name())
                    .await
            }
        }
    )*};
}
pub(crate) use on_every_backend;

/// The Ed25519 key instances on one Redis share to sign login tokens (a test key).
const SHARED_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIP7bCvbBo5rA0o5P2nK37r7dZG35rBH2Z/yBPvmQ3YQZ
-----END PRIVATE KEY-----
";

/// The path of [`SHARED_KEY_PEM`], written once per test run.
pub fn shared_key_file() -> String {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("wxlogin-it-{}.pem", std::process::id()));
        std::fs::write(&path, SHARED_KEY_PEM).expect("key file written");
        path.to_string_lossy().into_owned()
    })
    .clone()
}

/// A running wxlogin with its fake WeChat; stopped when dropped.
pub struct TestApp {
    pub base: String,
    /// The fake WeChat's base URL.
    pub fake_base: String,
    pub fake: FakeWechat,
    /// The fake phone, which sends the fake's callbacks.
    pub phone: Phone,
    pub login: LoginService,
    pub api_token: String,
    pub client: reqwest::Client,
    /// The redis-server of a Redis-backed app (shared by the instances of one test).
    pub redis: Option<Arc<Mutex<RedisServer>>>,
    /// The Sentinel deployment of a Sentinel-backed app (shared by the instances of one test).
    pub sentinel: Option<Arc<SentinelSet>>,
    /// Where the fake WeChat listens.
    pub fake_addr: Option<std::net::SocketAddr>,
    cancel: CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let settings: wxlogin::config::Settings = std::env::vars().collect();
            // The guard keeps the log writer running: dropped, it stops and the logs are lost.
            if let Ok(Some(guard)) = wxlogin::telemetry::init(&settings.log()) {
                std::mem::forget(guard);
            }
        }
    });
}

/// A wxlogin with default settings (short keep-alive, so vanished clients are noticed fast).
pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// A wxlogin with extra settings (`("SSE_TIMEOUT_SECS", "1")`, ...).
pub async fn spawn_app_with(settings: &[(&str, &str)]) -> TestApp {
    spawn_app_for(FakeAccount::random(), settings).await
}

/// A wxlogin in safe mode: the fake account encrypts its callbacks with the key wxlogin has.
pub async fn spawn_safe_app(settings: &[(&str, &str)]) -> TestApp {
    let account = FakeAccount::random().with_safe_mode();
    let key = account
        .encoding_aes_key
        .as_ref()
        .map(|k| k.expose().to_owned())
        .unwrap();
    let mut all = vec![("ENCODING_AES_KEY", key.as_str())];
    all.extend_from_slice(settings);
    spawn_app_for(account, &all).await
}

/// A wxlogin for the fake `account`, with extra settings, on the test's backend.
pub async fn spawn_app_for(account: FakeAccount, settings: &[(&str, &str)]) -> TestApp {
    spawn_app_on(FakeWechat::new(account), settings).await
}

/// A wxlogin against `fake` (its first account in the environment), with extra settings, on
/// the test's backend.
pub async fn spawn_app_on(fake: FakeWechat, settings: &[(&str, &str)]) -> TestApp {
    init_logs();
    let cancel = CancellationToken::new();
    let fake_addr = wxlogin::sandbox::spawn_fake(&fake, cancel.clone())
        .await
        .expect("fake WeChat binds");
    let shared = match Servers::start(BACKEND.try_with(|b| *b).unwrap_or(Backend::Memory)) {
        None => Shared::default(),
        Some(Servers::Redis(redis)) => Shared {
            redis: Some(Arc::new(Mutex::new(redis))),
            sentinel: None,
        },
        Some(Servers::Sentinel(set)) => Shared {
            redis: None,
            sentinel: Some(Arc::new(set)),
        },
    };
    let phone = Phone::new(fake.clone());
    let app = spawn_instance(&phone, &fake, fake_addr, shared, settings).await;
    phone.set_callback(format!("{}/wechat_event", app.base));
    // The fake lives as long as the app.
    let stop_fake = app.cancel.clone();
    tokio::spawn(async move {
        stop_fake.cancelled().await;
        cancel.cancel();
    });
    app
}

/// Several wxlogin instances sharing one redis-server and one fake WeChat. The fake's
/// callbacks go to the first instance until told otherwise.
pub async fn spawn_instances(n: usize, settings: &[(&str, &str)]) -> Vec<TestApp> {
    init_logs();
    let cancel = CancellationToken::new();
    let fake = FakeWechat::new(FakeAccount::random());
    let fake_addr = wxlogin::sandbox::spawn_fake(&fake, cancel.clone())
        .await
        .expect("fake WeChat binds");
    let shared = Shared {
        redis: Some(Arc::new(Mutex::new(RedisServer::start()))),
        sentinel: None,
    };
    let phone = Phone::new(fake.clone());
    let mut apps = Vec::new();
    for _ in 0..n {
        apps.push(spawn_instance(&phone, &fake, fake_addr, shared.clone(), settings).await);
    }
    phone.set_callback(format!("{}/wechat_event", apps[0].base));
    let stop_fake = apps[0].cancel.clone();
    tokio::spawn(async move {
        stop_fake.cancelled().await;
        cancel.cancel();
    });
    apps
}

/// One more instance beside `peer`: the same fake WeChat and redis-server.
pub async fn spawn_instances_on(peer: &TestApp, settings: &[(&str, &str)]) -> TestApp {
    let fake_addr = peer
        .fake_addr
        .expect("the peer runs against an in-process fake");
    spawn_instance(
        &peer.phone,
        &peer.fake,
        fake_addr,
        Shared {
            redis: peer.redis.clone(),
            sentinel: peer.sentinel.clone(),
        },
        settings,
    )
    .await
}

/// Several wxlogin instances on one Sentinel deployment and one fake WeChat, like
/// [`spawn_instances`].
pub async fn spawn_sentinel_instances(n: usize, settings: &[(&str, &str)]) -> Vec<TestApp> {
    let first = BACKEND
        .scope(Backend::Sentinel, spawn_app_with(settings))
        .await;
    let mut apps = vec![first];
    for _ in 1..n {
        apps.push(spawn_instances_on(&apps[0], settings).await);
    }
    apps
}

/// The Redis processes instances of one test share.
#[derive(Clone, Default)]
struct Shared {
    redis: Option<Arc<Mutex<RedisServer>>>,
    sentinel: Option<Arc<SentinelSet>>,
}

/// The settings of an instance against `fake` (on `redis`, if given), with `settings` on top.
pub fn instance_vars(
    fake: &FakeWechat,
    fake_addr: std::net::SocketAddr,
    redis: Option<&RedisServer>,
    settings: &[(&str, &str)],
) -> HashMap<String, String> {
    let account = fake.account();
    let mut vars: HashMap<String, String> = [
        ("API_TOKEN", API_TOKEN),
        ("APPID", account.appid.as_str()),
        ("SECRET_KEY", account.secret.expose()),
        ("MP_TOKEN", account.mp_token.expose()),
        ("BIND", "127.0.0.1:0"),
        ("SSE_KEEPALIVE_SECS", "1"),
        ("POOL_SIZE", "5"),
        // Every test client is 127.0.0.1: the per-IP limits have tests of their own.
        ("SSE_PER_IP_PER_MIN", "0"),
        ("SSE_PER_IP_OPEN", "0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    vars.insert("WECHAT_API_BASE".into(), format!("http://{fake_addr}"));
    vars.insert("WECHAT_OPEN_BASE".into(), format!("http://{fake_addr}"));
    if let Some(redis) = redis {
        vars.insert("REDIS_URL".into(), redis.url());
        let keyed = settings
            .iter()
            .any(|(k, _)| *k == "LOGIN_TOKEN_SECRET" || *k == "LOGIN_TOKEN_KEY_FILE");
        if !keyed {
            vars.insert("LOGIN_TOKEN_KEY_FILE".into(), shared_key_file());
        }
    }
    for (k, v) in settings {
        vars.insert((*k).to_owned(), (*v).to_owned());
    }
    vars
}

/// The API token of test instances.
pub const API_TOKEN: &str = "it-api-token-0123456789";

async fn spawn_instance(
    phone: &Phone,
    fake: &FakeWechat,
    fake_addr: std::net::SocketAddr,
    shared: Shared,
    settings: &[(&str, &str)],
) -> TestApp {
    let cancel = CancellationToken::new();
    // Bound first, so that PUBLIC_URL (where WeChat's web authorization returns) is known.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let public_url = format!("http://{}", listener.local_addr().expect("bound"));
    let mut vars = {
        let server = shared
            .redis
            .as_ref()
            .map(|r| r.lock().unwrap_or_else(|p| p.into_inner()));
        let mut vars = instance_vars(fake, fake_addr, server.as_deref(), settings);
        vars.entry("PUBLIC_URL".into()).or_insert(public_url);
        vars
    };
    if let Some(set) = &shared.sentinel {
        vars.insert("REDIS_SENTINELS".into(), set.sentinels());
        vars.insert("REDIS_MASTER_NAME".into(), MASTER_NAME.into());
        if !vars.contains_key("LOGIN_TOKEN_SECRET") {
            vars.entry("LOGIN_TOKEN_KEY_FILE".into())
                .or_insert_with(shared_key_file);
        }
    }
    let config = Config::from_lookup(|k| vars.get(k).cloned()).expect("valid test config");
    let app = App::with_listener(&config, listener, None).expect("app builds");
    let addr = app.local_addr().expect("bound");
    let login = app.login();
    let stop = cancel.clone();
    tokio::spawn(async move { app.run_until(async move { stop.cancelled().await }).await });
    TestApp {
        base: format!("http://{addr}"),
        fake_base: format!("http://{fake_addr}"),
        fake: fake.clone(),
        phone: phone.clone(),
        login,
        api_token: API_TOKEN.to_owned(),
        client: reqwest::Client::new(),
        redis: shared.redis,
        sentinel: shared.sentinel,
        fake_addr: Some(fake_addr),
        cancel,
    }
}

impl TestApp {
    /// Opens `/sse` with the right token.
    pub async fn open(&self) -> Stream {
        self.open_with(&format!("token={}", self.api_token)).await
    }

    /// Opens `/sse` with its first event read: the stream and its scene.
    pub async fn open_with_qr(&self) -> (Stream, String, Value) {
        let mut stream = self.open().await;
        assert_eq!(stream.status, 200);
        let qr = stream.next_json().await;
        let scene = qr["scene_id"].as_str().expect("scene_id").to_owned();
        (stream, scene, qr)
    }

    /// Opens `/sse` with its first event read: the stream, its scene and the event's id
    /// (`<scene>.<key>.0`, the stream's secret in it).
    pub async fn open_with_id(&self) -> (Stream, String, String) {
        let mut stream = self.open().await;
        assert_eq!(stream.status, 200);
        let event = stream.next_event().await;
        let qr: Value = serde_json::from_str(&event.data).expect("JSON data");
        let scene = qr["scene_id"].as_str().expect("scene_id").to_owned();
        (stream, scene, event.id)
    }

    /// Opens `/sse` naming a previous event (`Last-Event-ID`), as EventSource reconnects.
    pub async fn open_resuming(&self, last_event_id: &str) -> Stream {
        let response = self
            .client
            .get(format!("{}/sse?token={}", self.base, self.api_token))
            .header("last-event-id", last_event_id)
            .send()
            .await
            .expect("request sent");
        Stream::from_response(response)
    }

    /// Opens `/sse?{query}`.
    pub async fn open_with(&self, query: &str) -> Stream {
        let response = self
            .client
            .get(format!("{}/sse?{query}", self.base))
            .send()
            .await
            .expect("request sent");
        Stream::from_response(response)
    }

    /// Scans the code of `scene` through the fake phone.
    pub async fn scan(&self, scene: &str, openid: &str, new_follower: bool) -> phone::Delivery {
        let scene = wxlogin::wechat::ids::Scene::parse(scene).expect("scene");
        self.phone
            .scan(&phone::ScanTarget::Scene(scene), openid, new_follower)
            .await
            .expect("callback delivered")
    }

    /// WeChat's SCAN event XML for a code the fake made for `scene`, from `openid`.
    pub fn scan_xml(&self, scene: &str, openid: &str, create_time: i64) -> String {
        let ticket = self
            .fake
            .ticket_for_scene(scene)
            .expect("the fake made this code")
            .ticket;
        phone::scan_xml(
            &self.fake.account().gh_id,
            openid,
            create_time,
            false,
            scene,
            &ticket,
        )
    }

    /// POSTs a callback body with the given query string.
    pub async fn post_callback(
        &self,
        query: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.client
            .post(format!("{}/wechat_event?{query}", self.base))
            .header("content-type", "text/xml")
            .body(body)
            .send()
            .await
            .expect("request sent")
    }

    /// A correctly signed query for now.
    pub fn signed_query(&self, openid: &str) -> String {
        phone::signed_query(
            self.fake.account().mp_token.expose(),
            phone::now_secs(),
            &phone::nonce(),
            openid,
        )
    }

    /// A counter of the default account as `/metrics` shows it: `series` is its name with
    /// its labels but the account's (`wxlogin_scans_total{outcome="delivered"}`); 0 while the
    /// series does not exist.
    pub async fn metric(&self, series: &str) -> u64 {
        self.metric_of(series, "default").await
    }

    /// [`TestApp::metric`] of the account named `account`.
    pub async fn metric_of(&self, series: &str, account: &str) -> u64 {
        let text = self
            .get("/metrics")
            .await
            .text()
            .await
            .expect("metrics read");
        let series = of_account(series, account);
        text.lines()
            .find_map(|line| line.strip_prefix(&series)?.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    }

    /// `POST /login/verify` of a result's (or a login's) `login_token`, which must pass: its
    /// claims.
    pub async fn verified(&self, result: &Value) -> Value {
        let r = self
            .client
            .post(format!("{}/login/verify", self.base))
            .bearer_auth(&self.api_token)
            .json(&serde_json::json!({"login_token": result["login_token"]}))
            .send()
            .await
            .expect("/login/verify answers");
        assert_eq!(r.status(), 200);
        r.json().await.expect("claims as JSON")
    }

    /// How many scans ended as `outcome` (`delivered`, `parked`, `undeliverable`,
    /// `duplicate`), by `/metrics`.
    pub async fn scans(&self, outcome: &str) -> u64 {
        self.metric(&format!("wxlogin_scans_total{{outcome=\"{outcome}\"}}"))
            .await
    }

    /// GET a path.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("request sent")
    }

    /// Waits until `/readyz` says ready (the pool is filled).
    pub async fn wait_ready(&self) {
        wait_until(Duration::from_secs(10), || async {
            self.get("/readyz").await.status() == 200
        })
        .await;
    }
}

/// `series` (`name` or `name{labels}`) as `/metrics` prints it for `account`: with
/// `account="<account>"` last among its labels.
pub fn of_account(series: &str, account: &str) -> String {
    match series.strip_suffix('}') {
        Some(open) => format!("{open},account=\"{account}\"}}"),
        None => format!("{series}{{account=\"{account}\"}}"),
    }
}

/// Polls `check` until it holds; panics after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads a counter of the fake.
pub fn count(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(std::sync::atomic::Ordering::SeqCst)
}

/// Asserts a result event: `userId`, `event`, and a `login_token` shaped like a JWT.
pub fn assert_login(result: &Value, openid: &str, event: &str) {
    assert_eq!(result["userId"], openid, "{result}");
    assert_eq!(result["event"], event, "{result}");
    let token = result["login_token"].as_str().expect("a login_token");
    assert_eq!(token.split('.').count(), 3, "{token}");
}
