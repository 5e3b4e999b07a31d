//! Figures: latency summaries, error tallies, and what `/proc` says about a process.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::net::BenchError;

/// The most distinct error kinds a report lists; the rest are counted under `other`.
const MAX_ERROR_KINDS: usize = 16;

/// Percentiles of a set of durations, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Samples.
    pub count: usize,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

/// Summarises samples given in microseconds (nearest-rank percentiles).
pub fn summarize(mut micros: Vec<u64>) -> Summary {
    micros.sort_unstable();
    let n = micros.len();
    let at = |p: f64| -> f64 {
        if n == 0 {
            return 0.0;
        }
        let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
        micros[rank - 1] as f64 / 1000.0
    };
    let mean = if n == 0 {
        0.0
    } else {
        micros.iter().sum::<u64>() as f64 / n as f64 / 1000.0
    };
    Summary {
        count: n,
        p50_ms: at(0.50),
        p90_ms: at(0.90),
        p99_ms: at(0.99),
        p999_ms: at(0.999),
        max_ms: at(1.0),
        mean_ms: round3(mean),
    }
}

/// A duration in microseconds, saturating.
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Rounds to three decimals (for the JSON).
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Errors counted by kind.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Tally(pub BTreeMap<String, u64>);

impl Tally {
    /// Counts one error.
    pub fn add(&mut self, e: &BenchError) {
        self.add_key(e.tally_key(), 1);
    }

    fn add_key(&mut self, key: String, n: u64) {
        let key = if self.0.len() >= MAX_ERROR_KINDS && !self.0.contains_key(&key) {
            "other".to_owned()
        } else {
            key
        };
        *self.0.entry(key).or_default() += n;
    }

    /// Adds another tally's counts.
    pub fn merge(&mut self, other: Tally) {
        for (k, n) in other.0 {
            self.add_key(k, n);
        }
    }

    /// Errors counted.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

/// Reads a process's figures from `/proc` (`None` when it is gone or unreadable).
#[derive(Debug, Clone, Copy)]
pub struct Proc {
    pid: Option<u32>,
}

impl Proc {
    /// The process `pid`; `None` measures nothing.
    pub fn new(pid: Option<u32>) -> Self {
        Self { pid }
    }

    /// This process.
    pub fn me() -> Self {
        Self {
            pid: Some(std::process::id()),
        }
    }

    /// Resident memory (`VmRSS`), KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// CPU time used so far (user + system), seconds.
    pub fn cpu_secs(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid?)).ok()?;
        // Fields after the command name (which may hold spaces): state is field 3, utime 14,
        // stime 15, in clock ticks of 1/100 s (USER_HZ on Linux).
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        Some((utime + stime) / 100.0)
    }

    /// Open file descriptors.
    pub fn fds(&self) -> Option<usize> {
        Some(
            std::fs::read_dir(format!("/proc/{}/fd", self.pid?))
                .ok()?
                .count(),
        )
    }
}

/// The server's processes (`--server-pid`, one per instance): each figure is the sum over
/// them, `None` when any of them cannot be read (a missing instance would make the sum a
/// silent undercount), and `None` when no PID was given.
#[derive(Debug, Clone, Default)]
pub struct Servers(Vec<Proc>);

impl Servers {
    /// The processes `pids` (none: measure nothing).
    pub fn new(pids: &[u32]) -> Self {
        Self(pids.iter().map(|&pid| Proc::new(Some(pid))).collect())
    }

    fn sum<T: std::iter::Sum<T>>(&self, each: impl Fn(&Proc) -> Option<T>) -> Option<T> {
        if self.0.is_empty() {
            return None;
        }
        self.0.iter().map(each).sum()
    }

    /// Resident memory, KiB, summed.
    pub fn rss_kib(&self) -> Option<u64> {
        self.sum(Proc::rss_kib)
    }

    /// CPU time used so far, seconds, summed.
    pub fn cpu_secs(&self) -> Option<f64> {
        self.sum(Proc::cpu_secs)
    }

