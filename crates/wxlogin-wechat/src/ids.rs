//! Identifiers that WeChat hands us or that we hand WeChat, parsed once at the boundary.

use std::fmt;

use rand::RngCore;
use serde::{Deserialize, Serialize};

/// The scene string of a temporary QR code (`QR_STR_SCENE`): 1-64 URL-safe characters.
///
/// wxlogin makes them from 128 random bits, so a scene cannot be guessed and is never
/// handed out twice; a scene from a callback is only accepted in the same alphabet.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Scene(String);

/// Why a string is not a [`Scene`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a scene is 1-64 characters of A-Z a-z 0-9 - _")]
pub struct InvalidScene;

/// The prefix of the scenes wxlogin makes, so its QR codes are told apart from the account's
/// other QR codes (whose scans are not logins, and may be forwarded).
const OUR_PREFIX: &str = "wxl_";

impl Scene {
    /// A fresh random scene: `wxl_` and 128 bits, base64url without padding (26 characters).
    pub fn random() -> Self {
        use base64::Engine as _;
        let mut bytes = [0u8; 16];
        rand::rng().fill_bytes(&mut bytes);
        let random = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        Self(format!("{OUR_PREFIX}{random}"))
    }

    /// Whether wxlogin made this scene (its shape; not whether it is still live).
    pub fn is_ours(&self) -> bool {
        self.0.len() == OUR_PREFIX.len() + 22 && self.0.starts_with(OUR_PREFIX)
    }

    /// Parses a scene received from outside (a callback's `EventKey`, a URL path).
    pub fn parse(s: &str) -> Result<Self, InvalidScene> {
        let ok = (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidScene)
        }
    }

    /// The scene as WeChat sees it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A shortened form for logs at info level and above, as [`OpenId::short`] is: enough to
    /// correlate (the prefix and 36 random bits), not to address.
    pub fn short(&self) -> &str {
        self.0.get(..10).unwrap_or(&self.0)
    }
}

impl TryFrom<String> for Scene {
    type Error = InvalidScene;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Scene> for String {
    fn from(s: Scene) -> Self {
        s.0
    }
}

impl fmt::Display for Scene {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Scene {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scene({})", self.0)
    }
}

/// A user's openid for this Official Account (the callback's `FromUserName`).
///
/// `Display` shows it whole (it goes to the browser); [`OpenId::short`] is what logs carry.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OpenId(String);

impl OpenId {
    /// Wraps an openid taken from a verified callback.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The openid in full.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A shortened form for logs: the first 6 characters and a marker.
    pub fn short(&self) -> String {
        short_openid(&self.0)
    }
}

/// An openid shortened for logs: its first 6 characters and a marker.
pub fn short_openid(openid: &str) -> String {
    let head: String = openid.chars().take(6).collect();
    format!("{head}…")
}

impl fmt::Debug for OpenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OpenId({})", self.short())
    }
}

impl fmt::Display for OpenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A QR code ticket, as returned by `qrcode/create`; it may contain `+ / =`.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Ticket(String);

impl Ticket {
    /// Wraps a ticket returned by WeChat.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The ticket as WeChat returned it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The image address WeChat serves for this ticket, with the ticket URL-encoded.
    pub fn showqrcode_url(&self) -> String {
        let encoded =
            percent_encoding::utf8_percent_encode(&self.0, percent_encoding::NON_ALPHANUMERIC);
        format!("https://mp.weixin.qq.com/cgi-bin/showqrcode?ticket={encoded}")
    }
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head: String = self.0.chars().take(8).collect();
        write!(f, "Ticket({head}…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_scenes_are_distinct_and_parse_back() {
        let a = Scene::random();
        let b = Scene::random();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 26);
        assert!(a.is_ours());
        assert_eq!(a.short(), &a.as_str()[..10]);
        assert_eq!(Scene::parse("abc").unwrap().short(), "abc");
        assert!(!Scene::parse("123123").unwrap().is_ours());
        assert_eq!(Scene::parse(a.as_str()), Ok(a));
    }

    #[test]
    fn scenes_outside_the_alphabet_or_length_are_refused() {
        for bad in ["", "a b", "qrscene_x/y", "é", &"a".repeat(65)] {
            assert_eq!(Scene::parse(bad), Err(InvalidScene), "{bad:?}");
        }
        assert!(Scene::parse(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn ticket_is_url_encoded_in_the_image_address() {
        let t = Ticket::new("gQH47joAAAAAAAAAASxodHRw+/=");
        assert_eq!(
            t.showqrcode_url(),
            "https://mp.weixin.qq.com/cgi-bin/showqrcode?ticket=gQH47joAAAAAAAAAASxodHRw%2B%2F%3D"
        );
    }

    #[test]
    fn openid_is_shortened_for_logs() {
        let id = OpenId::new("oyORnuP8q7ou2gfYjqLzSIWZf0rs");
        assert_eq!(id.short(), "oyORnu…");
        assert!(!format!("{id:?}").contains("q7ou2gf"));
    }
}
