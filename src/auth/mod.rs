//! The tokens wxlogin issues, so that neither a site's pages nor its backend have to trust
//! what a browser says.
//!
//! - [`login_token`]: the signed, short-lived, single-use proof of a login (a JWT) that a
//!   site's backend verifies, with one library call or at `POST /login/verify`.
//! - [`page_token`]: short-lived tokens a site's backend mints for its pages, so `API_TOKEN`
//!   never has to appear in browser code.
//! - [`page_key`]: their key's random part, shared by the instances through the store.

pub mod login_token;
pub mod page_key;
pub mod page_token;

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// A random 128-bit id, base64url.
pub(crate) fn random_id() -> String {
    use base64::Engine as _;
    use rand::RngCore as _;
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
