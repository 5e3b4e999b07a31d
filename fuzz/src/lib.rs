//! The fuzz harness: what each fuzz target does with one input.
//!
//! Shared by the libFuzzer targets (`fuzz_targets/*.rs`) and by the corpus replay in the main
//! crate's test suite (`tests/fuzz_corpus.rs` includes this file with `#[path]`), so CI runs
//! every corpus input through exactly the code the fuzzer ran. It may therefore only use crates
//! the main crate depends on (wxlogin, axum, aes, cbc, base64, serde).
//!
//! Each function must not panic for any input; the `assert!`s are properties of the code under
//! test (round trips, agreement with a reference model), so a failure is a finding too.
//!
//! - [`callback_xml`]: the callback body, as `POST /wechat_event` reads it: UTF-8, XML, classify.
//! - [`safe_mode`]: the safe-mode decoder: `Encrypt` strings, attacker-chosen plaintexts,
//!   encrypt/decrypt and reply-envelope round trips, EncodingAESKey parsing.
//! - [`query`]: the query strings of `/wechat_event` and `/sse`, the signatures computed from
//!   them, scenes and the `Last-Event-ID` header.

use aes::Aes256;
use axum::extract::Query;
use axum::http::{HeaderValue, Uri};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockEncryptMut, KeyIvInit};
use serde::Deserialize;
use wxlogin::login::event::Lang;
use wxlogin::wechat::callback::{Callback, classify};
use wxlogin::wechat::crypto::{self, AesKey, KeyRing, KeySlot};
use wxlogin::wechat::ids::Scene;
use wxlogin::wechat::reply::text_reply;
use wxlogin::wechat::signature;
use wxlogin::wechat::xml::{self, CallbackXml, push_cdata};

/// The EncodingAESKey of WeChat's published safe-mode sample.
pub const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
/// A second key, standing in for the previous key of a rotation.
pub const OTHER_KEY: &str = "ZYXWVUTSRQPONMLKJIHGFEDCBAzyxwvutsrqponmlk0";
/// The AppID of WeChat's published safe-mode sample.
pub const APPID: &str = "wx2c2769f8efd9abc2";
/// The token of WeChat's published safe-mode sample.
pub const TOKEN: &str = "spamtest";
/// The 32 bytes `KEY` decodes to (`base64_decode(KEY + "=")`), written out independently of
/// `wxlogin::wechat::crypto` so the reference model does not share its key decoding.
const KEY_BYTES: [u8; 32] = [
    0x69, 0xb7, 0x1d, 0x79, 0xf8, 0x21, 0x8a, 0x39, 0x25, 0x9a, 0x7a, 0x29, 0xaa, 0xbb, 0x2d, 0xba,
    0xfc, 0x31, 0xcb, 0x3d, 0x35, 0xdb, 0x7e, 0x39, 0xeb, 0xbf, 0x3d, 0x00, 0x10, 0x83, 0x10, 0x51,
];

// ---------------------------------------------------------------------------------------------
// Target 1: the callback XML parser.

/// One callback body: UTF-8 check (as the handler does), parse, classify; then the properties.
pub fn callback_xml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Where the flat reader answers, quick-xml's reader must answer the same.
    if let Some(flat) = xml::parse_flat(text) {
        assert_eq!(
            Some(&flat),
            xml::parse_full(text).ok().as_ref(),
            "the flat reader and quick-xml differ"
        );
    }
    let Ok(parsed) = xml::parse(text) else {
        return;
    };
    // Writing the fields we read back out as CDATA and parsing again gives the same fields:
    // `push_cdata` cannot be escaped from, whatever the text.
    let written = reserialise(&parsed);
    let again = xml::parse(&written);
    assert_eq!(
        again.ok().as_ref(),
        Some(&parsed),
        "re-serialised fields differ"
    );

    if let Callback::Scan(scan) = classify(&parsed) {
        assert!(Scene::parse(scan.scene.as_str()).is_ok());
        assert!(!scan.openid.is_empty());
        // The passive reply carries the request's openid and gh_ id back: whatever they hold,
        // the reply parses and says exactly those values.
        let content = "已在网页登录 ]]> <b>&amp;";
        let reply = text_reply(scan.openid, scan.account, 1_409_735_669, content);
        let back = xml::parse(&reply);
        assert!(
            back.is_ok(),
            "the reply to a scan does not parse: {reply:?}"
        );
        let back = back.unwrap_or_default();
        assert_eq!(back.to_user_name.as_deref(), Some(scan.openid));
        assert_eq!(back.from_user_name.as_deref(), Some(scan.account));
        assert_eq!(back.msg_type.as_deref(), Some("text"));
    }
}

