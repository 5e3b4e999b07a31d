//! Spreading held streams over processes.
//!
//! One process may hold at most `ulimit -Hn` open files (20,000 here), so a run that holds
//! more streams than `--per-process` re-executes this binary as `worker` processes. Each
//! worker reads its job as one JSON line on stdin, opens its share of the streams, prints
//! `{"Ready": …}`, waits for `go` on stdin (the parent measures the server meanwhile), does
//! the second phase (let go, or scan), prints `{"Done": …}` and exits. A worker whose stdin
//! closes (the parent died) lets its streams go and exits.

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::net::{BenchError, timed_out};
use crate::stats::Proc;
use crate::streams::{Common, Ctx, Holding, OpenReport, ScanReport, open_streams, scan_held};

/// The most worker processes one run starts.
pub const MAX_WORKERS: usize = 16;

/// What to do with the streams once they are open.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub enum Job {
    /// Hold them, then let them go.
    Hold,
    /// Scan each once at `rate` per second (split over the processes); streams without a
    /// result `settle_ms` after the last scan are lost.
    Scan {
        /// Callbacks per second, over all processes.
        rate: f64,
        /// Grace after the last callback.
        settle_ms: u64,
    },
}

/// One worker's share.
#[derive(Debug, Serialize, Deserialize)]
struct WorkerSpec {
    common: Common,
    job: Job,
    /// The run's number of the worker's first stream: which target holds each stream
    /// follows from it (see `Ctx`).
    first: usize,
    n: usize,
    open_rate: f64,
}

/// The second phase's outcome.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Finish {
    /// Streams that ended before they were let go or scanned.
    pub ended_early: u64,
    /// The scan, for [`Job::Scan`].
    pub scan: Option<ScanReport>,
    /// CPU seconds the worker processes used (0 when run in-process).
    pub workers_cpu_s: f64,
}

