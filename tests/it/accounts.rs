//! Several Official Accounts in one deployment: the environment's (`default`) and those of
//! `ACCOUNTS_FILE`, each with its own QR codes, callback URL and login tokens; the file
//! re-read while streams are open.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use wxlogin::sandbox::fake::{FakeAccount, FakeWechat};
use wxlogin::sandbox::phone;

use crate::helpers::{TestApp, assert_login, on_every_backend, spawn_app_on, wait_until};
use crate::page_tokens::mint;

on_every_backend!(
    two_accounts_each_get_their_own_qr_codes_and_callbacks,
    a_callback_reaches_only_the_streams_of_the_account_whose_url_it_came_to,
    the_accounts_file_changed_while_streams_are_open_takes_effect_at_once,
    a_changed_reply_text_leaves_the_accounts_open_streams_waiting,
);

/// An accounts file in a directory of its own, readable by its owner only.
pub(crate) struct AccountsFile {
    _dir: tempfile::TempDir,
    pub(crate) path: PathBuf,
}

impl AccountsFile {
    pub(crate) fn new(text: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("accounts.toml");
        let file = Self { _dir: dir, path };
        file.write(text);
        file
    }

    /// Replaces the file as an editor would: a new file renamed over the old one.
    fn write(&self, text: &str) {
        let next = self.path.with_extension("next");
        std::fs::write(&next, text).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&next, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        std::fs::rename(&next, &self.path).unwrap();
    }
}

/// The `[[account]]` table of the fake `account`, named `name`.
pub(crate) fn table(name: &str, account: &FakeAccount) -> String {
    format!(
        "[[account]]\nname = \"{name}\"\nappid = \"{}\"\nsecret_key = \"{}\"\nmp_token = \"{}\"\n\n",
        account.appid,
        account.secret.expose(),
        account.mp_token.expose(),
    )
}

/// A wxlogin whose environment has the fake's first account and whose accounts file holds
/// `others` (name, account), all served by one fake WeChat; each account's callbacks go to its
/// own URL.
async fn spawn_accounts(others: &[(&str, &FakeAccount)]) -> (TestApp, AccountsFile) {
    let fake = FakeWechat::new(FakeAccount::random());
    let mut text = String::new();
    for (name, account) in others {
        fake.add_account((*account).clone());
        text.push_str(&table(name, account));
    }
    let file = AccountsFile::new(&text);
    let path = file.path.to_string_lossy().into_owned();
    let app = spawn_app_on(fake, &[("ACCOUNTS_FILE", path.as_str())]).await;
    for (name, account) in others {
        app.phone
            .set_callback_for(&account.appid, format!("{}/wechat_event/{name}", app.base));
    }
    (app, file)
}

impl TestApp {
    /// Opens a stream of `account` and reads its first event.
    pub(crate) async fn open_account(
        &self,
        account: &str,
    ) -> (crate::helpers::Stream, String, Value) {
        let mut stream = self
            .open_with(&format!("token={}&account={account}", self.api_token))
            .await;
        assert_eq!(stream.status, 200, "a stream of {account}");
        let first = stream.next_json().await;
        let scene = first["scene_id"].as_str().expect("scene_id").to_owned();
        (stream, scene, first)
    }

    /// `POST /login/verify` of `login_token`: the status and the claims.
    async fn verify(&self, login_token: &str) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}/login/verify", self.base))
            .bearer_auth(&self.api_token)
            .json(&json!({"login_token": login_token}))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }
}

