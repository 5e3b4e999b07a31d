//! Callbacks: what WeChat pushes to the account's server URL, checked and opened.
//!
//! [`open`] is the one place a callback is believed. In order: the query's `signature` over
//! the callback token, `timestamp` and `nonce` (constant time); the timestamp within
//! [`MAX_CLOCK_SKEW_SECS`] of our clock; with an EncodingAESKey configured, the safe-mode
//! envelope is required (WeChat sends `encrypt_type=aes` and `msg_signature` in compatible and
//! safe mode alike, so a plaintext callback is not WeChat's); the body UTF-8 and XML; in safe
//! mode `msg_signature` over `Encrypt`, then decryption to a message for our appid. Each way
//! to fail is a [`CallbackError`] variant; the HTTP layer maps them to statuses once.
//!
//! The plain `signature` covers neither the body nor anything but the token, timestamp and
//! nonce: a signed query seen in a log or a forwarded request could be sent again, within the
//! freshness window, with any body. So an opened callback carries a [`Binding`]: its query
//! and a digest of its body, which the caller records (in the store, for every instance) for
//! as long as the timestamp would pass. The same query with the same body is WeChat retrying;
//! with another body it is a replay.
//!
//! - `query`: the query string, read without copies.
//! - `event`: a parsed callback classified into what a QR-code login acts on.

mod event;
mod query;

use std::time::Duration;

use sha2::Digest as _;

pub use self::event::{Callback, DedupeKey, ScanEvent, ScanKind, TextMessage, classify};
pub use self::query::Query;
use super::crypto::{CryptoError, KeyRing, KeySlot, msg_signature_matches};
use super::secret::Secret;
use super::signature::{decode_signature, is_fresh, signature_matches};
use super::xml::{self, CallbackXml, XmlError};

/// How far a callback's `timestamp` may be from our clock.
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;

/// How much longer than the freshness window a binding is kept: clocks of instances differ a
/// little.
const BINDING_MARGIN_SECS: u64 = 5;

/// What checking a callback needs: the account's callback token, its appid and, in
/// compatible or safe mode, its EncodingAESKey(s).
#[derive(Clone, Debug)]
pub struct Checker {
    token: Secret,
    appid: String,
    keys: Option<KeyRing>,
    /// Callbacks signed before this time (seconds) are refused: see
    /// [`Checker::refusing_signed_before`].
    not_before: Option<i64>,
}

impl Checker {
    /// A checker for the account `appid` with callback token `token`; `keys` when the
    /// console has an EncodingAESKey in use (compatible or safe mode).
    pub fn new(token: Secret, appid: impl Into<String>, keys: Option<KeyRing>) -> Self {
        Self {
            token,
            appid: appid.into(),
            keys,
            not_before: None,
        }
    }

    /// Refuses callbacks signed before `secs` (seconds since the epoch). Where the bindings
    /// of queries are lost with the process (one process, state in memory), a query signed
    /// before it started could be replayed with another body within its five minutes; such a
    /// callback cannot log anybody in anyway, since the sessions went with the process too.
    pub fn refusing_signed_before(mut self, secs: i64) -> Self {
        self.not_before = Some(secs);
        self
    }

    /// The callback token.
    pub fn token(&self) -> &Secret {
        &self.token
    }

    /// The account's appid.
    pub fn appid(&self) -> &str {
        &self.appid
    }

    /// The safe-mode keys, when configured.
    pub fn keys(&self) -> Option<&KeyRing> {
        self.keys.as_ref()
    }
}

