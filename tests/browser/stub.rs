//! A scripted stand-in for wxlogin, in process, for the widget's failure paths that the real
//! server only shows under faults: 401, 503 with `Retry-After`, a stream that dies for good
//! (then the widget polls `/login/{scene}/status`, which, like the real one, needs the stream's
//! event id).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::{StreamExt as _, stream};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const SCENE: &str = "StubScene0123456789abc";
/// The stream's key, in its event ids.
pub const KEY: &str = "StubKey_0123456789abcd";
pub const TICKET_URL: &str = "http://weixin.qq.com/q/stub-ticket";
pub const GOOD_TOKEN: &str = "good-token";

/// How `/sse` behaves.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// Every request answers 503 with `Retry-After: 1` until `n` requests were refused, then
    /// streams a QR and waits.
    BusyFor(usize),
    /// The first request streams a QR and ends; every later one answers 500, so the browser's
    /// EventSource gives up and the widget polls; the status is `pending` twice, then `done`.
    DiesThenPolls,
    /// Streams a QR, then (half a second later) the login of `oStubUser`, and ends.
    LogsIn,
    /// Answers 200 and sends nothing, as a stream held back by a buffering proxy.
    Silent,
}

struct Stub {
    mode: Mode,
    sse_calls: AtomicUsize,
    status_calls: AtomicUsize,
    /// Status requests that named the event id in their URL (`?id=`) rather than a header.
    ids_in_urls: AtomicUsize,
    /// The `account` of every stream and status request, in order (`-` when absent).
    accounts: std::sync::Mutex<Vec<String>>,
}

pub struct StubServer {
    pub base: String,
    stub: Arc<Stub>,
    cancel: CancellationToken,
}

impl Drop for StubServer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl StubServer {
    pub async fn start(mode: Mode) -> Self {
        let stub = Arc::new(Stub {
            mode,
            sse_calls: AtomicUsize::new(0),
            status_calls: AtomicUsize::new(0),
            ids_in_urls: AtomicUsize::new(0),
            accounts: std::sync::Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/", get(page))
            .route("/wxlogin.js", get(script))
            .route("/sse", get(sse))
            .route("/login/{scene}/status", get(status))
            .route("/qrcode/{file}", get(qrcode))
            .with_state(stub.clone());
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("stub binds");
        let addr: SocketAddr = listener.local_addr().expect("stub address");
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
        Self {
            base: format!("http://{addr}"),
            stub,
            cancel,
        }
    }

    pub fn sse_calls(&self) -> usize {
        self.stub.sse_calls.load(Ordering::SeqCst)
    }

    /// Status requests answered `pending` or `done` (those with the stream's event id).
    pub fn status_calls(&self) -> usize {
        self.stub.status_calls.load(Ordering::SeqCst)
    }

    pub fn ids_in_urls(&self) -> usize {
        self.stub.ids_in_urls.load(Ordering::SeqCst)
    }

    /// The `account` each stream and status request named (`-` for none), in order.
    pub fn accounts(&self) -> Vec<String> {
        self.stub
            .accounts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A bare page mounting the widget. `?token=T` passes a token; `?tokens=a,b` a `getToken`
/// handing them out in turn. What the callbacks see goes to `window.wxlog`. `?onLogin=promise`
/// makes `onLogin` return a promise the test settles with `window.settleLogin(ok)`;
/// `?firstEventTimeout=ms`, `?showOpenid=1` and `?account=name` pass those options.
async fn page() -> Html<&'static str> {
    Html(
        r#"<!doctype html><html lang="zh-CN"><head><meta charset="utf-8"><title>stub</title></head>
<body><div id="wxlogin"></div><script type="module">
import { mount } from '/wxlogin.js';
const q = new URLSearchParams(location.search);
window.wxlog = [];
const tokens = (q.get('tokens') || '').split(',');
const opts = {
  lang: q.get('lang') || 'zh',
  onLogin: (r) => {
    wxlog.push(['login', r]);
    if (q.get('onLogin') === 'promise') {
      return new Promise((resolve, reject) => {
        window.settleLogin = (ok) => (ok ? resolve() : reject(new Error('the site refused the login')));
      });
    }
  },
  onError: (e) => wxlog.push(['error', e.code, e.status ?? null]),
};
if (q.has('firstEventTimeout')) opts.firstEventTimeout = Number(q.get('firstEventTimeout'));
if (q.has('showOpenid')) opts.showOpenid = true;
if (q.has('account')) opts.account = q.get('account');
if (q.has('tokens')) opts.getToken = async () => { wxlog.push(['getToken']); return tokens.shift() || ''; };
else opts.token = q.get('token') || '';
mount(document.getElementById('wxlogin'), opts);
</script></body></html>"#,
    )
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../../assets/wxlogin.js"),
    )
        .into_response()
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
    id: Option<String>,
    account: Option<String>,
}

impl Stub {
    fn saw_account(&self, q: &TokenQuery) {
        self.accounts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(q.account.clone().unwrap_or_else(|| "-".into()));
    }
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"error": "unauthorized", "message": "wrong token"})),
    )
        .into_response()
}

