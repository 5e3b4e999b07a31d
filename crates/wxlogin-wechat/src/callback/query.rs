//! The query of a callback: `signature`, `timestamp`, `nonce` and, in safe and compatible
//! mode, `encrypt_type` and `msg_signature`.

use std::borrow::Cow;

/// The query of an event push, borrowed from the request's query string (this is the hot
/// path of a busy account: no copies unless a value is percent-encoded).
#[derive(Debug, Default)]
pub struct Query<'a> {
    pub signature: Option<Cow<'a, str>>,
    pub timestamp: Option<Cow<'a, str>>,
    pub nonce: Option<Cow<'a, str>>,
    /// Safe and compatible mode: `aes`.
    pub encrypt_type: Option<Cow<'a, str>>,
    /// Safe and compatible mode: the signature over the `Encrypt` text.
    pub msg_signature: Option<Cow<'a, str>>,
}

impl<'a> Query<'a> {
    /// Reads the fields a callback's checks use; the first of repeated names wins, others are ignored.
    /// Parsed as `application/x-www-form-urlencoded`, by hand: names and values are decoded
    /// only when the query holds `%` or `+`, which WeChat's never do: one SIMD search of the
    /// whole query instead of a byte loop over each part.
    pub fn parse(query: &'a str) -> Self {
        let encoded = memchr::memchr2(b'%', b'+', query.as_bytes()).is_some();
        let decoded = |s: &'a str| {
            if encoded {
                form_decoded(s)
            } else {
                Cow::Borrowed(s)
            }
        };
        let mut q = Self::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match decoded(name).as_ref() {
                "signature" => &mut q.signature,
                "timestamp" => &mut q.timestamp,
                "nonce" => &mut q.nonce,
                "encrypt_type" => &mut q.encrypt_type,
                "msg_signature" => &mut q.msg_signature,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(decoded(value));
            }
        }
        q
    }
}

/// One form-urlencoded name or value: `+` is a space, `%XX` a byte, invalid UTF-8 replaced.
fn form_decoded(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let spaced = s.replace('+', " ");
    Cow::Owned(
        percent_encoding::percent_decode_str(&spaced)
            .decode_utf8_lossy()
            .into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The hand-written reader gives what a form parser gives, for any mix of the names
        /// the parser reads (plain or encoded), other names, and odd values.
        #[test]
        fn the_query_reads_as_a_form_parser_reads_it(
            pairs in proptest::collection::vec(
                (
                    proptest::sample::select(vec![
                        "signature", "timestamp", "nonce", "encrypt_type", "msg_signature",
                        "openid", "sign%61ture", "non+ce", "nonce%", "", "=",
                    ]),
                    "[a-z0-9%+=&]{0,6}",
                ),
                0..6,
            ),
        ) {
            let query = pairs
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect::<Vec<_>>()
                .join("&");
            let q = Query::parse(&query);
            let first = |name: &str| {
                form_urlencoded::parse(query.as_bytes())
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.into_owned())
            };
            let got = |v: &Option<Cow<'_, str>>| v.as_deref().map(str::to_owned);
            proptest::prop_assert_eq!(got(&q.signature), first("signature"));
            proptest::prop_assert_eq!(got(&q.timestamp), first("timestamp"));
            proptest::prop_assert_eq!(got(&q.nonce), first("nonce"));
            proptest::prop_assert_eq!(got(&q.encrypt_type), first("encrypt_type"));
            proptest::prop_assert_eq!(got(&q.msg_signature), first("msg_signature"));
        }
    }

    #[test]
    fn the_query_is_read_without_copies_and_decoded_when_needed() {
        let q = Query::parse(
            "signature=abc&timestamp=123&nonce=4%205&openid=o1&encrypt_type=aes&signature=zzz",
        );
        assert_eq!(q.signature.as_deref(), Some("abc"), "the first wins");
        assert!(matches!(q.timestamp, Some(Cow::Borrowed("123"))));
        assert_eq!(q.nonce.as_deref(), Some("4 5"));
        assert_eq!(q.encrypt_type.as_deref(), Some("aes"));
        assert_eq!(q.msg_signature, None);
        // The same reading as a form parser's, for what WeChat never sends too.
        let odd = "sign%61ture=a+b%2B&&timestamp&nonce=%FF%zz=&msg_signature=";
        let q = Query::parse(odd);
        let form: Vec<(Cow<'_, str>, Cow<'_, str>)> =
            form_urlencoded::parse(odd.as_bytes()).collect();
        assert_eq!(q.signature, Some(form[0].1.clone()));
        assert_eq!(q.signature.as_deref(), Some("a b+"));
        assert_eq!(q.timestamp.as_deref(), Some(""));
        assert_eq!(q.nonce, Some(form[2].1.clone()));
        assert_eq!(q.msg_signature.as_deref(), Some(""));
        let empty = Query::parse("");
        assert!(empty.signature.is_none() && empty.timestamp.is_none());
    }
}
