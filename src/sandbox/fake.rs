//! A fake WeChat API server that behaves like the real one where wxlogin depends on it:
//! `stable_token` (same token while valid, `force_refresh`), `/cgi-bin/token` (a new token that
//! revokes the old one), `qrcode/create` with real ticket bookkeeping and expiry, `user/info`
//! (followers, some with a unionid), WeChat's
//! errcodes for bad credentials and tokens, and fault injection (errcodes, delays, odd bodies,
//! lives out of range) for tests; and the web authorization ([`oauth`]: the authorize page
//! as a phone that approves or declines, and the code exchange).
//!
//! It only answers: sending callbacks is the phone's part ([`super::phone`]).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use rand::RngCore as _;
use serde::Deserialize;
use serde_json::{Value, json};

mod oauth;

pub use self::oauth::CODE_TTL as OAUTH_CODE_TTL;
use self::oauth::OauthState;
use crate::config::MAX_QR_TTL_SECS;
use crate::wechat::error::errcode;
use crate::wechat::secret::Secret;

/// The life of an access token, as WeChat gives it.
pub const TOKEN_TTL: Duration = Duration::from_secs(7200);
/// While a token has more than this left, `stable_token` hands the same one back.
const TOKEN_REUSE_MIN: Duration = Duration::from_secs(300);
/// WeChat's errcode for an openid that is missing or not of this account.
const INVALID_OPENID: i64 = 40003;
/// The fewest tickets at which long-expired ones are forgotten.
const MIN_PURGE_AT: usize = 10_000;

/// The credentials of the fake Official Account.
#[derive(Clone, Debug)]
pub struct FakeAccount {
    /// The appid.
    pub appid: String,
    /// The appsecret.
    pub secret: Secret,
    /// The callback Token (`MP_TOKEN`).
    pub mp_token: Secret,
    /// The account's `gh_` id (`ToUserName` of callbacks).
    pub gh_id: String,
    /// Safe mode: the EncodingAESKey callbacks are encrypted with (plaintext mode if `None`).
    pub encoding_aes_key: Option<Secret>,
}

fn random_text(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

impl FakeAccount {
    /// An account with random credentials.
    pub fn random() -> Self {
        Self {
            appid: format!("wxsandbox{}", &hex::encode(random_text(4))[..8]),
            secret: Secret::new(random_text(16)),
            mp_token: Secret::new(random_text(12)),
            gh_id: "gh_sandbox000001".to_owned(),
            encoding_aes_key: None,
        }
    }

    /// The same account in safe mode, with a random EncodingAESKey.
    pub fn with_safe_mode(mut self) -> Self {
        // 43 characters of the base64 alphabet, as the WeChat console generates them.
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let mut key = base64::engine::general_purpose::STANDARD.encode(bytes);
        key.truncate(43);
        self.encoding_aes_key = Some(Secret::new(key));
        self
    }
}

/// A fault to inject into the next call of an endpoint.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer `{errcode, errmsg}` instead.
    Errcode(i64),
    /// Wait this long, then answer normally.
    Delay(Duration),
    /// Answer this body (status 200, JSON content type), whatever it is.
    Body(Arc<str>),
}

/// Marks "no override" in the reported-life settings.
const NO_OVERRIDE: i64 = i64::MIN;

/// What the fake has done, for assertions.
#[derive(Debug, Default)]
pub struct Counters {
    /// Calls of `stable_token` and `token`.
    pub token_requests: AtomicU64,
    /// New tokens minted (the first one included).
    pub tokens_issued: AtomicU64,
    /// `force_refresh` calls honoured.
    pub forced_refreshes: AtomicU64,
    /// Calls of `qrcode/create`.
    pub qr_requests: AtomicU64,
    /// QR codes created.
    pub qr_created: AtomicU64,
    /// Calls of `sns/oauth2/access_token`.
    pub oauth_exchanges: AtomicU64,
    /// Calls of `user/info`.
    pub user_info_requests: AtomicU64,
}

/// A QR code the fake created.
#[derive(Clone, Debug)]
pub struct TicketInfo {
    /// The account whose access token made it.
    pub appid: String,
    /// The ticket.
    pub ticket: String,
    /// The code's content.
    pub url: String,
    /// Its scene.
    pub scene: String,
    /// When it stops working.
    pub expires_at: Instant,
}

