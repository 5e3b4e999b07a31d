//! WeChat "safe mode" (安全模式): the AES-256-CBC message envelope.
//!
//! In safe mode WeChat wraps every callback body in `<Encrypt>` and signs it with
//! `msg_signature`; passive replies must be wrapped the same way. The format, exactly as WeChat
//! specifies it:
//!
//! - **Key**: `base64_decode(EncodingAESKey + "=")`, 32 bytes. The EncodingAESKey is 43
//!   characters; its last character carries 2 bits that are not part of the key, so the decoder
//!   must allow non-zero trailing bits (a strict base64 decoder rejects most real keys).
//! - **Cipher**: AES-256-CBC, IV = the first 16 bytes of the key.
//! - **Padding**: PKCS#7 to a multiple of **32** bytes (not the AES block size of 16): 1 to 32
//!   pad bytes, each equal to the pad length.
//! - **Plaintext**: 16 random bytes ‖ XML length (4 bytes, big-endian) ‖ XML ‖ AppID.
//! - **Wire form**: standard base64 (with `=` padding) of the ciphertext.
//! - **Signature**: `msg_signature` = hex SHA-1 of token, timestamp, nonce and the `Encrypt`
//!   string, sorted lexicographically and concatenated.
//!
//! CBC without a MAC is malleable, and the padding check can act as an oracle: always check
//! [`verify_msg_signature`] (which covers the secret token) *before* calling decrypt, and do not
//! tell the caller which step failed.
//!
//! [`KeyRing`] supports rotating the EncodingAESKey: it holds the current key and optionally the
//! previous one, [`KeyRing::open`] reports which of the two decrypted the message, and
//! [`KeyRing::seal`] encrypts the reply with that same key.
//!
//! Key material never appears in errors or in `Debug` output.

use std::fmt;

use aes::Aes256;
use base64::Engine as _;
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use subtle::ConstantTimeEq;

use super::signature::{matches_sorted, sign_sorted, verify_sorted};
use super::xml::push_cdata;

/// Length of an EncodingAESKey as configured in the WeChat admin console.
pub const ENCODING_AES_KEY_LEN: usize = 43;

/// WeChat pads the plaintext to a multiple of this many bytes (PKCS#7 with a 32-byte block).
const PAD_BLOCK: usize = 32;

/// AES block size: a ciphertext must be a non-empty multiple of this.
const AES_BLOCK: usize = 16;

/// Length of the random prefix of the plaintext.
const RANDOM_LEN: usize = 16;

/// Length of the big-endian XML length field that follows the random prefix.
const LEN_FIELD: usize = 4;

/// Base64 engine for the EncodingAESKey: standard alphabet, but the 2 trailing bits of the
/// 43rd character are ignored, as WeChat does.
const KEY_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

/// Everything that can go wrong in safe-mode encryption and decryption.
///
/// No variant carries key material.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The EncodingAESKey is not 43 characters of base64 decoding to 32 bytes.
    #[error("invalid EncodingAESKey: {0}")]
    BadKey(&'static str),
    /// The `Encrypt` text is not valid standard base64.
    #[error("Encrypt is not valid base64")]
    Base64(#[source] base64::DecodeError),
    /// The ciphertext is empty or not a multiple of the 16-byte AES block.
    #[error("ciphertext length is not a non-empty multiple of 16 bytes")]
    BadLength,
    /// The decrypted padding is not 1..=32 bytes all equal to the pad length.
    #[error("invalid padding")]
    BadPadding,
    /// The plaintext is too short for its header, or its XML length field overruns the data.
    #[error("invalid length field")]
    BadLengthField,
    /// The decrypted XML is not UTF-8.
    #[error("decrypted XML is not UTF-8")]
    NotUtf8,
    /// The AppID at the end of the plaintext is not the expected one.
    #[error("AppID mismatch")]
    AppIdMismatch,
    /// The XML to encrypt is longer than the 4-byte length field can describe.
    #[error("message too long to encrypt")]
    TooLong,
}

/// A 32-byte safe-mode AES key, decoded from an EncodingAESKey.
///
/// Its `Debug` output is a placeholder: the key never reaches logs.
#[derive(Clone)]
pub struct AesKey {
    /// The AES-256 key.
    key: [u8; 32],
    /// The CBC IV: the first 16 bytes of the key.
    iv: [u8; 16],
}

impl fmt::Debug for AesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AesKey(<redacted>)")
    }
}

