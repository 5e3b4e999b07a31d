//! The query string of a callback: its parser (`wechat::callback::Query::parse`), the
//! signatures computed from it, scenes. See `wxlogin_fuzz::query`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| wxlogin_fuzz::query(data));
