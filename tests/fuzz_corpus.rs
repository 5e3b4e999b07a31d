//! Replays the fuzz corpus (`fuzz/corpus/<target>/*`) through the fuzz harness, so every input
//! the fuzzer kept, including the reproducers of what it found, is checked on each test run.
//!
//! The harness is `fuzz/src/lib.rs` itself, included as a module: the replay runs exactly the
//! code (and the properties) the fuzz targets run. The fuzz crate knows only the protocol
//! crate; the service's own readers of the same inputs (the extractors of `GET /wechat_event`
//! and `GET /sse`, event ids) are replayed here too. See `fuzz/README.md` to fuzz.

// Test code: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::fs;
use std::path::PathBuf;

use axum::extract::Query;
use axum::http::{HeaderMap, HeaderValue, Uri};
use wxlogin::http::sse::{SseQuery, named_event};
use wxlogin::http::wechat_event::VerifyQuery;
use wxlogin::login::event::{EventId, Lang};

/// Feeds every file of `fuzz/corpus/<target>` to `run`; returns how many there were.
fn replay(target: &str, run: fn(&[u8])) -> usize {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    for path in &files {
        let data = fs::read(path).unwrap();
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{} panicked on {}", target, path.display());
    }
    assert!(!files.is_empty(), "no corpus in {}", dir.display());
    files.len()
}

#[test]
fn the_callback_xml_corpus_replays_without_a_panic() {
    replay("callback_xml", harness::callback_xml);
}

#[test]
fn the_safe_mode_corpus_replays_without_a_panic() {
    replay("safe_mode", harness::safe_mode);
}

#[test]
fn the_query_corpus_replays_without_a_panic() {
    replay("query", |data| {
        harness::query(data);
        service_query(data);
    });
}

/// One query string as the service reads it besides the callback's own parser: the extractors
/// of `GET /wechat_event` and `GET /sse` (which refuse a repeated field, and otherwise read
/// what a form parser reads), and the checks the `/sse` handler makes with what it read. The
/// same bytes are also tried as a `Last-Event-ID` header and as `?id=`.
fn service_query(data: &[u8]) {
    let raw = harness::escape_query(data);
    let Ok(uri) = Uri::try_from(format!("/sse?{raw}")) else {
        panic!("the escaped query is not a valid URI: {data:?}");
    };
    let _ = Query::<VerifyQuery>::try_from_uri(&uri);
    if Query::<SseQuery>::try_from_uri(&uri).is_ok() {
        let _ = Lang::parse(harness::first(&raw, "lang").as_deref());
        if let Some(id) = harness::first(&raw, "id") {
            check_event_id(&id);
            // Without a `Last-Event-ID` (or with an empty one), `?id=` names the event.
            let named = named_event(&HeaderMap::new(), Some(&id));
            assert_eq!(named, EventId::parse(&id));
            let mut empty = HeaderMap::new();
            empty.insert("last-event-id", HeaderValue::from_static(""));
            assert_eq!(named_event(&empty, Some(&id)), named);
        }
    }
    last_event_id(data);
}

/// `EventId::parse` accepts exactly `<scene>.<key>.<0|1>` (a scene, a 22-character key), and
/// what it accepts formats back to the same text: an id has one spelling.
fn check_event_id(s: &str) {
    let shaped = s.rsplit_once('.').is_some_and(|(rest, seq)| {
        (seq == "0" || seq == "1")
            && rest.rsplit_once('.').is_some_and(|(scene, key)| {
                harness::url_safe(scene, 1..=64) && harness::url_safe(key, 22..=22)
            })
    });
    match EventId::parse(s) {
        Some(id) => {
            assert!(shaped, "{s:?} accepted");
            assert_eq!(EventId::format(&id.scene, &id.key, id.seen_last), s);
            assert_eq!(id.seen_last, s.ends_with(".1"));
        }
        None => assert!(!shaped, "{s:?} refused"),
    }
}