impl AesKey {
    /// Decodes a 43-character EncodingAESKey (`base64_decode(key + "=")`, 32 bytes).
    ///
    /// Surrounding whitespace is not trimmed: the caller passes the key as configured.
    pub fn from_encoding_aes_key(encoding_aes_key: &str) -> Result<Self, CryptoError> {
        if encoding_aes_key.len() != ENCODING_AES_KEY_LEN {
            return Err(CryptoError::BadKey("must be exactly 43 characters"));
        }
        let mut padded = String::with_capacity(ENCODING_AES_KEY_LEN + 1);
        padded.push_str(encoding_aes_key);
        padded.push('=');
        let decoded = KEY_BASE64
            .decode(padded.as_bytes())
            .map_err(|_| CryptoError::BadKey("not valid base64"))?;
        let key: [u8; 32] = decoded
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::BadKey("does not decode to 32 bytes"))?;
        let iv = key
            .first_chunk::<16>()
            .copied()
            .ok_or(CryptoError::BadKey("does not decode to 32 bytes"))?;
        Ok(Self { key, iv })
    }

    /// Encrypts `xml` for `appid` with the given 16 random prefix bytes; returns the base64
    /// `Encrypt` text.
    ///
    /// Deterministic given `random`; use [`AesKey::encrypt`] outside tests.
    pub fn encrypt_with_random(
        &self,
        appid: &str,
        xml: &str,
        random: [u8; 16],
    ) -> Result<String, CryptoError> {
        let xml_len = u32::try_from(xml.len()).map_err(|_| CryptoError::TooLong)?;
        let body_len = RANDOM_LEN
            .checked_add(LEN_FIELD)
            .and_then(|n| n.checked_add(xml.len()))
            .and_then(|n| n.checked_add(appid.len()))
            .ok_or(CryptoError::TooLong)?;
        let pad_len = PAD_BLOCK.saturating_sub(body_len % PAD_BLOCK); // 1..=32
        let pad = u8::try_from(pad_len).map_err(|_| CryptoError::TooLong)?;
        let total = body_len.checked_add(pad_len).ok_or(CryptoError::TooLong)?;

        let mut buf = Vec::with_capacity(total);
        buf.extend_from_slice(&random);
        buf.extend_from_slice(&xml_len.to_be_bytes());
        buf.extend_from_slice(xml.as_bytes());
        buf.extend_from_slice(appid.as_bytes());
        buf.resize(total, pad);

        let ciphertext = self.encrypt_raw(&mut buf)?;
        Ok(STANDARD.encode(ciphertext))
    }

    /// Encrypts `xml` for `appid` with a fresh random prefix; returns the base64 `Encrypt` text.
    pub fn encrypt(&self, appid: &str, xml: &str) -> Result<String, CryptoError> {
        self.encrypt_with_random(appid, xml, rand::random())
    }

    /// Decrypts a base64 `Encrypt` text, checks that it was sent for `appid`, and returns the
    /// XML.
    pub fn decrypt(&self, appid: &str, encrypt: &str) -> Result<String, CryptoError> {
        self.decrypt_parts(appid, encrypt).map(|(_, xml)| xml)
    }

    /// Decrypts and returns both the random prefix and the XML.
    fn decrypt_parts(&self, appid: &str, encrypt: &str) -> Result<([u8; 16], String), CryptoError> {
        let mut buf = STANDARD
            .decode(encrypt.as_bytes())
            .map_err(CryptoError::Base64)?;
        if buf.is_empty() || buf.len() % AES_BLOCK != 0 {
            return Err(CryptoError::BadLength);
        }
        let plain = cbc::Decryptor::<Aes256>::new((&self.key).into(), (&self.iv).into())
            .decrypt_padded_mut::<NoPadding>(&mut buf)
            .map_err(|_| CryptoError::BadLength)?;
        let body = strip_padding(plain)?;

        let (random, rest) = body
            .split_first_chunk::<RANDOM_LEN>()
            .ok_or(CryptoError::BadLengthField)?;
        let (len_bytes, rest) = rest
            .split_first_chunk::<LEN_FIELD>()
            .ok_or(CryptoError::BadLengthField)?;
        let xml_len = usize::try_from(u32::from_be_bytes(*len_bytes))
            .map_err(|_| CryptoError::BadLengthField)?;
        let (xml, tail_appid) = rest
            .split_at_checked(xml_len)
            .ok_or(CryptoError::BadLengthField)?;

        if !bool::from(tail_appid.ct_eq(appid.as_bytes())) {
            return Err(CryptoError::AppIdMismatch);
        }
        let xml = std::str::from_utf8(xml).map_err(|_| CryptoError::NotUtf8)?;
        Ok((*random, xml.to_owned()))
    }

    /// AES-256-CBC encrypts `buf`, whose length must be a multiple of 16, without padding.
    fn encrypt_raw<'a>(&self, buf: &'a mut [u8]) -> Result<&'a [u8], CryptoError> {
        let len = buf.len();
        cbc::Encryptor::<Aes256>::new((&self.key).into(), (&self.iv).into())
            .encrypt_padded_mut::<NoPadding>(buf, len)
            .map_err(|_| CryptoError::BadLength)
    }
}

/// Removes WeChat's PKCS#7 padding (block size 32): the last byte `n` must be in 1..=32 and the
/// last `n` bytes must all equal `n`.
fn strip_padding(plain: &[u8]) -> Result<&[u8], CryptoError> {
    let (&pad, _) = plain.split_last().ok_or(CryptoError::BadPadding)?;
    let pad_len = usize::from(pad);
    if !(1..=PAD_BLOCK).contains(&pad_len) {
        return Err(CryptoError::BadPadding);
    }
    let body_len = plain
        .len()
        .checked_sub(pad_len)
        .ok_or(CryptoError::BadPadding)?;
    let (body, padding) = plain
        .split_at_checked(body_len)
        .ok_or(CryptoError::BadPadding)?;
    if padding.iter().any(|&b| b != pad) {
        return Err(CryptoError::BadPadding);
    }
    Ok(body)
}

