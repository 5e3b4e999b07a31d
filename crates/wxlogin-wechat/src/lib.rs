//! The WeChat Official Account protocol, as a QR-code login needs it.
//!
//! Nothing here knows about an HTTP server, a store, a login flow or an application's settings
//! and policy (its scene prefix, its advice to operators): it turns WeChat's wire formats into
//! typed values and back, and talks to the WeChat API.
//! - [`api`]: the WeChat API client for `stable_token`, `qrcode/create`, `user/info` (the
//!   unionid) and the web authorization's code exchange, and the authorize page's URL (over `http`,
//!   hyper's client with rustls: JSON in and out, bounded in time and size).
//! - [`token`]: the access token cache (one refresh for all callers, retry on token errors),
//!   and the same token for other programs of the account (read, and compare and refresh).
//! - [`signature`]: callback signatures (`signature`, `msg_signature`).
//! - [`crypto`]: safe mode (AES-256-CBC message envelope).
//! - [`xml`]: the callback XML parser (no DTDs, no entities).
//! - [`callback`]: a callback checked and opened in one place (`callback::open`: signature,
//!   freshness, safe mode, XML, the query's binding to its body), with a typed error per
//!   reason, and classified into what a QR-code login acts on.
//! - [`reply`]: passive replies (the text the user sees after scanning).
//! - [`error`]: the API client's error type.
//! - [`ids`]: scene, openid, unionid and ticket newtypes; [`secret`]: values that never print.
//! - `test_util` (feature `test-util`): what only WeChat writes (a scan event, a signed
//!   callback query), for fakes, tests and load tools.

pub mod api;
pub mod callback;
pub mod crypto;
pub mod error;
mod http;
pub mod ids;
pub mod reply;
pub mod secret;
pub mod signature;
#[cfg(feature = "test-util")]
pub mod test_util;
pub mod token;
pub mod xml;
