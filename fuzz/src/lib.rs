//! The fuzz harness: what each fuzz target does with one input.
//!
//! Shared by the libFuzzer targets (`fuzz_targets/*.rs`) and by the corpus replay in the main
//! crate's test suite (`tests/fuzz_corpus.rs` includes this file with `#[path]`), so CI runs
//! every corpus input through exactly the code the fuzzer ran. It may therefore only use crates
//! the main crate's tests can (wxlogin-wechat, aes, cbc, base64, form_urlencoded), and of
//! wxlogin only its protocol crate: the service's own readers of these inputs are replayed by
//! `tests/fuzz_corpus.rs` itself.
//!
//! Each function must not panic for any input; the `assert!`s are properties of the code under
//! test (round trips, agreement with a reference model), so a failure is a finding too.
//!
//! - [`callback_xml`]: the callback body, as `POST /wechat_event` reads it: UTF-8, XML, classify.
//! - [`safe_mode`]: the safe-mode decoder: `Encrypt` strings, attacker-chosen plaintexts,
//!   encrypt/decrypt and reply-envelope round trips, EncodingAESKey parsing.
//! - [`query`]: a callback's query string as `callback::Query::parse` reads it (checked
//!   against a form parser), the signatures computed from it, and scenes.
//! - [`callback_open`]: a whole callback, query and body, through `callback::open`, with
//!   correctly signed queries made here so the checks after the signature are reached.

use std::borrow::Cow;

use aes::Aes256;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockEncryptMut, KeyIvInit};
use wxlogin_wechat::callback::{
    self, Callback, Checker, MAX_CLOCK_SKEW_SECS, Opened, classify, replayable_for,
};
use wxlogin_wechat::crypto::{self, AesKey, KeyRing, KeySlot};
use wxlogin_wechat::ids::Scene;
use wxlogin_wechat::reply::text_reply;
use wxlogin_wechat::secret::Secret;
use wxlogin_wechat::signature;
use wxlogin_wechat::xml::{self, CallbackXml, push_cdata};

/// The EncodingAESKey of WeChat's published safe-mode sample.
pub const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
/// A second key, standing in for the previous key of a rotation.
pub const OTHER_KEY: &str = "ZYXWVUTSRQPONMLKJIHGFEDCBAzyxwvutsrqponmlk0";
/// The AppID of WeChat's published safe-mode sample.
pub const APPID: &str = "wx2c2769f8efd9abc2";
/// The token of WeChat's published safe-mode sample.
pub const TOKEN: &str = "spamtest";
/// The 32 bytes `KEY` decodes to (`base64_decode(KEY + "=")`), written out independently of
/// `wxlogin_wechat::crypto` so the reference model does not share its key decoding.
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
        ("Content", &x.content),
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
// Target 3: query strings, signatures, scenes.

