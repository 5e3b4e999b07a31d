//! Query strings of `/wechat_event` and `/sse`, signatures, scenes and `Last-Event-ID`.
//! See `wxlogin_fuzz::query`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wxlogin_fuzz::{EventQuery, SseQuery, VerifyQuery};

fuzz_target!(|data: &[u8]| {
    wxlogin_fuzz::query(data);
    // Differential: serde_urlencoded on the raw bytes agrees with axum's extractor on the
    // escaped URI, so the replay (which can only use axum) tests what a raw query would give.
    let parsed = wxlogin_fuzz::parse_queries(data);
    assert_eq!(
        serde_urlencoded::from_bytes::<VerifyQuery>(data).ok(),
        parsed.verify
    );
    assert_eq!(
        serde_urlencoded::from_bytes::<EventQuery>(data).ok(),
        parsed.event
    );
    assert_eq!(
        serde_urlencoded::from_bytes::<SseQuery>(data).ok(),
        parsed.sse
    );
});
