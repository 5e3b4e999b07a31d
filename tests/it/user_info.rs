//! `USER_INFO`: a login carries the user's unionid when WeChat has one, and goes out without
//! it when WeChat cannot say.

use std::time::Duration;

use serde_json::Value;
use wxlogin::sandbox::fake::Fault;

use crate::helpers::{TestApp, assert_login, count, on_every_backend, spawn_app_with};
use crate::login_tokens::verify_like_a_site;

/// Scans a fresh stream's code as `openid`: the result event.
async fn login_as(app: &TestApp, openid: &str) -> Value {
    let (mut stream, scene, _) = app.open_with_qr().await;
    app.scan(&scene, openid, false).await;
    let result = stream.next_json().await;
    assert_login(&result, openid, "SCAN");
    result
}

async fn lookups(app: &TestApp, outcome: &str) -> u64 {
    app.metric(&format!(
        "wxlogin_user_info_lookups_total{{outcome=\"{outcome}\"}}"
    ))
    .await
}

async fn a_login_carries_the_unionid_in_the_result_and_the_token() {
    let app = spawn_app_with(&[("USER_INFO", "true")]).await;
    app.fake.give_unionid("oWithUnion", "uUnion_0123-abc");

    let result = login_as(&app, "oWithUnion").await;

    assert_eq!(result["unionId"], "uUnion_0123-abc", "{result}");
    let token = result["login_token"].as_str().unwrap();
    let claims = verify_like_a_site(&app, token).await.unwrap();
    assert_eq!(claims["unionId"], "uUnion_0123-abc");
    assert_eq!(app.verified(&result).await["unionId"], "uUnion_0123-abc");
    assert_eq!(count(&app.fake.counters().user_info_requests), 1);
    assert_eq!(lookups(&app, "found").await, 1);
}

async fn a_user_without_a_unionid_logs_in_without_one() {
    let app = spawn_app_with(&[("USER_INFO", "true")]).await;

    let result = login_as(&app, "oNoUnion").await;

    assert!(result.get("unionId").is_none(), "{result}");
    let claims = verify_like_a_site(&app, result["login_token"].as_str().unwrap())
        .await
        .unwrap();
    assert!(claims.get("unionId").is_none(), "{claims}");
    assert_eq!(lookups(&app, "none").await, 1);
}

async fn a_failing_user_info_does_not_fail_the_login() {
    let app = spawn_app_with(&[("USER_INFO", "true")]).await;
    app.fake.give_unionid("oFails", "uNeverSeen");
    app.fake.give_unionid("oNext", "uNext");
    // No permission for the API (an unverified account): the login goes on without it.
    app.fake.fail_user_info(Fault::Errcode(48001), 1);

    let result = login_as(&app, "oFails").await;

    assert!(result.get("unionId").is_none(), "{result}");
    assert!(app.verified(&result).await.get("unionId").is_none());
    assert_eq!(lookups(&app, "failed").await, 1);

    // The next login asks again and gets it.
    let result = login_as(&app, "oNext").await;
    assert_eq!(result["unionId"], "uNext");
}

async fn a_rejected_token_on_user_info_is_renewed_and_the_lookup_retried() {
    let app = spawn_app_with(&[("USER_INFO", "true")]).await;
    app.fake.give_unionid("oRenew", "uRenew");
    // WeChat rejects the token once (40001): wxlogin renews it and asks again.
    app.fake.fail_user_info(Fault::Errcode(40001), 1);

    let result = login_as(&app, "oRenew").await;

    assert_eq!(result["unionId"], "uRenew");
    assert_eq!(count(&app.fake.counters().user_info_requests), 2);
    assert_eq!(count(&app.fake.counters().forced_refreshes), 1);
}

async fn without_user_info_no_lookup_is_made() {
    let app = spawn_app_with(&[]).await;
    app.fake.give_unionid("oOff", "uOff");

    let result = login_as(&app, "oOff").await;

    assert!(result.get("unionId").is_none(), "{result}");
    assert_eq!(count(&app.fake.counters().user_info_requests), 0);
}

on_every_backend!(
    user_info_is_a_setting_of_each_account,
    a_login_carries_the_unionid_in_the_result_and_the_token,
    a_user_without_a_unionid_logs_in_without_one,
    a_failing_user_info_does_not_fail_the_login,
    a_rejected_token_on_user_info_is_renewed_and_the_lookup_retried,
    without_user_info_no_lookup_is_made,
);

async fn user_info_is_a_setting_of_each_account() {
    let (app, _shop, _file) = crate::token_broker::spawn_with_shop("user_info = true\n").await;
    app.fake.give_unionid("oShopper", "uShopper");
    app.fake.give_unionid("oHome", "uHome");

    let (mut shop_stream, shop_scene, _) = app.open_account("shop").await;
    app.scan(&shop_scene, "oShopper", false).await;
    let shop_result = shop_stream.next_json().await;
    let (mut home_stream, home_scene, _) = app.open_account("default").await;
    app.scan(&home_scene, "oHome", false).await;
    let home_result = home_stream.next_json().await;

    assert_eq!(shop_result["unionId"], "uShopper", "{shop_result}");
    assert!(home_result.get("unionId").is_none(), "{home_result}");
    assert_eq!(count(&app.fake.counters().user_info_requests), 1);
}

#[tokio::test]
async fn a_slow_user_info_lets_the_login_go_out_without_the_unionid() {
    let app = spawn_app_with(&[("USER_INFO", "true")]).await;
    app.fake.give_unionid("oSlow", "uSlow");
    app.fake
        .fail_user_info(Fault::Delay(Duration::from_secs(4)), 1);
    let started = tokio::time::Instant::now();

    let result = login_as(&app, "oSlow").await;

    assert!(result.get("unionId").is_none(), "{result}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "within the budget"
    );
    assert_eq!(lookups(&app, "failed").await, 1);
}

#[tokio::test]
async fn a_login_code_carries_the_unionid_too() {
    let app = spawn_app_with(&[("USER_INFO", "true")]).await;
    app.fake.give_unionid("oCode", "uCode");
    let mut stream = app.open().await;
    let first = stream.next_json().await;
    let code = first["login_code"]
        .as_str()
        .expect("a login code")
        .to_owned();

    app.phone.send_text("oCode", &code).await.expect("answered");

    let result = stream.next_json().await;
    assert_login(&result, "oCode", "code");
    assert_eq!(result["unionId"], "uCode");
    assert_eq!(app.verified(&result).await["unionId"], "uCode");
}
