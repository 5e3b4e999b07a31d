//! `login_token`: a JWT proving that `sub` (an openid) scanned this service's QR code.
//!
//! Signed with EdDSA (Ed25519; the public key is served at `/.well-known/jwks.json`) or, when
//! `LOGIN_TOKEN_SECRET` is set, HS256 with that secret. Claims: `iss` = `wxlogin`, `sub` (the
//! openid), `aud` (the page token's origin, or `LOGIN_TOKEN_AUDIENCE`), `appid`, `scene`,
//! `event`, `iat`, `exp` (default 5 minutes later) and `jti` (a unique id, so
//! `POST /login/verify` can accept each token once).

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Digest as _;

use super::{random_id, unix_now};
use crate::wechat::secret::Secret;

/// The issuer claim of every login token.
pub const ISSUER: &str = "wxlogin";

/// The claims of a login token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginClaims {
    /// Always `wxlogin`.
    pub iss: String,
    /// The openid of the user who scanned.
    pub sub: String,
    /// Who the token is for: the page token's origin, or `LOGIN_TOKEN_AUDIENCE`.
    pub aud: String,
    /// The Official Account's appid.
    pub appid: String,
    /// The QR code's scene.
    pub scene: String,
    /// `SCAN` or `subscribe`.
    pub event: String,
    /// Issued at (seconds since the epoch).
    pub iat: u64,
    /// Expires at (seconds since the epoch).
    pub exp: u64,
    /// A unique id: a token is accepted once.
    pub jti: String,
}

/// Why a login token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoginTokenError {
    /// Past its `exp`.
    #[error("the login token has expired")]
    Expired,
    /// For another audience than the one asked for.
    #[error("the login token is for another audience")]
    WrongAudience,
    /// Not signed by this service, malformed, or of another kind.
    #[error("the login token is invalid")]
    Invalid,
}

/// Why the signing key could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {setting} {problem}")]
pub struct KeyError {
    /// The setting at fault.
    pub setting: &'static str,
    /// What is wrong.
    pub problem: String,
}

/// Issues and checks login tokens. Build once at start-up.
pub struct LoginTokens {
    algorithm: Algorithm,
    encoding: EncodingKey,
    decoding: DecodingKey,
    kid: String,
    /// The public key as a JWK (EdDSA only).
    jwk: Option<Value>,
    ttl: Duration,
    appid: String,
    default_audience: String,
}

