//! Integration tests: wxlogin on real HTTP (loopback), against the fake WeChat.
//! One test binary; `helpers` has `spawn_app()`. Set `TEST_LOG=1` to see the service's logs.

// Test code: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod accounts;
mod callbacks;
mod cluster;
mod codes;
#[path = "../common/mod.rs"]
mod common;
mod failover;
mod helpers;
mod instances;
mod limits;
mod login_codes;
mod login_tokens;
mod oauth;
mod ops;
mod page_tokens;
mod replays;
mod resume;
mod safe_mode;
mod sandbox;
mod sessions;
mod startup;
mod streams;
mod token_broker;
mod user_info;
mod wechat_faults;
