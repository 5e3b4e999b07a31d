//! `wxlogin-bench`: the load tool of the performance targets (BENCHMARKS.md). It drives a running wxlogin over loopback
//! (HTTP/1.1 keep-alive, sockets spread over several 127.0.0.x source addresses) and prints
//! one JSON line per scenario:
//!
//! - `waiters`: hold N streams; time to open them, first-event latency, errors, 503s, the
//!   server's RSS before and while held (`--server-pid`), RSS per held stream.
//! - `scan-to-push`: hold N streams, send each a signed SCAN callback at a fixed rate (the
//!   tool plays WeChat) and time callback sent → result received; lost and misdelivered.
//!   Given several targets (instances sharing one Redis), streams are spread over them
//!   round-robin and each scan goes to another instance than the stream's, so every result
//!   crosses over Redis; `waiters` spreads its streams the same way.
//! - `callbacks`: signed callbacks for scenes nobody waits on, at full speed on C connections,
//!   then `GET /healthz` the same way: requests/s of each and their ratio.
//! - `churn`: open, scan, close at a steady rate; RSS at start and end, streams left over.
//!
//! More streams than one process may hold (`ulimit -Hn`) are spread over worker processes:
//! the tool re-executes itself (`worker`, see `workers.rs`) and adds up their reports.
//! Only 127.0.0.0/8 targets are accepted, and every count, rate and duration is bounded.
//!
//! Layout: `net.rs` (sockets, hyper connections, SSE), `streams.rs` (held streams and their
//! scans), `workers.rs` (the processes), `scenarios.rs` (the four reports), `stats.rs`.

mod net;
mod scenarios;
mod stats;
mod streams;
mod workers;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::net::BenchError;
use crate::scenarios::Run;
use crate::stats::Servers;
use crate::streams::{Common, Ctx, MAX_TARGETS};

/// Streams one process holds at most by default: under the 20,000 open files a process may
/// have here, with room for the pool and the runtime.
const DEFAULT_PER_PROCESS: u64 = 18_000;
/// Bounds on what one invocation may ask for.
const MAX_STREAMS: usize = 200_000;
const MAX_RATE: f64 = 100_000.0;
const MAX_DURATION_SECS: u64 = 3_600;
const MAX_CONCURRENCY: usize = 4_096;