async fn two_accounts_each_get_their_own_qr_codes_and_callbacks() {
    let shop = FakeAccount::random();
    let (app, _file) = spawn_accounts(&[("shop", &shop)]).await;
    let home = app.fake.account().clone();

    let (mut home_stream, home_scene, home_first) = app.open_account("default").await;
    let (mut shop_stream, shop_scene, shop_first) = app.open_account("shop").await;
    assert_eq!(home_first["account"], "default");
    assert_eq!(shop_first["account"], "shop");
    // Each QR code was made with its own account's access token.
    assert_eq!(
        app.fake.ticket_for_scene(&home_scene).unwrap().appid,
        home.appid
    );
    assert_eq!(
        app.fake.ticket_for_scene(&shop_scene).unwrap().appid,
        shop.appid
    );
    // The image of a code of another account than default is asked for with its account.
    let svg = shop_first["qrcode_svg"].as_str().unwrap();
    assert!(svg.ends_with("?account=shop"), "{svg}");
    assert_eq!(app.get(svg).await.status(), 200);
    let without_account = svg.split('?').next().unwrap();
    assert_eq!(app.get(without_account).await.status(), 404);

    // The phone calls each account's own callback URL, as WeChat does.
    app.scan(&shop_scene, "o-shop-visitor", false).await;
    app.scan(&home_scene, "o-home-visitor", false).await;
    let shop_result = shop_stream.next_json().await;
    let home_result = home_stream.next_json().await;
    assert_login(&shop_result, "o-shop-visitor", "SCAN");
    assert_login(&home_result, "o-home-visitor", "SCAN");
    assert_eq!(shop_result["account"], "shop");
    assert_eq!(home_result["account"], "default");
    // Each account counts its own, under its name.
    let delivered = r#"wxlogin_scans_total{outcome="delivered"}"#;
    assert_eq!(app.metric_of(delivered, "shop").await, 1);
    assert_eq!(app.metric_of(delivered, "default").await, 1);
    let made = app.metric_of("wxlogin_qr_made_total", "shop").await;
    assert!(made >= 1, "shop made its own QR codes");

    // The login token says which account, and the backend verifies either.
    let (status, claims) = app
        .verify(shop_result["login_token"].as_str().unwrap())
        .await;
    assert_eq!(status, 200, "{claims}");
    assert_eq!(claims["appid"], shop.appid.as_str());
    let (status, claims) = app
        .verify(home_result["login_token"].as_str().unwrap())
        .await;
    assert_eq!(status, 200, "{claims}");
    assert_eq!(claims["appid"], home.appid.as_str());

    // Readiness lists every account.
    let ready: Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(
        ready["accounts"]["shop"]["appid"],
        shop.appid.as_str(),
        "{ready}"
    );
    assert_eq!(
        ready["accounts"]["default"]["appid"],
        home.appid.as_str(),
        "{ready}"
    );

    // An account not served is refused, with a reason.
    let unknown = app
        .get(&format!("/sse?token={}&account=nope", app.api_token))
        .await;
    assert_eq!(unknown.status(), 404);
    assert_eq!(
        unknown.json::<Value>().await.unwrap()["error"],
        "unknown_account"
    );
}

