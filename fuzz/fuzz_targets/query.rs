//! Query strings of `/wechat_event` and `/sse`, signatures, scenes and event ids.
//! See `wxlogin_fuzz::query`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wxlogin::http::sse::SseQuery;
use wxlogin::http::wechat_event::VerifyQuery;

fuzz_target!(|data: &[u8]| {
    wxlogin_fuzz::query(data);
    // Differential: serde_urlencoded on the raw bytes agrees with axum's extractor on the
    // escaped URI, so the replay (which runs the extractor only) tests what a raw query gives.
    let Some(uri) = wxlogin_fuzz::uri_with_query("/wechat_event", data) else {
        return;
    };
    let extracted = wxlogin_fuzz::extract(&uri);
    assert_eq!(
        serde_urlencoded::from_bytes::<VerifyQuery>(data)
            .ok()
            .map(|q| format!("{q:?}")),
        extracted.verify
    );
    assert_eq!(
        serde_urlencoded::from_bytes::<SseQuery>(data)
            .ok()
            .map(|q| format!("{q:?}")),
        extracted.sse
    );
});