/// The query a request for `data` carries: bytes a URI cannot hold raw are percent-encoded;
/// the query decoders turn `%XX` back into the same byte, so what the parsers see is what a
/// form parser sees in `data` itself.
pub fn escape_query(data: &[u8]) -> String {
    let mut s = String::with_capacity(data.len() * 3);
    for &b in data {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b) {
            s.push(char::from(b));
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// The longest URI the HTTP stack (`http::Uri`) takes.
const MAX_URI_LEN: usize = u16::MAX as usize - 1;

/// The first value of `name` in `query`, as a form parser reads it.
pub fn first(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.into_owned())
}

/// One query string: read by the callback's own query parser (checked against a form parser),
/// then the checks a callback's handler makes with what it read: the signature, the safe-mode
/// signature, and the URL check's signature (`echostr` standing in for the `Encrypt` text, as
/// another string a sender chooses).
pub fn query(data: &[u8]) {
    // What `POST /wechat_event` parses: the request's query.
    let raw = escape_query(data);
    let q = callback::Query::parse(&raw);
    check_callback_query(&raw, &q);
    // Any text, even what a URI cannot carry, must read the same way.
    if let Ok(text) = std::str::from_utf8(data) {
        check_callback_query(text, &callback::Query::parse(text));
    }
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
    check_msg_signature(
        first(&raw, "timestamp").as_deref(),
        first(&raw, "nonce").as_deref(),
        first(&raw, "echostr").as_deref(),
        first(&raw, "signature").as_deref(),
    );
    if let Some(scene) = first(&raw, "scene") {
        check_scene(&scene);
    }
}

/// `Query::parse` reads the first value of each name it knows as a form parser does, and
/// borrows every value from a query without escapes.
fn check_callback_query(text: &str, q: &callback::Query<'_>) {
    let fields = [
        ("signature", &q.signature),
        ("timestamp", &q.timestamp),
        ("nonce", &q.nonce),
        ("encrypt_type", &q.encrypt_type),
        ("msg_signature", &q.msg_signature),
    ];
    let plain = !text.contains(['%', '+']);
    for (name, value) in fields {
        assert_eq!(
            value.as_deref(),
            first(text, name).as_deref(),
            "{name} of {text:?}"
        );
        if plain {
            assert!(
                matches!(value, None | Some(Cow::Borrowed(_))),
                "{name} copied from {text:?}"
            );
        }
    }
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

/// Whether `s` is in the documented alphabet of `n` to `m` characters: A-Z a-z 0-9 - _.
pub fn url_safe(s: &str, len: std::ops::RangeInclusive<usize>) -> bool {
    len.contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `Scene::parse` accepts exactly the documented alphabet and length, and keeps the text.
pub fn check_scene(s: &str) {
    let valid = url_safe(s, 1..=64);
    match Scene::parse(s) {
        Ok(scene) => {
            assert!(valid, "{s:?} accepted");
            assert_eq!(scene.as_str(), s);
        }
        Err(_) => assert!(!valid, "{s:?} refused"),
    }
}

// ---------------------------------------------------------------------------------------------
// Target 4: a whole callback through `wechat::callback::open`.

/// The timestamp of WeChat's published safe-mode sample, the clock of the raw inputs.
pub const SAMPLE_TIMESTAMP: i64 = 1_409_735_669;

/// A plaintext login scan that opens wherever its query does (no key configured).
const SCAN: &str = "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[oU]]></FromUserName><CreateTime>1409735669</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[SCAN]]></Event><EventKey><![CDATA[wxl_AAAAAAAAAAAAAAAAAAAAAA]]></EventKey></xml>";

/// What the mode byte of a [`callback_open`] input asks for.
#[derive(Clone, Copy, Debug)]
pub struct OpenMode(pub u8);

impl OpenMode {
    /// Bit 0: an EncodingAESKey is configured (the sample key, with [`OTHER_KEY`] as the
    /// previous key of a rotation).
    pub const KEYS: u8 = 1;
    /// Bit 1: the query is made here and correctly signed; otherwise it is the input's.
    pub const SIGNED: u8 = 1 << 1;
    /// Bits 2-3, signed queries only: what the body is ([`Body`]).
    pub const BODY_SHIFT: u8 = 2;
    /// Bit 4: the query says `encrypt_type=aes`.
    pub const AES: u8 = 1 << 4;
    /// Bit 5: the body is encrypted with the previous key rather than the current one.
    pub const PREVIOUS_KEY: u8 = 1 << 5;
    /// Bit 6: the query has no `msg_signature`.
    pub const NO_MSG_SIGNATURE: u8 = 1 << 6;
    /// Bit 7: the signature is written in upper-case hex.
    pub const UPPER: u8 = 1 << 7;

    fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }

    fn body(self) -> Body {
        match (self.0 >> Self::BODY_SHIFT) & 3 {
            0 => Body::AsGiven,
            1 => Body::SignedEncrypt,
            2 => Body::Sealed,
            _ => Body::Forged,
        }
    }
}

/// The body of a signed [`callback_open`] input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    /// The input's bytes; `msg_signature` is over nothing in particular.
    AsGiven,
    /// The input's bytes; `msg_signature` is computed over their `Encrypt` text, so whatever
    /// `Encrypt` holds reaches the decoder.
    SignedEncrypt,
    /// The input's bytes are the message: encrypted here into a safe-mode envelope with a
    /// correct `msg_signature`.
    Sealed,
    /// As `Sealed`, but `msg_signature` is over another `Encrypt` text.
    Forged,
}

/// What `open` must answer before it reads the body, as the module's documentation orders the
/// checks: signature, timestamp, freshness, the safe-mode requirement. `None` when they pass.
pub fn gate(keys: bool, q: &callback::Query<'_>, now: i64) -> Option<&'static str> {
    let (Some(sig), Some(ts), Some(nonce)) = (
        q.signature.as_deref(),
        q.timestamp.as_deref(),
        q.nonce.as_deref(),
    ) else {
        return Some("missing_signature");
    };
    if sig.to_ascii_lowercase() != signature::signature(TOKEN, ts, nonce) {
        return Some("bad_signature");
    }
    let Ok(sent) = ts.parse::<i64>() else {
        return Some("bad_timestamp");
    };
    if (i128::from(sent) - i128::from(now)).abs() > i128::from(MAX_CLOCK_SKEW_SECS) {
        return Some("stale_timestamp");
    }
    if keys && (q.encrypt_type.as_deref() != Some("aes") || q.msg_signature.is_none()) {
        return Some("not_encrypted");
    }
    None
}

/// Whether a reason is a refusal as not WeChat's (401), by the table of the HTTP API.
fn unauthenticated(reason: &str) -> bool {
    match reason {
        "missing_signature" | "bad_signature" | "stale_timestamp" | "not_encrypted"
        | "bad_msg_signature" => true,
        "bad_timestamp" | "not_utf8" | "bad_xml" | "safe_mode_off" | "no_encrypt"
        | "undecryptable" => false,
        other => panic!("unknown reason {other:?}"),
    }
}

/// A safe-mode envelope around `encrypt`, as WeChat sends it.
fn envelope(encrypt: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
    )
}

/// One callback through `wechat::callback::open`. The first byte is an [`OpenMode`], the
/// second the skew of our clock (times four seconds, signed: about half the inputs are within
/// the five minutes). A raw input is then `query NUL body`, checked at the sample's clock; a
/// signed one is `timestamp NUL nonce NUL more-query NUL body`, checked at the timestamp
/// (when it is a number) minus the skew.
///
/// Returns what `open` answered (`Err` with the reason), `None` for an input too short to try.
pub fn callback_open(data: &[u8]) -> Option<Result<(), &'static str>> {
    let [mode, skew, rest @ ..] = data else {
        return None;
    };
    let mode = OpenMode(*mode);
    let skew = i64::from(i8::from_ne_bytes([*skew])) * 4;
    let keys = mode.has(OpenMode::KEYS);
    let checker = Checker::new(Secret::new(TOKEN), APPID, keys.then(ring));

    let (query, body, now, plain) = if mode.has(OpenMode::SIGNED) {
        let (timestamp, rest) = split(rest, 0);
        let (nonce, rest) = split(rest, 0);
        let (more, body) = match rest.iter().position(|&b| b == 0) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &[][..]),
        };
        let now = timestamp
            .parse::<i64>()
            .unwrap_or(SAMPLE_TIMESTAMP)
            .saturating_sub(skew);
        let (query, body, plain) = signed_query(mode, &timestamp, &nonce, more, body);
        (query, body, now, plain)
    } else {
        let (query, body) = match rest.iter().position(|&b| b == 0) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &[][..]),
        };
        (query.to_vec(), body.to_vec(), SAMPLE_TIMESTAMP - skew, None)
    };
    // The handler parses the URI's query; a URI longer than the HTTP stack takes never
    // reaches it.
    let raw = escape_query(&query);
    if "/wechat_event?".len() + raw.len() > MAX_URI_LEN {
        return None;
    }
    let q = callback::Query::parse(&raw);
    let gated = gate(keys, &q, now);

    match callback::open(&checker, &q, &body, now) {
        Ok(opened) => {
            assert_eq!(gated, None, "opened although the checks fail");
            check_opened(&checker, &q, &body, now, &opened);
            if let (Some(plain), true) = (&plain, keys) {
                // A sealed message opens to what was sealed, with the key it was sealed with;
                // a forged one never opens.
                assert_eq!(mode.body(), Body::Sealed);
                let expected = xml::parse(plain);
                assert_eq!(Some(&opened.message), expected.as_ref().ok());
                let slot = mode
                    .has(OpenMode::PREVIOUS_KEY)
                    .then_some(KeySlot::Previous);
                assert_eq!(opened.slot, Some(slot.unwrap_or(KeySlot::Current)));
            }
            Some(Ok(()))
        }
        Err(e) => {
            let reason = e.reason();
            assert_eq!(e.is_unauthenticated(), unauthenticated(reason), "{reason}");
            match gated {
                Some(expected) => assert_eq!(reason, expected),
                // Without keys nothing is refused as not encrypted at all.
                None => assert!(
                    ![
                        "missing_signature",
                        "bad_signature",
                        "bad_timestamp",
                        "stale_timestamp",
                        "not_encrypted",
                    ]
                    .contains(&reason),
                    "{reason} although the checks pass"
                ),
            }
            if gated.is_none() && keys {
                match (mode.body(), &plain) {
                    // A sealed message refused: only because it is not a callback's XML.
                    (Body::Sealed, Some(plain)) => {
                        assert_eq!(reason, "bad_xml");
                        assert!(xml::parse(plain).is_err());
                    }
                    (Body::Forged, Some(_)) => assert_eq!(reason, "bad_msg_signature"),
                    _ => {}
                }
            }
            Some(Err(reason))
        }
    }
}

