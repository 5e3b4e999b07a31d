//! The safe-mode decoder: `Encrypt` strings, chosen plaintexts, round trips, keys.
//! See `wxlogin_fuzz::safe_mode`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| wxlogin_fuzz::safe_mode(data));
