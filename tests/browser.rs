//! Real-browser tests: headless Chromium (Debian's `chromium` and `chromium-driver`) on the demo
//! page of the `wxlogin sandbox` binary, through WebDriver. Screenshots of each final state go
//! to `target/browser-screenshots/`. Set `TEST_LOG=1` to see the sandbox's logs.
//!
//! - `common`: the sandbox process (shared with the other test binaries).
//! - `harness`: the browser, waiting on the page, decoding the QR.
//! - `proxy`: a TCP proxy that cuts the browser's connections from the server side.
//! - `stub`: a scripted wxlogin for the failure paths (401, 503, a stream that dies for good).

// Test code: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/mod.rs"]
mod common;
#[path = "browser/harness.rs"]
mod harness;
#[path = "browser/proxy.rs"]
mod proxy;
#[path = "browser/stub.rs"]
mod stub;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use fantoccini::Locator;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha384};

use common::example_site::{Example, Site};
use common::sandbox::Sandbox;
use harness::{Browser, Screen};
use proxy::Proxy;
use stub::{Mode, StubServer};

const DESKTOP: Screen = Screen::Desktop;
const PHONE: Screen = Screen::Phone;

async fn open(name: &str, url: &str, screen: Screen) -> Browser {
    let browser = Browser::start(name, screen).await;
    browser.client.goto(url).await.expect("the page opens");
    browser
}

/// The scripted stand-in in `mode`, and its page opened on a desktop screen with the good page
/// token and `query` (`&name=value…`).
async fn open_stub(mode: Mode, name: &str, query: &str) -> (StubServer, Browser) {
    let stub = StubServer::start(mode).await;
    let url = format!("{}/?token={}{query}", stub.base, stub::GOOD_TOKEN);
    let browser = open(name, &url, DESKTOP).await;
    (stub, browser)
}

