//! wxlogin's scenes: the prefix that tells its QR codes apart from the account's other QR codes
//! (whose scans are not logins, and may be forwarded), and the one place a scene is made.

use crate::wechat::ids::{Scene, ScenePrefix};

/// The prefix of every scene wxlogin makes: `wxl_` and 22 random characters.
pub const SCENE_PREFIX: ScenePrefix = ScenePrefix::new("wxl_");

/// A fresh login scene: `wxl_` and 128 random bits.
pub fn new_scene() -> Scene {
    Scene::random(SCENE_PREFIX)
}

/// Whether wxlogin made this scene (its shape; not whether it is still live).
pub fn is_login_scene(scene: &Scene) -> bool {
    scene.is_random_with(SCENE_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_scenes_are_wxl_and_22_characters() {
        let scene = new_scene();
        assert_eq!(scene.as_str().len(), 26);
        assert!(scene.as_str().starts_with("wxl_"));
        assert!(is_login_scene(&scene));
        assert!(!is_login_scene(&Scene::parse("123123").unwrap()));
        assert!(!is_login_scene(
            &Scene::parse("abc_AAAAAAAAAAAAAAAAAAAAAA").unwrap()
        ));
    }
}