/// Load tool for wxlogin (loopback only). Prints one JSON line per scenario.
#[derive(Debug, Parser)]
#[command(name = "wxlogin-bench", version)]
struct Cli {
    /// The wxlogin to load: http://127.0.0.x:PORT only. Several instances sharing one Redis:
    /// repeat it or separate them with commas (`waiters` and `scan-to-push` only).
    #[arg(
        long,
        visible_alias = "targets",
        global = true,
        env = "BENCH_TARGET",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8000"
    )]
    target: Vec<String>,
    /// The service's `API_TOKEN` (for `/sse`).
    #[arg(
        long,
        global = true,
        env = "API_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    token: String,
    /// The service's `MP_TOKEN` (to sign callbacks).
    #[arg(
        long,
        global = true,
        env = "MP_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    mp_token: String,
    /// The account's gh_ id, written as `ToUserName` (the fake WeChat's by default).
    #[arg(long, global = true, default_value = "gh_sandbox000001")]
    gh_id: String,
    /// The server's process id, to read its RSS and CPU time from /proc; with several
    /// instances, their ids (repeated or comma-separated): the figures are summed.
    #[arg(long, global = true, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Spread sockets over source addresses 127.0.0.1 ..= 127.0.0.N.
    #[arg(long, global = true, default_value_t = 8)]
    sources: usize,
    /// Streams one process may hold before workers are used [default: 18000, less under a
    /// lower `ulimit -n`].
    #[arg(long, global = true)]
    per_process: Option<usize>,
    /// Tokio worker threads of each bench process.
    #[arg(long, global = true, default_value_t = 2)]
    threads: usize,
    /// The bound on each phase of a scenario, seconds.
    #[arg(long, global = true, default_value_t = 1_800)]
    max_secs: u64,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Hold N streams: open time, first-event latency, errors, 503s, RSS per stream.
    Waiters {
        /// Streams.
        #[arg(long, default_value_t = 19_000)]
        n: usize,
        /// New streams per second (0: all at once).
        #[arg(long, default_value_t = 1_000.0)]
        rate: f64,
        /// Seconds to hold them open before measuring RSS again (one keep-alive tick is 15 s).
        #[arg(long, default_value_t = 0)]
        hold_secs: u64,
        /// Seconds to wait for the server to count them gone after they are let go.
        #[arg(long, default_value_t = 30)]
        drain_secs: u64,
    },
    /// Hold N streams and scan each once at a fixed rate: callback → result latency.
    ScanToPush {
        /// Streams.
        #[arg(long, default_value_t = 10_000)]
        n: usize,
        /// Scans (callbacks) per second.
        #[arg(long, default_value_t = 1_000.0)]
        rate: f64,
        /// New streams per second while opening (0: all at once).
        #[arg(long, default_value_t = 2_000.0)]
        open_rate: f64,
        /// Seconds after the last scan before a stream without result counts as lost.
        #[arg(long, default_value_t = 5)]
        settle_secs: u64,
    },
    /// Signed callbacks for scenes nobody waits on, then /healthz, each at full speed.
    Callbacks {
        /// Connections.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Seconds of each kind of request, in all.
        #[arg(long, default_value_t = 10)]
        duration_secs: u64,
        /// Slices each kind's time is cut into, alternating callbacks and /healthz, so that
        /// the speed of a shared machine, which drifts over seconds, weighs on both alike.
        #[arg(long, default_value_t = 5)]
        rounds: u32,
    },
    /// Logins (open, scan, close) at a steady rate: RSS drift and leftovers.
    Churn {
        /// Logins started per second.
        #[arg(long, default_value_t = 500.0)]
        rate: f64,
        /// Seconds.
        #[arg(long, default_value_t = 600)]
        duration_secs: u64,
        /// Milliseconds between the QR code and the scan.
        #[arg(long, default_value_t = 500)]
        think_ms: u64,
        /// Seconds of load before RSS "at start" is read (0: before any load) [default: 120, at
        /// most a fifth of the duration: past the service's 60 s of keeping a delivered result]
        #[arg(long)]
        warmup_secs: Option<u64>,
        /// Seconds to wait after the load for the server's live sessions to reach zero.
        #[arg(long, default_value_t = 90)]
        settle_secs: u64,
    },
    /// (internal) A worker process: reads its job on stdin.
    #[command(hide = true)]
    Worker,
}

fn check(ok: bool, what: &str) -> Result<(), BenchError> {
    if ok {
        Ok(())
    } else {
        Err(BenchError::new("arguments", what))
    }
}

fn check_rate(rate: f64, zero_ok: bool, what: &str) -> Result<(), BenchError> {
    let low_ok = if zero_ok { rate >= 0.0 } else { rate > 0.0 };
    check(
        rate.is_finite() && low_ok && rate <= MAX_RATE,
        &format!(
            "{what} must be in (0, {MAX_RATE}]{}",
            if zero_ok { " or 0" } else { "" }
        ),
    )
}

fn per_process(cli: &Cli) -> usize {
    cli.per_process.unwrap_or_else(|| {
        let by_limit = stats::nofile_soft_limit().map_or(DEFAULT_PER_PROCESS, |soft| {
            soft.saturating_sub(1_000).max(100)
        });
        usize::try_from(DEFAULT_PER_PROCESS.min(by_limit)).unwrap_or(1_000)
    })
}

