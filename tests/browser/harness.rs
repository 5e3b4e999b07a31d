//! What a browser test stands on: headless Chromium driven through chromedriver, and helpers to
//! wait on the page and look at it (the `wxlogin sandbox` binary is `common::sandbox`).
//!
//! Every process started here is killed when its guard drops, a failing test included:
//! chromedriver runs in a process group of its own, and the whole group (Chromium with it) is
//! killed by that group's id.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::common::free_port;
use crate::common::process::Guard;

/// Debian's Chromium and its driver (`apt-get install chromium chromium-driver`).
pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long any one thing may take to show on the page.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// Where screenshots go: `target/browser-screenshots/`, for people to look at.
pub fn screenshot_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp.parent().unwrap_or(tmp).join("browser-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

/// The window a test looks through.
#[derive(Clone, Copy, Debug)]
pub enum Screen {
    /// 1200×900.
    Desktop,
    /// 390×844 CSS pixels, as a phone (Chromium's device emulation: a headless window cannot
    /// be narrower than 500 px).
    Phone,
    /// The phone, with WeChat's own browser's user agent (it names `MicroMessenger`).
    WeChat,
}

/// The user agent of WeChat's browser on Android, as sent by WeChat 8.0.
pub const WECHAT_UA: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 7 Build/UQ1A.240205.004; wv) \
    AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/130.0.6723.103 Mobile Safari/537.36 \
    XWEB/1300259 MMWEBSDK/20241103 MMWEBID/2345 MicroMessenger/8.0.55.2780(0x28003737) WeChat/arm64 \
    Weixin NetType/WIFI Language/zh_CN ABI/arm64";

/// Headless Chromium behind chromedriver, both killed on drop.
pub struct Browser {
    pub client: Client,
    /// The test's name: screenshot files start with it.
    name: String,
    /// chromedriver's port, for the commands fantoccini does not have.
    port: u16,
    _profile: tempfile::TempDir,
    _driver: Guard,
}

impl Browser {
    /// A fresh browser (fresh profile) showing `screen`.
    pub async fn start(name: &str, screen: Screen) -> Self {
        for file in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(file).exists(),
                "{file} is missing: apt-get install chromium chromium-driver"
            );
        }
        let port = free_port();
        let profile = tempfile::tempdir().expect("profile dir");
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", profile.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromedriver starts");
        let driver = Guard::new(driver, true);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--no-proxy-server",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            "--window-size=1200,900",
            &format!("--user-data-dir={}", profile.path().display()),
        ];
        let mut options = json!({ "binary": CHROMIUM, "args": args });
        let phone = json!({ "width": 390, "height": 844, "pixelRatio": 2 });
        match screen {
            Screen::Desktop => {}
            Screen::Phone => options["mobileEmulation"] = json!({ "deviceMetrics": phone }),
            Screen::WeChat => {
                options["mobileEmulation"] =
                    json!({ "deviceMetrics": phone, "userAgent": WECHAT_UA });
            }
        }
        let caps = json!({ "browserName": "chrome", "goog:chromeOptions": options });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = tokio::time::timeout(
            Duration::from_secs(30),
            ClientBuilder::new(connector)
                .capabilities(caps)
                .connect(&format!("http://127.0.0.1:{port}")),
        )
        .await
        .expect("a WebDriver session within 30 s")
        .expect("a WebDriver session");
        Self {
            client,
            name: name.to_owned(),
            port,
            _profile: profile,
            _driver: driver,
        }
    }

    /// Grants the page `permission` (e.g. `clipboard-read`), through chromedriver's Permissions
    /// extension (`POST /session/{id}/permissions`).
    pub async fn grant(&self, permission: &str) {
        let session = self
            .client
            .session_id()
            .await
            .expect("session id")
            .expect("a session");
        let response = reqwest::Client::new()
            .post(format!(
                "http://127.0.0.1:{}/session/{session}/permissions",
                self.port
            ))
            .json(&json!({ "descriptor": { "name": permission }, "state": "granted" }))
            .send()
            .await
            .expect("chromedriver answers");
        assert!(
            response.status().is_success(),
            "granting {permission}: {}",
            response.text().await.unwrap_or_default()
        );
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) and returns its value.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .expect("script runs")
    }

    /// The widget's state: `data-wxlogin-state` of `#wxlogin`, mirrored in body's `data-state`.
    pub async fn state(&self) -> Value {
        self.js(
            "const w = document.querySelector('[data-wxlogin-state]');
             return { widget: w && w.dataset.wxloginState, page: document.body.dataset.state,
                      status: w && w.querySelector('.wxlogin-status').textContent,
                      src: (w && w.querySelector('.wxlogin-qr').getAttribute('src')) || null };",
            vec![],
        )
        .await
    }

    /// Waits until the widget is in `state`; on failure saves a screenshot and names what the
    /// page showed.
    pub async fn wait_state(&self, state: &str) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let now = self.state().await;
            if now["widget"] == state && (now["page"] == state || now["page"].is_null()) {
                return now;
            }
            if Instant::now() > deadline {
                self.save_screenshot(&format!("failed-waiting-for-{state}"))
                    .await;
                panic!("the page did not reach {state:?}; it shows {now}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The scene of the QR shown (from the image's `/qrcode/<scene>.svg`).
    pub async fn scene(&self) -> String {
        let now = self.state().await;
        let src = now["src"].as_str().expect("a QR image src");
        src.rsplit('/')
            .next()
            .and_then(|f| f.strip_suffix(".svg"))
            .unwrap_or_else(|| panic!("unexpected QR src {src}"))
            .to_owned()
    }

    /// Waits until the QR image has loaded, then decodes a screenshot of it.
    pub async fn decode_qr(&self) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let loaded = self
                .js(
                    "const i = document.querySelector('img.wxlogin-qr');
                     return !!i && i.complete && i.naturalWidth > 0 && !i.hidden;",
                    vec![],
                )
                .await;
            if loaded == true {
                break;
            }
            assert!(Instant::now() < deadline, "the QR image never loaded");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let img = self
            .client
            .find(Locator::Css("img.wxlogin-qr"))
            .await
            .expect("the QR image");
        let png = img.screenshot().await.expect("element screenshot");
        std::fs::write(
            screenshot_dir().join(format!("{}-qr-element.png", self.name)),
            &png,
        )
        .expect("write screenshot");
        decode_png_qr(&png)
    }

    /// Saves a screenshot of the viewport as `target/browser-screenshots/<test>-<what>.png`.
    pub async fn save_screenshot(&self, what: &str) -> PathBuf {
        let path = screenshot_dir().join(format!("{}-{what}.png", self.name));
        match self.client.screenshot().await {
            Ok(png) => {
                std::fs::write(&path, png).expect("write screenshot");
            }
            Err(e) => eprintln!("no screenshot {what}: {e}"),
        }
        path
    }

    /// Ends the session politely (the guards kill whatever is left anyway).
    pub async fn close(self) {
        let Self {
            client,
            _profile,
            _driver,
            ..
        } = self;
        let _ = tokio::time::timeout(Duration::from_secs(5), client.close()).await;
    }
}

/// The text of the one QR code in a PNG.
pub fn decode_png_qr(png: &[u8]) -> String {
    let gray = image::load_from_memory(png).expect("a PNG").to_luma8();
    let mut prepared = rqrr::PreparedImage::prepare(gray);
    let grids = prepared.detect_grids();
    assert_eq!(grids.len(), 1, "exactly one QR code in the screenshot");
    let (_, content) = grids[0].decode().expect("the QR code decodes");
    content
}