/// The `Last-Event-ID` a reconnecting EventSource sends (`<scene>.<key>.<n>`), read by
/// `sse::named_event` as `GET /sse` reads it.
pub fn last_event_id(data: &[u8]) -> Option<EventId> {
    // Any text, even one a header cannot carry (a `?id=` can).
    check_event_id(&String::from_utf8_lossy(data));
    let value = HeaderValue::from_bytes(data).ok()?;
    let mut headers = HeaderMap::new();
    headers.insert("last-event-id", value.clone());
    // The header wins over `?id=`, unless it is empty or not text.
    let query = "wxl_AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAA.1";
    let named = named_event(&headers, Some(query));
    match value.to_str().ok().filter(|v| !v.is_empty()) {
        Some(text) => {
            check_event_id(text);
            assert_eq!(named_event(&headers, None), EventId::parse(text));
            assert_eq!(named, EventId::parse(text));
        }
        None => assert_eq!(named, EventId::parse(query)),
    }
    named_event(&headers, None)
}

#[test]
fn the_callback_open_corpus_replays_without_a_panic() {
    replay("callback_open", |data| {
        let _ = harness::callback_open(data);
    });
}

#[test]
fn the_callback_open_seeds_reach_every_outcome_they_are_named_for() {
    // The seeds are only worth something if they get past the signature to the checks
    // behind it: each one's answer, from the checks in their documented order.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/callback_open");
    for (seed, expected) in [
        ("plain-scan", Ok(())),
        ("plain-stale", Err("stale_timestamp")),
        ("plain-with-key", Err("not_encrypted")),
        ("compatible-no-key", Ok(())),
        ("sample-safe-mode", Ok(())),
        ("sealed-scan", Ok(())),
        ("sealed-previous-key", Ok(())),
        ("forged-scan", Err("bad_msg_signature")),
        ("no-msg-signature", Err("not_encrypted")),
        ("upper-case-signature", Ok(())),
        ("raw-timestamp-min", Err("stale_timestamp")),
    ] {
        let data = fs::read(dir.join(format!("seed-{seed}"))).unwrap();
        assert_eq!(harness::callback_open(&data), Some(expected), "{seed}");
    }
}

#[test]
fn the_harness_reference_model_opens_a_real_message() {
    // The harness's reference decoder is only worth something if it agrees with a real
    // message: decrypt one by hand and read it with the model.
    use aes::Aes256;
    use base64::Engine as _;
    use cbc::cipher::block_padding::NoPadding;
    use cbc::cipher::{BlockDecryptMut, KeyIvInit};

    let key = wxlogin_wechat::crypto::AesKey::from_encoding_aes_key(harness::KEY).unwrap();
    let encrypt = key.encrypt(harness::APPID, "<xml>hi</xml>").unwrap();
    let mut raw = base64::engine::general_purpose::STANDARD
        .decode(&encrypt)
        .unwrap();
    let key_bytes = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
    )
    .decode(format!("{}=", harness::KEY))
    .unwrap();
    let plain = cbc::Decryptor::<Aes256>::new(key_bytes[..].into(), key_bytes[..16].into())
        .decrypt_padded_mut::<NoPadding>(&mut raw)
        .unwrap();
    assert_eq!(
        harness::reference_open(plain, harness::APPID).as_deref(),
        Some("<xml>hi</xml>")
    );
    assert_eq!(harness::reference_open(plain, "wx0"), None);
    let uri = Uri::try_from(format!("/sse?{}", harness::escape_query(b"scene=a b#c"))).unwrap();
    assert_eq!(uri.query(), Some("scene=a%20b%23c"));
    let id = last_event_id(b"abc.AAAAAAAAAAAAAAAAAAAAAA.1").unwrap();
    assert_eq!((id.scene.as_str(), id.seen_last), ("abc", true));
    assert_eq!(last_event_id(b"abc.1"), None);
}
