//! `wxlogin sandbox`, as a user runs it: the binary, the page, a click on "scan".

use base64::Engine as _;

use crate::common::sandbox::Sandbox;
use crate::common::sse::Stream;

#[tokio::test]
async fn the_sandbox_binary_serves_the_page_and_a_scan_logs_it_in() {
    sandbox_scan_logs_in(&[], "plaintext mode").await;
}

#[tokio::test]
async fn the_sandbox_in_safe_mode_encrypts_its_callbacks_and_still_logs_in() {
    sandbox_scan_logs_in(&["--safe-mode"], "safe mode").await;
}

/// A running `wxlogin sandbox` with `flags` and the environment `env` (nothing else), in an
/// empty folder.
async fn start_sandbox(flags: &[&str], env: &[(&str, &str)]) -> Sandbox {
    Sandbox::start_with(flags, env).await
}

/// Opens the page's stream with `token`, scans as `openid`: the login token.
async fn sandbox_login_token(base: &str, token: &str, openid: &str) -> String {
    let client = reqwest::Client::new();
    let response = client
        .get(format!("{base}/sse?token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut events = Stream::from_response(response);
    let qr = events.next_json().await;
    let scan = client
        .post(format!("{base}/sandbox/scan"))
        .json(&serde_json::json!({"scene": qr["scene_id"], "openid": openid}))
        .send()
        .await
        .unwrap();
    assert_eq!(scan.status(), 200);
    let result = events.next_json().await;
    result["login_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_sandbox_in_a_production_folder_ignores_its_secrets_and_a_site_refuses_its_tokens() {
    let secret = "the-production-login-token-secret-0123";
    let production_api_token = "production-api-token-0123";
    let sandbox = start_sandbox(
        &[],
        &[
            ("API_TOKEN", production_api_token),
            ("LOGIN_TOKEN_SECRET", secret),
            ("LOGIN_TOKEN_KEY_FILE", "/nonexistent/production.pem"),
            ("REDIS_URL", "redis://127.0.0.1:1"),
            // Unreadable: a sandbox that read it would not start.
            ("ACCOUNTS_FILE", "/nonexistent/accounts.toml"),
        ],
    )
    .await;
    let banner = &sandbox.banner;
    for setting in [
        "API_TOKEN",
        "ACCOUNTS_FILE",
        "LOGIN_TOKEN_SECRET",
        "LOGIN_TOKEN_KEY_FILE",
        "REDIS_URL",
    ] {
        assert!(banner.contains(setting), "{banner}");
    }
    assert!(banner.contains("Ignored"), "{banner}");
    let token = sandbox.api_token.as_str();
    assert_ne!(token, production_api_token);
    let refused = reqwest::get(format!("{}/sse?token={production_api_token}", sandbox.base))
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    let login_token = sandbox_login_token(&sandbox.base, token, "oSandboxUser").await;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let part = |i: usize| -> serde_json::Value {
        serde_json::from_slice(&b64.decode(login_token.split('.').nth(i).unwrap()).unwrap())
            .unwrap()
    };
    assert_eq!(part(0)["alg"], "EdDSA", "not signed with the secret");
    // A production deployment of the very account the sandbox names, keyed with the secret:
    // the token's signature is not its own.
    let account = wxlogin::sandbox::fake::FakeAccount {
        appid: part(1)["appid"].as_str().unwrap().to_owned(),
        ..wxlogin::sandbox::fake::FakeAccount::random()
    };
    let production =
        crate::helpers::spawn_app_for(account, &[("LOGIN_TOKEN_SECRET", secret)]).await;
    let r = production
        .client
        .post(format!("{}/login/verify", production.base))
        .bearer_auth(&production.api_token)
        .json(&serde_json::json!({"login_token": login_token}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("invalid"));
}

async fn sandbox_scan_logs_in(flags: &[&str], mode: &str) {
    let sandbox = start_sandbox(flags, &[]).await;
    let banner = &sandbox.banner;
    assert!(banner.contains("SANDBOX"), "{banner}");
    assert!(banner.contains("never contacted"), "{banner}");
    assert!(banner.contains(mode), "{banner}");

    let base = &sandbox.base;
    let client = reqwest::Client::new();
    let page = client.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(!html.contains("__API_TOKEN__"));
    let token = html
        .split("\"token\":\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("the page carries the sandbox token")
        .to_owned();

    // What the page does: open the stream, press "scan".
    let response = client
        .get(format!("{base}/sse?token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut events = Stream::from_response(response);
    let qr = events.next_json().await;
    let scene = qr["scene_id"].as_str().unwrap();
    let svg = client
        .get(format!("{base}{}", qr["qrcode_svg"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(svg.status(), 200);

    let scan = client
        .post(format!("{base}/sandbox/scan"))
        .json(&serde_json::json!({"scene": scene, "openid": "oSandboxUser", "new_follower": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(scan.status(), 200);
    let result = events.next_json().await;
    assert_eq!(result["userId"], "oSandboxUser");
    assert_eq!(result["event"], "SCAN");

    // A scan of a code the fake never made, or a malformed request: clear 4xx.
    let unknown = client
        .post(format!("{base}/sandbox/scan"))
        .json(&serde_json::json!({"scene": "AAAAAAAAAAAAAAAAAAAAAA"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 410);
    let malformed = client
        .post(format!("{base}/sandbox/scan"))
        .body("{")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);

    // The phone sends the login code of another stream as a text message.
    let response = client
        .get(format!("{base}/sse?token={token}&lang=en"))
        .send()
        .await
        .unwrap();
    let mut events = Stream::from_response(response);
    let first = events.next_json().await;
    let code = first["login_code"].as_str().expect("a login code");
    let text = client
        .post(format!("{base}/sandbox/text"))
        .json(&serde_json::json!({"openid": "oSandboxTexter", "content": format!("login {code}")}))
        .send()
        .await
        .unwrap();
    assert_eq!(text.status(), 200);
    let text: serde_json::Value = text.json().await.unwrap();
    assert!(
        text["reply"].as_str().unwrap().contains("logged in"),
        "{text}"
    );
    let result = events.next_json().await;
    assert_eq!(result["userId"], "oSandboxTexter");
    assert_eq!(result["event"], "code");
    let malformed = client
        .post(format!("{base}/sandbox/text"))
        .json(&serde_json::json!({"openid": "oX"}))
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
}

#[tokio::test]
async fn a_sandbox_with_user_info_hands_the_scanners_unionid_to_the_page() {
    let sandbox = start_sandbox(&[], &[("USER_INFO", "true")]).await;
    let client = reqwest::Client::new();
    let base = &sandbox.base;
    let response = client
        .get(format!("{base}/sse?token={}", sandbox.api_token))
        .send()
        .await
        .unwrap();
    let mut events = Stream::from_response(response);
    let qr = events.next_json().await;
    let bad = client
        .post(format!("{base}/sandbox/scan"))
        .json(&serde_json::json!({"scene": qr["scene_id"], "unionid": "not a unionid"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let scan = client
        .post(format!("{base}/sandbox/scan"))
        .json(&serde_json::json!({
            "scene": qr["scene_id"], "openid": "oSandboxUser", "unionid": "uSandbox_1"
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(scan.status(), 200);
    let result = events.next_json().await;
    assert_eq!(result["userId"], "oSandboxUser");
    assert_eq!(result["unionId"], "uSandbox_1");
}
