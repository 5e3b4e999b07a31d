//! The callback XML parser: arbitrary bytes as a `POST /wechat_event` body.
//! See `wxlogin_fuzz::callback_xml`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| wxlogin_fuzz::callback_xml(data));