/// The fields of `x` as a callback body, every value in CDATA.
fn reserialise(x: &CallbackXml) -> String {
    let mut out = String::from("<xml>");
    for (name, value) in [
        ("ToUserName", &x.to_user_name),
        ("FromUserName", &x.from_user_name),
        ("CreateTime", &x.create_time),
        ("MsgType", &x.msg_type),
        ("Event", &x.event),
        ("EventKey", &x.event_key),
        ("Ticket", &x.ticket),
        ("Encrypt", &x.encrypt),
        ("MsgId", &x.msg_id),
    ] {
        if let Some(value) = value {
            out.push('<');
            out.push_str(name);
            out.push('>');
            push_cdata(&mut out, value);
            out.push_str("</");
            out.push_str(name);
            out.push('>');
        }
    }
    out.push_str("</xml>");
    out
}

// ---------------------------------------------------------------------------------------------
// Target 2: the safe-mode decoder.

/// One safe-mode input. The first byte picks what the rest is:
///
/// - 0: an `Encrypt` string, opened as the handler does (key ring, then the XML parser);
/// - 1: a plaintext, encrypted here with the raw key so the decoder sees attacker-chosen
///   decrypted bytes; the result must agree with [`reference_open`];
/// - 2: random prefix, AppID, timestamp, nonce and XML for encrypt/decrypt and sealed-reply
///   round trips;
/// - 3: an EncodingAESKey.
pub fn safe_mode(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => open_encrypt_text(&String::from_utf8_lossy(rest)),
        1 => open_chosen_plaintext(rest),
        2 => round_trip(rest),
        _ => parse_key(&String::from_utf8_lossy(rest)),
    }
}

fn key() -> AesKey {
    AesKey::from_encoding_aes_key(KEY).unwrap_or_else(|e| panic!("the fixed key is valid: {e}"))
}

fn ring() -> KeyRing {
    KeyRing::from_encoding_aes_keys(KEY, Some(OTHER_KEY))
        .unwrap_or_else(|e| panic!("the fixed keys are valid: {e}"))
}

fn open_encrypt_text(encrypt: &str) {
    let single = key().decrypt(APPID, encrypt);
    match ring().open(APPID, encrypt) {
        Ok(opened) => {
            if let Ok(xml) = &single {
                assert_eq!(opened.slot, KeySlot::Current);
                assert_eq!(&opened.xml, xml);
            }
            if let Ok(inner) = xml::parse(&opened.xml) {
                let _ = classify(&inner);
            }
        }
        Err(_) => assert!(
            single.is_err(),
            "the ring refuses what its current key opens"
        ),
    }
}

fn open_chosen_plaintext(plain: &[u8]) {
    // Whole AES blocks only: a ciphertext of any other length is refused before decryption.
    let mut buf = plain[..plain.len() - plain.len() % 16].to_vec();
    let expected = reference_open(&buf, APPID);
    let len = buf.len();
    let Ok(ciphertext) = cbc::Encryptor::<Aes256>::new((&KEY_BYTES).into(), KEY_BYTES[..16].into())
        .encrypt_padded_mut::<NoPadding>(&mut buf, len)
    else {
        return;
    };
    let encrypt = STANDARD.encode(ciphertext);
    let got = key().decrypt(APPID, &encrypt);
    assert_eq!(
        got.as_ref().ok(),
        expected.as_ref(),
        "decrypt disagrees: {got:?}"
    );
    open_encrypt_text(&encrypt);
}

/// What a safe-mode plaintext holds, read the way WeChat documents it: PKCS#7 padding with a
/// 32-byte block, 16 random bytes, a big-endian XML length, the XML (UTF-8), then exactly
/// `appid`. `None` for anything else.
pub fn reference_open(plain: &[u8], appid: &str) -> Option<String> {
    let pad = usize::from(*plain.last()?);
    if pad == 0 || pad > 32 || pad > plain.len() {
        return None;
    }
    let (body, padding) = plain.split_at(plain.len() - pad);
    if padding.iter().any(|&b| usize::from(b) != pad) || body.len() < 20 {
        return None;
    }
    let len = u32::from_be_bytes([body[16], body[17], body[18], body[19]]);
    let rest = &body[20..];
    let len = usize::try_from(len).ok().filter(|&n| n <= rest.len())?;
    let (xml, tail) = rest.split_at(len);
    if tail != appid.as_bytes() {
        return None;
    }
    String::from_utf8(xml.to_vec()).ok()
}

