//! Page tokens: what a site's pages pass to `/sse` instead of `API_TOKEN`.
//!
//! A site's backend asks `POST /tokens` (with `API_TOKEN`) for one; it is valid a few
//! minutes and may be bound to an origin, in which case a browser request must come from that
//! origin. They are HS256 JWTs keyed by HMAC-SHA256 of `API_TOKEN` under 256 random bits that
//! the store keeps ([`crate::store::Store::page_key`]): a page token is public, and were its
//! key a plain hash of `API_TOKEN`, anyone holding one could test guesses of `API_TOKEN`
//! offline. Every instance on one store accepts every other instance's page tokens, and
//! changing `API_TOKEN` revokes them all.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::{random_id, unix_now};
use crate::wechat::secret::Secret;

/// Said before `API_TOKEN` in the HMAC: a key made for page tokens serves nothing else.
const KEY_LABEL: &[u8] = b"wxlogin page token v2\0";

/// The longest life a page token may be given.
pub const MAX_TTL: Duration = Duration::from_secs(3600);

/// The claims of a page token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PageClaims {
    /// Always `page`: a login token can never pass for a page token.
    pub typ: String,
    /// Issued at.
    pub iat: u64,
    /// Expires at.
    pub exp: u64,
    /// The origin the token is bound to, if any (`https://www.example.com`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// The account the token is bound to, if any: it opens streams of that account only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// A unique id.
    pub jti: String,
}

/// Why a page token was refused (all 401).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PageTokenError {
    /// Expired.
    #[error("the page token has expired")]
    Expired,
    /// Bound to another origin than the request's.
    #[error("the page token is for another origin")]
    WrongOrigin,
    /// Not a page token of this service.
    #[error("wrong token")]
    Invalid,
}

/// Mints and checks page tokens.
pub struct PageTokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    default_ttl: Duration,
}

impl PageTokens {
    /// Keys of `api_token` under `random`, the store's 256 random bits: HMAC-SHA256 with key
    /// `random` of a label and `api_token`.
    pub fn new(
        random: &[u8; 32],
        api_token: &Secret,
        default_ttl: Duration,
    ) -> Result<Self, jsonwebtoken::errors::Error> {
        use hmac::{KeyInit as _, Mac as _};
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(random)
            .map_err(|_| jsonwebtoken::errors::ErrorKind::InvalidKeyFormat)?;
        mac.update(KEY_LABEL);
        mac.update(api_token.expose().as_bytes());
        let key = mac.finalize().into_bytes();
        Ok(Self {
            encoding: EncodingKey::from_secret(&key)?,
            decoding: DecodingKey::from_secret(&key)?,
            default_ttl,
        })
    }

    /// A token valid for `ttl` (default when `None`, at most [`MAX_TTL`]), bound to
    /// `origin` and to `account` when given. Returns the token and its life in seconds.
    pub fn mint(
        &self,
        origin: Option<&str>,
        ttl: Option<Duration>,
        account: Option<&str>,
    ) -> Result<(String, u64), jsonwebtoken::errors::Error> {
        let ttl = ttl.unwrap_or(self.default_ttl).min(MAX_TTL);
        let iat = unix_now();
        let claims = PageClaims {
            typ: "page".into(),
            iat,
            exp: iat + ttl.as_secs(),
            origin: origin.map(normalize_origin),
            account: account.map(str::to_owned),
            jti: random_id(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?;
        Ok((token, ttl.as_secs()))
    }

    /// Checks a page token presented by a request from `request_origin` (its `Origin`, or
    /// the origin of its `Referer`).
    pub fn verify(
        &self,
        token: &str,
        request_origin: Option<&str>,
    ) -> Result<PageClaims, PageTokenError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        use jsonwebtoken::errors::ErrorKind;
        let claims = jsonwebtoken::decode::<PageClaims>(token, &self.decoding, &validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => PageTokenError::Expired,
                _ => PageTokenError::Invalid,
            })?
            .claims;
        if claims.typ != "page" {
            return Err(PageTokenError::Invalid);
        }
        if let Some(bound) = &claims.origin
            && request_origin.map(normalize_origin).as_deref() != Some(bound.as_str())
        {
            return Err(PageTokenError::WrongOrigin);
        }
        Ok(claims)
    }
}

/// `https://Example.com/` → `https://example.com`: scheme and host compared as browsers send
/// them in `Origin`.
pub fn normalize_origin(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// The origin (`scheme://host[:port]`) of a URL such as a `Referer`.
pub fn origin_of_url(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split(['/', '?', '#']).next()?;
    (!host.is_empty()).then(|| normalize_origin(&format!("{scheme}://{host}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RANDOM: [u8; 32] = [7; 32];

    fn tokens() -> PageTokens {
        PageTokens::new(
            &RANDOM,
            &Secret::new("api-token-123456"),
            Duration::from_secs(300),
        )
        .unwrap()
    }

    #[test]
    fn a_minted_token_verifies_and_is_bound_to_its_origin() {
        let t = tokens();
        let (free, ttl) = t.mint(None, None, None).unwrap();
        assert_eq!(ttl, 300);
        assert!(t.verify(&free, None).is_ok());
        let (bound, _) = t
            .mint(Some("https://Shop.example.com/"), None, None)
            .unwrap();
        assert!(t.verify(&bound, Some("https://shop.example.com")).is_ok());
        assert_eq!(
            t.verify(&bound, Some("https://evil.example")).unwrap_err(),
            PageTokenError::WrongOrigin
        );
        assert_eq!(
            t.verify(&bound, None).unwrap_err(),
            PageTokenError::WrongOrigin
        );
    }

    #[test]
    fn tokens_of_another_api_token_another_random_key_or_garbage_are_refused() {
        let ttl = Duration::from_secs(300);
        let other_api_token =
            PageTokens::new(&RANDOM, &Secret::new("other-token-1234"), ttl).unwrap();
        let other_random =
            PageTokens::new(&[8; 32], &Secret::new("api-token-123456"), ttl).unwrap();
        for other in [other_api_token, other_random] {
            let (token, _) = other.mint(None, None, None).unwrap();
            assert_eq!(
                tokens().verify(&token, None).unwrap_err(),
                PageTokenError::Invalid
            );
        }
        assert_eq!(
            tokens().verify("garbage", None).unwrap_err(),
            PageTokenError::Invalid
        );
    }

    #[test]
    fn ttl_is_capped() {
        let (_, ttl) = tokens()
            .mint(None, Some(Duration::from_secs(99_999)), None)
            .unwrap();
        assert_eq!(ttl, MAX_TTL.as_secs());
    }

    #[test]
    fn origins_are_read_from_referers() {
        assert_eq!(
            origin_of_url("https://Shop.example.com:8443/login?x=1").as_deref(),
            Some("https://shop.example.com:8443")
        );
        assert_eq!(origin_of_url("nonsense"), None);
    }
}