/// A correctly signed query for `timestamp` and `nonce`, followed by `more`, and the body:
/// the input's, or (for [`Body::Sealed`] and [`Body::Forged`]) an envelope around it, whose
/// plaintext is returned too.
fn signed_query(
    mode: OpenMode,
    timestamp: &str,
    nonce: &str,
    more: &[u8],
    body: &[u8],
) -> (Vec<u8>, Vec<u8>, Option<String>) {
    let mut sig = signature::signature(TOKEN, timestamp, nonce);
    if mode.has(OpenMode::UPPER) {
        sig.make_ascii_uppercase();
    }
    let (body, plain, msg_signature) = match mode.body() {
        Body::AsGiven => (body.to_vec(), None, sig.clone()),
        Body::SignedEncrypt => {
            let text = String::from_utf8_lossy(body);
            let encrypt = xml::parse(&text)
                .ok()
                .and_then(|x| x.encrypt.map(|e| e.into_owned()))
                .unwrap_or_default();
            (
                body.to_vec(),
                None,
                crypto::msg_signature(TOKEN, timestamp, nonce, &encrypt),
            )
        }
        Body::Sealed | Body::Forged => {
            let plain = String::from_utf8_lossy(body).into_owned();
            let k = if mode.has(OpenMode::PREVIOUS_KEY) {
                AesKey::from_encoding_aes_key(OTHER_KEY)
                    .unwrap_or_else(|e| panic!("the fixed key is valid: {e}"))
            } else {
                key()
            };
            let Ok(encrypt) = k.encrypt_with_random(APPID, &plain, [7; 16]) else {
                panic!("encrypting {} bytes failed", plain.len());
            };
            let signed = if mode.body() == Body::Sealed {
                encrypt.clone()
            } else {
                format!("{encrypt}A")
            };
            let msg_signature = crypto::msg_signature(TOKEN, timestamp, nonce, &signed);
            (envelope(&encrypt).into_bytes(), Some(plain), msg_signature)
        }
    };
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("signature", &sig);
    query.append_pair("timestamp", timestamp);
    query.append_pair("nonce", nonce);
    if mode.has(OpenMode::AES) {
        query.append_pair("encrypt_type", "aes");
    }
    if !mode.has(OpenMode::NO_MSG_SIGNATURE) {
        query.append_pair("msg_signature", &msg_signature);
    }
    let mut query = query.finish().into_bytes();
    if !more.is_empty() {
        query.push(b'&');
        query.extend_from_slice(more);
    }
    (query, body, plain)
}

