//! A whole callback (query and body) through `wechat::callback::open`, with and without an
//! EncodingAESKey. See `wxlogin_fuzz::callback_open`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wxlogin_fuzz::callback_open(data);
});