/// Why a callback is not believed.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    /// `signature`, `timestamp` or `nonce` is missing.
    #[error("signature, timestamp and nonce are required")]
    MissingSignature,
    /// The signature does not match.
    #[error("signature mismatch")]
    BadSignature,
    /// The timestamp is not a number.
    #[error("timestamp is not a number")]
    BadTimestamp,
    /// The timestamp is too far from our clock.
    #[error("timestamp is more than 5 minutes from now")]
    Stale,
    /// Signed before this process started, when the bindings of earlier queries are lost.
    #[error("the callback was signed before this service started")]
    SignedBeforeStart,
    /// An EncodingAESKey is configured, so WeChat encrypts (and signs the body of) every
    /// callback; this one is not encrypted.
    #[error(
        "callbacks must be encrypted (encrypt_type=aes with msg_signature): an EncodingAESKey is configured"
    )]
    NotEncrypted,
    /// The body is not UTF-8.
    #[error("the body is not UTF-8")]
    NotUtf8,
    /// The body is not a callback's XML.
    #[error(transparent)]
    Xml(#[from] XmlError),
    /// An encrypted callback, but no EncodingAESKey is configured.
    #[error("encrypted callback, but no EncodingAESKey is configured")]
    SafeModeOff,
    /// `encrypt_type=aes` without an `Encrypt` element.
    #[error("encrypt_type=aes but no Encrypt element")]
    NoEncrypt,
    /// `msg_signature` does not match the `Encrypt` text.
    #[error("msg_signature mismatch")]
    BadMsgSignature,
    /// `Encrypt` does not decrypt to a message for our appid. Which step failed is kept for
    /// the log, never told to the sender: that would make a padding oracle.
    #[error("the Encrypt element cannot be decrypted")]
    Undecryptable(#[source] CryptoError),
}

impl CallbackError {
    /// The reason, as a metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingSignature => "missing_signature",
            Self::BadSignature => "bad_signature",
            Self::BadTimestamp => "bad_timestamp",
            Self::Stale => "stale_timestamp",
            Self::SignedBeforeStart => "signed_before_start",
            Self::NotEncrypted => "not_encrypted",
            Self::NotUtf8 => "not_utf8",
            Self::Xml(_) => "bad_xml",
            Self::SafeModeOff => "safe_mode_off",
            Self::NoEncrypt => "no_encrypt",
            Self::BadMsgSignature => "bad_msg_signature",
            Self::Undecryptable(_) => "undecryptable",
        }
    }

    /// Whether the callback is refused as not WeChat's (401) rather than as malformed (400).
    pub fn is_unauthenticated(&self) -> bool {
        matches!(
            self,
            Self::MissingSignature
                | Self::BadSignature
                | Self::Stale
                | Self::SignedBeforeStart
                | Self::NotEncrypted
                | Self::BadMsgSignature
        )
    }
}

/// A signed query bound to the body it came with: the name is the query's signature (which
/// stands for token, timestamp and nonce; in safe mode `msg_signature` too), the digest the
/// body's (SHA-256, 128 bits).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The signatures as bytes: `signature`, then in safe mode `msg_signature`.
    name: [u8; 40],
    safe: bool,
    digest: [u8; 16],
    signed_at: i64,
    ttl: Duration,
}

impl Binding {
    /// Binds the query signed `signature` at `signed_at` (seconds since the epoch) to `body`,
    /// at `now`: kept while the timestamp would pass (see [`replayable_for`]).
    pub fn new(signature: [u8; 20], body: &[u8], signed_at: i64, now: i64) -> Self {
        Self::of(signature, None, body, signed_at, now)
    }

    /// In safe mode the body's own signature (`msg_signature`) names the query too: two
    /// messages WeChat signed with the same timestamp and nonce (rare, but its nonces are
    /// random) are then told apart, while another body under a seen query still fails
    /// `msg_signature`.
    fn of(
        signature: [u8; 20],
        msg_signature: Option<[u8; 20]>,
        body: &[u8],
        signed_at: i64,
        now: i64,
    ) -> Self {
        let full = sha2::Sha256::digest(body);
        let mut digest = [0u8; 16];
        digest.copy_from_slice(&full[..16]);
        let mut name = [0u8; 40];
        name[..20].copy_from_slice(&signature);
        if let Some(m) = msg_signature {
            name[20..].copy_from_slice(&m);
        }
        Self {
            name,
            safe: msg_signature.is_some(),
            digest,
            signed_at,
            ttl: replayable_for(signed_at, now),
        }
    }

    /// The query's name as bytes (20, or 40 in safe mode).
    pub fn name(&self) -> &[u8] {
        if self.safe {
            &self.name
        } else {
            &self.name[..20]
        }
    }

