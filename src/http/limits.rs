//! Limits that keep one client, or all of them, from taking the service down: new streams per
//! client (a token bucket), streams open at once per client, a cap on open streams overall
//! (below the open-files limit, so the service answers 503 instead of failing to accept), and
//! the client itself, read from `X-Forwarded-For` only when the peer is a trusted proxy.
//!
//! A client is its IPv4 address, or the network of its IPv6 address (`SSE_IPV6_PREFIX` bits,
//! a /64 by default): one subscriber gets a whole /64 and picks addresses in it at will, so
//! counting single IPv6 addresses would hand each subscriber 2^64 allowances.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::os::fd::{AsFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use dashmap::DashMap;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Who a limit counts: an IPv4 address, or an IPv6 network of `SSE_IPV6_PREFIX` bits. Made
/// only by [`Limits::client`], so a limit is never keyed by a raw address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

/// Why a stream may not be held now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HoldError {
    /// This client holds `SSE_PER_IP_OPEN` streams already.
    #[error("this client holds as many streams as it may")]
    ClientFull,
    /// The service holds `MAX_STREAMS` streams already.
    #[error("the service holds as many streams as it may")]
    ServiceFull,
}

/// The room one open stream takes: a place under `MAX_STREAMS` and one under its client's
/// `SSE_PER_IP_OPEN`. Both are given back when this is dropped, so the stream's body holds it.
pub struct StreamSlot {
    _service: OwnedSemaphorePermit,
    client: Option<ClientSlot>,
}

impl fmt::Debug for StreamSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamSlot")
            .field("client", &self.client.as_ref().map(|c| c.key))
            .finish()
    }
}

/// One of a client's open streams, counted in [`Limits`]' table until dropped.
struct ClientSlot {
    key: ClientKey,
    open: Arc<DashMap<ClientKey, u32>>,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if let Some(mut n) = self.open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
        }
        // Clients with nothing open leave the table: it follows the streams, not the history.
        self.open.remove_if(&self.key, |_, n| *n == 0);
    }
}

/// The limits of one app.
pub struct Limits {
    per_ip: Option<DefaultKeyedRateLimiter<ClientKey>>,
    trusted: Vec<IpNet>,
    /// Bits of an IPv6 address that name a client.
    ipv6_prefix: u8,
    /// Streams one client may hold at once (0: no cap).
    per_client_open: u32,
    /// Open streams by client (only with a cap).
    open: Arc<DashMap<ClientKey, u32>>,
    /// One permit per stream the service may hold: taking one is the check and the count in
    /// one step, so concurrent opens cannot all pass a check before any of them is counted.
    streams: Arc<Semaphore>,
    /// Streams held at once.
    pub max_streams: usize,
}

/// The settings [`Limits`] are made of.
#[derive(Debug, Clone)]
pub struct LimitSettings {
    /// `SSE_PER_IP_PER_MIN`: new streams per client and minute (0: unlimited).
    pub per_client_per_min: u32,
    /// `SSE_PER_IP_OPEN`: streams one client may hold at once (0: unlimited).
    pub per_client_open: u32,
    /// `SSE_IPV6_PREFIX`: bits of an IPv6 address that name a client.
    pub ipv6_prefix: u8,
    /// `TRUSTED_PROXIES`: peers whose `X-Forwarded-For` is believed.
    pub trusted: Vec<IpNet>,
    /// `MAX_STREAMS`: streams held at once.
    pub max_streams: usize,
}

impl Limits {
    /// The limits `settings` ask for.
    pub fn new(settings: LimitSettings) -> Self {
        let max_streams = settings.max_streams.min(Semaphore::MAX_PERMITS);
        Self {
            per_ip: NonZeroU32::new(settings.per_client_per_min)
                .map(|n| RateLimiter::keyed(Quota::per_minute(n))),
            trusted: settings.trusted.into_iter().map(canonical_net).collect(),
            ipv6_prefix: settings.ipv6_prefix.min(128),
            per_client_open: settings.per_client_open,
            open: Arc::new(DashMap::new()),
            streams: Arc::new(Semaphore::new(max_streams)),
            max_streams,
        }
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client's IP: the peer, or, when the peer is a trusted proxy, the right-most address
    /// of `X-Forwarded-For` that is not itself a trusted proxy. IPv4-mapped IPv6 addresses
    /// (a dual-stack listener's view of an IPv4 peer) are read as the IPv4 address they are.
    pub fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.ip().to_canonical();
        if !self.is_trusted(peer) {
            return peer;
        }
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| s.trim().parse::<IpAddr>().ok())
            .map(|ip| ip.to_canonical())
            .collect::<Vec<_>>();
        forwarded
            .into_iter()
            .rev()
            .find(|ip| !self.is_trusted(*ip))
            .unwrap_or(peer)
    }

    /// The client the limits count for a request: see [`Limits::client_ip`] and [`ClientKey`].
    pub fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> ClientKey {
        self.key(self.client_ip(peer, headers))
    }

    fn key(&self, ip: IpAddr) -> ClientKey {
        match ip.to_canonical() {
            IpAddr::V4(v4) => ClientKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(u32::from(128 - self.ipv6_prefix))
                    .unwrap_or(0);
                ClientKey(IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask)))
            }
        }
    }

    /// Takes a token for a new stream from `client`; `Err` says when the next one is due.
    pub fn take_stream_token(&self, client: ClientKey) -> Result<(), Duration> {
        match &self.per_ip {
            None => Ok(()),
            Some(limiter) => limiter
                .check_key(&client)
                .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now())),
        }
    }

    /// Room for one more open stream of `client`, held until the returned slot is dropped.
    pub fn hold_stream(&self, client: ClientKey) -> Result<StreamSlot, HoldError> {
        let client_slot = if self.per_client_open == 0 {
            None
        } else {
            let mut n = self.open.entry(client).or_insert(0);
            if *n >= self.per_client_open {
                return Err(HoldError::ClientFull);
            }
            *n += 1;
            Some(ClientSlot {
                key: client,
                open: Arc::clone(&self.open),
            })
        };
        let service = Arc::clone(&self.streams)
            .try_acquire_owned()
            .map_err(|_| HoldError::ServiceFull)?;
        Ok(StreamSlot {
            _service: service,
            client: client_slot,
        })
    }

    /// Streams held now, by the count of [`StreamSlot`]s.
    pub fn held_streams(&self) -> usize {
        self.max_streams
            .saturating_sub(self.streams.available_permits())
    }

    /// Forgets clients whose bucket is full again (run periodically).
    pub fn purge(&self) {
        if let Some(limiter) = &self.per_ip {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// An IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) as the IPv4 network it is, to match
/// peers, which are read as IPv4 addresses.
fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(IpNet::V4)
                .unwrap_or(net),
            None => net,
        },
        net => net,
    }
}