struct IssuedToken {
    value: String,
    expires_at: Instant,
}

#[derive(Default)]
struct Faults {
    token: VecDeque<Fault>,
    qr: VecDeque<Fault>,
    user_info: VecDeque<Fault>,
}

/// Which endpoint a fault is for.
#[derive(Clone, Copy)]
enum Endpoint {
    Token,
    Qr,
    UserInfo,
}

struct FakeState {
    account: FakeAccount,
    /// More accounts the same WeChat serves (a deployment with several).
    others: Mutex<Vec<FakeAccount>>,
    /// The current access token of each account, by appid.
    tokens: Mutex<HashMap<String, IssuedToken>>,
    /// Tickets by the content of their code (what a phone reads).
    by_url: Mutex<HashMap<String, TicketInfo>>,
    /// The count of tickets at which long-expired ones are next forgotten: twice the count
    /// left by the last purge, so a purge costs O(1) per code made, however long the run.
    purge_at: AtomicUsize,
    faults: Mutex<Faults>,
    /// The unionids of users, by openid: as if the account were bound to an Open Platform
    /// account that these users also use.
    unionids: Mutex<HashMap<String, String>>,
    /// What token replies say `expires_in` is, when not [`NO_OVERRIDE`] (the token itself
    /// still lives [`TOKEN_TTL`]).
    token_life: AtomicI64,
    /// What `qrcode/create` says `expire_seconds` is, when not [`NO_OVERRIDE`] (the code
    /// itself lives as long as asked).
    qr_life: AtomicI64,
    counters: Counters,
    /// The web authorization's visitor and codes.
    oauth: Mutex<OauthState>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The fake WeChat. Cheap to clone.
#[derive(Clone)]
pub struct FakeWechat {
    state: Arc<FakeState>,
}

fn error_reply(code: i64) -> Response {
    let msg = match code {
        errcode::BUSY => "system error",
        errcode::INVALID_CREDENTIAL => "invalid credential, access_token is invalid or not latest",
        errcode::ACCESS_TOKEN_EXPIRED => "access_token expired",
        errcode::INVALID_APPID => "invalid appid",
        errcode::INVALID_SECRET => "invalid appsecret",
        errcode::IP_NOT_WHITELISTED => "invalid ip, not in whitelist",
        errcode::DAILY_QUOTA => "reach max api daily quota limit",
        errcode::NO_PERMISSION => "api unauthorized",
        41001 => "access_token missing",
        errcode::INVALID_CODE => "invalid code",
        errcode::CODE_USED => "code been used",
        40002 => "invalid grant_type",
        41008 => "missing code",
        INVALID_OPENID => "invalid openid",
        47001 => "data format error",
        _ => "error",
    };
    Json(json!({"errcode": code, "errmsg": msg})).into_response()
}

impl FakeWechat {
    /// A fake for `account`.
    pub fn new(account: FakeAccount) -> Self {
        Self {
            state: Arc::new(FakeState {
                account,
                others: Mutex::new(Vec::new()),
                tokens: Mutex::new(HashMap::new()),
                by_url: Mutex::new(HashMap::new()),
                purge_at: AtomicUsize::new(MIN_PURGE_AT),
                faults: Mutex::new(Faults::default()),
                unionids: Mutex::new(HashMap::new()),
                token_life: AtomicI64::new(NO_OVERRIDE),
                qr_life: AtomicI64::new(NO_OVERRIDE),
                counters: Counters::default(),
                oauth: Mutex::new(OauthState::default()),
            }),
        }
    }

    /// The account (the first one, when it serves several).
    pub fn account(&self) -> &FakeAccount {
        &self.state.account
    }

    /// Serves `account` too: its credentials get tokens of its own, and the codes its tokens
    /// make are its.
    pub fn add_account(&self, account: FakeAccount) {
        lock(&self.state.others).push(account);
    }

    /// The account of `appid`, if the fake serves it.
    pub fn account_of(&self, appid: &str) -> Option<FakeAccount> {
        if self.state.account.appid == appid {
            return Some(self.state.account.clone());
        }
        lock(&self.state.others)
            .iter()
            .find(|a| a.appid == appid)
            .cloned()
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.state.counters
    }