    /// The query's key in a shared store: `cb:` and the signature in lower-case hex, and in
    /// safe mode `msg_signature` after a colon.
    pub fn key(&self) -> String {
        let mut key = String::with_capacity(84);
        key.push_str("cb:");
        key.push_str(&hex::encode(&self.name[..20]));
        if self.safe {
            key.push(':');
            key.push_str(&hex::encode(&self.name[20..]));
        }
        key
    }

    /// The body's digest.
    pub fn digest(&self) -> [u8; 16] {
        self.digest
    }

    /// The body's digest in hex.
    pub fn digest_hex(&self) -> String {
        hex::encode(self.digest)
    }

    /// When the query was signed (its `timestamp`), in seconds since the epoch.
    pub fn signed_at(&self) -> i64 {
        self.signed_at
    }

    /// How long the binding must be kept: while the timestamp would pass, and a little more.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

/// A believed callback.
#[derive(Debug)]
pub struct Opened<'a> {
    /// The message (decrypted in safe mode).
    pub message: CallbackXml<'a>,
    /// The key that decrypted it, to encrypt the reply with (safe mode).
    pub slot: Option<KeySlot>,
    /// Its query bound to its body, for the caller to record.
    pub binding: Binding,
}

/// How much longer a callback signed at `sent` would pass the timestamp check at `now`, plus a
/// margin.
pub fn replayable_for(sent: i64, now: i64) -> Duration {
    let left = sent
        .saturating_add_unsigned(MAX_CLOCK_SKEW_SECS + BINDING_MARGIN_SECS)
        .saturating_sub(now);
    Duration::from_secs(u64::try_from(left).unwrap_or(0))
}

