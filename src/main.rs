//! The `wxlogin` binary: a switchboard. All logic lives in the library.

use std::process::ExitCode;

use clap::Parser as _;
use wxlogin::app::App;
use wxlogin::cli::{Cli, Command};
use wxlogin::config::Config;

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let vars = match Config::gather(".env") {
        Ok(vars) => vars,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let log_yaml = vars
        .get("LOG_YAML")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from);
    // Streams are sockets: let this process use all the open files it is allowed.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let _log_guard = match wxlogin::telemetry::init(log_yaml.as_deref()) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<(), Box<dyn std::error::Error>> = match cli.command.unwrap_or(Command::Serve)
    {
        Command::Serve => serve(&vars).await,
        Command::Sandbox(args) => wxlogin::sandbox::run(vars, args.safe_mode, shutdown_signal())
            .await
            .map_err(Into::into),
        Command::Check => {
            let report = wxlogin::check::run(&vars).await;
            print!("{}", report.text);
            if report.passed {
                Ok(())
            } else {
                return ExitCode::FAILURE;
            }
        }
        Command::Openapi => {
            println!("{}", wxlogin::http::docs::openapi_text());
            Ok(())
        }
        Command::FakeWechat(args) => {
            wxlogin::sandbox::run_fake(vars, args.port, args.callback, shutdown_signal())
                .await
                .map_err(Into::into)
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

async fn serve(
    vars: &std::collections::HashMap<String, String>,
) -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::from_lookup(|k| vars.get(k).cloned())?;
    // DEMO_PAGE puts API_TOKEN into a public page, as the FastAPI demo did: for trials only.
    let demo = config
        .demo_page
        .then(|| wxlogin::http::assets::demo_routes(config.api_token.clone(), false));
    let app = App::build(&config, demo).await?;
    tracing::info!(addr = %app.local_addr()?, "wxlogin serving");
    app.run_until(shutdown_signal()).await?;
    Ok(())
}