/// Which key of a [`KeyRing`] decrypted a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySlot {
    /// The current EncodingAESKey.
    Current,
    /// The previous EncodingAESKey, kept during a key rotation.
    Previous,
}

/// A decrypted message and the key that opened it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The decrypted XML.
    pub xml: String,
    /// The key that decrypted it; encrypt the reply with the same one.
    pub slot: KeySlot,
}

/// The current safe-mode key and, during a rotation, the previous one.
///
/// After the EncodingAESKey is changed in the WeChat console, messages already in flight may
/// still be encrypted with the old key; keep it as `previous` for a while.
#[derive(Debug, Clone)]
pub struct KeyRing {
    /// The key WeChat now uses.
    current: AesKey,
    /// The key WeChat used before the last rotation, if still accepted.
    previous: Option<AesKey>,
}

impl KeyRing {
    /// Builds a key ring from already-decoded keys.
    #[must_use]
    pub fn new(current: AesKey, previous: Option<AesKey>) -> Self {
        Self { current, previous }
    }

    /// Builds a key ring from EncodingAESKeys.
    pub fn from_encoding_aes_keys(
        current: &str,
        previous: Option<&str>,
    ) -> Result<Self, CryptoError> {
        let current = AesKey::from_encoding_aes_key(current)?;
        let previous = previous.map(AesKey::from_encoding_aes_key).transpose()?;
        Ok(Self { current, previous })
    }

    /// The current key.
    #[must_use]
    pub fn current(&self) -> &AesKey {
        &self.current
    }

    /// The previous key, if one is kept.
    #[must_use]
    pub fn previous(&self) -> Option<&AesKey> {
        self.previous.as_ref()
    }

    /// The key in `slot`; [`KeySlot::Previous`] falls back to the current key when no previous
    /// key is kept.
    #[must_use]
    pub fn key(&self, slot: KeySlot) -> &AesKey {
        match (slot, &self.previous) {
            (KeySlot::Previous, Some(previous)) => previous,
            _ => &self.current,
        }
    }

    /// Decrypts with the current key, then with the previous one; reports which key worked.
    ///
    /// If neither works, returns the current key's error.
    pub fn open(&self, appid: &str, encrypt: &str) -> Result<Opened, CryptoError> {
        let err = match self.current.decrypt(appid, encrypt) {
            Ok(xml) => {
                return Ok(Opened {
                    xml,
                    slot: KeySlot::Current,
                });
            }
            Err(err) => err,
        };
        match &self.previous {
            Some(previous) => match previous.decrypt(appid, encrypt) {
                Ok(xml) => Ok(Opened {
                    xml,
                    slot: KeySlot::Previous,
                }),
                Err(_) => Err(err),
            },
            None => Err(err),
        }
    }

    /// Encrypts `xml` with the key in `slot` (see [`KeyRing::key`]).
    pub fn seal(&self, slot: KeySlot, appid: &str, xml: &str) -> Result<String, CryptoError> {
        self.key(slot).encrypt(appid, xml)
    }
}

/// The safe-mode `msg_signature`: hex SHA-1 of `token`, `timestamp`, `nonce` and `encrypt`,
/// sorted lexicographically and concatenated.
#[must_use]
pub fn msg_signature(token: &str, timestamp: &str, nonce: &str, encrypt: &str) -> String {
    sign_sorted([token, timestamp, nonce, encrypt])
}

/// Checks a `msg_signature` in constant time (hex case-insensitive).
#[must_use]
pub fn verify_msg_signature(
    token: &str,
    timestamp: &str,
    nonce: &str,
    encrypt: &str,
    expected: &str,
) -> bool {
    verify_sorted([token, timestamp, nonce, encrypt], expected)
}

/// Checks a `msg_signature`, already decoded (`signature::decode_signature`), in constant
/// time.
#[must_use]
pub fn msg_signature_matches(
    token: &str,
    timestamp: &str,
    nonce: &str,
    encrypt: &str,
    expected: &[u8; 20],
) -> bool {
    matches_sorted([token, timestamp, nonce, encrypt], expected)
}

/// Appends `text` as escaped XML character data.
fn push_escaped(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            _ => out.push(c),
        }
    }
}

/// Builds the encrypted passive-reply envelope:
/// `<xml><Encrypt><![CDATA[…]]></Encrypt><MsgSignature><![CDATA[…]]></MsgSignature>`
/// `<TimeStamp>…</TimeStamp><Nonce><![CDATA[…]]></Nonce></xml>`.
///
/// The values are inserted as given (CDATA-safe and escaped); see [`seal_reply`] to encrypt
/// and sign in one step.
#[must_use]
pub fn reply_envelope(encrypt: &str, msg_signature: &str, timestamp: &str, nonce: &str) -> String {
    let mut out = String::with_capacity(encrypt.len().saturating_add(200));
    out.push_str("<xml><Encrypt>");
    push_cdata(&mut out, encrypt);
    out.push_str("</Encrypt><MsgSignature>");
    push_cdata(&mut out, msg_signature);
    out.push_str("</MsgSignature><TimeStamp>");
    push_escaped(&mut out, timestamp);
    out.push_str("</TimeStamp><Nonce>");
    push_cdata(&mut out, nonce);
    out.push_str("</Nonce></xml>");
    out
}