impl std::fmt::Debug for LoginTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginTokens")
            .field("algorithm", &self.algorithm)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl LoginTokens {
    /// HS256 with a shared secret (`LOGIN_TOKEN_SECRET`, not empty).
    pub fn hs256(
        secret: &Secret,
        appid: &str,
        audience: &str,
        ttl: Duration,
    ) -> Result<Self, KeyError> {
        let bytes = secret.expose().as_bytes();
        let problem = |_| KeyError {
            setting: "LOGIN_TOKEN_SECRET",
            problem: "must not be empty".into(),
        };
        Ok(Self {
            algorithm: Algorithm::HS256,
            encoding: EncodingKey::from_secret(bytes).map_err(problem)?,
            decoding: DecodingKey::from_secret(bytes).map_err(problem)?,
            kid: "hs256".into(),
            jwk: None,
            ttl,
            appid: appid.into(),
            default_audience: audience.into(),
        })
    }

    /// EdDSA with the Ed25519 key in the PKCS#8 PEM file at `path`
    /// (`LOGIN_TOKEN_KEY_FILE`; `openssl genpkey -algorithm ed25519` makes one).
    pub fn ed25519_from_pem_file(
        path: &Path,
        appid: &str,
        audience: &str,
        ttl: Duration,
    ) -> Result<Self, KeyError> {
        let problem = |p: String| KeyError {
            setting: "LOGIN_TOKEN_KEY_FILE",
            problem: p,
        };
        let pem =
            std::fs::read_to_string(path).map_err(|e| problem(format!("cannot be read: {e}")))?;
        let key = SigningKey::from_pkcs8_pem(&pem)
            .map_err(|_| problem("is not a PKCS#8 PEM Ed25519 private key".into()))?;
        Self::ed25519(&key, appid, audience, ttl).map_err(problem)
    }

    /// EdDSA with a key generated now (tokens die with the process, which is fine for one
    /// instance: they live minutes).
    pub fn ed25519_generated(appid: &str, audience: &str, ttl: Duration) -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        rand::rng().fill_bytes(&mut seed);
        let key = SigningKey::from_bytes(&seed);
        Self::ed25519(&key, appid, audience, ttl).map_err(|problem| KeyError {
            setting: "(login token key)",
            problem,
        })
    }

    fn ed25519(
        key: &SigningKey,
        appid: &str,
        audience: &str,
        ttl: Duration,
    ) -> Result<Self, String> {
        let der = key
            .to_pkcs8_der()
            .map_err(|_| "cannot be encoded".to_owned())?;
        let public = key.verifying_key().to_bytes();
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(public);
        // The key id is derived from the key, so all instances with one key agree on it.
        let kid = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(&sha2::Sha256::digest(public)[..12]);
        let decoding = DecodingKey::from_ed_components(&x)
            .map_err(|_| "has an unusable public key".to_owned())?;
        Ok(Self {
            algorithm: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            decoding,
            jwk: Some(json!({
                "kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig",
            })),
            kid,
            ttl,
            appid: appid.into(),
            default_audience: audience.into(),
        })
    }

    /// The JWT algorithm in use.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// A token for `openid`'s `event` on `scene`, for `audience` (or the default one).
    pub fn issue(
        &self,
        openid: &str,
        scene: &str,
        event: &str,
        audience: Option<&str>,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let iat = unix_now();
        let claims = LoginClaims {
            iss: ISSUER.into(),
            sub: openid.into(),
            aud: audience.unwrap_or(&self.default_audience).into(),
            appid: self.appid.clone(),
            scene: scene.into(),
            event: event.into(),
            iat,
            exp: iat + self.ttl.as_secs(),
            jti: random_id(),
        };
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding)
    }

    /// Checks signature, issuer, expiry and, when given, the audience.
    pub fn verify(
        &self,
        token: &str,
        audience: Option<&str>,
    ) -> Result<LoginClaims, LoginTokenError> {
        let mut validation = Validation::new(self.algorithm);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        validation.leeway = 0;
        match audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        use jsonwebtoken::errors::ErrorKind;
        jsonwebtoken::decode::<LoginClaims>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => LoginTokenError::Expired,
                ErrorKind::InvalidAudience => LoginTokenError::WrongAudience,
                _ => LoginTokenError::Invalid,
            })
    }

    /// The JSON Web Key Set for `/.well-known/jwks.json` (empty for HS256: the secret is not
    /// published).
    pub fn jwks(&self) -> Value {
        json!({ "keys": self.jwk.iter().collect::<Vec<_>>() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> LoginTokens {
        LoginTokens::ed25519_generated("wxapp", "site", Duration::from_secs(300)).unwrap()
    }

    #[test]
    fn an_issued_token_verifies_with_its_claims() {
        let t = tokens();
        let jwt = t.issue("oUser", "scene1", "SCAN", None).unwrap();
        let claims = t.verify(&jwt, Some("site")).unwrap();
        assert_eq!(claims.sub, "oUser");
        assert_eq!(claims.appid, "wxapp");
        assert_eq!(claims.exp - claims.iat, 300);
        assert_eq!(claims.iss, "wxlogin");
    }

    #[test]
    fn another_key_a_wrong_audience_or_garbage_fail() {
        let t = tokens();
        let jwt = t
            .issue("oUser", "s", "SCAN", Some("https://a.example"))
            .unwrap();
        assert_eq!(
            t.verify(&jwt, Some("https://b.example")),
            Err(LoginTokenError::WrongAudience)
        );
        assert_eq!(tokens().verify(&jwt, None), Err(LoginTokenError::Invalid));
        assert_eq!(t.verify("a.b.c", None), Err(LoginTokenError::Invalid));
        let hs = LoginTokens::hs256(
            &Secret::new("k".repeat(32)),
            "wxapp",
            "site",
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(hs.verify(&jwt, None), Err(LoginTokenError::Invalid));
    }

    #[test]
    fn an_expired_token_says_so() {
        let t = LoginTokens::hs256(
            &Secret::new("k".repeat(32)),
            "wxapp",
            "site",
            Duration::ZERO,
        )
        .unwrap();
        let jwt = t.issue("oUser", "s", "SCAN", None).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(t.verify(&jwt, None), Err(LoginTokenError::Expired));
    }

    #[test]
    fn the_jwks_publishes_the_public_key_only() {
        let t = tokens();
        let jwks = t.jwks();
        let key = &jwks["keys"][0];
        assert_eq!(key["kty"], "OKP");
        assert_eq!(key["crv"], "Ed25519");
        assert!(key.get("d").is_none());
        let hs =
            LoginTokens::hs256(&Secret::new("k".repeat(32)), "a", "b", Duration::ZERO).unwrap();
        assert_eq!(hs.jwks()["keys"].as_array().map(Vec::len), Some(0));
    }
}
