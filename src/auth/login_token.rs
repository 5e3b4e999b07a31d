//! `login_token`: a JWT proving that `sub` (an openid) scanned this service's QR code.
//!
//! Signed with EdDSA (Ed25519; the public key is served at `/.well-known/jwks.json`) or, when
//! `LOGIN_TOKEN_SECRET` is set, HS256 with that secret. Claims: `iss` = `wxlogin`, `sub` (the
//! openid), `aud` (the page token's origin, or `LOGIN_TOKEN_AUDIENCE`), `appid`, `scene`,
//! `event`, `iat`, `exp` (default 5 minutes later), `jti` (a unique id, so
//! `POST /login/verify` can accept each token once) and, when WeChat gave one (`USER_INFO`, or
//! a login inside WeChat), `unionId`.
//!
//! Verification checks what the signature alone cannot: that the token is wxlogin's (`iss`),
//! for this deployment's account (`appid`), and for the audience asked for (the default one
//! when none is named, so that a token minted for a site's origin is never taken elsewhere).
//! With the memory store the used ids die with the process, so a token records which process
//! issued it (a prefix of its `jti`) and another process refuses it.

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
    /// The user's unionid, when WeChat gave one: with `USER_INFO` on, or from a login inside
    /// WeChat (the code exchange names it).
    #[serde(rename = "unionId", default, skip_serializing_if = "Option::is_none")]
    pub union_id: Option<String>,
}

/// Why a login token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoginTokenError {
    /// Past its `exp`.
    #[error("the login token has expired")]
    Expired,
    /// For another audience than the one asked for (or the default one).
    #[error("the login token is for another audience")]
    WrongAudience,
    /// Issued by something other than wxlogin.
    #[error("the login token was not issued by wxlogin")]
    WrongIssuer,
    /// For another Official Account than this deployment's.
    #[error("the login token is for another appid")]
    WrongAppid,
    /// Issued by an earlier process with the memory store, whose record of used tokens is gone.
    #[error("the login token was issued before this process started: its use cannot be known")]
    BeforeStart,
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

/// Issues and checks login tokens. Build once at start-up; each account's issuer is a copy
/// with its appid ([`LoginTokens::for_appid`]).
#[derive(Clone)]
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
    /// With the memory store: this process's random id, which starts the `jti` of every
    /// token it issues and of every token it accepts.
    process: Option<String>,
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
            process: None,
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
            process: None,
        })
    }

    /// For a process whose record of used tokens dies with it (the memory store): tokens say
    /// they are this process's (in their `jti`), and tokens of any other process are refused,
    /// since whether they were used cannot be known.
    #[must_use]
    pub fn used_ids_kept_in_this_process(mut self) -> Self {
        self.process = Some(random_id()[..12].to_owned());
        self
    }

    /// The same key and settings, for the account `appid` (the `appid` claim of the tokens it
    /// issues, and the one it accepts).
    #[must_use]
    pub fn for_appid(&self, appid: &str) -> Self {
        Self {
            appid: appid.into(),
            ..self.clone()
        }
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
        self.issue_with_unionid(openid, scene, event, audience, None)
    }

    /// [`LoginTokens::issue`] with the user's unionid, if known, as the `unionId` claim.
    pub fn issue_with_unionid(
        &self,
        openid: &str,
        scene: &str,
        event: &str,
        audience: Option<&str>,
        union_id: Option<&str>,
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
            jti: match &self.process {
                Some(process) => format!("{process}.{}", random_id()),
                None => random_id(),
            },
            union_id: union_id.map(str::to_owned),
        };
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding)
    }

    /// Checks signature, expiry, issuer, appid, the audience (`audience`, else the default
    /// one) and, with the memory store, that this process issued the token.
    pub fn verify(
        &self,
        token: &str,
        audience: Option<&str>,
    ) -> Result<LoginClaims, LoginTokenError> {
        let claims = self.verify_any_appid(token, audience)?;
        if claims.appid != self.appid {
            return Err(LoginTokenError::WrongAppid);
        }
        Ok(claims)
    }

    /// As [`LoginTokens::verify`], but for a token of any appid signed with this key: the
    /// caller checks the appid is one of its accounts'.
    pub fn verify_any_appid(
        &self,
        token: &str,
        audience: Option<&str>,
    ) -> Result<LoginClaims, LoginTokenError> {
        let mut validation = Validation::new(self.algorithm);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        validation.leeway = 0;
        validation.set_audience(&[audience.unwrap_or(&self.default_audience)]);
        use jsonwebtoken::errors::ErrorKind;
        let claims = jsonwebtoken::decode::<LoginClaims>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => LoginTokenError::Expired,
                ErrorKind::InvalidAudience => LoginTokenError::WrongAudience,
                ErrorKind::InvalidIssuer => LoginTokenError::WrongIssuer,
                _ => LoginTokenError::Invalid,
            })?;
        if let Some(process) = &self.process
            && claims.jti.split_once('.').map(|(issuer, _)| issuer) != Some(process.as_str())
        {
            return Err(LoginTokenError::BeforeStart);
        }
        Ok(claims)
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
    fn without_an_audience_only_the_default_one_is_accepted() {
        let t = tokens();
        let for_origin = t
            .issue("oUser", "s", "SCAN", Some("https://a.example"))
            .unwrap();
        assert_eq!(
            t.verify(&for_origin, None),
            Err(LoginTokenError::WrongAudience)
        );
        assert!(t.verify(&for_origin, Some("https://a.example")).is_ok());
        let default = t.issue("oUser", "s", "SCAN", None).unwrap();
        assert!(t.verify(&default, None).is_ok());
    }

    fn hs(appid: &str) -> LoginTokens {
        LoginTokens::hs256(
            &Secret::new("k".repeat(32)),
            appid,
            "site",
            Duration::from_secs(60),
        )
        .unwrap()
    }

    #[test]
    fn a_token_of_another_appid_or_issuer_under_the_same_key_is_refused() {
        let other_account = hs("wxother").issue("oUser", "s", "SCAN", None).unwrap();
        assert_eq!(
            hs("wxapp").verify(&other_account, None),
            Err(LoginTokenError::WrongAppid)
        );
        let mut claims = hs("wxapp")
            .verify(
                &hs("wxapp").issue("oUser", "s", "SCAN", None).unwrap(),
                None,
            )
            .unwrap();
        claims.iss = "someone-else".into();
        let foreign = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret("k".repeat(32).as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(
            hs("wxapp").verify(&foreign, None),
            Err(LoginTokenError::WrongIssuer)
        );
    }

    #[test]
    fn with_ids_kept_in_one_process_another_process_refuses_its_tokens() {
        let before = hs("wxapp").used_ids_kept_in_this_process();
        let after = hs("wxapp").used_ids_kept_in_this_process();
        let old = before.issue("oUser", "s", "SCAN", None).unwrap();
        assert!(before.verify(&old, None).is_ok());
        assert_eq!(after.verify(&old, None), Err(LoginTokenError::BeforeStart));
        let unmarked = hs("wxapp").issue("oUser", "s", "SCAN", None).unwrap();
        assert_eq!(
            after.verify(&unmarked, None),
            Err(LoginTokenError::BeforeStart)
        );
        let fresh = after.issue("oUser", "s", "SCAN", None).unwrap();
        assert!(after.verify(&fresh, None).is_ok());
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