/// Encrypts a passive reply with `key`, signs it with `token`, and wraps it in the
/// [`reply_envelope`].
pub fn seal_reply(
    key: &AesKey,
    token: &str,
    appid: &str,
    xml: &str,
    timestamp: &str,
    nonce: &str,
) -> Result<String, CryptoError> {
    let encrypt = key.encrypt(appid, xml)?;
    let signature = msg_signature(token, timestamp, nonce, &encrypt);
    Ok(reply_envelope(&encrypt, &signature, timestamp, nonce))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

    // Official sample (WeChat docs).
    const SAMPLE_TOKEN: &str = "spamtest";
    const SAMPLE_APPID: &str = "wx2c2769f8efd9abc2";
    const SAMPLE_TIMESTAMP: &str = "1409735669";
    const SAMPLE_NONCE: &str = "1320562132";
    const SAMPLE_SIGNATURE: &str = "5d197aaffba7e9b25a30732f161a50dee96bd5fa";
    const SAMPLE_ENCRYPT: &str = "hyzAe4OzmOMbd6TvGdIOO6uBmdJoD0Fk53REIHvxYtJlE2B655HuD0m8KUePWB3+LrPXo87wzQ1QLvbeUgmBM4x6F8PGHQHFVAFmOD2LdJF9FrXpbUAh0B5GIItb52sn896wVsMSHGuPE328HnRGBcrS7C41IzDWyWNlZkyyXwon8T332jisa+h6tEDYsVticbSnyU8dKOIbgU6ux5VTjg3yt+WGzjlpKn6NPhRjpA912xMezR4kw6KWwMrCVKSVCZciVGCgavjIQ6X8tCOp3yZbGpy0VxpAe+77TszTfRd5RJSVO/HTnifJpXgCSUdUue1v6h0EIBYYI1BD1DlD+C0CR8e6OewpusjZ4uBl9FyJvnhvQl+q5rv1ixrcpCumEPo5MJSgM9ehVsNPfUM669WuMyVWQLCzpu9GhglF2PE=";
    const SAMPLE_XML: &str = "<xml><ToUserName><![CDATA[gh_10f6c3c3ac5a]]></ToUserName>\n<FromUserName><![CDATA[oyORnuP8q7ou2gfYjqLzSIWZf0rs]]></FromUserName>\n<CreateTime>1409735668</CreateTime>\n<MsgType><![CDATA[text]]></MsgType>\n<Content><![CDATA[abcdteT]]></Content>\n<MsgId>6054768590064713728</MsgId>\n</xml>";

    // WxJava vectors.
    const WXJAVA_TOKEN: &str = "pamtest";
    const WXJAVA_APPID: &str = "wxb11529c136998cb6";
    const WXJAVA_TIMESTAMP: &str = "1409304348";
    const WXJAVA_NONCE: &str = "xxxxxx";
    const WXJAVA_RANDOM: &[u8; 16] = b"aaaabbbbccccdddd";
    const WXJAVA_PLAIN_A: &str = "我是中文abcd123";
    const WXJAVA_CIPHER_A: &str =
        "jn1L23DB+6ELqJ+6bruv21Y6MD7KeIfP82D6gU39rmkgczbWwt5+3bnyg5K55bgVtVzd832WzZGMhkP72vVOfg==";
    const WXJAVA_SIGNATURE_A: &str = "82c962d39941aa48552f90ef55aa323dc620cc10";
    const WXJAVA_PLAIN_B: &str = "<xml><ToUserName><![CDATA[oia2Tj我是中文jewbmiOUlr6X-1crbLOvLw]]></ToUserName><FromUserName><![CDATA[gh_7f083739789a]]></FromUserName><CreateTime>1407743423</CreateTime><MsgType><![CDATA[video]]></MsgType><Video><MediaId><![CDATA[eYJ1MbwPRJtOvIEabaxHs7TX2D-HV71s79GUxqdUkjm6Gs2Ed1KF3ulAOA9H1xG0]]></MediaId><Title><![CDATA[testCallBackReplyVideo]]></Title><Description><![CDATA[testCallBackReplyVideo]]></Description></Video></xml>";
    const WXJAVA_CIPHER_B: &str = "jn1L23DB+6ELqJ+6bruv23M2GmYfkv0xBh2h+XTBOKVKcgDFHle6gqcZ1cZrk3e1qjPQ1F4RsLWzQRG9udbKWesxlkupqcEcW7ZQweImX9+wLMa0GaUzpkycA8+IamDBxn5loLgZpnS7fVAbExOkK5DYHBmv5tptA9tklE/fTIILHR8HLXa5nQvFb3tYPKAlHF3rtTeayNf0QuM+UW/wM9enGIDIJHF7CLHiDNAYxr+r+OrJCmPQyTy8cVWlu9iSvOHPT/77bZqJucQHQ04sq7KZI27OcqpQNSto2OdHCoTccjggX5Z9Mma0nMJBU+jLKJ38YB1fBIz+vBzsYjrTmFQ44YfeEuZ+xRTQwr92vhA9OxchWVINGC50qE/6lmkwWTwGX9wtQpsJKhP+oS7rvTY8+VdzETdfakjkwQ5/Xka042OlUb1/slTwo4RscuQ+RdxSGvDahxAJ6+EAjLt9d8igHngxIbf6YyqqROxuxqIeIch3CssH/LqRs+iAcILvApYZckqmA7FNERspKA5f8GoJ9sv8xmGvZ9Yrf57cExWtnX8aCMMaBropU/1k+hKP5LVdzbWCG0hGwx/dQudYR/eXp3P0XxjlFiy+9DMlaFExWUZQDajPkdPrEeOwofJb";
    const WXJAVA_SIGNATURE_B: &str = "ea88b765074e41eb8c7a75b449db34fa2fd560d5";

    const OTHER_KEY: &str = "ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210zyxwvut";
    const UNKNOWN_KEY: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFG";

    fn key() -> AesKey {
        AesKey::from_encoding_aes_key(KEY).unwrap()
    }

    /// Encrypts a hand-made plaintext (length a multiple of 16) with no padding at all.
    fn raw_encrypt(key: &AesKey, plain: &[u8]) -> String {
        let mut buf = plain.to_vec();
        let ct = key.encrypt_raw(&mut buf).unwrap().to_vec();
        STANDARD.encode(ct)
    }

    /// A plaintext header: 16 random bytes and the given length field.
    fn header(len_field: u32) -> Vec<u8> {
        let mut p = vec![0x42; 16];
        p.extend_from_slice(&len_field.to_be_bytes());
        p
    }

    #[test]
    fn key_decodes_to_32_bytes_with_trailing_bits() {
        let k = key();
        // The last character `G` has non-zero trailing bits; a strict decoder would refuse it.
        assert_eq!(k.key.len(), 32);
        assert_eq!(&k.iv[..], &k.key[..16]);
        assert_eq!(&k.key[..3], &[0x69, 0xb7, 0x1d]);
    }

    #[test]
    fn official_sample() {
        assert_eq!(
            msg_signature(SAMPLE_TOKEN, SAMPLE_TIMESTAMP, SAMPLE_NONCE, SAMPLE_ENCRYPT),
            SAMPLE_SIGNATURE
        );
        assert!(verify_msg_signature(
            SAMPLE_TOKEN,
            SAMPLE_TIMESTAMP,
            SAMPLE_NONCE,
            SAMPLE_ENCRYPT,
            SAMPLE_SIGNATURE
        ));
        assert!(verify_msg_signature(
            SAMPLE_TOKEN,
            SAMPLE_TIMESTAMP,
            SAMPLE_NONCE,
            SAMPLE_ENCRYPT,
            &SAMPLE_SIGNATURE.to_ascii_uppercase()
        ));

        let k = key();
        let (random, xml) = k.decrypt_parts(SAMPLE_APPID, SAMPLE_ENCRYPT).unwrap();
        assert_eq!(xml, SAMPLE_XML);
        // The documented random value `89465c840c5f116f` is 16 ASCII characters.
        assert_eq!(&random, b"89465c840c5f116f");
        assert_eq!(k.decrypt(SAMPLE_APPID, SAMPLE_ENCRYPT).unwrap(), SAMPLE_XML);

        let again = k.encrypt_with_random(SAMPLE_APPID, &xml, random).unwrap();
        assert_eq!(again, SAMPLE_ENCRYPT);
    }

    #[test]
    fn official_sample_has_pad_2() {
        let k = key();
        let mut buf = STANDARD.decode(SAMPLE_ENCRYPT).unwrap();
        let plain = cbc::Decryptor::<Aes256>::new((&k.key).into(), (&k.iv).into())
            .decrypt_padded_mut::<NoPadding>(&mut buf)
            .unwrap();
        assert_eq!(&plain[plain.len() - 2..], &[2, 2]);
        assert!(plain.ends_with(b"wx2c2769f8efd9abc2\x02\x02"));
    }

    #[test]
    fn wxjava_vectors() {
        let k = key();
        for (plain, cipher, signature) in [
            (WXJAVA_PLAIN_A, WXJAVA_CIPHER_A, WXJAVA_SIGNATURE_A),
            (WXJAVA_PLAIN_B, WXJAVA_CIPHER_B, WXJAVA_SIGNATURE_B),
        ] {
            let encrypted = k
                .encrypt_with_random(WXJAVA_APPID, plain, *WXJAVA_RANDOM)
                .unwrap();
            assert_eq!(encrypted, cipher);
            assert_eq!(
                msg_signature(WXJAVA_TOKEN, WXJAVA_TIMESTAMP, WXJAVA_NONCE, &encrypted),
                signature
            );
            assert!(verify_msg_signature(
                WXJAVA_TOKEN,
                WXJAVA_TIMESTAMP,
                WXJAVA_NONCE,
                cipher,
                signature
            ));
            let (random, xml) = k.decrypt_parts(WXJAVA_APPID, cipher).unwrap();
            assert_eq!(xml, plain);
            assert_eq!(&random, WXJAVA_RANDOM);
        }
    }

    #[test]
    fn signature_mismatch_is_rejected() {
        assert!(!verify_msg_signature(
            SAMPLE_TOKEN,
            SAMPLE_TIMESTAMP,
            SAMPLE_NONCE,
            SAMPLE_ENCRYPT,
            WXJAVA_SIGNATURE_A
        ));
        assert!(!verify_msg_signature(
            "other",
            SAMPLE_TIMESTAMP,
            SAMPLE_NONCE,
            SAMPLE_ENCRYPT,
            SAMPLE_SIGNATURE
        ));
        assert!(!verify_msg_signature(
            SAMPLE_TOKEN,
            SAMPLE_TIMESTAMP,
            SAMPLE_NONCE,
            SAMPLE_ENCRYPT,
            ""
        ));
        assert!(!verify_msg_signature(
            SAMPLE_TOKEN,
            SAMPLE_TIMESTAMP,
            SAMPLE_NONCE,
            SAMPLE_ENCRYPT,
            &SAMPLE_SIGNATURE[..39]
        ));
    }

    #[test]
    fn random_prefix_changes_ciphertext() {
        let k = key();
        let a = k.encrypt(SAMPLE_APPID, SAMPLE_XML).unwrap();
        let b = k.encrypt(SAMPLE_APPID, SAMPLE_XML).unwrap();
        assert_ne!(a, b);
        assert_eq!(k.decrypt(SAMPLE_APPID, &a).unwrap(), SAMPLE_XML);
        assert_eq!(k.decrypt(SAMPLE_APPID, &b).unwrap(), SAMPLE_XML);
    }

    #[test]
    fn ciphertext_is_a_multiple_of_32() {
        let k = key();
        for n in 0..80 {
            let xml = "x".repeat(n);
            let ct = STANDARD
                .decode(k.encrypt_with_random("wx", &xml, [0; 16]).unwrap())
                .unwrap();
            assert_eq!(ct.len() % 32, 0, "xml length {n}");
            assert!(ct.len() > 22 + n, "xml length {n}");
        }
    }

    #[test]
    fn wrong_appid() {
        let err = key()
            .decrypt("wx0000000000000000", SAMPLE_ENCRYPT)
            .unwrap_err();
        assert!(matches!(err, CryptoError::AppIdMismatch), "{err:?}");
        let err = key().decrypt("", SAMPLE_ENCRYPT).unwrap_err();
        assert!(matches!(err, CryptoError::AppIdMismatch), "{err:?}");
        let err = key()
            .decrypt("wx2c2769f8efd9abc2x", SAMPLE_ENCRYPT)
            .unwrap_err();
        assert!(matches!(err, CryptoError::AppIdMismatch), "{err:?}");
    }

    #[test]
    fn bad_padding() {
        let k = key();
        let mut body = header(3);
        body.extend_from_slice(b"<x>wx");
        // body is 25 bytes; fill to 32 with the given tail.
        let cases: [&[u8]; 4] = [
            &[7, 7, 7, 7, 7, 7, 0],    // pad byte 0
            &[7, 7, 7, 7, 7, 7, 33],   // pad byte 33 (> 32)
            &[7, 7, 7, 7, 7, 9, 3],    // inconsistent pad bytes
            &[7, 7, 7, 7, 7, 7, 0xff], // pad byte 255
        ];
        for tail in cases {
            let mut plain = body.clone();
            plain.extend_from_slice(tail);
            assert_eq!(plain.len(), 32);
            let err = k.decrypt("wx", &raw_encrypt(&k, &plain)).unwrap_err();
            assert!(matches!(err, CryptoError::BadPadding), "{tail:?}: {err:?}");
        }

        // Pad 32 in a 16-byte ciphertext: longer than the data.
        let err = k.decrypt("wx", &raw_encrypt(&k, &[32; 16])).unwrap_err();
        assert!(matches!(err, CryptoError::BadPadding), "{err:?}");

        // The well-formed version of the same message decrypts.
        let mut plain = body.clone();
        plain.extend_from_slice(&[7; 7]);
        assert_eq!(k.decrypt("wx", &raw_encrypt(&k, &plain)).unwrap(), "<x>");
    }

    #[test]
    fn valid_pad_of_32() {
        // 16 + 4 + 8 + 4 = 32 bytes of body: a whole block of 32 padding bytes follows.
        let k = key();
        let mut plain = header(8);
        plain.extend_from_slice(b"<a>b</a>wx12");
        plain.extend_from_slice(&[32; 32]);
        assert_eq!(
            k.decrypt("wx12", &raw_encrypt(&k, &plain)).unwrap(),
            "<a>b</a>"
        );
        assert_eq!(
            k.encrypt_with_random("wx12", "<a>b</a>", [0x42; 16])
                .unwrap(),
            raw_encrypt(&k, &plain)
        );
    }

    #[test]
    fn truncated_encrypt() {
        let k = key();
        // Dropping the last 4 base64 characters leaves a length that is not a multiple of 16.
        let short = &SAMPLE_ENCRYPT[..SAMPLE_ENCRYPT.len() - 4];
        let err = k.decrypt(SAMPLE_APPID, short).unwrap_err();
        assert!(matches!(err, CryptoError::BadLength), "{err:?}");

        // Dropping a whole AES block: the last block now ends in ciphertext-derived junk.
        let mut ct = STANDARD.decode(SAMPLE_ENCRYPT).unwrap();
        ct.truncate(ct.len() - 16);
        let err = k.decrypt(SAMPLE_APPID, &STANDARD.encode(&ct)).unwrap_err();
        assert!(matches!(err, CryptoError::BadPadding), "{err:?}");

        // Dropping 32 bytes, then 16 more, and so on down to one block: never Ok, never a panic.
        while ct.len() > 16 {
            ct.truncate(ct.len() - 16);
            assert!(k.decrypt(SAMPLE_APPID, &STANDARD.encode(&ct)).is_err());
        }
    }

    #[test]
    fn not_base64() {
        let err = key().decrypt(SAMPLE_APPID, "not base64!!").unwrap_err();
        assert!(matches!(err, CryptoError::Base64(_)), "{err:?}");
        // Missing `=` padding is rejected too.
        let err = key()
            .decrypt(SAMPLE_APPID, SAMPLE_ENCRYPT.trim_end_matches('='))
            .unwrap_err();
        assert!(matches!(err, CryptoError::Base64(_)), "{err:?}");
    }

    #[test]
    fn empty_encrypt() {
        let err = key().decrypt(SAMPLE_APPID, "").unwrap_err();
        assert!(matches!(err, CryptoError::BadLength), "{err:?}");
    }

    #[test]
    fn length_field_overruns_data() {
        let k = key();
        for len_field in [4, 1000, u32::MAX] {
            let mut plain = header(len_field);
            plain.extend_from_slice(b"<x>"); // 23 bytes, only 3 of XML
            plain.extend_from_slice(&[9; 9]);
            let err = k.decrypt("", &raw_encrypt(&k, &plain)).unwrap_err();
            assert!(
                matches!(err, CryptoError::BadLengthField),
                "{len_field}: {err:?}"
            );
        }
        // Too short for the 20-byte header once unpadded.
        let mut plain = vec![0x42; 18];
        plain.extend_from_slice(&[14; 14]);
        let err = k.decrypt("", &raw_encrypt(&k, &plain)).unwrap_err();
        assert!(matches!(err, CryptoError::BadLengthField), "{err:?}");
    }

    #[test]
    fn xml_not_utf8() {
        let k = key();
        let mut plain = header(3);
        plain.extend_from_slice(&[0xff, 0xfe, 0xfd]);
        plain.extend_from_slice(b"wx");
        plain.extend_from_slice(&[7; 7]);
        let err = k.decrypt("wx", &raw_encrypt(&k, &plain)).unwrap_err();
        assert!(matches!(err, CryptoError::NotUtf8), "{err:?}");
    }

    #[test]
    fn bad_keys() {
        for bad in [
            &KEY[..42],
            &format!("{KEY}H"),
            "",
            "abcdefghijklmnopqrstuvwxyz0123456789ABCDE!G",
            "abcdefghijklmnopqrstuvwxyz0123456789ABCDE=G",
            "abcdefghijklmnopqrstuvwxyz0123456789ABCDEF=",
            "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFé",
        ] {
            let err = AesKey::from_encoding_aes_key(bad).unwrap_err();
            assert!(matches!(err, CryptoError::BadKey(_)), "{bad:?}: {err:?}");
        }
        assert!(
            AesKey::from_encoding_aes_key(&KEY[..42])
                .unwrap_err()
                .to_string()
                .contains("43")
        );
        assert!(KeyRing::from_encoding_aes_keys(KEY, Some("short")).is_err());
    }

    #[test]
    fn no_key_material_in_debug_or_errors() {
        let k = key();
        let debug = format!("{k:?}");
        assert_eq!(debug, "AesKey(<redacted>)");
        let ring = KeyRing::from_encoding_aes_keys(KEY, Some(OTHER_KEY)).unwrap();
        let debug = format!("{ring:?}");
        assert!(!debug.contains("abcdef"), "{debug}");
        assert!(!debug.contains("105"), "{debug}"); // 0x69, the first key byte
        let err = AesKey::from_encoding_aes_key("abcdefghijklmnopqrstuvwxyz0123456789ABCDE!G")
            .unwrap_err();
        assert!(!format!("{err} {err:?}").contains("abcdef"));
    }

    #[test]
    fn key_rotation() {
        let ring = KeyRing::from_encoding_aes_keys(KEY, Some(OTHER_KEY)).unwrap();
        let old = AesKey::from_encoding_aes_key(OTHER_KEY).unwrap();
        let unknown = AesKey::from_encoding_aes_key(UNKNOWN_KEY).unwrap();

        let opened = ring.open(SAMPLE_APPID, SAMPLE_ENCRYPT).unwrap();
        assert_eq!(opened.slot, KeySlot::Current);
        assert_eq!(opened.xml, SAMPLE_XML);

        let by_old = old.encrypt(SAMPLE_APPID, SAMPLE_XML).unwrap();
        let opened = ring.open(SAMPLE_APPID, &by_old).unwrap();
        assert_eq!(opened.slot, KeySlot::Previous);
        assert_eq!(opened.xml, SAMPLE_XML);

        // The reply goes out under the same key.
        let reply = ring
            .seal(opened.slot, SAMPLE_APPID, "<xml>r</xml>")
            .unwrap();
        assert_eq!(old.decrypt(SAMPLE_APPID, &reply).unwrap(), "<xml>r</xml>");
        assert!(ring.current().decrypt(SAMPLE_APPID, &reply).is_err());
        assert!(ring.previous().is_some());

        let by_unknown = unknown.encrypt(SAMPLE_APPID, SAMPLE_XML).unwrap();
        assert!(ring.open(SAMPLE_APPID, &by_unknown).is_err());

        // Without a previous key, the old message fails and `Previous` falls back to current.
        let single = KeyRing::new(key(), None);
        assert!(single.open(SAMPLE_APPID, &by_old).is_err());
        let reply = single
            .seal(KeySlot::Previous, SAMPLE_APPID, "<r/>")
            .unwrap();
        assert_eq!(key().decrypt(SAMPLE_APPID, &reply).unwrap(), "<r/>");
    }

    #[test]
    fn envelope() {
        let env = reply_envelope("ENC", "SIG", "1409735669", "nonce");
        assert_eq!(
            env,
            "<xml><Encrypt><![CDATA[ENC]]></Encrypt><MsgSignature><![CDATA[SIG]]></MsgSignature>\
             <TimeStamp>1409735669</TimeStamp><Nonce><![CDATA[nonce]]></Nonce></xml>"
        );
        let env = reply_envelope("E", "S", "1<2", "a]]>b");
        assert!(env.contains("<TimeStamp>1&lt;2</TimeStamp>"), "{env}");
        assert!(
            env.contains("<Nonce><![CDATA[a]]]]><![CDATA[>b]]></Nonce>"),
            "{env}"
        );
    }

    #[test]
    fn sealed_reply_verifies_and_opens() {
        let k = key();
        let env = seal_reply(
            &k,
            SAMPLE_TOKEN,
            SAMPLE_APPID,
            "<xml>reply</xml>",
            "1409735670",
            "123",
        )
        .unwrap();
        let field = |tag: &str| -> String {
            let open = format!("<{tag}>");
            let close = format!("</{tag}>");
            let start = env.find(&open).unwrap() + open.len();
            let end = env.find(&close).unwrap();
            env[start..end]
                .trim_start_matches("<![CDATA[")
                .trim_end_matches("]]>")
                .to_owned()
        };
        let encrypt = field("Encrypt");
        assert!(verify_msg_signature(
            SAMPLE_TOKEN,
            &field("TimeStamp"),
            &field("Nonce"),
            &encrypt,
            &field("MsgSignature")
        ));
        assert_eq!(
            k.decrypt(SAMPLE_APPID, &encrypt).unwrap(),
            "<xml>reply</xml>"
        );
    }

    proptest! {
        #[test]
        fn decrypt_never_panics_on_strings(s in ".*") {
            let _ = key().decrypt(SAMPLE_APPID, &s);
            let _ = KeyRing::new(key(), None).open(SAMPLE_APPID, &s);
        }

        #[test]
        fn decrypt_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = key().decrypt(SAMPLE_APPID, &STANDARD.encode(&bytes));
        }

        #[test]
        fn decrypt_never_panics_on_whole_blocks(
            blocks in proptest::collection::vec(any::<[u8; 16]>(), 1..12),
            appid in "[a-z0-9]{0,20}",
        ) {
            let bytes: Vec<u8> = blocks.concat();
            let k = key();
            let _ = k.decrypt(&appid, &STANDARD.encode(&bytes));
            // Also feed the blocks as *plaintext*, so the decrypted bytes are attacker-chosen.
            let _ = k.decrypt(&appid, &raw_encrypt(&k, &bytes));
        }

        #[test]
        fn key_parsing_never_panics(s in ".{0,50}") {
            let _ = AesKey::from_encoding_aes_key(&s);
        }

        #[test]
        fn round_trip(
            xml in ".*",
            appid in "[A-Za-z0-9_]{0,32}",
            random in any::<[u8; 16]>(),
        ) {
            let k = key();
            let encrypted = k.encrypt_with_random(&appid, &xml, random).unwrap();
            let (got_random, got_xml) = k.decrypt_parts(&appid, &encrypted).unwrap();
            prop_assert_eq!(got_xml, xml);
            prop_assert_eq!(got_random, random);
        }
    }
}
