//! `spawn_app()`: a wxlogin on 127.0.0.1:0 talking to its own fake WeChat, and clients for it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use wxlogin::app::App;
use wxlogin::config::Config;
use wxlogin::login::LoginService;
use wxlogin::sandbox::fake::{FakeAccount, FakeWechat};
use wxlogin::sandbox::phone::{self, Phone};

use crate::common::cluster::RedisCluster;
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
    /// A Redis Cluster of three primaries of the test's own (`REDIS_CLUSTER_URLS`).
    Cluster,
}

/// The Redis processes of a test on a Redis backend, stopped when dropped.
pub enum Servers {
    Redis(RedisServer),
    Sentinel(SentinelSet),
    Cluster(RedisCluster),
}

impl Servers {
    /// The processes `backend` needs; none in memory.
    pub fn start(backend: Backend) -> Option<Self> {
        match backend {
            Backend::Memory => None,
            Backend::Redis => Some(Self::Redis(RedisServer::start())),
            Backend::Sentinel => Some(Self::Sentinel(SentinelSet::start())),
            Backend::Cluster => Some(Self::Cluster(RedisCluster::start())),
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
            Self::Cluster(cluster) => {
                RedisStore::with_cluster(&cluster.seeds(), appid, name.into()).unwrap()
            }
        };
        // Through Sentinel (or a cluster's seeds) the primary is found in the background: wait
        // for it.
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

/// Runs each named `async fn()` test once per backend: `name::memory`, `name::redis`,
/// `name::sentinel` and `name::cluster`.
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
            #[tokio::test]
            async fn cluster() {
                crate::helpers::BACKEND
                    .scope(crate::helpers::Backend::Cluster, super::$name())
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
    /// The Redis Cluster of a cluster-backed app (shared by the instances of one test).
    pub cluster: Option<Arc<RedisCluster>>,
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
    let servers = Servers::start(BACKEND.try_with(|b| *b).unwrap_or(Backend::Memory));
    spawn_app_sharing(fake, servers, settings).await
}

/// A wxlogin against `fake`, with extra settings, on `servers` (in memory without).
async fn spawn_app_sharing(
    fake: FakeWechat,
    servers: Option<Servers>,
    settings: &[(&str, &str)],
) -> TestApp {
    init_logs();
    let cancel = CancellationToken::new();
    let fake_addr = wxlogin::sandbox::spawn_fake(&fake, cancel.clone())
        .await
        .expect("fake WeChat binds");
    let shared = match servers {
        None => Shared::default(),
        Some(Servers::Redis(redis)) => Shared {
            redis: Some(Arc::new(Mutex::new(redis))),
            ..Shared::default()
        },
        Some(Servers::Sentinel(set)) => Shared {
            sentinel: Some(Arc::new(set)),
            ..Shared::default()
        },
        Some(Servers::Cluster(cluster)) => Shared {
            cluster: Some(Arc::new(cluster)),
            ..Shared::default()
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
        ..Shared::default()
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
            cluster: peer.cluster.clone(),
        },
        settings,
    )
    .await
}

/// Several wxlogin instances on one Sentinel deployment and one fake WeChat, like
/// [`spawn_instances`].
pub async fn spawn_sentinel_instances(n: usize, settings: &[(&str, &str)]) -> Vec<TestApp> {
    spawn_instances_sharing(Servers::start(Backend::Sentinel), n, settings).await
}

/// Several wxlogin instances on one Redis Cluster (three primaries, no replicas) and one fake
/// WeChat, like [`spawn_instances`].
pub async fn spawn_cluster_instances(n: usize, settings: &[(&str, &str)]) -> Vec<TestApp> {
    spawn_instances_sharing(Servers::start(Backend::Cluster), n, settings).await
}

/// `n` instances on `servers` and one fake WeChat; its callbacks go to the first instance.
pub async fn spawn_instances_sharing(
    servers: Option<Servers>,
    n: usize,
    settings: &[(&str, &str)],
) -> Vec<TestApp> {
    let fake = FakeWechat::new(FakeAccount::random());
    let first = spawn_app_sharing(fake, servers, settings).await;
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
    cluster: Option<Arc<RedisCluster>>,
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
    }
    if let Some(cluster) = &shared.cluster {
        vars.insert("REDIS_CLUSTER_URLS".into(), cluster.urls());
    }
    // Instances on one Redis sign login tokens with one key, so that each verifies the others'.
    if (shared.sentinel.is_some() || shared.cluster.is_some())
        && !vars.contains_key("LOGIN_TOKEN_SECRET")
    {
        vars.entry("LOGIN_TOKEN_KEY_FILE".into())
            .or_insert_with(shared_key_file);
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
        cluster: shared.cluster,
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

// What a test that stops a Redis primary under load watches and does.

/// The pause between WeChat's attempts at one callback (WeChat waits 5 s; shorter here to keep
/// the suite quick: what is counted is whether a retry was needed, not how long it took).
pub const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Attempts before a login counts as lost.
pub const ATTEMPTS: u32 = 40;

/// What `/readyz` of an instance did while the test ran: down at some point, then up again.
#[derive(Default)]
pub struct Readiness {
    went_down: AtomicBool,
    came_back: AtomicBool,
}

impl Readiness {
    /// Whether `/readyz` answered other than 200 at some point.
    pub fn went_down(&self) -> bool {
        self.went_down.load(Ordering::Relaxed)
    }

    /// Whether `/readyz` answered 200 again after it went down.
    pub fn came_back(&self) -> bool {
        self.came_back.load(Ordering::Relaxed)
    }
}

/// Polls `/readyz` every 50 ms until `stop`.
pub async fn watch_readiness(app: &TestApp, seen: &Readiness, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let ready = app.get("/readyz").await.status() == 200;
        if !ready {
            seen.went_down.store(true, Ordering::Relaxed);
        } else if seen.went_down.load(Ordering::Relaxed) {
            seen.came_back.store(true, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Opens a stream every 100 ms until one opens after a refusal: when it opened again (503
/// with `Retry-After` meanwhile), or `None`.
pub async fn open_through_the_outage(app: &TestApp) -> Option<Instant> {
    let mut refused = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let stream = app.open().await;
        match stream.status.as_u16() {
            503 => {
                assert!(
                    stream.headers.contains_key("retry-after"),
                    "503 without Retry-After"
                );
                refused = true;
            }
            200 if refused => return Some(Instant::now()),
            200 => {}
            other => panic!("a new stream during the failover got {other}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Sends WeChat's callback for `scene` as WeChat does: the same event again after every
/// answer 5xx. The attempts it took.
pub async fn scan_like_wechat(app: &TestApp, scene: &str, openid: &str) -> u32 {
    let xml = app.scan_xml(scene, openid, phone::now_secs());
    for attempt in 1..=ATTEMPTS {
        let response = app
            .post_callback(&app.signed_query(openid), xml.clone())
            .await;
        if response.status().is_success() {
            return attempt;
        }
        assert!(response.status().is_server_error(), "{}", response.status());
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    panic!("the callback for {openid} was refused {ATTEMPTS} times");
}

/// The login of a stream: read on, or (if the stream ended) resumed by its last event id as
/// EventSource does.
pub async fn login_of(app: &TestApp, mut stream: Stream, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        while let Some(event) = stream.next_json_within(Duration::from_secs(30)).await {
            if event.get("userId").is_some() {
                assert!(
                    stream.ends_within(Duration::from_secs(5)).await,
                    "the stream ends after its result"
                );
                return event;
            }
        }
        assert!(Instant::now() < deadline, "no login for the stream of {id}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        stream = app.open_resuming(id).await;
    }
}

/// Streams waiting on two instances when a primary dies in [`streams_through_a_failover`].
pub const FAILOVER_STREAMS: usize = 200;
/// Streams whose browser went away and whose scan came before the failover: their results were
/// written before it, and the browsers' return after it gets each once.
const FAILOVER_AWAY: usize = 20;
/// The pause between two scans: the 200 callbacks come over 4 s, during the failover and after.
const FAILOVER_SCAN_EVERY: Duration = Duration::from_millis(20);

/// What [`streams_through_a_failover`] saw.
pub struct FailoverRun {
    /// When the primary was killed.
    pub killed_at: Instant,
    /// When a new stream on the second instance opened again after a 503, if one was refused.
    pub reopened: Option<Instant>,
    /// What `/readyz` of each instance did.
    pub readiness: [Readiness; 2],
    /// Logins whose callback was answered 5xx and sent again.
    pub retried: u32,
    /// When the last login arrived.
    pub done_at: Instant,
}

impl FailoverRun {
    /// Prints the figures of the run, `label` first.
    pub fn print(&self, label: &str) {
        let refused = match self.reopened {
            Some(at) => format!(
                "new streams refused for {:.1} s after the kill",
                (at - self.killed_at).as_secs_f64()
            ),
            None => "no new stream refused".to_owned(),
        };
        println!(
            "{label}: {refused}; {} of {FAILOVER_STREAMS} logins (callbacks sent over {:.1} s \
             from the kill) needed a WeChat retry (answered 5xx, sent again); all \
             {FAILOVER_STREAMS} delivered once, the last {:.1} s after the kill",
            self.retried,
            (FAILOVER_SCAN_EVERY * FAILOVER_STREAMS as u32).as_secs_f64(),
            (self.done_at - self.killed_at).as_secs_f64()
        );
    }
}

/// Opens [`FAILOVER_STREAMS`] streams over two instances (ready, on one Redis deployment),
/// plus streams whose browser goes away and whose scan comes at once; then calls `kill`
/// (which stops a primary) and sends the waiting streams' callbacks over the failover and
/// after it, to both instances, as WeChat does (again after a 5xx). Meanwhile it watches
/// `/readyz` and opens new streams until one is refused and then opens again. Asserts that
/// every stream gets its own login once, resumed by its last event id if it ended, and that
/// the returning browsers get theirs.
pub async fn streams_through_a_failover(apps: &[TestApp], kill: impl FnOnce()) -> FailoverRun {
    let mut waiting = Vec::new();
    for i in 0..FAILOVER_STREAMS {
        let app = &apps[i % 2];
        let (stream, scene, id) = app.open_with_id().await;
        waiting.push((i, scene, id, stream));
    }
    let mut away = Vec::new();
    for i in 0..FAILOVER_AWAY {
        let (stream, scene, id) = apps[i % 2].open_with_id().await;
        drop(stream);
        away.push((i, scene, id));
    }
    for app in apps {
        wait_until(Duration::from_secs(10), || async {
            app.login.open_streams() == FAILOVER_STREAMS / 2
        })
        .await;
    }
    for (i, scene, _) in &away {
        let openid = format!("oAway{i}");
        assert_eq!(scan_like_wechat(&apps[i % 2], scene, &openid).await, 1);
    }
    // The sessions reached the replica (asynchronous replication, on loopback: at once; the
    // results waited for it).
    tokio::time::sleep(Duration::from_millis(200)).await;

    let stop = AtomicBool::new(false);
    let readiness = [Readiness::default(), Readiness::default()];
    let retried = std::sync::atomic::AtomicU32::new(0);
    let killed_at = Instant::now();
    kill();
    let watching = futures_util::future::join(
        watch_readiness(&apps[0], &readiness[0], &stop),
        watch_readiness(&apps[1], &readiness[1], &stop),
    );
    let scanning = async {
        // Callbacks spread over the failover and after it, to both instances.
        let logins = futures_util::stream::iter(waiting)
            .map(|(i, scene, id, stream)| {
                let retried = &retried;
                async move {
                    tokio::time::sleep(FAILOVER_SCAN_EVERY * i as u32).await;
                    let openid = format!("oFailover{i}");
                    let app = &apps[i % 2];
                    let attempts = scan_like_wechat(&apps[(i / 2) % 2], &scene, &openid).await;
                    if attempts > 1 {
                        retried.fetch_add(1, Ordering::Relaxed);
                    }
                    let result = login_of(app, stream, &id).await;
                    assert_login(&result, &openid, "SCAN");
                }
            })
            .buffer_unordered(FAILOVER_STREAMS)
            .collect::<Vec<()>>();
        // The browsers that went away come back during the failover, as EventSource does.
        let returns = futures_util::future::join_all(away.iter().map(|(i, _, id)| {
            let app = &apps[i % 2];
            async move {
                let back = login_of(app, app.open_resuming(id).await, id).await;
                assert_login(&back, &format!("oAway{i}"), "SCAN");
            }
        }));
        let (reopened, logins, _) =
            futures_util::future::join3(open_through_the_outage(&apps[1]), logins, returns).await;
        stop.store(true, Ordering::Relaxed);
        (reopened, logins.len(), Instant::now())
    };
    let (_, (reopened, logins, done_at)) = futures_util::future::join(watching, scanning).await;
    // Every stream ended with its one result (login_of): WeChat's retries logged nobody in
    // twice.
    assert_eq!(logins, FAILOVER_STREAMS);
    FailoverRun {
        killed_at,
        reopened,
        readiness,
        retried: retried.into_inner(),
        done_at,
    }
}