async fn a_callback_reaches_only_the_streams_of_the_account_whose_url_it_came_to() {
    let shop = FakeAccount::random();
    let (app, _file) = spawn_accounts(&[("shop", &shop)]).await;
    let (mut shop_stream, shop_scene, _) = app.open_account("shop").await;
    let ticket = app.fake.ticket_for_scene(&shop_scene).unwrap().ticket;
    let xml = |openid: &str| {
        phone::scan_xml(
            &shop.gh_id,
            openid,
            phone::now_secs(),
            false,
            &shop_scene,
            &ticket,
        )
    };
    let signed_by = |account: &FakeAccount, openid: &str| {
        phone::signed_query(
            account.mp_token.expose(),
            phone::now_secs(),
            &phone::nonce(),
            openid,
        )
    };
    let post = |path: &'static str, query: String, body: String| {
        let app = &app;
        async move {
            app.client
                .post(format!("{}{path}?{query}", app.base))
                .header("content-type", "text/xml")
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };

    // Signed for shop, posted to the default account's URL: not default's signature.
    let refused = post("/wechat_event", signed_by(&shop, "o-a"), xml("o-a")).await;
    assert_eq!(refused.status(), 401);
    // Signed for default (a valid callback of default's) naming shop's scene: default's
    // streams only are looked at, and none waits on that scene.
    let home = app.fake.account().clone();
    let elsewhere = post("/wechat_event", signed_by(&home, "o-b"), xml("o-b")).await;
    assert_eq!(elsewhere.status(), 200);
    // Signed for default, posted to shop's URL: refused too.
    let refused = post("/wechat_event/shop", signed_by(&home, "o-c"), xml("o-c")).await;
    assert_eq!(refused.status(), 401);
    // An unknown account's URL is 404.
    let unknown = post("/wechat_event/nope", signed_by(&shop, "o-d"), xml("o-d")).await;
    assert_eq!(unknown.status(), 404);
    // The URL check is the account's too.
    let check = |account: &FakeAccount, path: &str| {
        let (timestamp, nonce) = (phone::now_secs().to_string(), phone::nonce());
        let signature =
            wxlogin::wechat::signature::signature(account.mp_token.expose(), &timestamp, &nonce);
        format!(
            "{}{path}?signature={signature}&timestamp={timestamp}&nonce={nonce}&echostr=hello",
            app.base
        )
    };
    let ok = app
        .client
        .get(check(&shop, "/wechat_event/shop"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.text().await.unwrap(), "hello");
    let wrong = app
        .client
        .get(check(&shop, "/wechat_event"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 400);

    // Shop's own callback on shop's URL logs the stream in: the first that reached it.
    let delivered = post("/wechat_event/shop", signed_by(&shop, "o-e"), xml("o-e")).await;
    assert_eq!(delivered.status(), 200);
    let result = shop_stream.next_json().await;
    assert_login(&result, "o-e", "SCAN");
}

async fn the_accounts_file_changed_while_streams_are_open_takes_effect_at_once() {
    let (shop, blog) = (FakeAccount::random(), FakeAccount::random());
    let (app, file) = spawn_accounts(&[("shop", &shop)]).await;
    app.fake.add_account(blog.clone());
    app.phone
        .set_callback_for(&blog.appid, format!("{}/wechat_event/blog", app.base));
    let (mut home_stream, home_scene, _) = app.open_account("default").await;
    let (_shop_stream, _, _) = app.open_account("shop").await;

    // Shop removed, blog added.
    file.write(&table("blog", &blog));
    let blog_open = format!("token={}&account=blog", app.api_token);
    wait_until(Duration::from_secs(10), || async {
        app.open_with(&blog_open).await.status == 200
    })
    .await;
    let (mut blog_stream, blog_scene, first) = app.open_account("blog").await;
    assert_eq!(first["account"], "blog");
    assert_eq!(
        app.fake.ticket_for_scene(&blog_scene).unwrap().appid,
        blog.appid
    );
    app.scan(&blog_scene, "o-blog", false).await;
    assert_login(&blog_stream.next_json().await, "o-blog", "SCAN");
    // The removed account's new streams are refused.
    let shop_open = format!("token={}&account=shop", app.api_token);
    assert_eq!(app.open_with(&shop_open).await.status, 404);

    // A broken file is refused, and the accounts served are kept.
    file.write("[[account]\nname = \"broken\"\nsecret_key = \"do-not-print\"\n");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (mut blog_again, blog_scene, _) = app.open_account("blog").await;
    app.scan(&blog_scene, "o-blog-2", false).await;
    assert_login(&blog_again.next_json().await, "o-blog-2", "SCAN");
    // A file that parses but does not validate (no appid) is refused alike.
    file.write("[[account]]\nname = \"blog\"\nmp_token = \"x\"\nsecret_key = \"y\"\n");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(app.open_with(&blog_open).await.status, 200);

    // The default account's stream, open all along, still logs in.
    app.scan(&home_scene, "o-home", false).await;
    assert_login(&home_stream.next_json().await, "o-home", "SCAN");
}

async fn a_changed_reply_text_leaves_the_accounts_open_streams_waiting() {
    let (shop, blog) = (FakeAccount::random(), FakeAccount::random());
    let (app, file) = spawn_accounts(&[("shop", &shop)]).await;
    app.fake.add_account(blog.clone());
    let (mut shop_stream, shop_scene, _) = app.open_account("shop").await;

    // Shop's reply changes; blog, added in the same write, tells when the reload is done.
    let changed = format!(
        "{}\nreply_text = \"shop-reply\"\n\n{}",
        table("shop", &shop).trim_end(),
        table("blog", &blog)
    );
    file.write(&changed);
    let blog_open = format!("token={}&account=blog", app.api_token);
    wait_until(Duration::from_secs(10), || async {
        app.open_with(&blog_open).await.status == 200
    })
    .await;

    // The stream opened before the change logs in, answered with the new reply.
    let delivery = app.scan(&shop_scene, "o-shop", false).await;
    assert_login(&shop_stream.next_json().await, "o-shop", "SCAN");
    let said = delivery.reply.as_deref().and_then(phone::reply_content);
    assert_eq!(said.as_deref(), Some("shop-reply"));
}

#[tokio::test]
async fn a_page_token_bound_to_an_account_opens_streams_of_that_account_only() {
    let shop = FakeAccount::random();
    let (app, _file) = spawn_accounts(&[("shop", &shop)]).await;
    let minted: Value = mint(&app, json!({"account": "shop"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(minted["account"], "shop");
    let token = minted["token"].as_str().unwrap();

    let mut stream = app.open_with(&format!("token={token}")).await;
    assert_eq!(stream.status, 200);
    assert_eq!(stream.next_json().await["account"], "shop");
    let other = app
        .get(&format!("/sse?token={token}&account=default"))
        .await;
    assert_eq!(other.status(), 401);
    assert_eq!(
        other.json::<Value>().await.unwrap()["error"],
        "unauthorized"
    );
    assert_eq!(
        app.open_with(&format!("token={token}&account=shop"))
            .await
            .status,
        200
    );

    let unknown = mint(&app, json!({"account": "nope"})).await;
    assert_eq!(unknown.status(), 404);
}

#[tokio::test]
async fn a_deployment_without_a_file_is_the_default_account_as_before() {
    let app = crate::helpers::spawn_app().await;
    let (mut stream, scene, first) = app.open_with_qr().await;
    assert_eq!(first["account"], "default");
    assert_eq!(
        first["qrcode_svg"].as_str().unwrap(),
        format!("/qrcode/{scene}.svg")
    );
    // `default` by name is the same account.
    let named = app
        .open_with(&format!("token={}&account=default", app.api_token))
        .await;
    assert_eq!(named.status, 200);
    app.scan(&scene, "o-same", false).await;
    assert_login(&stream.next_json().await, "o-same", "SCAN");
}

/// The binary re-reads its accounts file on SIGHUP (and stays up), warns of a file other
/// users can read, and prints no secret of it.
#[cfg(unix)]
#[tokio::test]
async fn the_binary_rereads_the_accounts_file_on_sighup_and_warns_of_a_readable_file() {
    use std::io::{BufRead as _, BufReader};
    use std::os::unix::fs::PermissionsExt as _;
    use std::process::{Command, Stdio};
    use std::sync::{Arc, Mutex};

    let cancel = tokio_util::sync::CancellationToken::new();
    let fake = FakeWechat::new(FakeAccount::random());
    let blog = FakeAccount::random();
    fake.add_account(blog.clone());
    let fake_addr = wxlogin::sandbox::spawn_fake(&fake, cancel.clone())
        .await
        .unwrap();
    let file = AccountsFile::new("");
    std::fs::set_permissions(&file.path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let home = fake.account();
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_wxlogin"))
        .arg("serve")
        .current_dir(dir.path())
        .env_clear()
        .envs([
            ("API_TOKEN", "sighup-test-token"),
            ("APPID", home.appid.as_str()),
            ("SECRET_KEY", home.secret.expose()),
            ("MP_TOKEN", home.mp_token.expose()),
            ("BIND", &format!("127.0.0.1:{port}")),
            ("WECHAT_API_BASE", &format!("http://{fake_addr}")),
            ("ACCOUNTS_FILE", &file.path.to_string_lossy()),
            ("SSE_PER_IP_PER_MIN", "0"),
            ("RUST_LOG", "info"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    for output in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let lines = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(output).lines().map_while(Result::ok) {
                lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
    }
    let _guard = crate::common::process::Guard::new(child, false);
    let logged = |needle: &str| lines.lock().unwrap().iter().any(|l| l.contains(needle));
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_until(Duration::from_secs(20), || async {
        client.get(format!("{base}/healthz")).send().await.is_ok()
    })
    .await;
    // Logged at start-up, before serving; read from the pipe by a thread of its own.
    wait_until(Duration::from_secs(5), || async {
        logged("can be read by any user")
    })
    .await;

    file.write(&table("blog", &blog));
    let hup = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let blog_stream = format!("{base}/sse?token=sighup-test-token&account=blog");
    wait_until(Duration::from_secs(10), || async {
        let r = client.get(&blog_stream).send().await.unwrap();
        r.status() == 200
    })
    .await;
    wait_until(Duration::from_secs(5), || async {
        logged("SIGHUP: re-reading ACCOUNTS_FILE")
    })
    .await;
    // Still serving after the signal; no secret of the file in the logs.
    assert!(client.get(format!("{base}/healthz")).send().await.is_ok());
    let all = lines.lock().unwrap().join("\n");
    assert!(!all.contains(blog.secret.expose()), "{all}");
    assert!(!all.contains(blog.mp_token.expose()), "{all}");
    cancel.cancel();
}

#[tokio::test]
async fn check_tries_every_account_and_names_the_one_that_fails() {
    let (shop, blog) = (FakeAccount::random(), FakeAccount::random());
    let (app, _file) = spawn_accounts(&[("shop", &shop)]).await;
    app.fake.add_account(blog.clone());
    let wrong_blog = FakeAccount {
        secret: wxlogin::wechat::secret::Secret::new("not-blogs-secret"),
        ..blog.clone()
    };
    let file = AccountsFile::new(&format!(
        "{}{}",
        table("shop", &shop),
        table("blog", &wrong_blog)
    ));
    let home = app.fake.account().clone();
    let dir = tempfile::tempdir().unwrap();
    let vars = [
        ("API_TOKEN", "check-api-token-123".to_owned()),
        ("APPID", home.appid.clone()),
        ("SECRET_KEY", home.secret.expose().to_owned()),
        ("MP_TOKEN", "mp".to_owned()),
        ("WECHAT_API_BASE", app.fake_base.clone()),
        ("ACCOUNTS_FILE", file.path.to_string_lossy().into_owned()),
    ];
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_wxlogin"))
            .arg("check")
            .current_dir(dir.path())
            .env_clear()
            .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("ok   account default: QR code created"),
        "{text}"
    );
    assert!(
        text.contains("ok   account shop: QR code created"),
        "{text}"
    );
    assert!(text.contains("FAIL account blog: access token"), "{text}");
    for secret in [
        home.secret.expose(),
        shop.secret.expose(),
        "not-blogs-secret",
        shop.mp_token.expose(),
    ] {
        assert!(!text.contains(secret), "{text}");
    }
}