    /// The next `times` calls of `qrcode/create` meet `fault`.
    pub fn fail_qr(&self, fault: Fault, times: usize) {
        lock(&self.state.faults)
            .qr
            .extend(std::iter::repeat_n(fault, times));
    }

    /// The next `times` calls of `user/info` meet `fault`.
    pub fn fail_user_info(&self, fault: Fault, times: usize) {
        lock(&self.state.faults)
            .user_info
            .extend(std::iter::repeat_n(fault, times));
    }

    /// From now on `user/info` gives `unionid` for `openid`.
    pub fn give_unionid(&self, openid: &str, unionid: &str) {
        lock(&self.state.unionids).insert(openid.to_owned(), unionid.to_owned());
    }

    /// The next `times` token calls meet `fault`.
    pub fn fail_token(&self, fault: Fault, times: usize) {
        lock(&self.state.faults)
            .token
            .extend(std::iter::repeat_n(fault, times));
    }

    /// From now on token replies report `expires_in` as `seconds` (`None`: the truth).
    pub fn report_token_life(&self, seconds: Option<i64>) {
        self.state
            .token_life
            .store(seconds.unwrap_or(NO_OVERRIDE), Ordering::Relaxed);
    }

    /// From now on `qrcode/create` reports `expire_seconds` as `seconds` (`None`: the truth).
    pub fn report_qr_life(&self, seconds: Option<i64>) {
        self.state
            .qr_life
            .store(seconds.unwrap_or(NO_OVERRIDE), Ordering::Relaxed);
    }

    /// Invalidates the first account's current token, as a `/cgi-bin/token` call by another
    /// program would.
    pub fn revoke_token(&self) {
        lock(&self.state.tokens).remove(&self.state.account.appid);
    }

    /// Invalidates the current token of the account `appid`, as [`FakeWechat::revoke_token`]
    /// does the first account's.
    pub fn revoke_token_of(&self, appid: &str) {
        lock(&self.state.tokens).remove(appid);
    }

    /// Makes the code of `scene` expire now.
    pub fn expire_scene(&self, scene: &str) {
        for info in lock(&self.state.by_url).values_mut() {
            if info.scene == scene {
                info.expires_at = Instant::now();
            }
        }
    }

    /// The code the fake made for `scene`, if any.
    pub fn ticket_for_scene(&self, scene: &str) -> Option<TicketInfo> {
        lock(&self.state.by_url)
            .values()
            .find(|t| t.scene == scene)
            .cloned()
    }

    /// The code whose content is `url`, if any.
    pub fn ticket_for_url(&self, url: &str) -> Option<TicketInfo> {
        lock(&self.state.by_url).get(url).cloned()
    }

    /// The fake API's routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/cgi-bin/stable_token", post(stable_token))
            .route("/cgi-bin/token", get(legacy_token))
            .route("/cgi-bin/qrcode/create", post(qrcode_create))
            .route("/connect/oauth2/authorize", get(oauth::authorize))
            .route("/connect/oauth2/approve", get(oauth::approve))
            .route("/sns/oauth2/access_token", get(oauth::access_token))
            .route("/cgi-bin/user/info", get(user_info))
            .with_state(self.clone())
    }