fn first_event() -> Event {
    Event::default().id(format!("{SCENE}.{KEY}.0")).data(
        json!({
            "scene_id": SCENE,
            "qrcode_url": "https://mp.weixin.qq.com/cgi-bin/showqrcode?ticket=stub",
            "expire_seconds": 1800,
            "timeout_seconds": 120,
            "qrcode_svg": format!("/qrcode/{SCENE}.svg"),
        })
        .to_string(),
    )
}

async fn sse(State(stub): State<Arc<Stub>>, Query(q): Query<TokenQuery>) -> Response {
    if q.token.as_deref() != Some(GOOD_TOKEN) {
        return unauthorized();
    }
    stub.saw_account(&q);
    let n = stub.sse_calls.fetch_add(1, Ordering::SeqCst) + 1;
    let first = stream::once(async { Ok::<_, Infallible>(first_event()) });
    match stub.mode {
        Mode::BusyFor(refused) if n <= refused => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            Json(json!({"error": "unavailable", "message": "no QR code right now"})),
        )
            .into_response(),
        Mode::BusyFor(_) => Sse::new(first.chain(stream::pending()))
            .keep_alive(KeepAlive::default())
            .into_response(),
        Mode::DiesThenPolls if n == 1 => Sse::new(first).into_response(),
        Mode::DiesThenPolls => (StatusCode::INTERNAL_SERVER_ERROR, "down").into_response(),
        Mode::LogsIn => {
            let login = stream::once(async {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                Ok::<_, Infallible>(Event::default().id(format!("{SCENE}.{KEY}.1")).data(
                    json!({"userId": "oStubUser", "event": "SCAN", "login_token": "stub.login.token"})
                        .to_string(),
                ))
            });
            Sse::new(first.chain(login)).into_response()
        }
        Mode::Silent => Sse::new(stream::pending::<Result<Event, Infallible>>()).into_response(),
    }
}

/// As wxlogin's: no event id is a 400, another stream's id reads as expired.
async fn status(
    State(stub): State<Arc<Stub>>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    if q.token.as_deref() != Some(GOOD_TOKEN) {
        return unauthorized();
    }
    stub.saw_account(&q);
    if q.id.is_some() {
        stub.ids_in_urls.fetch_add(1, Ordering::SeqCst);
    }
    let header = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let Some(id) = header.or(q.id.as_deref()) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "bad_request", "message": "the stream's event id is required"})),
        )
            .into_response();
    };
    if !id.starts_with(&format!("{SCENE}.{KEY}.")) {
        return Json(json!({"status": "expired"})).into_response();
    }
    let n = stub.status_calls.fetch_add(1, Ordering::SeqCst) + 1;
    if n <= 2 {
        Json(json!({"status": "pending"})).into_response()
    } else {
        Json(json!({
            "status": "done",
            "userId": "oPolledUser",
            "event": "subscribe",
            "login_token": "stub.login.token",
        }))
        .into_response()
    }
}

async fn qrcode() -> Response {
    let svg = wxlogin::http::qrcode::render_svg(TICKET_URL).expect("renders");
    ([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response()
}
