//! wxlogin: log website users in by scanning a WeChat Official Account QR code.
//!
//! # Layout
//! - [`auth`]: the tokens wxlogin issues: login tokens (JWT) for site backends, page tokens.
//! - [`config`]: the only reader of the environment, `.env` and the accounts file: read once into
//!   [`config::Settings`], from which each command takes typed values; secrets redacted.
//! - [`accounts`]: the Official Accounts served, each with its own runtime (WeChat client,
//!   access token, login flow, callback checker); look one up with `accounts.get(name)`.
//! - [`wechat`]: the WeChat protocol (API client, access token, callback signature, XML, safe
//!   mode crypto): the `wxlogin-wechat` crate, under the name the service has always used.
//! - [`login`]: the product's flow: the stock of fresh QR codes, the streams waiting on them,
//!   and the one place where a scan is resolved to a stream.
//! - [`metrics`]: Prometheus metrics, one registry per app.
//! - [`store`]: state that instances share: the QR stock, login sessions and results, keys
//!   claimed once, the access token, delivery to the instance holding a stream. In memory
//!   (one process) or in Redis (several instances).
//! - [`http`]: the axum adapter: routes, SSE, the callback endpoint, health, errors.
//! - [`sandbox`]: an in-process fake WeChat and a "phone" that sends signed callbacks; used by
//!   `wxlogin sandbox`, `wxlogin fake-wechat` and the tests.
//! - [`app`]: the composition root: builds everything from a [`config::Config`] and runs it;
//!   the binary's shutdown signal.
//! - [`telemetry`]: tracing setup (`LOG_YAML`, `RUST_LOG`).
//! - [`cli`]: the command line (`serve`, `sandbox`, `fake-wechat`, `check`, `openapi`) and
//!   the dispatch of each command.
//! - [`check`]: `wxlogin check`, a report on whether the configuration works.

pub mod accounts;
pub mod app;
pub mod auth;
pub mod check;
pub mod cli;
pub mod config;
pub mod http;
pub mod login;
pub mod metrics;
pub mod sandbox;
pub mod store;
pub mod telemetry;

pub use wxlogin_wechat as wechat;