    async fn take_fault(&self, endpoint: Endpoint) -> Option<Response> {
        let fault = {
            let mut faults = lock(&self.state.faults);
            match endpoint {
                Endpoint::Token => faults.token.pop_front(),
                Endpoint::Qr => faults.qr.pop_front(),
                Endpoint::UserInfo => faults.user_info.pop_front(),
            }
        };
        match fault? {
            Fault::Errcode(code) => Some(error_reply(code)),
            Fault::Delay(d) => {
                tokio::time::sleep(d).await;
                None
            }
            Fault::Body(body) => Some(
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    body.to_string(),
                )
                    .into_response(),
            ),
        }
    }

    /// `actual`, or what the fake was told to report instead.
    fn reported(setting: &AtomicI64, actual: u64) -> Value {
        match setting.load(Ordering::Relaxed) {
            NO_OVERRIDE => json!(actual),
            n => json!(n),
        }
    }

    fn mint_token(&self, appid: &str) -> (String, u64) {
        let value = random_text(48);
        lock(&self.state.tokens).insert(
            appid.to_owned(),
            IssuedToken {
                value: value.clone(),
                expires_at: Instant::now() + TOKEN_TTL,
            },
        );
        self.state
            .counters
            .tokens_issued
            .fetch_add(1, Ordering::Relaxed);
        (value, TOKEN_TTL.as_secs())
    }

    /// The account (its appid) whose current access token `token` is, as WeChat's tokens
    /// name their account; else the errcode WeChat gives.
    fn token_account(&self, token: Option<&str>) -> Result<String, i64> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(41001);
        };
        let tokens = lock(&self.state.tokens);
        match tokens.iter().find(|(_, t)| t.value == token) {
            Some((appid, t)) if t.expires_at > Instant::now() => Ok(appid.clone()),
            Some(_) => Err(errcode::ACCESS_TOKEN_EXPIRED),
            None => Err(errcode::INVALID_CREDENTIAL),
        }
    }

    /// The errcode for an access token that is not an account's current one, if it is not.
    fn check_token(&self, token: Option<&str>) -> Option<i64> {
        self.token_account(token).err()
    }

    /// The errcode for wrong credentials, if they are wrong.
    fn check_credentials(&self, appid: &str, secret: &str) -> Option<i64> {
        let Some(account) = self.account_of(appid) else {
            return Some(errcode::INVALID_APPID);
        };
        if !account.secret.ct_eq(secret) {
            return Some(errcode::INVALID_SECRET);
        }
        None
    }
}

#[derive(Deserialize)]
struct StableTokenBody {
    grant_type: String,
    appid: String,
    secret: String,
    #[serde(default)]
    force_refresh: bool,
}

async fn stable_token(State(fake): State<FakeWechat>, body: axum::body::Bytes) -> Response {
    fake.state
        .counters
        .token_requests
        .fetch_add(1, Ordering::Relaxed);
    if let Some(reply) = fake.take_fault(Endpoint::Token).await {
        return reply;
    }
    let Ok(body) = serde_json::from_slice::<StableTokenBody>(&body) else {
        return error_reply(47001);
    };
    if body.grant_type != "client_credential" {
        return error_reply(40002);
    }
    if let Some(code) = fake.check_credentials(&body.appid, &body.secret) {
        return error_reply(code);
    }
    if !body.force_refresh {
        let current = lock(&fake.state.tokens).get(&body.appid).and_then(|t| {
            let left = t.expires_at.saturating_duration_since(Instant::now());
            (left > TOKEN_REUSE_MIN).then(|| (t.value.clone(), left.as_secs()))
        });
        if let Some((value, left)) = current {
            let left = FakeWechat::reported(&fake.state.token_life, left);
            return Json(json!({"access_token": value, "expires_in": left})).into_response();
        }
    } else {
        fake.state
            .counters
            .forced_refreshes
            .fetch_add(1, Ordering::Relaxed);
    }
    let (value, ttl) = fake.mint_token(&body.appid);
    let ttl = FakeWechat::reported(&fake.state.token_life, ttl);
    Json(json!({"access_token": value, "expires_in": ttl})).into_response()
}

#[derive(Deserialize)]
struct LegacyTokenQuery {
    appid: Option<String>,
    secret: Option<String>,
}

/// `/cgi-bin/token`: always a new token, which revokes the previous one (as WeChat does).
async fn legacy_token(
    State(fake): State<FakeWechat>,
    Query(q): Query<LegacyTokenQuery>,
) -> Response {
    fake.state
        .counters
        .token_requests
        .fetch_add(1, Ordering::Relaxed);
    if let Some(reply) = fake.take_fault(Endpoint::Token).await {
        return reply;
    }
    let appid = q.appid.as_deref().unwrap_or_default();
    if let Some(code) = fake.check_credentials(appid, q.secret.as_deref().unwrap_or_default()) {
        return error_reply(code);
    }
    let (value, ttl) = fake.mint_token(appid);
    Json(json!({"access_token": value, "expires_in": ttl})).into_response()
}

