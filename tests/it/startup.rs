//! The binary's start-up: configuration errors are one clear line, secrets never printed.

use std::process::Command;

fn wxlogin(dir: &std::path::Path, envs: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wxlogin"))
        .arg("serve")
        .current_dir(dir)
        .env_clear()
        .envs(envs.iter().copied())
        .output()
        .expect("binary runs")
}

#[test]
fn a_missing_setting_stops_start_up_with_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = wxlogin(
        dir.path(),
        &[
            ("APPID", "wx1"),
            ("SECRET_KEY", "topsecret-value"),
            ("MP_TOKEN", "mp"),
        ],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim(), "configuration: API_TOKEN is missing");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("topsecret-value"));
}

#[test]
fn an_invalid_setting_is_named_and_dotenv_is_read() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env"),
        "API_TOKEN=from-dotenv-token\nAPPID=wx1\nSECRET_KEY=topsecret-value\nMP_TOKEN=mp\nQR_TTL_SECS=3000000\n",
    )
    .unwrap();
    let out = wxlogin(dir.path(), &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.trim().starts_with("configuration: QR_TTL_SECS"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1);
    // A real environment variable wins over .env.
    let out = wxlogin(
        dir.path(),
        &[("QR_TTL_SECS", "1800"), ("BIND", "not-an-address")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("configuration: BIND"), "{stderr}");
    for secret in ["topsecret-value", "from-dotenv-token"] {
        assert!(!stderr.contains(secret));
    }
}