async fn click(browser: &Browser, css: &str) {
    browser
        .client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

async fn text_of(browser: &Browser, css: &str) -> String {
    browser
        .js(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
            vec![json!(css)],
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Records every scene the widget shows into `window.scenes`.
async fn record_scenes(browser: &Browser) {
    browser
        .js(
            "window.scenes = [];
             document.getElementById('wxlogin').addEventListener('wxlogin:state',
               (e) => { if (e.detail.scene) window.scenes.push(e.detail.scene); });",
            vec![],
        )
        .await;
}

#[tokio::test]
async fn the_qr_code_appears_decodes_to_the_ticket_url_and_a_scan_logs_the_page_in() {
    let sandbox = Sandbox::start(&[]).await;
    let browser = open("scan", &sandbox.base, DESKTOP).await;

    let shown = browser.wait_state("qr").await;
    let scene = browser.scene().await;
    let content = browser.decode_qr().await;
    assert!(
        content.starts_with("http://weixin.qq.com/q/"),
        "the QR holds the ticket url, not {content:?} ({shown})"
    );
    let alt = browser
        .js("return document.getElementById('qr').alt", vec![])
        .await;
    assert_eq!(alt, "微信登录二维码");
    let frame_radius = browser
        .js(
            "return getComputedStyle(document.querySelector('.wxlogin-frame')).borderTopLeftRadius",
            vec![],
        )
        .await;
    assert_eq!(
        frame_radius, "12px",
        "the widget's styles apply under the page's CSP"
    );
    browser.save_screenshot("qr").await;

    // The page pins the widget with its SRI hash (and Chromium ran it, so the hash is right).
    let js = reqwest::get(format!("{}/wxlogin.js", sandbox.base))
        .await
        .unwrap();
    assert_eq!(js.status(), 200);
    assert_eq!(
        js.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert!(js.headers().contains_key("etag"));
    assert!(
        js.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("max-age=")
    );
    let sri = format!(
        "sha384-{}",
        STANDARD.encode(Sha384::digest(js.bytes().await.unwrap()))
    );
    let pinned = browser
        .js(
            "return document.querySelector('script[integrity]').integrity",
            vec![],
        )
        .await;
    assert_eq!(pinned, sri);

    // The fake phone scans the code shown on the page, by the page's own button.
    let openid = browser
        .js("return document.getElementById('openid').value", vec![])
        .await
        .as_str()
        .unwrap()
        .to_owned();
    click(&browser, "#scan").await;
    browser.wait_state("done").await;
    assert_eq!(text_of(&browser, "#user").await, openid);
    assert!(text_of(&browser, ".wxlogin-user").await.contains(&openid));
    assert_eq!(text_of(&browser, "#event").await, "SCAN");
    assert_eq!(text_of(&browser, ".wxlogin-status").await, "登录成功");
    browser.save_screenshot("logged-in").await;

    // The code is used up: a second scan of it changes nothing.
    sandbox.scan(&scene, "oSomeoneElse", false).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(text_of(&browser, "#user").await, openid);

    // "Log in again" (the widget's refresh()) shows a new code.
    click(&browser, "#again").await;
    browser.wait_state("qr").await;
    assert_ne!(browser.scene().await, scene);
    browser.close().await;
}

#[tokio::test]
async fn an_expired_code_offers_a_refresh_and_only_the_new_code_logs_in() {
    let sandbox = Sandbox::start(&[("SSE_TIMEOUT_SECS", "5")]).await;
    let browser = open("expired", &sandbox.base, DESKTOP).await;

    browser.wait_state("qr").await;
    let old = browser.scene().await;
    browser.wait_state("expired").await;
    assert!(
        kept_code(&browser).await.is_none(),
        "an expired code is not kept for a reload"
    );
    let button = text_of(&browser, ".wxlogin-refresh").await;
    assert_eq!(button, "二维码已过期，点击刷新");
    browser.save_screenshot("expired").await;

    click(&browser, ".wxlogin-refresh").await;
    browser.wait_state("qr").await;
    let new = browser.scene().await;
    assert_ne!(new, old, "a refresh shows a new code");
    // Keyboard users keep their place: focus stays in the widget.
    let focus_in_widget = browser
        .js(
            "return document.getElementById('wxlogin').contains(document.activeElement)",
            vec![],
        )
        .await;
    assert_eq!(focus_in_widget, true);

    // A late scan of the expired code logs nobody in.
    sandbox.scan(&old, "oLateScanner", false).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let now = browser.state().await;
    assert_eq!(now["widget"], "qr", "{now}");
    assert_eq!(browser.scene().await, new);

    assert_eq!(sandbox.scan(&new, "oNewCodeUser", true).await, 200);
    browser.wait_state("done").await;
    assert_eq!(text_of(&browser, "#user").await, "oNewCodeUser");
    assert_eq!(text_of(&browser, "#event").await, "subscribe");
    browser.save_screenshot("refreshed-logged-in").await;
    browser.close().await;
}

/// Needs the server to resume a stream on `Last-Event-ID`: without it the reconnected
/// stream brings a new code, and this test says so.
#[tokio::test]
async fn a_stream_cut_by_the_server_side_resumes_the_same_code_and_still_gets_the_scan() {
    let sandbox = Sandbox::start(&[("SSE_KEEPALIVE_SECS", "1")]).await;
    let proxy = Proxy::start(sandbox.addr).await;
    let browser = open("resume", &format!("http://{}/", proxy.addr), DESKTOP).await;
    browser.wait_state("qr").await;
    record_scenes(&browser).await;
    let scene = browser.scene().await;
    browser.decode_qr().await;

    // The connection drops while the user is looking at the code; it stays down while they scan.
    proxy.hold();
    assert!(proxy.cut() > 0, "the page had connections open");
    let deadline = std::time::Instant::now() + harness::PATIENCE;
    while !text_of(&browser, ".wxlogin-status")
        .await
        .contains("连接中断")
    {
        assert!(std::time::Instant::now() < deadline, "no reconnecting note");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let the server notice its client is gone (keep-alive writes fail) before the scan.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(sandbox.scan(&scene, "oResumedUser", false).await, 200);
    proxy.release();

    // The reconnected EventSource names the last event it saw; the server resumes the scene
    // (same code) and delivers the scan that came while the stream was away.
    let deadline = std::time::Instant::now() + harness::PATIENCE;
    loop {
        let scenes = browser.js("return window.scenes", vec![]).await;
        let other: Vec<&Value> = scenes
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| **s != json!(scene))
            .collect();
        assert!(
            other.is_empty(),
            "the reconnected stream brought a new code {other:?} instead of resuming {scene} \
             (Last-Event-ID resume)"
        );
        if browser.state().await["widget"] == "done" {
            break;
        }
        if std::time::Instant::now() > deadline {
            browser.save_screenshot("failed-resume").await;
            panic!("no login after the reconnect: {}", browser.state().await);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    browser.wait_state("done").await;
    assert_eq!(text_of(&browser, "#user").await, "oResumedUser");
    browser.save_screenshot("resumed-logged-in").await;
    browser.close().await;
}

#[tokio::test]
async fn the_demo_page_fits_a_phone_and_works_by_keyboard_in_english() {
    let sandbox = Sandbox::start(&[]).await;
    let browser = open("phone", &sandbox.base, PHONE).await;
    browser.wait_state("qr").await;
    browser.decode_qr().await;
    let widths = browser
        .js(
            "return [window.innerWidth, document.scrollingElement.scrollWidth]",
            vec![],
        )
        .await;
    assert_eq!(
        widths,
        json!([390, 390]),
        "a phone's width, no sideways scrolling"
    );
    browser.save_screenshot("qr").await;

    // The language toggle changes the texts, not the code.
    let scene = browser.scene().await;
    click(&browser, "#lang").await;
    assert_eq!(
        text_of(&browser, ".wxlogin-status").await,
        "Scan with WeChat to log in"
    );
    assert_eq!(
        browser
            .js("return document.getElementById('qr').alt", vec![])
            .await,
        "WeChat login QR code"
    );
    assert_eq!(browser.scene().await, scene);

    // Keyboard only: focus the OpenID field, press Enter.
    let field = browser.client.find(Locator::Css("#openid")).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys("oKeyboardUser\u{E007}").await.unwrap();
    browser.wait_state("done").await;
    assert_eq!(text_of(&browser, "#user").await, "oKeyboardUser");
    assert_eq!(text_of(&browser, ".wxlogin-status").await, "Logged in");
    browser.save_screenshot("logged-in-en").await;
    browser.close().await;
}

#[tokio::test]
async fn a_wrong_token_shows_a_token_error_and_a_fresh_page_token_is_fetched_once() {
    let stub = StubServer::start(Mode::BusyFor(0)).await;

    let browser = open(
        "unauthorized",
        &format!("{}/?token=wrong", stub.base),
        DESKTOP,
    )
    .await;
    browser.wait_state("error").await;
    assert_eq!(
        text_of(&browser, ".wxlogin-status").await,
        "登录凭证无效，请刷新页面后重试"
    );
    let log = browser.js("return window.wxlog", vec![]).await;
    assert_eq!(log[0], json!(["error", "unauthorized", 401]), "{log}");
    browser.save_screenshot("error").await;
    browser.close().await;

    // getToken: a stale token, a 401, one fresh token, the code.
    let browser = open(
        "page-token",
        &format!("{}/?tokens=stale,{}", stub.base, stub::GOOD_TOKEN),
        DESKTOP,
    )
    .await;
    browser.wait_state("qr").await;
    assert_eq!(browser.decode_qr().await, stub::TICKET_URL);
    let log = browser.js("return window.wxlog", vec![]).await;
    assert_eq!(log, json!([["getToken"], ["getToken"]]));
    browser.close().await;
}

#[tokio::test]
async fn a_busy_server_is_retried_after_retry_after_with_a_countdown() {
    // The EventSource and the widget's probe are refused; the retry one second later succeeds.
    let stub = StubServer::start(Mode::BusyFor(2)).await;
    let browser = open(
        "busy",
        &format!("{}/?token={}&lang=en", stub.base, stub::GOOD_TOKEN),
        DESKTOP,
    )
    .await;
    browser.wait_state("error").await;
    assert_eq!(
        text_of(&browser, ".wxlogin-status").await,
        "Service busy, retrying shortly"
    );
    assert!(
        text_of(&browser, ".wxlogin-countdown")
            .await
            .starts_with("Retrying in")
    );
    browser.save_screenshot("busy").await;
    browser.wait_state("qr").await;
    assert_eq!(stub.sse_calls(), 3);
    let log = browser.js("return window.wxlog", vec![]).await;
    assert_eq!(log, json!([["error", "unavailable", 503]]));
    browser.close().await;
}

#[tokio::test]
async fn when_streams_keep_failing_the_widget_polls_the_status_and_logs_in() {
    let (stub, browser) = open_stub(Mode::DiesThenPolls, "polling", "&showOpenid=1").await;
    browser.wait_state("qr").await;
    // The stub answers 400 to a status request without the stream's event id: a login proves
    // the widget sent it, and no URL carried it.
    browser.wait_state("done").await;
    assert!(stub.status_calls() >= 3, "it polled");
    assert_eq!(stub.ids_in_urls(), 0, "the event id goes in a header");
    assert!(
        text_of(&browser, ".wxlogin-user")
            .await
            .contains("oPolledUser")
    );
    let log = browser.js("return window.wxlog", vec![]).await;
    assert_eq!(
        log,
        json!([["login", {"userId": "oPolledUser", "event": "subscribe", "login_token": "stub.login.token"}]])
    );
    browser.save_screenshot("done").await;
    browser.close().await;
}

#[tokio::test]
async fn a_widget_for_another_account_names_it_on_its_streams_and_status_polls() {
    let (stub, browser) = open_stub(Mode::DiesThenPolls, "account", "&account=shop").await;
    browser.wait_state("done").await;
    let accounts = stub.accounts();
    assert!(
        stub.status_calls() >= 1 && accounts.len() >= 2,
        "{accounts:?}"
    );
    assert!(accounts.iter().all(|a| a == "shop"), "{accounts:?}");
    browser.close().await;
    // The default account is named by nothing, as before.
    let (stub, browser) = open_stub(Mode::DiesThenPolls, "account-default", "").await;
    browser.wait_state("done").await;
    let accounts = stub.accounts();
    assert!(accounts.iter().all(|a| a == "-"), "{accounts:?}");
    browser.close().await;
}

/// The code the widget keeps for a reload: `(key, {id, base, deadline})` of its one
/// `sessionStorage` entry, or `None`.
async fn kept_code(browser: &Browser) -> Option<(String, Value)> {
    let kept = browser
        .js(
            "const keys = Object.keys(sessionStorage).filter((k) => k.startsWith('wxlogin:'));
             return keys.map((k) => [k, JSON.parse(sessionStorage.getItem(k))]);",
            vec![],
        )
        .await;
    let kept = kept.as_array().unwrap();
    assert!(kept.len() <= 1, "one entry per wxlogin base: {kept:?}");
    kept.first()
        .map(|e| (e[0].as_str().unwrap().to_owned(), e[1].clone()))
}

/// The URLs the page fetched (resource timing) that carry `needle`.
async fn urls_with(browser: &Browser, needle: &str) -> Vec<String> {
    let urls = browser
        .js(
            "return performance.getEntriesByType('resource').map((e) => e.name)
               .filter((u) => u.includes(arguments[0]));",
            vec![json!(needle)],
        )
        .await;
    serde_json::from_value(urls).unwrap()
}

#[tokio::test]
async fn a_page_reload_resumes_the_same_code_and_a_scan_meanwhile_logs_the_page_in() {
    let sandbox = Sandbox::start(&[]).await;
    let browser = open("reload", &sandbox.base, DESKTOP).await;

    // The widget keeps the stream's event id while the code is shown.
    browser.wait_state("qr").await;
    let scene = browser.scene().await;
    let (key, kept) = kept_code(&browser).await.expect("the code is kept");
    assert_eq!(key, format!("wxlogin:{}", sandbox.base));
    assert_eq!(kept["base"], sandbox.base);
    let id = kept["id"].as_str().unwrap().to_owned();
    assert!(
        id.starts_with(&format!("{scene}.")) && id.ends_with(".0"),
        "the first event's id: {id}"
    );
    let now_ms = browser.js("return Date.now()", vec![]).await;
    assert!(kept["deadline"].as_f64().unwrap() > now_ms.as_f64().unwrap());

    // A reload shows the same code, not a new one, and only the resuming stream's URL names it.
    browser.client.refresh().await.unwrap();
    browser.wait_state("qr").await;
    assert_eq!(browser.scene().await, scene, "the reload resumed the code");
    let stream_key = id.split('.').nth(1).unwrap();
    for url in urls_with(&browser, stream_key).await {
        assert!(url.contains("/sse?"), "the event id leaked into {url}");
    }

    // The resumed stream delivers the scan.
    let openid = browser
        .js("return document.getElementById('openid').value", vec![])
        .await
        .as_str()
        .unwrap()
        .to_owned();
    click(&browser, "#scan").await;
    browser.wait_state("done").await;
    assert_eq!(text_of(&browser, "#user").await, openid);
    assert!(kept_code(&browser).await.is_none(), "dropped on login");
    browser.save_screenshot("reloaded-logged-in").await;

    // After a login, a reload shows a new code.
    browser.client.refresh().await.unwrap();
    browser.wait_state("qr").await;
    let second = browser.scene().await;
    assert_ne!(second, scene, "a used code is not resumed");

    // The page goes away, the phone scans meanwhile, the page is opened again in the tab and
    // logs in from the result the server kept.
    browser.client.goto("about:blank").await.unwrap();
    assert_eq!(sandbox.scan(&second, "oScannedWhileAway", true).await, 200);
    browser.client.goto(&sandbox.base).await.unwrap();
    browser.wait_state("done").await;
    assert_eq!(browser.scene().await, second);
    assert_eq!(text_of(&browser, "#user").await, "oScannedWhileAway");
    assert_eq!(text_of(&browser, "#event").await, "subscribe");
    assert!(kept_code(&browser).await.is_none(), "dropped on login");
    browser.save_screenshot("reopened-logged-in").await;

    // No resume after that login either.
    browser.client.refresh().await.unwrap();
    browser.wait_state("qr").await;
    let third = browser.scene().await;
    assert!(
        third != scene && third != second,
        "a new code after the login"
    );

    // Away and back through the history (Chromium may restore the page from its
    // back/forward cache rather than load it): the scan made meanwhile logs it in.
    browser.client.goto("about:blank").await.unwrap();
    assert_eq!(sandbox.scan(&third, "oBackAgain", false).await, 200);
    browser.client.back().await.unwrap();
    browser.wait_state("done").await;
    assert_eq!(browser.scene().await, third);
    assert_eq!(text_of(&browser, "#user").await, "oBackAgain");
    assert!(kept_code(&browser).await.is_none(), "dropped on login");

    browser.client.refresh().await.unwrap();
    browser.wait_state("qr").await;
    let fourth = browser.scene().await;
    assert!(![&scene, &second, &third].contains(&&fourth), "a new code");
    browser.close().await;
}

#[tokio::test]
async fn a_promise_from_on_login_shows_verifying_then_logged_in_and_the_openid_stays_hidden() {
    let (_stub, browser) = open_stub(Mode::LogsIn, "verifying", "&onLogin=promise").await;
    browser.wait_state("verifying").await;
    assert_eq!(text_of(&browser, ".wxlogin-status").await, "正在验证登录…");
    // Still verifying while the site's backend has not answered.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(browser.state().await["widget"], "verifying");
    browser.save_screenshot("verifying").await;

    browser.js("window.settleLogin(true)", vec![]).await;
    browser.wait_state("done").await;
    assert_eq!(text_of(&browser, ".wxlogin-status").await, "登录成功");
    // The openid is not shown unless the page asks for it.
    let user = browser
        .js(
            "const u = document.querySelector('.wxlogin-user');
             return { hidden: u.hidden, text: u.textContent, page: document.body.innerText };",
            vec![],
        )
        .await;
    assert_eq!(user["hidden"], true, "{user}");
    assert!(
        !user["page"].as_str().unwrap().contains("oStubUser"),
        "the openid is on the page: {user}"
    );
    let log = browser.js("return window.wxlog", vec![]).await;
    assert_eq!(log[0][0], "login", "{log}");
    browser.save_screenshot("done").await;
    browser.close().await;

    // Asked for, it is shown.
    let (_stub, browser) = open_stub(Mode::LogsIn, "show-openid", "&showOpenid=1").await;
    browser.wait_state("done").await;
    assert!(
        text_of(&browser, ".wxlogin-user")
            .await
            .contains("oStubUser")
    );
    browser.close().await;
}

#[tokio::test]
async fn a_rejected_on_login_promise_shows_an_error_with_a_new_code_to_scan() {
    let (_stub, browser) =
        open_stub(Mode::LogsIn, "login-rejected", "&onLogin=promise&lang=en").await;
    browser.wait_state("verifying").await;
    assert_eq!(
        text_of(&browser, ".wxlogin-status").await,
        "Verifying login…"
    );
    browser.js("window.settleLogin(false)", vec![]).await;
    browser.wait_state("error").await;
    assert_eq!(
        text_of(&browser, ".wxlogin-status").await,
        "Login was not completed, please scan again"
    );
    let log = browser.js("return window.wxlog", vec![]).await;
    assert_eq!(log[1], json!(["error", "login", null]), "{log}");
    browser.save_screenshot("error").await;

    // The retry button brings a new code.
    click(&browser, ".wxlogin-refresh").await;
    browser.wait_state("qr").await;
    browser.close().await;
}

#[tokio::test]
async fn a_stream_whose_first_event_never_comes_shows_an_error_not_an_endless_spinner() {
    let (_stub, browser) = open_stub(Mode::Silent, "silent", "&firstEventTimeout=1000").await;
    browser.wait_state("error").await;
    assert_eq!(
        text_of(&browser, ".wxlogin-status").await,
        "登录服务没有响应，请点击重试"
    );
    let log = browser.js("return window.wxlog", vec![]).await;
    assert_eq!(log, json!([["error", "timeout", null]]));
    let retry = browser
        .js(
            "return !document.querySelector('.wxlogin-refresh').hidden",
            vec![],
        )
        .await;
    assert_eq!(retry, true, "a retry button");
    browser.save_screenshot("error").await;
    browser.close().await;
}

#[tokio::test]
async fn a_visitor_logs_in_to_the_example_site_in_a_browser_and_stays_logged_in() {
    let sandbox = Sandbox::start(&[]).await;
    let site = Site::start(Example::Python, &sandbox).await;
    let browser = open("example-site", &format!("{}/", site.base), DESKTOP).await;

    // The site's page (its own origin, a strict CSP) shows wxlogin's widget with a page token
    // bound to that origin.
    browser.wait_state("qr").await;
    let scene = browser.scene().await;
    browser.decode_qr().await;
    assert_eq!(sandbox.scan(&scene, "oBrowserVisitor", false).await, 200);

    // The widget hands the login token to the site, whose backend verifies it and sets its
    // cookie; "logged in" shows once that is done.
    browser.wait_state("done").await;
    assert_eq!(
        text_of(&browser, "#who").await,
        "Logged in as oBrowserVisitor"
    );
    browser.save_screenshot("logged-in").await;

    // The session cookie holds: a reload shows the visitor, not the widget.
    browser.client.refresh().await.unwrap();
    let deadline = std::time::Instant::now() + harness::PATIENCE;
    while text_of(&browser, "#who").await != "Logged in as oBrowserVisitor" {
        assert!(
            std::time::Instant::now() < deadline,
            "not logged in after a reload"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let widget = browser
        .js(
            "return document.getElementById('wechat-login').hidden",
            vec![],
        )
        .await;
    assert_eq!(widget, true);
    browser.close().await;
}

/// The top of the first element matching `css`, in CSS pixels (null if none or hidden).
async fn top_of(browser: &Browser, css: &str) -> f64 {
    browser
        .js(
            "const e = document.querySelector(arguments[0]);
             return e && e.offsetParent !== null ? e.getBoundingClientRect().top : null;",
            vec![json!(css)],
        )
        .await
        .as_f64()
        .unwrap_or_else(|| panic!("{css} is not shown"))
}

async fn is_shown(browser: &Browser, css: &str) -> bool {
    browser
        .js(
            "const e = document.querySelector(arguments[0]);
             return !!e && e.offsetParent !== null;",
            vec![json!(css)],
        )
        .await
        == true
}

/// Waits until the text of `css` is `want`.
async fn wait_text(browser: &Browser, css: &str, want: &str) {
    let deadline = std::time::Instant::now() + harness::PATIENCE;
    loop {
        let now = text_of(browser, css).await;
        if now == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{css} shows {now:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The login code the widget shows, checked to be `CODE_DIGITS` (6) digits.
async fn shown_code(browser: &Browser) -> String {
    let code = text_of(browser, ".wxlogin-code").await;
    assert!(
        code.len() == 6 && code.chars().all(|c| c.is_ascii_digit()),
        "a six-digit code, not {code:?}"
    );
    code
}

#[tokio::test]
async fn a_desktop_shows_the_qr_code_with_the_login_code_under_it_and_sending_the_code_logs_in() {
    let sandbox = Sandbox::start(&[]).await;
    let browser = open("desktop-code", &sandbox.base, DESKTOP).await;
    browser.wait_state("qr").await;
    assert!(
        browser
            .decode_qr()
            .await
            .starts_with("http://weixin.qq.com/q/")
    );
    let code = shown_code(&browser).await;
    assert_eq!(
        browser
            .js(
                "return document.getElementById('wxlogin').dataset.wxloginLayout",
                vec![]
            )
            .await,
        "desktop"
    );
    assert_eq!(
        text_of(&browser, ".wxlogin-code-label").await,
        "或在公众号内发送验证码"
    );
    assert!(top_of(&browser, ".wxlogin-code").await > top_of(&browser, "img.wxlogin-qr").await);
    // A screen reader reads it digit by digit.
    let spaced: Vec<String> = code.chars().map(String::from).collect();
    assert_eq!(
        browser
            .js(
                "return document.querySelector('.wxlogin-code').getAttribute('aria-label')",
                vec![]
            )
            .await,
        format!("验证码 {}", spaced.join(" "))
    );
    // A desktop scans: no copy button, no album note, no PNG link.
    for css in [
        ".wxlogin-copy",
        ".wxlogin-qrnote",
        ".wxlogin-download",
        ".wxlogin-longpress",
    ] {
        assert!(
            !is_shown(&browser, css).await,
            "{css} is hidden on a desktop"
        );
    }
    browser.save_screenshot("qr-and-code").await;

    let reply = reqwest::Client::new()
        .post(format!("{}/sandbox/text", sandbox.base))
        .json(&json!({ "openid": "oCodeSender", "content": format!("登录 {code}") }))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    browser.wait_state("done").await;
    assert_eq!(text_of(&browser, "#user").await, "oCodeSender");
    assert_eq!(text_of(&browser, "#event").await, "code");
    browser.close().await;
}

#[tokio::test]
async fn a_phone_shows_the_code_first_with_a_working_copy_button_and_a_png_of_the_qr_to_save() {
    let sandbox = Sandbox::start(&[]).await;
    // No layout option: a phone is recognised by touch and a narrow screen.
    let browser = open("phone-code", &sandbox.base, PHONE).await;
    browser.wait_state("qr").await;
    let code = shown_code(&browser).await;
    assert_eq!(
        browser
            .js(
                "return document.getElementById('wxlogin').dataset.wxloginLayout",
                vec![]
            )
            .await,
        "phone"
    );
    assert!(
        top_of(&browser, ".wxlogin-code").await < top_of(&browser, "img.wxlogin-qr").await,
        "the code comes first on a phone"
    );
    assert!(top_of(&browser, ".wxlogin-copy").await < top_of(&browser, "img.wxlogin-qr").await);
    assert_eq!(
        text_of(&browser, ".wxlogin-code-label").await,
        "把验证码发送到公众号即可登录"
    );
    let steps = text_of(&browser, ".wxlogin-steps").await;
    assert!(
        steps.contains("复制验证码") && steps.contains("打开微信"),
        "{steps}"
    );
    assert_eq!(
        text_of(&browser, ".wxlogin-qrnote").await,
        "保存图片后在微信里扫一扫（从相册选择）"
    );

    // By keyboard: Tab to the copy button, press Enter. The clipboard then holds the code.
    let copy = browser
        .client
        .find(Locator::Css(".wxlogin-copy"))
        .await
        .unwrap();
    assert_eq!(copy.text().await.unwrap(), "复制验证码");
    browser
        .js("document.querySelector('.wxlogin-copy').focus()", vec![])
        .await;
    copy.send_keys("\u{E007}").await.unwrap();
    wait_text(&browser, ".wxlogin-copy", "已复制").await;
    browser.grant("clipboard-read").await;
    let copied = browser
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             navigator.clipboard.readText().then(done, (e) => done('refused: ' + e));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(copied, json!(code), "the clipboard holds the code");
    assert_eq!(
        browser
            .js("return document.activeElement.className", vec![])
            .await,
        "wxlogin-copy",
        "focus stays on the copy button"
    );

    // Without the Clipboard API (plain http, old WebViews) the button copies the old way.
    browser
        .js(
            "window.realClipboard = navigator.clipboard;
             Object.defineProperty(navigator, 'clipboard', { value: undefined, configurable: true });
             return window.realClipboard.writeText('something else');",
            vec![],
        )
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(4);
    while text_of(&browser, ".wxlogin-copy").await == "已复制" {
        assert!(
            std::time::Instant::now() < deadline,
            "the copied state never ended"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    click(&browser, ".wxlogin-copy").await;
    wait_text(&browser, ".wxlogin-copy", "已复制").await;
    let copied = browser
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             window.realClipboard.readText().then(done, (e) => done('refused: ' + e));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        copied,
        json!(code),
        "the fallback put the code on the clipboard"
    );

    // The QR to save: a PNG (WeChat's album scanner reads no SVG) of the same ticket URL.
    let deadline = std::time::Instant::now() + harness::PATIENCE;
    let href = loop {
        let href = browser
            .js(
                "const a = document.querySelector('a.wxlogin-download');
                 return a && a.offsetParent !== null ? a.getAttribute('href') : null;",
                vec![],
            )
            .await;
        if let Some(h) = href.as_str() {
            break h.to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "no PNG to download");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let png = STANDARD
        .decode(
            href.strip_prefix("data:image/png;base64,")
                .unwrap_or_else(|| panic!("a PNG data URL, not {}", &href[..40.min(href.len())])),
        )
        .unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
    let content = harness::decode_png_qr(&png);
    assert_eq!(
        content,
        browser.decode_qr().await,
        "the PNG holds the ticket URL"
    );
    assert!(content.starts_with("http://weixin.qq.com/q/"));
    assert_eq!(
        browser
            .js(
                "return document.querySelector('a.wxlogin-download').download",
                vec![]
            )
            .await,
        "wechat-login-qr.png"
    );
    browser.save_screenshot("code-first").await;
    browser.close().await;
}

#[tokio::test]
async fn inside_wechat_the_qr_says_to_long_press_it_and_the_code_is_the_fallback_in_english() {
    let sandbox = Sandbox::start(&[]).await;
    // No option: the widget reads WeChat's user agent.
    let url = format!("{}/?lang=en", sandbox.base);
    let browser = open("wechat", &url, Screen::WeChat).await;
    browser.wait_state("qr").await;
    assert_eq!(
        browser
            .js(
                "return document.getElementById('wxlogin').dataset.wxloginLayout",
                vec![]
            )
            .await,
        "wechat"
    );
    shown_code(&browser).await;
    assert_eq!(
        text_of(&browser, ".wxlogin-longpress").await,
        "Long-press the QR code and follow the account to log in"
    );
    assert!(is_shown(&browser, ".wxlogin-longpress").await);
    assert_eq!(
        text_of(&browser, ".wxlogin-code-label").await,
        "Does not work? Send the code to the account"
    );
    assert!(
        top_of(&browser, "img.wxlogin-qr").await < top_of(&browser, ".wxlogin-code").await,
        "inside WeChat the QR (long-press) comes first"
    );
    assert!(is_shown(&browser, ".wxlogin-copy").await);
    // WeChat's browser does not download files: no PNG link, no album note.
    assert!(!is_shown(&browser, ".wxlogin-download").await);
    assert!(!is_shown(&browser, ".wxlogin-qrnote").await);
    browser.save_screenshot("long-press").await;
    browser.close().await;
}

#[tokio::test]
async fn a_code_only_sandbox_shows_the_code_and_the_accounts_follow_qr_and_its_fake_phone_logs_in()
{
    let sandbox = Sandbox::start(&[
        ("LOGIN_MODES", "code"),
        ("ACCOUNT_QRCODE_URL", "https://mp.example.com/follow.png"),
    ])
    .await;
    let browser = open("code-only", &sandbox.base, DESKTOP).await;
    let shown = browser.wait_state("qr").await;
    assert!(
        shown["src"].is_null(),
        "no QR code in code-only mode: {shown}"
    );
    let code = shown_code(&browser).await;
    assert_eq!(
        text_of(&browser, ".wxlogin-status").await,
        "请在微信中向公众号发送验证码"
    );
    assert_eq!(
        browser
            .js(
                "return document.querySelector('.wxlogin-account-qr').getAttribute('src')",
                vec![]
            )
            .await,
        "https://mp.example.com/follow.png"
    );
    assert!(is_shown(&browser, ".wxlogin-account").await);
    assert!(!is_shown(&browser, ".wxlogin-frame").await);
    assert_eq!(
        browser
            .js("return document.getElementById('scan').disabled", vec![])
            .await,
        true,
        "nothing to scan"
    );

    browser.save_screenshot("code-only").await;

    // The fake phone: type the code on its keyboard, send, see the reply, and the page logs in.
    for digit in code.chars() {
        click(&browser, &format!("#keys [data-key='{digit}']")).await;
    }
    assert_eq!(
        browser
            .js("return document.getElementById('phone-text').value", vec![])
            .await,
        code
    );
    click(&browser, "#phone-send").await;
    browser.wait_state("done").await;
    let openid = browser
        .js("return document.getElementById('openid').value", vec![])
        .await;
    assert_eq!(json!(text_of(&browser, "#user").await), openid);
    assert_eq!(text_of(&browser, "#event").await, "code");
    let chat = browser
        .js(
            "return [...document.querySelectorAll('#chat .bubble')].map((b) => [b.className, b.textContent])",
            vec![],
        )
        .await;
    assert_eq!(chat[0], json!(["bubble me", code]), "{chat}");
    assert_eq!(
        chat[1][0], "bubble them",
        "the passive reply as a bubble: {chat}"
    );
    assert!(!chat[1][1].as_str().unwrap().is_empty());
    browser.save_screenshot("fake-phone-logged-in").await;
    browser.close().await;
}

#[tokio::test]
async fn inside_wechat_one_tap_logs_the_visitor_in_through_wechats_authorization_without_a_qr_code()
{
    let sandbox = Sandbox::start(&[]).await;
    // No option: the widget reads WeChat's user agent; the sandbox's account allows oauth.
    let browser = open("oauth", &sandbox.base, Screen::WeChat).await;
    browser.wait_state("qr").await;
    assert!(is_shown(&browser, "button.wxlogin-oauth").await);
    assert_eq!(
        text_of(&browser, "button.wxlogin-oauth").await,
        "在微信中一键登录"
    );
    assert!(
        top_of(&browser, "button.wxlogin-oauth").await < top_of(&browser, "img.wxlogin-qr").await,
        "inside WeChat the one-tap login comes first"
    );
    browser.save_screenshot("oauth-button").await;

    // Off to WeChat (the fake's authorize page, its phone), which names the visitor.
    click(&browser, "button.wxlogin-oauth").await;
    let allow = browser
        .client
        .wait()
        .for_element(Locator::Css("#allow"))
        .await
        .expect("WeChat's authorize page");
    let openid = text_of(&browser, "#openid").await;
    assert!(openid.starts_with('o'), "{openid}");
    browser.save_screenshot("oauth-authorize").await;
    allow.click().await.expect("allow");

    // Back on the page: logged in, without a QR code scanned, and no handle left in the URL.
    browser.wait_state("done").await;
    assert_eq!(text_of(&browser, "#user").await, openid);
    assert_eq!(text_of(&browser, "#event").await, "oauth");
    let token = text_of(&browser, "#login-token").await;
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let url = browser.client.current_url().await.expect("url");
    assert_eq!(url.fragment(), None, "{url}");
    browser.save_screenshot("oauth-done").await;
    browser.close().await;
}

#[tokio::test]
async fn the_sandbox_page_opens_itself_as_inside_wechat_to_show_the_one_tap_login() {
    let sandbox = Sandbox::start(&[]).await;
    let browser = open("oauth-link", &format!("{}/?lang=en", sandbox.base), DESKTOP).await;
    browser.wait_state("qr").await;
    assert!(!is_shown(&browser, "button.wxlogin-oauth").await);
    click(&browser, "#open-in-wechat").await;
    browser.wait_state("qr").await;
    let url = browser.client.current_url().await.expect("url");
    assert_eq!(url.query(), Some("lang=en&wechat=1"));
    assert_eq!(
        text_of(&browser, "button.wxlogin-oauth").await,
        "Log in with WeChat"
    );
    browser.close().await;
}