/// Raises this process's open-files limit (its soft limit) as far as the hard limit allows:
/// every stream is a socket, and the default cap on streams follows from this limit.
pub fn raise_open_files_limit() {
    // Failing leaves the limit as it was; the cap on streams follows whatever it is.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
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
/// each growth waits for an RCU grace period (milliseconds) during which no thread
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

    fn make(per_min: u32, per_client_open: u32, trusted: &[&str], max: usize) -> Limits {
        Limits::new(LimitSettings {
            per_client_per_min: per_min,
            per_client_open,
            ipv6_prefix: 64,
            trusted: trusted.iter().map(|t| t.parse().unwrap()).collect(),
            max_streams: max,
        })
    }

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 5000)
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let limits = make(0, 0, &["10.0.0.0/8"], 10);
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
        let limits = make(3, 0, &[], 10);
        let none = HeaderMap::new();
        let client = limits.client(peer("192.0.2.1"), &none);
        for _ in 0..3 {
            assert!(limits.take_stream_token(client).is_ok());
        }
        let wait = limits.take_stream_token(client).unwrap_err();
        assert!(wait > Duration::from_secs(1) && wait <= Duration::from_secs(20));
        let other = limits.client(peer("192.0.2.2"), &none);
        assert!(limits.take_stream_token(other).is_ok());
    }

    #[test]
    fn an_ipv6_client_is_its_network_and_an_ipv4_mapped_one_its_ipv4_address() {
        let limits = make(0, 0, &[], 10);
        let none = HeaderMap::new();
        let key = |ip: &str| limits.client(peer(ip), &none);
        assert_eq!(
            key("2001:db8:1:2::1"),
            key("2001:db8:1:2:ffff:ffff:ffff:ffff")
        );
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.7"), key("192.0.2.7"));
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
        let exact = Limits::new(LimitSettings {
            per_client_per_min: 0,
            per_client_open: 0,
            ipv6_prefix: 128,
            trusted: vec![],
            max_streams: 10,
        });
        let key = |ip: &str| exact.client(peer(ip), &none);
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:2::2"));
    }

    #[test]
    fn an_ipv4_trusted_proxy_is_recognised_on_a_dual_stack_listener() {
        let limits = make(0, 0, &["127.0.0.1/32"], 10);
        let h = headers("198.51.100.7");
        let mapped = peer("::ffff:127.0.0.1");
        assert_eq!(limits.client_ip(mapped, &h).to_string(), "198.51.100.7");
        // A forwarded IPv4-mapped address is the IPv4 client, and a mapped proxy is skipped.
        let h = headers("::ffff:198.51.100.7, ::ffff:127.0.0.1");
        assert_eq!(limits.client_ip(mapped, &h).to_string(), "198.51.100.7");
        // A proxy listed in its IPv4-mapped form is the same proxy.
        let listed_mapped = make(0, 0, &["::ffff:127.0.0.0/104"], 10);
        let plain = peer("127.0.0.5");
        assert_eq!(
            listed_mapped.client_ip(plain, &h).to_string(),
            "198.51.100.7"
        );
    }

    #[test]
    fn a_client_holds_at_most_its_open_streams_and_gets_them_back_when_they_end() {
        let limits = make(0, 2, &[], 10);
        let none = HeaderMap::new();
        let a = limits.client(peer("2001:db8:1:2::1"), &none);
        let a_too = limits.client(peer("2001:db8:1:2::9"), &none);
        let b = limits.client(peer("192.0.2.1"), &none);
        let first = limits.hold_stream(a).unwrap();
        let _second = limits.hold_stream(a_too).unwrap();
        assert_eq!(limits.hold_stream(a).unwrap_err(), HoldError::ClientFull);
        let _other = limits.hold_stream(b).unwrap();
        drop(first);
        let again = limits.hold_stream(a).unwrap();
        assert_eq!(limits.held_streams(), 3);
        drop((again, _second, _other));
        // The table follows the streams: nothing is left once they end.
        assert!(limits.open.is_empty());
    }

    #[test]
    fn the_service_holds_exactly_max_streams_and_frees_them_as_they_end() {
        let limits = make(0, 0, &[], 3);
        let none = HeaderMap::new();
        let client = limits.client(peer("192.0.2.1"), &none);
        let slots: Vec<_> = (0..3)
            .map(|_| limits.hold_stream(client).unwrap())
            .collect();
        assert_eq!(
            limits.hold_stream(client).unwrap_err(),
            HoldError::ServiceFull
        );
        drop(slots);
        assert_eq!(limits.held_streams(), 0);
        assert!(limits.hold_stream(client).is_ok());
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