/// What an opened callback must be: signed, fresh, encrypted and signed over its `Encrypt`
/// when keys are configured; bound to its query whatever the body, and to its body.
fn check_opened(
    checker: &Checker,
    q: &callback::Query<'_>,
    body: &[u8],
    now: i64,
    opened: &Opened<'_>,
) {
    let (sig, ts, nonce) = (
        q.signature.as_deref().unwrap_or_default(),
        q.timestamp.as_deref().unwrap_or_default(),
        q.nonce.as_deref().unwrap_or_default(),
    );
    assert!(signature::verify_signature(TOKEN, ts, nonce, sig));
    let Ok(sent) = ts.parse::<i64>() else {
        panic!("opened with the timestamp {ts:?}");
    };
    assert!(now.abs_diff(sent) <= MAX_CLOCK_SKEW_SECS);
    let text = std::str::from_utf8(body).unwrap_or_else(|e| panic!("opened a non-UTF-8 body: {e}"));
    if checker.keys().is_some() {
        assert_eq!(q.encrypt_type.as_deref(), Some("aes"));
        let given = q.msg_signature.as_deref().unwrap_or_default();
        let outer =
            xml::parse(text).unwrap_or_else(|e| panic!("opened a body that is not XML: {e}"));
        let encrypt = outer.encrypt.as_deref().unwrap_or_default();
        assert!(crypto::verify_msg_signature(
            TOKEN, ts, nonce, encrypt, given
        ));
        assert!(opened.slot.is_some());
    } else {
        assert_eq!(opened.slot, None);
    }

    let binding = &opened.binding;
    // In safe mode the body's own signature names the query too.
    let key = match (checker.keys(), q.msg_signature.as_deref()) {
        (Some(_), Some(msg)) => format!(
            "cb:{}:{}",
            sig.to_ascii_lowercase(),
            msg.to_ascii_lowercase()
        ),
        _ => format!("cb:{}", sig.to_ascii_lowercase()),
    };
    assert_eq!(binding.key(), key);
    assert_eq!(binding.ttl(), replayable_for(sent, now));
    // The same query and body: the same binding.
    let again = callback::open(checker, q, body, now).map(|o| o.binding);
    assert_eq!(again.as_ref().ok(), Some(binding));
    // The same query with another body: the same key, another digest. A trailing newline
    // changes no field; a plaintext scan opens wherever the query does without keys.
    let mut longer = body.to_vec();
    longer.push(b'\n');
    if let Ok(other) = callback::open(checker, q, &longer, now) {
        assert_eq!(other.binding.key(), binding.key());
        assert_ne!(other.binding.digest(), binding.digest());
    }
    if checker.keys().is_none() {
        let other = callback::open(checker, q, SCAN.as_bytes(), now)
            .unwrap_or_else(|e| panic!("a scan under the same query is refused: {e}"));
        assert_eq!(other.binding.key(), binding.key());
        assert_eq!(
            other.binding.digest() == binding.digest(),
            body == SCAN.as_bytes()
        );
    }
}
