//! Replays the fuzz corpus (`fuzz/corpus/<target>/*`) through the fuzz harness, so every input
//! the fuzzer kept, including the reproducers of what it found, is checked on each test run.
//!
//! The harness is `fuzz/src/lib.rs` itself, included as a module: the replay runs exactly the
//! code (and the properties) the fuzz targets run. See `fuzz/README.md` to fuzz.

// Test code: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::fs;
use std::path::PathBuf;

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
    replay("query", harness::query);
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

    let key = wxlogin::wechat::crypto::AesKey::from_encoding_aes_key(harness::KEY).unwrap();
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
    let uri = harness::uri_with_query("/sse", b"scene=a b#c").unwrap();
    assert_eq!(uri.query(), Some("scene=a%20b%23c"));
    let id = harness::last_event_id(b"abc.AAAAAAAAAAAAAAAAAAAAAA.1").unwrap();
    assert_eq!((id.scene.as_str(), id.seen_last), ("abc", true));
    assert_eq!(harness::last_event_id(b"abc.1"), None);
}
