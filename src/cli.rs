//! The command line, and each command run with the settings it needs.

use std::future::Future;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Settings;

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

impl Command {
    /// Runs the command with the values it takes from `settings`, until it ends or
    /// `shutdown` completes; failures are printed as one line on stderr.
    pub async fn run(
        self,
        settings: &Settings,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> ExitCode {
        let result: Result<(), Box<dyn std::error::Error>> = match self {
            Self::Serve => match settings.config() {
                Ok(config) => crate::app::serve(&config, shutdown)
                    .await
                    .map_err(Into::into),
                Err(e) => Err(e.into()),
            },
            Self::Sandbox(args) => crate::sandbox::run(settings, args.safe_mode, shutdown)
                .await
                .map_err(Into::into),
            Self::FakeWechat(args) => match settings.fake_account() {
                Ok(account) => {
                    crate::sandbox::run_fake(account, args.port, args.callback, shutdown)
                        .await
                        .map_err(Into::into)
                }
                Err(e) => Err(e.into()),
            },
            Self::Check => {
                let report = crate::check::run(settings.config()).await;
                print!("{}", report.text);
                if !report.passed {
                    return ExitCode::FAILURE;
                }
                Ok(())
            }
            Self::Openapi => {
                println!("{}", crate::http::docs::openapi_text());
                Ok(())
            }
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        }
    }
}
