//! Limits that keep one client, or all of them, from taking the service down: new streams per
//! client IP (a token bucket), a cap on open streams (below the open-files limit, so the
//! service answers 503 instead of failing to accept), and the client IP itself, read from
//! `X-Forwarded-For` only when the peer is a trusted proxy.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::os::fd::{AsFd, RawFd};
use std::time::Duration;

use axum::http::HeaderMap;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;

/// The limits of one app.
pub struct Limits {
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    trusted: Vec<IpNet>,
    /// Streams held at once.
    pub max_streams: usize,
}

impl Limits {
    /// `per_ip_per_min` new streams per IP and minute (0: unlimited), `X-Forwarded-For` from
    /// `trusted` peers, at most `max_streams` open streams.
    pub fn new(per_ip_per_min: u32, trusted: Vec<IpNet>, max_streams: usize) -> Self {
        Self {
            per_ip: NonZeroU32::new(per_ip_per_min)
                .map(|n| RateLimiter::keyed(Quota::per_minute(n))),
            trusted,
            max_streams,
        }
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client's IP: the peer, or, when the peer is a trusted proxy, the right-most address
    /// of `X-Forwarded-For` that is not itself a trusted proxy.
    pub fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.ip();
        if !self.is_trusted(peer) {
            return peer;
        }
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| s.trim().parse::<IpAddr>().ok())
            .collect::<Vec<_>>();
        forwarded
            .into_iter()
            .rev()
            .find(|ip| !self.is_trusted(*ip))
            .unwrap_or(peer)
    }

    /// Takes a token for a new stream from `ip`; `Err` says when the next one is due.
    pub fn take_stream_token(&self, ip: IpAddr) -> Result<(), Duration> {
        match &self.per_ip {
            None => Ok(()),
            Some(limiter) => limiter
                .check_key(&ip)
                .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now())),
        }
    }

    /// Forgets IPs whose bucket is full again (run periodically).
    pub fn purge(&self) {
        if let Some(limiter) = &self.per_ip {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// The open-files limit of this process (its soft limit).
fn open_files_limit() -> usize {
    let limit = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024);
    usize::try_from(limit).unwrap_or(usize::MAX)
}

/// Open files kept for everything but streams: listener, WeChat and Redis connections, logs.
fn fd_reserve(limit: usize) -> usize {
    (limit / 40).max(256)
}

/// The default cap on open streams: the open-files limit less a reserve for everything else.
pub fn default_max_streams() -> usize {
    let limit = open_files_limit();
    limit.saturating_sub(fd_reserve(limit)).max(1)
}

/// The largest file table [`reserve_fd_table`] makes: 512 KiB of kernel memory. Past it the
/// table still grows, a few more times at most.
pub const FD_TABLE_MAX: usize = 65_536;

/// Grows this process's table of open files now, to hold `max_streams` streams and the
/// reserve, rather than while streams arrive.
///
/// Linux doubles the table as descriptors are opened, and in a process with several threads
/// each growth waits for an RCU grace period (10-30 ms measured here) during which no thread
/// of the process can accept a connection. A server filling with streams stalled at 1,024,
/// 2,048, 4,096, ... open sockets, which was most of the tail of the time to a first event
/// (BENCHMARKS.md). A descriptor duplicated to the table's last slot, then closed, leaves the
/// table at that size: it never shrinks. `fd` is any open descriptor (the listener).
pub fn reserve_fd_table(fd: impl AsFd, max_streams: usize) -> std::io::Result<()> {
    let limit = open_files_limit();
    let wanted = max_streams
        .saturating_add(fd_reserve(limit))
        .min(limit)
        .min(FD_TABLE_MAX);
    let last = RawFd::try_from(wanted.saturating_sub(1)).unwrap_or(RawFd::MAX);
    rustix::io::fcntl_dupfd_cloexec(fd, last)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", xff.parse().unwrap());
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let limits = Limits::new(0, vec!["10.0.0.0/8".parse().unwrap()], 10);
        let proxy: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let stranger: SocketAddr = "203.0.113.9:5000".parse().unwrap();
        let h = headers("198.51.100.7, 10.9.9.9");
        assert_eq!(limits.client_ip(proxy, &h).to_string(), "198.51.100.7");
        assert_eq!(limits.client_ip(stranger, &h).to_string(), "203.0.113.9");
        assert_eq!(
            limits.client_ip(proxy, &headers("garbage")).to_string(),
            "10.1.2.3"
        );
    }

    #[test]
    fn the_bucket_holds_the_minutes_allowance() {
        let limits = Limits::new(3, vec![], 10);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert!(limits.take_stream_token(ip).is_ok());
        }
        let wait = limits.take_stream_token(ip).unwrap_err();
        assert!(wait > Duration::from_secs(1) && wait <= Duration::from_secs(20));
        assert!(
            limits
                .take_stream_token("192.0.2.2".parse().unwrap())
                .is_ok()
        );
    }

    #[test]
    fn the_file_table_is_sized_at_once() {
        let table = || -> usize {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            let size = status.lines().find_map(|l| l.strip_prefix("FDSize:"));
            size.unwrap().trim().parse().unwrap()
        };
        let before = table();
        let limit = open_files_limit();
        // More streams than the table holds now: a test process holds a few dozen descriptors.
        let streams = before * 4;
        let wanted = (streams + fd_reserve(limit)).min(limit).min(FD_TABLE_MAX);
        if wanted <= before {
            eprintln!(
                "the open-files limit ({limit}) is the table's size already: nothing to show"
            );
            return;
        }
        let any = std::fs::File::open("/proc/self/status").unwrap();
        reserve_fd_table(&any, streams).unwrap();
        assert!(table() >= wanted, "{} < {wanted}", table());
    }

    #[test]
    fn the_default_cap_leaves_a_reserve_below_the_open_files_limit() {
        let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
        let max = default_max_streams();
        assert!((max as u64) < soft);
        assert!(max as u64 >= soft * 9 / 10 - 256);
    }
}