    /// Open file descriptors, summed.
    pub fn fds(&self) -> Option<usize> {
        self.sum(Proc::fds)
    }
}

/// CPU time the whole machine spent busy so far (all cores: user, nice, system, irq,
/// softirq, steal), seconds. Compared with the server's and the tool's own, it shows how much
/// other processes took during a phase: the machine is shared.
pub fn machine_busy_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = cpu
        .split_whitespace()
        .map(|t| t.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is counted in user).
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum();
    Some(busy as f64 / 100.0)
}

/// CPU seconds used between two readings.
pub fn cpu_delta(before: Option<f64>, after: Option<f64>) -> Option<f64> {
    Some(round3(after? - before?))
}

/// The kernel's count of connections dropped because a listen queue was full
/// (`TcpExt: ListenOverflows` in `/proc/net/netstat`; the whole network namespace). A client
/// whose SYN was dropped retries it after 1 s, 3 s, ...
pub fn listen_overflows() -> Option<u64> {
    let netstat = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut tcp_ext = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (tcp_ext.next()?, tcp_ext.next()?);
    let i = names
        .split_whitespace()
        .position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// How much a counter grew between two readings.
pub fn delta(before: Option<u64>, after: Option<u64>) -> Option<u64> {
    Some(after?.saturating_sub(before?))
}

/// CPU time over a phase: the server's, this tool's (plus its workers'), the whole machine's,
/// and what other processes took.
pub struct CpuWatch {
    server: Servers,
    server0: Option<f64>,
    me0: Option<f64>,
    machine0: Option<f64>,
    started: std::time::Instant,
}

impl CpuWatch {
    /// Starts watching.
    pub fn start(server: &Servers) -> Self {
        Self {
            server: server.clone(),
            server0: server.cpu_secs(),
            me0: Proc::me().cpu_secs(),
            machine0: machine_busy_secs(),
            started: std::time::Instant::now(),
        }
    }

    /// The figures so far, as JSON; `workers_cpu_s` is what worker processes reported.
    pub fn report(&self, workers_cpu_s: f64) -> serde_json::Value {
        let server = cpu_delta(self.server0, self.server.cpu_secs());
        let client = cpu_delta(self.me0, Proc::me().cpu_secs()).map(|c| round3(c + workers_cpu_s));
        let machine = cpu_delta(self.machine0, machine_busy_secs());
        let other = match (machine, server, client) {
            (Some(m), Some(s), Some(c)) => Some(round3((m - s - c).max(0.0))),
            _ => None,
        };
        serde_json::json!({
            "wall_s": round3(self.started.elapsed().as_secs_f64()),
            "server_s": server,
            "client_s": client,
            "machine_busy_s": machine,
            "other_s": other,
        })
    }
}

/// This process's soft limit of open files.
pub fn nofile_soft_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let s = summarize((1..=1000).map(|i| i * 1000).collect());
        assert_eq!(s.count, 1000);
        assert!((s.p50_ms - 500.0).abs() < f64::EPSILON);
        assert!((s.p99_ms - 990.0).abs() < f64::EPSILON);
        assert!((s.max_ms - 1000.0).abs() < f64::EPSILON);
        assert_eq!(summarize(Vec::new()).count, 0);
    }

    #[test]
    fn this_process_can_be_measured() {
        let me = Proc::me();
        assert!(me.rss_kib().is_some_and(|k| k > 0));
        assert!(me.cpu_secs().is_some());
        assert!(me.fds().is_some_and(|n| n > 0));
        let twice = Servers::new(&[std::process::id(), std::process::id()]);
        assert!(twice.fds().is_some_and(|n| n >= 2));
        assert_eq!(Servers::new(&[]).rss_kib(), None);
        assert!(listen_overflows().is_some());
        assert!(machine_busy_secs().is_some_and(|s| s > 0.0));
    }
}
