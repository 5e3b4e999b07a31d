//! The command line.

use clap::{Parser, Subcommand};

/// wxlogin: log website users in by scanning a WeChat Official Account QR code.
#[derive(Debug, Parser)]
#[command(name = "wxlogin", version, about)]
pub struct Cli {
    /// What to run; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service against the real WeChat API (configuration from the environment and
    /// `.env`).
    Serve,
    /// Run the service against an in-process fake WeChat, with a demo page: no account needed.
    Sandbox(SandboxArgs),
    /// Run only the fake WeChat API (for tests and load tools).
    FakeWechat(FakeWechatArgs),
    /// Check the configuration: fetch a token and create one QR code; exit non-zero on failure.
    Check,
    /// Print the OpenAPI document (as served at /openapi.json).
    Openapi,
}

/// Options of `wxlogin sandbox`.
#[derive(Debug, clap::Args)]
pub struct SandboxArgs {
    /// Run the fake account in safe mode (安全模式): callbacks are AES-encrypted and signed
    /// with msg_signature, as WeChat does.
    #[arg(long)]
    pub safe_mode: bool,
}

/// Options of `wxlogin fake-wechat`.
#[derive(Debug, clap::Args)]
pub struct FakeWechatArgs {
    /// Port to listen on (127.0.0.1).
    #[arg(long, default_value_t = 9000)]
    pub port: u16,
    /// Where the fake phone sends callbacks (wxlogin's `/wechat_event`).
    #[arg(long, default_value = "http://127.0.0.1:8000/wechat_event")]
    pub callback: String,
}