/// Splits `data` at the first `sep` (or keeps it whole), decoding both halves lossily.
fn split(data: &[u8], sep: u8) -> (String, &[u8]) {
    match data.iter().position(|&b| b == sep) {
        Some(i) => (
            String::from_utf8_lossy(&data[..i]).into_owned(),
            &data[i + 1..],
        ),
        None => (String::from_utf8_lossy(data).into_owned(), &[]),
    }
}

fn round_trip(data: &[u8]) {
    let mut random = [0u8; 16];
    let n = data.len().min(16);
    random[..n].copy_from_slice(&data[..n]);
    let rest = &data[n..];
    let (appid, rest) = split(rest, 0);
    let (timestamp, rest) = split(rest, 0);
    let (nonce, rest) = split(rest, 0);
    let xml = String::from_utf8_lossy(rest);
    let k = key();

    let Ok(encrypt) = k.encrypt_with_random(&appid, &xml, random) else {
        panic!("encrypting {} bytes failed", xml.len());
    };
    let raw = STANDARD.decode(&encrypt).unwrap_or_default();
    assert_eq!(raw.len() % 32, 0, "not padded to 32 bytes");
    assert!(raw.len() > 20 + xml.len() + appid.len());
    assert_eq!(k.decrypt(&appid, &encrypt).ok().as_deref(), Some(&*xml));
    if !appid.is_empty() {
        // Any other AppID is refused.
        let other = format!("{appid}x");
        assert!(k.decrypt(&other, &encrypt).is_err());
    }

    // The sealed reply: an envelope that parses, whose Encrypt carries a valid msg_signature
    // over the timestamp and nonce given, and opens to the XML, whatever the nonce holds.
    let Ok(envelope) = crypto::seal_reply(&k, TOKEN, &appid, &xml, &timestamp, &nonce) else {
        panic!("sealing {} bytes failed", xml.len());
    };
    let parsed = xml::parse(&envelope);
    assert!(
        parsed.is_ok(),
        "the sealed reply does not parse: {envelope:?}"
    );
    let outer_encrypt = parsed.ok().and_then(|p| p.encrypt).unwrap_or_default();
    assert_eq!(
        k.decrypt(&appid, &outer_encrypt).ok().as_deref(),
        Some(&*xml)
    );
    let signature = crypto::msg_signature(TOKEN, &timestamp, &nonce, &outer_encrypt);
    assert!(envelope.contains(&signature));
    assert!(crypto::verify_msg_signature(
        TOKEN,
        &timestamp,
        &nonce,
        &outer_encrypt,
        &signature
    ));
}

fn parse_key(s: &str) {
    let Ok(k) = AesKey::from_encoding_aes_key(s) else {
        return;
    };
    assert_eq!(s.len(), crypto::ENCODING_AES_KEY_LEN);
    let Ok(encrypt) = k.encrypt(APPID, "<xml/>") else {
        panic!("encrypting with a parsed key failed");
    };
    assert_eq!(k.decrypt(APPID, &encrypt).ok().as_deref(), Some("<xml/>"));
}

// ---------------------------------------------------------------------------------------------
// Target 3: query strings, signatures, scenes, Last-Event-ID.

/// The query of the URL check (`GET /wechat_event`), as in `src/http/wechat_event.rs`.
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct VerifyQuery {
    pub signature: Option<String>,
    pub timestamp: Option<String>,
    pub nonce: Option<String>,
    pub echostr: Option<String>,
}

/// The query of an event push (`POST /wechat_event`), as in `src/http/wechat_event.rs`.
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct EventQuery {
    pub signature: Option<String>,
    pub timestamp: Option<String>,
    pub nonce: Option<String>,
    pub encrypt_type: Option<String>,
    pub msg_signature: Option<String>,
}

/// The query of `GET /sse`, as in `src/http/sse.rs`.
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct SseQuery {
    pub token: Option<String>,
    pub lang: Option<String>,
    pub scene: Option<String>,
}

/// What axum's `Query` extractor made of one query string.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed {
    pub verify: Option<VerifyQuery>,
    pub event: Option<EventQuery>,
    pub sse: Option<SseQuery>,
}

