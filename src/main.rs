//! The `wxlogin` binary: a switchboard. All logic lives in the library.

use std::process::ExitCode;

use clap::Parser as _;
use wxlogin::cli::{Cli, Command};
use wxlogin::config::Settings;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(".env") {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    wxlogin::http::limits::raise_open_files_limit();
    let _log_guard = match wxlogin::telemetry::init(&settings.log()) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let command = cli.command.unwrap_or(Command::Serve);
    command
        .run(&settings, wxlogin::app::shutdown_signal())
        .await
}
