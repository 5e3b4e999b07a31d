//! Callback signatures: hex SHA-1 over sorted, concatenated strings.
//!
//! `signature` covers (the account's token, `timestamp`, `nonce`); safe mode's `msg_signature`
//! adds the `Encrypt` text. Checks compare in constant time so a forger learns nothing from
//! timing.

use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

/// SHA-1 of `parts` sorted lexicographically (by bytes) and concatenated. Sorted on the
/// stack: this runs for every callback.
fn digest_sorted<const N: usize>(mut parts: [&str; N]) -> [u8; 20] {
    parts.sort_unstable();
    let mut hasher = Sha1::new();
    for part in parts {
        hasher.update(part.as_bytes());
    }
    hasher.finalize().into()
}

/// Hex SHA-1 of `parts` sorted lexicographically (by bytes) and concatenated.
pub fn sign_sorted<const N: usize>(parts: [&str; N]) -> String {
    hex::encode(digest_sorted(parts))
}

/// Whether `given` is the signature of `parts`, compared in constant time.
/// Upper-case hex is accepted too.
pub fn verify_sorted<const N: usize>(parts: [&str; N], given: &str) -> bool {
    // Compared as bytes, so nothing is allocated; a `given` that is not 40 hex digits fails
    // before the digest is compared (its length and form are not secret).
    decode_signature(given).is_some_and(|given| matches_sorted(parts, &given))
}

/// Whether `given` (a signature already decoded, see [`decode_signature`]) is the signature
/// of `parts`, compared in constant time. For a caller that keeps the decoded bytes anyway
/// (a callback's binding is named by them): the hex is then decoded once.
pub fn matches_sorted<const N: usize>(parts: [&str; N], given: &[u8; 20]) -> bool {
    digest_sorted(parts).ct_eq(given).into()
}

/// A signature's 20 bytes, from its hex (either case); `None` if it is not 40 hex digits.
pub fn decode_signature(hex_text: &str) -> Option<[u8; 20]> {
    let mut bytes = [0u8; 20];
    hex::decode_to_slice(hex_text, &mut bytes).ok()?;
    Some(bytes)
}

/// The plain callback signature: over `token`, `timestamp`, `nonce`.
pub fn signature(token: &str, timestamp: &str, nonce: &str) -> String {
    sign_sorted([token, timestamp, nonce])
}

/// Checks a plain callback signature in constant time.
pub fn verify_signature(token: &str, timestamp: &str, nonce: &str, given: &str) -> bool {
    verify_sorted([token, timestamp, nonce], given)
}

/// Checks a plain callback signature, already decoded, in constant time.
pub fn signature_matches(token: &str, timestamp: &str, nonce: &str, given: &[u8; 20]) -> bool {
    matches_sorted([token, timestamp, nonce], given)
}

/// Whether a callback's `timestamp` (seconds) is within `max_skew` seconds of `now`.
/// Any `i64` is accepted without overflow: a signed but absurd timestamp is simply stale.
pub fn is_fresh(timestamp: i64, now: i64, max_skew: u64) -> bool {
    now.abs_diff(timestamp) <= max_skew
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published vectors of `../shared/wechat/VECTORS.md`, section 1.
    const VECTORS: [(&str, &str, &str, &str); 3] = [
        (
            "AAAAA",
            "1714037059",
            "486452656",
            "899cf89e464efb63f54ddac96b0a0a235f53aa78",
        ),
        (
            "spamtest",
            "1409735669",
            "1320562132",
            "16120ec1b8dbb870f510d87ce6bc2463eae6ca1a",
        ),
        (
            "789",
            "456",
            "123",
            "f7c3bc1d808e04732adf679965ccc34ca7ae3441",
        ),
    ];

    #[test]
    fn published_signature_vectors_match() {
        for (token, ts, nonce, sig) in VECTORS {
            assert_eq!(signature(token, ts, nonce), sig);
            assert!(verify_signature(token, ts, nonce, sig));
            let decoded = decode_signature(sig).unwrap();
            assert!(signature_matches(token, ts, nonce, &decoded));
            assert!(verify_signature(
                token,
                ts,
                nonce,
                &sig.to_ascii_uppercase()
            ));
        }
    }

    #[test]
    fn freshness_is_checked_without_overflow() {
        let now = 1_800_000_000;
        assert!(is_fresh(now - 300, now, 300));
        assert!(is_fresh(now + 300, now, 300));
        assert!(!is_fresh(now - 301, now, 300));
        assert!(!is_fresh(i64::MIN, now, 300));
        assert!(!is_fresh(i64::MIN + now, now, 300));
        assert!(!is_fresh(i64::MAX, now, 300));
    }

    #[test]
    fn a_changed_part_or_a_truncated_signature_fails() {
        let (token, ts, nonce, sig) = VECTORS[1];
        assert!(!verify_signature(token, "1409735670", nonce, sig));
        assert!(!verify_signature("other", ts, nonce, sig));
        assert!(!verify_signature(token, ts, nonce, &sig[..39]));
        assert!(!verify_signature(token, ts, nonce, ""));
        let decoded = decode_signature(sig).unwrap();
        assert!(!signature_matches(token, "1409735670", nonce, &decoded));
        assert!(!signature_matches("other", ts, nonce, &decoded));
    }
}