impl Finish {
    fn merge(&mut self, other: Finish) {
        self.ended_early += other.ended_early;
        self.workers_cpu_s += other.workers_cpu_s;
        match (&mut self.scan, other.scan) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (None, theirs) => self.scan = theirs,
            (Some(_), None) => {}
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
enum WorkerMsg {
    Ready(OpenReport),
    Done(Finish),
}

async fn second_phase(ctx: &Arc<Ctx>, holding: Holding, job: Job) -> Result<Finish, BenchError> {
    match job {
        Job::Hold => Ok(Finish {
            ended_early: holding.release().await,
            ..Finish::default()
        }),
        Job::Scan { rate, settle_ms } => {
            let scan = scan_held(ctx, holding, rate, Duration::from_millis(settle_ms)).await?;
            Ok(Finish {
                ended_early: scan.ended_early,
                scan: Some(scan),
                ..Finish::default()
            })
        }
    }
}

/// Streams held by this process or by workers, between the two phases.
pub enum Split {
    /// In this process.
    Local(Arc<Ctx>, Holding),
    /// In worker processes.
    Workers(Vec<Worker>),
}

impl Split {
    /// Worker processes (1 when in-process).
    pub fn processes(&self) -> usize {
        match self {
            Self::Local(..) => 1,
            Self::Workers(w) => w.len(),
        }
    }
}

/// Opens `n` streams at `open_rate` (per second, over all processes; 0 = all at once) in this
/// process, or over as many workers as `per_process` requires.
pub async fn open_split(
    common: &Common,
    ctx: &Arc<Ctx>,
    job: Job,
    n: usize,
    open_rate: f64,
    per_process: usize,
    within: Duration,
) -> Result<(Split, OpenReport), BenchError> {
    let processes = n.div_ceil(per_process.max(1)).max(1);
    if processes == 1 {
        let (holding, report) = tokio::time::timeout(within, open_streams(ctx, 0, n, open_rate))
            .await
            .map_err(|_| timed_out("opening the streams", within))?;
        return Ok((Split::Local(Arc::clone(ctx), holding), report));
    }
    if processes > MAX_WORKERS {
        return Err(BenchError::new(
            "workers",
            format!(
                "{n} streams at {per_process} per process need {processes} processes \
                 (at most {MAX_WORKERS}): raise `ulimit -n` or lower N"
            ),
        ));
    }
    let share = |w: usize| n / processes + usize::from(w < n % processes);
    let mut workers = Vec::with_capacity(processes);
    let mut first = 0;
    for w in 0..processes {
        let job = match job {
            Job::Hold => Job::Hold,
            Job::Scan { rate, settle_ms } => Job::Scan {
                rate: rate / processes as f64,
                settle_ms,
            },
        };
        workers.push(Worker::spawn(&WorkerSpec {
            common: common.clone(),
            job,
            first,
            n: share(w),
            open_rate: open_rate / processes as f64,
        })?);
        first += share(w);
    }
    let mut report = OpenReport::default();
    for worker in &mut workers {
        match worker.recv(within).await? {
            WorkerMsg::Ready(r) => report.merge(r),
            WorkerMsg::Done(_) => {
                return Err(BenchError::new("workers", "a worker finished early"));
            }
        }
    }
    Ok((Split::Workers(workers), report))
}

/// Runs the second phase of `job` on the streams of `split`.
pub async fn finish_split(split: Split, job: Job, within: Duration) -> Result<Finish, BenchError> {
    match split {
        Split::Local(ctx, holding) => {
            tokio::time::timeout(within, second_phase(&ctx, holding, job))
                .await
                .map_err(|_| timed_out("the second phase", within))?
        }
        Split::Workers(mut workers) => {
            for worker in &mut workers {
                worker.go()?;
            }
            let mut finish = Finish::default();
            for worker in &mut workers {
                match worker.recv(within).await? {
                    WorkerMsg::Done(f) => finish.merge(f),
                    WorkerMsg::Ready(_) => {
                        return Err(BenchError::new("workers", "a worker answered out of turn"));
                    }
                }
            }
            Ok(finish)
        }
    }
}

/// A worker process; killed if still running when dropped.
pub struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Worker {
    fn spawn(spec: &WorkerSpec) -> Result<Self, BenchError> {
        let exe = std::env::current_exe().map_err(|e| BenchError::new("workers", e))?;
        let mut child = Command::new(exe)
            .arg("worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| BenchError::new("workers", e))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| BenchError::new("workers", "no stdout"))?;
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut worker = Self {
            stdin: child.stdin.take(),
            child,
            lines,
        };
        // The spec (with the tokens) goes over stdin, not the command line.
        let spec = serde_json::to_string(spec).map_err(|e| BenchError::new("workers", e))?;
        worker.send_line(&spec)?;
        Ok(worker)
    }

    fn send_line(&mut self, line: &str) -> Result<(), BenchError> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| BenchError::new("workers", "stdin closed"))?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .map_err(|e| BenchError::new("workers", e))
    }

    fn go(&mut self) -> Result<(), BenchError> {
        self.send_line("go")
    }

    async fn recv(&mut self, within: Duration) -> Result<WorkerMsg, BenchError> {
        let line = tokio::time::timeout(within, self.lines.recv())
            .await
            .map_err(|_| timed_out("waiting for a worker", within))?
            .ok_or_else(|| BenchError::new("workers", "a worker exited early"))?;
        serde_json::from_str(&line)
            .map_err(|e| BenchError::new("workers", format!("unreadable worker line: {e}")))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

async fn stdin_line() -> Result<String, BenchError> {
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await
    .map_err(|e| BenchError::new("worker", e))?
    .map_err(|e| BenchError::new("worker", e))
}

fn emit(msg: &WorkerMsg) -> Result<(), BenchError> {
    let line = serde_json::to_string(msg).map_err(|e| BenchError::new("worker", e))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| BenchError::new("worker", e))
}

/// `wxlogin-bench worker`: one worker's life (see the module's doc).
pub async fn worker_main() -> Result<(), BenchError> {
    let spec: WorkerSpec = serde_json::from_str(&stdin_line().await?)
        .map_err(|e| BenchError::new("worker", format!("bad spec: {e}")))?;
    let ctx = Ctx::new(&spec.common)?;
    let (holding, report) = open_streams(&ctx, spec.first, spec.n, spec.open_rate).await;
    emit(&WorkerMsg::Ready(report))?;
    if stdin_line().await?.trim() != "go" {
        holding.release().await;
        return Ok(());
    }
    let mut finish = second_phase(&ctx, holding, spec.job).await?;
    finish.workers_cpu_s = Proc::me().cpu_secs().unwrap_or_default();
    emit(&WorkerMsg::Done(finish))
}