#[derive(Deserialize)]
struct TokenQuery {
    access_token: Option<String>,
}

async fn qrcode_create(
    State(fake): State<FakeWechat>,
    Query(q): Query<TokenQuery>,
    body: axum::body::Bytes,
) -> Response {
    fake.state
        .counters
        .qr_requests
        .fetch_add(1, Ordering::Relaxed);
    if let Some(reply) = fake.take_fault(Endpoint::Qr).await {
        return reply;
    }
    let appid = match fake.token_account(q.access_token.as_deref()) {
        Ok(appid) => appid,
        Err(code) => return error_reply(code),
    };
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return error_reply(47001);
    };
    let scene = match body["action_name"].as_str() {
        Some("QR_STR_SCENE") => body["action_info"]["scene"]["scene_str"]
            .as_str()
            .filter(|s| (1..=64).contains(&s.len()))
            .map(str::to_owned),
        Some("QR_SCENE") => body["action_info"]["scene"]["scene_id"]
            .as_u64()
            .map(|n| n.to_string()),
        _ => None,
    };
    let Some(scene) = scene else {
        return error_reply(47001);
    };
    let expire = body["expire_seconds"]
        .as_u64()
        .unwrap_or(30)
        .clamp(1, MAX_QR_TTL_SECS);
    let mut ticket_bytes = [0u8; 36];
    rand::rng().fill_bytes(&mut ticket_bytes);
    let info = TicketInfo {
        appid,
        // Real tickets are standard base64 with + / =, which callers must URL-encode.
        ticket: format!(
            "gQ{}=",
            base64::engine::general_purpose::STANDARD.encode(ticket_bytes)
        ),
        url: format!("http://weixin.qq.com/q/{}", random_text(16)),
        scene,
        expires_at: Instant::now() + Duration::from_secs(expire),
    };
    fake.state
        .counters
        .qr_created
        .fetch_add(1, Ordering::Relaxed);
    let reported = FakeWechat::reported(&fake.state.qr_life, expire);
    let reply = json!({"ticket": info.ticket, "expire_seconds": reported, "url": info.url});
    {
        let mut by_url = lock(&fake.state.by_url);
        // Forget codes that expired long ago, so a long sandbox run stays small.
        let purge_at = &fake.state.purge_at;
        if by_url.len() >= purge_at.load(Ordering::Relaxed) {
            let now = Instant::now();
            by_url.retain(|_, t| t.expires_at + Duration::from_secs(3600) > now);
            purge_at.store((by_url.len() * 2).max(MIN_PURGE_AT), Ordering::Relaxed);
        }
        by_url.insert(info.url.clone(), info);
    }
    Json(reply).into_response()
}

#[derive(Deserialize)]
struct UserInfoQuery {
    access_token: Option<String>,
    openid: Option<String>,
}

/// `user/info`: every openid the phone uses follows the account (`subscribe` 1); those given a
/// unionid have it, as with an account bound to an Open Platform account. Like WeChat since
/// 2021, no nickname or avatar.
async fn user_info(State(fake): State<FakeWechat>, Query(q): Query<UserInfoQuery>) -> Response {
    fake.state
        .counters
        .user_info_requests
        .fetch_add(1, Ordering::Relaxed);
    if let Some(reply) = fake.take_fault(Endpoint::UserInfo).await {
        return reply;
    }
    if let Some(code) = fake.check_token(q.access_token.as_deref()) {
        return error_reply(code);
    }
    let Some(openid) = q.openid.filter(|o| !o.is_empty()) else {
        return error_reply(INVALID_OPENID);
    };
    let unionid = lock(&fake.state.unionids).get(&openid).cloned();
    let mut reply = json!({
        "subscribe": 1,
        "openid": openid,
        "language": "zh_CN",
        "subscribe_time": 1_700_000_000,
        "remark": "",
        "groupid": 0,
        "tagid_list": [],
        "subscribe_scene": "ADD_SCENE_QR_CODE",
        "qr_scene": 0,
        "qr_scene_str": "",
    });
    if let Some(unionid) = unionid {
        reply["unionid"] = json!(unionid);
    }
    Json(reply).into_response()
}