async fn run(cli: Cli) -> Result<(), BenchError> {
    if let Scenario::Worker = cli.scenario {
        return workers::worker_main().await;
    }
    check(
        (1..=net::MAX_SOURCES).contains(&cli.sources),
        "--sources must be 1-64",
    )?;
    check(
        (1..=86_400).contains(&cli.max_secs),
        "--max-secs must be 1-86400",
    )?;
    check(
        (1..=MAX_TARGETS).contains(&cli.target.len()),
        &format!("--target: give 1-{MAX_TARGETS} targets"),
    )?;
    check(
        cli.target.len() == 1
            || matches!(
                cli.scenario,
                Scenario::Waiters { .. } | Scenario::ScanToPush { .. }
            ),
        "several targets are for waiters and scan-to-push; callbacks and churn drive one",
    )?;
    check(cli.server_pid.len() <= 256, "--server-pid: at most 256")?;
    let needs_token = !matches!(cli.scenario, Scenario::Callbacks { .. });
    check(
        !needs_token || !cli.token.is_empty(),
        "the API token is required (--token or API_TOKEN)",
    )?;
    check(
        !cli.mp_token.is_empty() || matches!(cli.scenario, Scenario::Waiters { .. }),
        "the callback token is required (--mp-token or MP_TOKEN)",
    )?;
    let common = Common {
        targets: cli.target.clone(),
        token: cli.token.clone(),
        mp_token: cli.mp_token.clone(),
        gh_id: cli.gh_id.clone(),
        sources: cli.sources,
    };
    let run = Run {
        ctx: Ctx::new(&common)?,
        common,
        server: Servers::new(&cli.server_pid),
        per_process: per_process(&cli).max(1),
        max_time: Duration::from_secs(cli.max_secs),
    };
    let report = match cli.scenario {
        Scenario::Waiters {
            n,
            rate,
            hold_secs,
            drain_secs,
        } => {
            check((1..=MAX_STREAMS).contains(&n), "--n must be 1-200000")?;
            check_rate(rate, true, "--rate")?;
            check(
                hold_secs <= MAX_DURATION_SECS,
                "--hold-secs is at most 3600",
            )?;
            check(
                drain_secs <= MAX_DURATION_SECS,
                "--drain-secs is at most 3600",
            )?;
            let args = scenarios::Waiters {
                n,
                rate,
                hold: Duration::from_secs(hold_secs),
                drain: Duration::from_secs(drain_secs),
            };
            scenarios::waiters(&run, &args).await?
        }
        Scenario::ScanToPush {
            n,
            rate,
            open_rate,
            settle_secs,
        } => {
            check((1..=MAX_STREAMS).contains(&n), "--n must be 1-200000")?;
            check_rate(rate, false, "--rate")?;
            check_rate(open_rate, true, "--open-rate")?;
            check(settle_secs <= 600, "--settle-secs is at most 600")?;
            let args = scenarios::ScanToPush {
                n,
                rate,
                open_rate,
                settle: Duration::from_secs(settle_secs),
            };
            scenarios::scan_to_push(&run, &args).await?
        }
        Scenario::Callbacks {
            concurrency,
            duration_secs,
            rounds,
        } => {
            check((1..=100).contains(&rounds), "--rounds must be 1-100")?;
            check(
                (1..=MAX_CONCURRENCY).contains(&concurrency),
                "--concurrency must be 1-4096",
            )?;
            check(
                (1..=MAX_DURATION_SECS).contains(&duration_secs),
                "--duration-secs must be 1-3600",
            )?;
            let args = scenarios::Callbacks {
                concurrency,
                duration: Duration::from_secs(duration_secs),
                rounds,
            };
            scenarios::callbacks(&run, &args).await?
        }
        Scenario::Churn {
            rate,
            duration_secs,
            think_ms,
            warmup_secs,
            settle_secs,
        } => {
            check_rate(rate, false, "--rate")?;
            check(
                (1..=MAX_DURATION_SECS).contains(&duration_secs),
                "--duration-secs must be 1-3600",
            )?;
            check(think_ms <= 60_000, "--think-ms is at most 60000")?;
            let warmup_secs = warmup_secs.unwrap_or((duration_secs / 5).min(120));
            check(settle_secs <= 3600, "--settle-secs is at most 3600")?;
            check(
                warmup_secs < duration_secs,
                "--warmup-secs must be shorter than --duration-secs",
            )?;
            let args = scenarios::Churn {
                rate,
                duration: Duration::from_secs(duration_secs),
                think: Duration::from_millis(think_ms),
                warmup: Duration::from_secs(warmup_secs),
                settle: Duration::from_secs(settle_secs),
            };
            scenarios::churn(&run, &args).await?
        }
        Scenario::Worker => return Ok(()),
    };
    println!("{report}");
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Sized while this process has one thread: growing it later, as sockets open, stalls
    // every thread for an RCU grace period, which would show as slow opens of the tool's
    // own making. Up to the open-files limit (`scripts/bench.sh` raises it).
    if let Err(e) = net::grow_fd_table() {
        eprintln!("wxlogin-bench: cannot size the file table: {e}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.clamp(1, 64))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wxlogin-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // Held streams' tasks and a worker's stdin reader need not finish: do not wait for them.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wxlogin-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
