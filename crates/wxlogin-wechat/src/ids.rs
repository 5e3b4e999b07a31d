//! Identifiers that WeChat hands us or that we hand WeChat, parsed once at the boundary.

use std::fmt;

use rand::RngCore;
use serde::{Deserialize, Serialize};

/// The scene string of a temporary QR code (`QR_STR_SCENE`): 1-64 URL-safe characters.
///
/// [`Scene::random`] makes them from a [`ScenePrefix`] and 128 random bits, so a scene cannot
/// be guessed and is never handed out twice; a scene from a callback is only accepted in the
/// same alphabet.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Scene(String);

/// Why a string is not a [`Scene`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a scene is 1-64 characters of A-Z a-z 0-9 - _")]
pub struct InvalidScene;

/// The prefix of the random scenes an application makes ([`Scene::random`]), so its QR codes
/// are told apart from the account's other QR codes.
///
/// 0-42 characters of `A-Z a-z 0-9 - _`: with the 22 characters of the random part, a scene
/// stays within WeChat's 64-character `scene_str`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ScenePrefix(&'static str);

/// Why a string is not a [`ScenePrefix`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a scene prefix is 0-42 characters of A-Z a-z 0-9 - _")]
pub struct InvalidScenePrefix;

impl ScenePrefix {
    /// The length of a random scene's random part: 128 bits in base64url without padding.
    pub const RANDOM_LEN: usize = 22;
    /// The longest prefix: a random scene fits WeChat's 64-character `scene_str`.
    pub const MAX_LEN: usize = 64 - Self::RANDOM_LEN;

    /// Checks a prefix, in a constant as well as at run time.
    pub const fn try_new(prefix: &'static str) -> Result<Self, InvalidScenePrefix> {
        let bytes = prefix.as_bytes();
        if bytes.len() > Self::MAX_LEN {
            return Err(InvalidScenePrefix);
        }
        let mut i = 0;
        while i < bytes.len() {
            if !is_scene_byte(bytes[i]) {
                return Err(InvalidScenePrefix);
            }
            i += 1;
        }
        Ok(Self(prefix))
    }

    /// A prefix known when the program is written: `const P: ScenePrefix = ScenePrefix::new("x_");`
    ///
    /// # Panics
    /// If the prefix is invalid (see [`ScenePrefix::try_new`]); in a constant, the build fails.
    pub const fn new(prefix: &'static str) -> Self {
        match Self::try_new(prefix) {
            Ok(p) => p,
            Err(_) => panic!("a scene prefix is 0-42 characters of A-Z a-z 0-9 - _"),
        }
    }

    /// The prefix as it starts a scene.
    pub const fn as_str(self) -> &'static str {
        self.0
    }
}

impl fmt::Debug for ScenePrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ScenePrefix({:?})", self.0)
    }
}

/// The alphabet of scenes: URL-safe, so a scene goes in a path or a query as it is.
const fn is_scene_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

impl Scene {
    /// A fresh random scene: the prefix and 128 bits, base64url without padding
    /// (the prefix and 22 characters).
    pub fn random(prefix: ScenePrefix) -> Self {
        use base64::Engine as _;
        let mut bytes = [0u8; 16];
        rand::rng().fill_bytes(&mut bytes);
        let random = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        Self(format!("{}{random}", prefix.as_str()))
    }

    /// Whether this scene has the shape of [`Scene::random`] with this prefix (its shape; not
    /// whether it is still live).
    pub fn is_random_with(&self, prefix: ScenePrefix) -> bool {
        self.0.len() == prefix.as_str().len() + ScenePrefix::RANDOM_LEN
            && self.0.starts_with(prefix.as_str())
    }

    /// Parses a scene received from outside (a callback's `EventKey`, a URL path).
    pub fn parse(s: &str) -> Result<Self, InvalidScene> {
        let ok = (1..=64).contains(&s.len()) && s.bytes().all(is_scene_byte);
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

    /// A shortened form for logs at info level and above, as [`OpenId::short`] is: its first
    /// 10 characters, enough to correlate (with a 4-character prefix, 36 random bits), not to
    /// address.
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

/// A user's unionid: the same for every app (Official Accounts, mini programs, websites) bound
/// to one Open Platform account. 1-64 characters of `A-Z a-z 0-9 - _`, as WeChat makes them;
/// anything else from WeChat is not taken (it goes into results and login tokens).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UnionId(String);

/// Why a string is not a [`UnionId`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a unionid is 1-64 characters of A-Z a-z 0-9 - _")]
pub struct InvalidUnionId;

impl UnionId {
    /// Checks a unionid as WeChat sent it.
    pub fn parse(s: &str) -> Result<Self, InvalidUnionId> {
        let shaped = (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        shaped.then(|| Self(s.to_owned())).ok_or(InvalidUnionId)
    }

    /// The unionid in full.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for UnionId {
    type Error = InvalidUnionId;
    fn try_from(s: String) -> Result<Self, InvalidUnionId> {
        Self::parse(&s)
    }
}

impl From<UnionId> for String {
    fn from(u: UnionId) -> Self {
        u.0
    }
}

impl fmt::Debug for UnionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UnionId({})", short_openid(&self.0))
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

    const PREFIX: ScenePrefix = ScenePrefix::new("app_");

    #[test]
    fn random_scenes_are_distinct_and_parse_back() {
        let a = Scene::random(PREFIX);
        let b = Scene::random(PREFIX);
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 26);
        assert!(a.as_str().starts_with("app_"));
        assert!(a.is_random_with(PREFIX));
        assert!(!a.is_random_with(ScenePrefix::new("xyz_")));
        assert_eq!(a.short(), &a.as_str()[..10]);
        assert_eq!(Scene::parse("abc").unwrap().short(), "abc");
        assert!(!Scene::parse("123123").unwrap().is_random_with(PREFIX));
        assert_eq!(Scene::parse(a.as_str()), Ok(a));
    }

    #[test]
    fn a_random_scene_with_the_longest_prefix_fits_in_a_scene_str() {
        let longest = "p".repeat(ScenePrefix::MAX_LEN).leak();
        let prefix = ScenePrefix::try_new(longest).unwrap();
        let scene = Scene::random(prefix);
        assert_eq!(scene.as_str().len(), 64);
        assert_eq!(Scene::parse(scene.as_str()), Ok(scene.clone()));
        assert!(scene.is_random_with(prefix));
        let empty = ScenePrefix::new("");
        assert_eq!(Scene::random(empty).as_str().len(), 22);
    }

    #[test]
    fn prefixes_too_long_or_outside_the_alphabet_are_refused() {
        let too_long = "p".repeat(ScenePrefix::MAX_LEN + 1).leak();
        for bad in [&*too_long, "a b", "x/", "é", "q="] {
            assert_eq!(
                ScenePrefix::try_new(bad),
                Err(InvalidScenePrefix),
                "{bad:?}"
            );
        }
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