/// Checks and opens a callback: `query` as received, `body` as received, `now` in seconds
/// since the epoch.
pub fn open<'a>(
    checker: &Checker,
    query: &Query<'_>,
    body: &'a [u8],
    now: i64,
) -> Result<Opened<'a>, CallbackError> {
    let (Some(signature), Some(timestamp), Some(nonce)) = (
        query.signature.as_deref(),
        query.timestamp.as_deref(),
        query.nonce.as_deref(),
    ) else {
        return Err(CallbackError::MissingSignature);
    };
    // Decoded once: the binding is named by these bytes too.
    let signature = decode_signature(signature).ok_or(CallbackError::BadSignature)?;
    if !signature_matches(checker.token.expose(), timestamp, nonce, &signature) {
        return Err(CallbackError::BadSignature);
    }
    let sent: i64 = timestamp.parse().map_err(|_| CallbackError::BadTimestamp)?;
    if !is_fresh(sent, now, MAX_CLOCK_SKEW_SECS) {
        return Err(CallbackError::Stale);
    }
    if checker.not_before.is_some_and(|start| sent < start) {
        return Err(CallbackError::SignedBeforeStart);
    }
    let encrypted = query.encrypt_type.as_deref() == Some("aes");
    if checker.keys.is_some() && (!encrypted || query.msg_signature.is_none()) {
        return Err(CallbackError::NotEncrypted);
    }
    let msg_signature = match (&checker.keys, query.msg_signature.as_deref()) {
        (Some(_), Some(m)) => Some(decode_signature(m).ok_or(CallbackError::BadMsgSignature)?),
        _ => None,
    };
    let binding = Binding::of(signature, msg_signature, body, sent, now);
    let text = std::str::from_utf8(body).map_err(|_| CallbackError::NotUtf8)?;
    let outer = xml::parse(text)?;
    if !encrypted {
        return Ok(Opened {
            message: outer,
            slot: None,
            binding,
        });
    }
    let Some(keys) = &checker.keys else {
        // Compatible mode carries the plaintext too; without a key that is what we read.
        if outer.msg_type.is_some() {
            return Ok(Opened {
                message: outer,
                slot: None,
                binding,
            });
        }
        return Err(CallbackError::SafeModeOff);
    };
    let encrypt = outer.encrypt.as_deref().ok_or(CallbackError::NoEncrypt)?;
    // Present and decoded: without it the callback was refused above as not encrypted.
    let Some(msg_signature) = &msg_signature else {
        return Err(CallbackError::BadMsgSignature);
    };
    if !msg_signature_matches(
        checker.token.expose(),
        timestamp,
        nonce,
        encrypt,
        msg_signature,
    ) {
        return Err(CallbackError::BadMsgSignature);
    }
    let opened = keys
        .open(&checker.appid, encrypt)
        .map_err(CallbackError::Undecryptable)?;
    let message = xml::parse(&opened.xml)?.into_owned();
    Ok(Opened {
        message,
        slot: Some(opened.slot),
        binding,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{AesKey, msg_signature};
    use crate::signature::signature;

    const TOKEN: &str = "spamtest";
    const APPID: &str = "wx2c2769f8efd9abc2";
    const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
    const NOW: i64 = 1_800_000_000;
    const SCAN: &str = "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[oU]]></FromUserName><CreateTime>1800000000</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[SCAN]]></Event><EventKey><![CDATA[wxl_AAAAAAAAAAAAAAAAAAAAAA]]></EventKey></xml>";

    fn plain() -> Checker {
        Checker::new(Secret::new(TOKEN), APPID, None)
    }

    fn safe() -> Checker {
        let keys = KeyRing::from_encoding_aes_keys(KEY, None).unwrap();
        Checker::new(Secret::new(TOKEN), APPID, Some(keys))
    }

    fn signed(ts: i64, nonce: &str) -> String {
        let sig = signature(TOKEN, &ts.to_string(), nonce);
        format!("signature={sig}&timestamp={ts}&nonce={nonce}&openid=oU")
    }

    fn encrypted(ts: i64, nonce: &str, xml: &str) -> (String, String) {
        let encrypt = AesKey::from_encoding_aes_key(KEY)
            .unwrap()
            .encrypt(APPID, xml)
            .unwrap();
        let query = format!(
            "{}&encrypt_type=aes&msg_signature={}",
            signed(ts, nonce),
            msg_signature(TOKEN, &ts.to_string(), nonce, &encrypt)
        );
        (
            query,
            format!("<xml><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"),
        )
    }

    fn check(c: &Checker, query: &str, body: &str) -> Result<String, &'static str> {
        open(c, &Query::parse(query), body.as_bytes(), NOW)
            .map(|o| o.message.from_user_name.unwrap_or_default().into_owned())
            .map_err(|e| e.reason())
    }

    #[test]
    fn a_signed_fresh_plaintext_callback_opens() {
        assert_eq!(check(&plain(), &signed(NOW, "n1"), SCAN), Ok("oU".into()));
    }

    #[test]
    fn each_failure_has_its_reason_and_status() {
        let c = plain();
        let q = signed(NOW, "n1");
        assert_eq!(
            check(&c, "timestamp=1&nonce=2", SCAN),
            Err("missing_signature")
        );
        assert_eq!(
            check(&c, &q.replace("nonce=n1", "nonce=n2"), SCAN),
            Err("bad_signature")
        );
        assert_eq!(
            check(&c, &signed(NOW - 301, "n1"), SCAN),
            Err("stale_timestamp")
        );
        let sig = signature(TOKEN, "x", "n");
        assert_eq!(
            check(&c, &format!("signature={sig}&timestamp=x&nonce=n"), SCAN),
            Err("bad_timestamp")
        );
        assert_eq!(check(&c, &q, "<xml><a></b></xml>"), Err("bad_xml"));
        let e = open(&c, &Query::parse(&q), b"\xff<xml/>", NOW).unwrap_err();
        assert_eq!((e.reason(), e.is_unauthenticated()), ("not_utf8", false));
        assert!(CallbackError::BadSignature.is_unauthenticated());
        let (aes_query, aes_body) = encrypted(NOW, "n3", SCAN);
        assert_eq!(check(&c, &aes_query, &aes_body), Err("safe_mode_off"));
    }

    #[test]
    fn a_checker_that_lost_its_bindings_refuses_what_was_signed_before() {
        let c = plain().refusing_signed_before(NOW - 10);
        assert_eq!(check(&c, &signed(NOW - 10, "n1"), SCAN), Ok("oU".into()));
        let e = open(
            &c,
            &Query::parse(&signed(NOW - 11, "n1")),
            SCAN.as_bytes(),
            NOW,
        );
        let e = e.unwrap_err();
        assert_eq!(
            (e.reason(), e.is_unauthenticated()),
            ("signed_before_start", true)
        );
    }

    #[test]
    fn with_a_key_configured_a_plaintext_callback_is_refused() {
        let c = safe();
        let e = open(&c, &Query::parse(&signed(NOW, "n1")), SCAN.as_bytes(), NOW).unwrap_err();
        assert_eq!(
            (e.reason(), e.is_unauthenticated()),
            ("not_encrypted", true)
        );
        // encrypt_type without msg_signature is not WeChat's either.
        let q = format!("{}&encrypt_type=aes", signed(NOW, "n1"));
        assert_eq!(check(&c, &q, SCAN), Err("not_encrypted"));
        // The real thing opens, plaintext fields beside Encrypt (compatible mode) or not.
        let (query, body) = encrypted(NOW, "n2", SCAN);
        assert_eq!(check(&c, &query, &body), Ok("oU".into()));
        let compatible = SCAN.replace("</xml>", &body["<xml>".len()..]);
        assert_eq!(check(&c, &query, &compatible), Ok("oU".into()));
        let forged = body.replace("<Encrypt><![CDATA[", "<Encrypt><![CDATA[A");
        assert_eq!(check(&c, &query, &forged), Err("bad_msg_signature"));
        // Two messages WeChat signed with one timestamp and nonce are two bindings.
        let (other_query, other_body) = encrypted(NOW, "n2", &SCAN.replace("oU", "oV"));
        let bind = |q: &str, b: &str| {
            open(&c, &Query::parse(q), b.as_bytes(), NOW)
                .unwrap()
                .binding
        };
        assert_ne!(
            bind(&query, &body).key(),
            bind(&other_query, &other_body).key()
        );
        assert!(
            bind(&query, &body)
                .key()
                .starts_with(&format!("cb:{}:", &query[10..50]))
        );
    }

    #[test]
    fn the_binding_names_the_query_and_digests_the_body() {
        let c = plain();
        let q = signed(NOW, "n1");
        let bind = |query: &str, body: &str| {
            open(&c, &Query::parse(query), body.as_bytes(), NOW)
                .unwrap()
                .binding
        };
        let a = bind(&q, SCAN);
        let upper = signature(TOKEN, &NOW.to_string(), "n1").to_ascii_uppercase();
        let upper = format!("signature={upper}&timestamp={NOW}&nonce=n1");
        assert_eq!(a, bind(&upper, SCAN), "either case of hex names one query");
        let other_body = bind(&q, &SCAN.replace("oU", "oEvil"));
        assert_eq!(a.key(), other_body.key());
        assert_ne!(a.digest(), other_body.digest());
        assert_ne!(a.key(), bind(&signed(NOW, "n2"), SCAN).key());
        assert_eq!(a.ttl(), Duration::from_secs(305));
        assert_eq!(a.digest_hex().len(), 32);
    }

    #[test]
    fn a_binding_lives_while_its_timestamp_would_pass() {
        let now = 1_800_000_000;
        let secs = |sent| replayable_for(sent, now).as_secs();
        assert_eq!(secs(now), 305);
        assert_eq!(secs(now + 300), 605, "a clock ahead of ours");
        assert_eq!(secs(now - 300), 5);
        assert_eq!(secs(i64::MIN), 0);
        assert_eq!(secs(i64::MAX), u64::try_from(i64::MAX - now).unwrap());
        for sent in [now - 300, now - 1, now, now + 299, now + 300] {
            assert!(is_fresh(sent, now, MAX_CLOCK_SKEW_SECS));
            let stale_at = now + i64::try_from(secs(sent)).unwrap();
            assert!(!is_fresh(sent, stale_at, MAX_CLOCK_SKEW_SECS));
        }
    }
}