/// The URI a request with query `data` has. Bytes a URI cannot hold raw are percent-encoded;
/// the query decoder turns `%XX` back into the same byte, so what the structs see is what
/// `serde_urlencoded::from_bytes(data)` sees.
pub fn uri_with_query(path: &str, data: &[u8]) -> Option<Uri> {
    let mut s = String::with_capacity(path.len() + 1 + data.len() * 3);
    s.push_str(path);
    s.push('?');
    for &b in data {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b) {
            s.push(char::from(b));
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    Uri::try_from(s).ok()
}

/// Parses `data` as the query of each endpoint with axum's own extractor.
pub fn parse_queries(data: &[u8]) -> Parsed {
    let Some(uri) = uri_with_query("/wechat_event", data) else {
        panic!("the escaped query is not a valid URI: {data:?}");
    };
    Parsed {
        verify: Query::<VerifyQuery>::try_from_uri(&uri).ok().map(|q| q.0),
        event: Query::<EventQuery>::try_from_uri(&uri).ok().map(|q| q.0),
        sse: Query::<SseQuery>::try_from_uri(&uri).ok().map(|q| q.0),
    }
}

/// One query string: parsed for every endpoint, then the checks the handlers make with it.
/// The same bytes are also tried as a `Last-Event-ID` header.
pub fn query(data: &[u8]) {
    let parsed = parse_queries(data);
    if let Some(q) = &parsed.verify {
        check_signature(
            q.timestamp.as_deref(),
            q.nonce.as_deref(),
            q.signature.as_deref(),
        );
        // The echostr in place of the Encrypt text, for the four-part signature.
        check_msg_signature(
            q.timestamp.as_deref(),
            q.nonce.as_deref(),
            q.echostr.as_deref(),
            q.signature.as_deref(),
        );
    }
    if let Some(q) = &parsed.event {
        check_signature(
            q.timestamp.as_deref(),
            q.nonce.as_deref(),
            q.signature.as_deref(),
        );
        check_msg_signature(
            q.timestamp.as_deref(),
            q.nonce.as_deref(),
            q.encrypt_type.as_deref(),
            q.msg_signature.as_deref(),
        );
    }
    if let Some(q) = &parsed.sse {
        let _ = Lang::parse(q.lang.as_deref());
        if let Some(scene) = &q.scene {
            check_scene(scene);
        }
    }
    last_event_id(data);
}

fn check_signature(timestamp: Option<&str>, nonce: Option<&str>, given: Option<&str>) {
    let (timestamp, nonce) = (timestamp.unwrap_or_default(), nonce.unwrap_or_default());
    let expected = signature::signature(TOKEN, timestamp, nonce);
    assert!(signature::verify_signature(
        TOKEN, timestamp, nonce, &expected
    ));
    assert!(signature::verify_signature(
        TOKEN,
        timestamp,
        nonce,
        &expected.to_ascii_uppercase()
    ));
    if let Some(given) = given {
        let ok = signature::verify_signature(TOKEN, timestamp, nonce, given);
        assert_eq!(ok, given.to_ascii_lowercase() == expected, "{given:?}");
    }
}

fn check_msg_signature(
    timestamp: Option<&str>,
    nonce: Option<&str>,
    encrypt: Option<&str>,
    given: Option<&str>,
) {
    let (timestamp, nonce) = (timestamp.unwrap_or_default(), nonce.unwrap_or_default());
    let encrypt = encrypt.unwrap_or_default();
    let expected = crypto::msg_signature(TOKEN, timestamp, nonce, encrypt);
    assert!(crypto::verify_msg_signature(
        TOKEN, timestamp, nonce, encrypt, &expected
    ));
    if let Some(given) = given {
        let ok = crypto::verify_msg_signature(TOKEN, timestamp, nonce, encrypt, given);
        assert_eq!(ok, given.to_ascii_lowercase() == expected, "{given:?}");
    }
}

fn check_scene(s: &str) {
    let valid = (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    match Scene::parse(s) {
        Ok(scene) => {
            assert!(valid, "{s:?} accepted");
            assert_eq!(scene.as_str(), s);
        }
        Err(_) => assert!(!valid, "{s:?} refused"),
    }
}

/// The `Last-Event-ID` a reconnecting EventSource sends, `<scene>.<n>`, read as
/// `src/http/sse.rs` (`named_scene`) reads it.
pub fn last_event_id(data: &[u8]) -> Option<(Scene, bool)> {
    let value = HeaderValue::from_bytes(data).ok()?;
    let id = value.to_str().ok().filter(|v| !v.is_empty())?;
    let (scene, seq) = id.rsplit_once('.')?;
    check_scene(scene);
    Some((Scene::parse(scene).ok()?, seq != "0"))
}
