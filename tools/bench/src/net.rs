//! The client side: loopback HTTP/1.1 over one hand-held hyper connection per socket.
//!
//! Every socket is bound to one of several 127.0.0.x source addresses before it connects, so
//! one run is not limited to the ~28k ephemeral ports of a single address (connections closed
//! by the client linger in TIME_WAIT on their port for a minute). Connections are kept alive:
//! the [`Pool`] hands an idle one out again once its previous response was read to the end.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::RawFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1;
use hyper::header::{ACCEPT, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpSocket;
use tokio::task::JoinHandle;

/// The largest file table [`grow_fd_table`] makes: 512 KiB of kernel memory (the server's
/// bound too).
const FD_TABLE_MAX: usize = 65_536;

/// Grows this process's table of open files to the open-files limit (at most
/// [`FD_TABLE_MAX`] slots) now, rather than while sockets open.
///
/// Linux doubles the table as descriptors are opened, and in a process with several threads
/// each growth waits for an RCU grace period during which no thread of the process runs a
/// system call on a file: opens would stall at 1,024, 2,048, 4,096, ... sockets. A descriptor
/// duplicated to the table's last slot, then closed, leaves the table at that size.
pub fn grow_fd_table() -> std::io::Result<()> {
    let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    let slots = usize::try_from(soft)
        .unwrap_or(usize::MAX)
        .min(FD_TABLE_MAX);
    let last = RawFd::try_from(slots.saturating_sub(1)).unwrap_or(RawFd::MAX);
    rustix::io::fcntl_dupfd_cloexec(std::io::stderr(), last)?;
    Ok(())
}

/// The most source addresses a run spreads its sockets over.
pub const MAX_SOURCES: usize = 64;

/// What went wrong on the client side, grouped by `kind` for the report.
#[derive(Debug, Clone)]
pub struct BenchError {
    /// A short category (`connect`, `request`, `status 500`, `timeout`, ...).
    pub kind: &'static str,
    /// The cause.
    pub detail: String,
}

impl BenchError {
    /// An error of `kind` caused by `detail`.
    pub fn new(kind: &'static str, detail: impl fmt::Display) -> Self {
        Self {
            kind,
            detail: detail.to_string(),
        }
    }

    /// The key under which the report counts this error: the kind and a short cause.
    pub fn tally_key(&self) -> String {
        let mut detail = self.detail.clone();
        detail.truncate(80);
        format!("{}: {detail}", self.kind)
    }
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

impl std::error::Error for BenchError {}

/// A loopback target: the only kind the tool drives.
#[derive(Debug, Clone)]
pub struct Target {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The `Host` header.
    pub host: String,
}

impl Target {
    /// Parses `http://127.0.0.x:port` (a trailing path is ignored; `localhost` means
    /// 127.0.0.1). Anything outside 127.0.0.0/8 is refused: this tool only loads the machine
    /// it runs on.
    pub fn parse(url: &str) -> Result<Self, BenchError> {
        let rest = url.strip_prefix("http://").unwrap_or(url);
        if rest.contains("://") {
            return Err(BenchError::new(
                "target",
                format!("{url}: only plain http:// loopback targets are supported"),
            ));
        }
        let authority = rest.split('/').next().unwrap_or_default();
        let authority = match authority.strip_prefix("localhost:") {
            Some(port) => format!("127.0.0.1:{port}"),
            None => authority.to_owned(),
        };
        let addr: SocketAddr = authority.parse().map_err(|_| {
            BenchError::new("target", format!("{url}: expected http://127.0.0.1:PORT"))
        })?;
        let loopback = match addr.ip() {
            IpAddr::V4(ip) => ip.octets()[0] == 127,
            IpAddr::V6(_) => false,
        };
        if !loopback {
            return Err(BenchError::new(
                "target",
                format!("{url}: refused, only 127.0.0.0/8 targets may be loaded"),
            ));
        }
        Ok(Self {
            host: addr.to_string(),
            addr,
        })
    }
}

/// Aborts a spawned task when dropped: a connection's I/O task ends with its owner.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The sockets' side of the run: the target and the source addresses to spread over.
pub struct Net {
    target: Target,
    sources: Vec<Ipv4Addr>,
    next: AtomicUsize,
}

/// One HTTP/1.1 connection (its I/O runs on its own task, aborted when this is dropped).
pub struct Conn {
    sender: http1::SendRequest<Full<Bytes>>,
    _io: AbortOnDrop,
}

impl Net {
    /// Sockets will come from 127.0.0.1 ..= 127.0.0.`sources`.
    pub fn new(target: Target, sources: usize) -> Self {
        let sources = sources.clamp(1, MAX_SOURCES);
        let sources = (1..=sources)
            .map(|i| Ipv4Addr::new(127, 0, 0, u8::try_from(i).unwrap_or(1)))
            .collect();
        Self {
            target,
            sources,
            // Start at a per-process offset so worker processes do not all begin on .1.
            next: AtomicUsize::new(std::process::id() as usize),
        }
    }

    /// The target's address.
    pub fn addr(&self) -> SocketAddr {
        self.target.addr
    }

    /// Opens a new connection from the next source address.
    pub async fn connect(&self) -> Result<Conn, BenchError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.sources.len();
        let source = SocketAddr::new(IpAddr::V4(self.sources[i]), 0);
        let socket = TcpSocket::new_v4().map_err(|e| BenchError::new("socket", e))?;
        socket
            .bind(source)
            .map_err(|e| BenchError::new("bind", format!("{source}: {e}")))?;
        let stream = socket
            .connect(self.target.addr)
            .await
            .map_err(|e| BenchError::new("connect", e))?;
        stream
            .set_nodelay(true)
            .map_err(|e| BenchError::new("socket", e))?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| BenchError::new("handshake", e))?;
        let io = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn {
            sender,
            _io: AbortOnDrop(io),
        })
    }

    /// A `GET` of `path_and_query`.
    pub fn get(&self, path_and_query: &str) -> Result<Request<Full<Bytes>>, BenchError> {
        Request::builder()
            .method(Method::GET)
            .uri(path_and_query)
            .header(HOST, &self.target.host)
            .header(ACCEPT, "*/*")
            .body(Full::new(Bytes::new()))
            .map_err(|e| BenchError::new("request", e))
    }

    /// A `POST` of an XML body, as WeChat sends callbacks.
    pub fn post_xml(
        &self,
        path_and_query: &str,
        xml: String,
    ) -> Result<Request<Full<Bytes>>, BenchError> {
        Request::builder()
            .method(Method::POST)
            .uri(path_and_query)
            .header(HOST, &self.target.host)
            .header(CONTENT_TYPE, "text/xml")
            .body(Full::new(Bytes::from(xml)))
            .map_err(|e| BenchError::new("request", e))
    }
}

impl Conn {
    /// Sends `req` once the connection is free (the previous response read to its end).
    pub async fn send(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, BenchError> {
        self.sender
            .ready()
            .await
            .map_err(|e| BenchError::new("connection", e))?;
        self.sender
            .send_request(req)
            .await
            .map_err(|e| BenchError::new("request", e))
    }

    /// Whether the connection can carry another request.
    pub fn reusable(&self) -> bool {
        !self.sender.is_closed()
    }
}

/// Idle keep-alive connections, handed out one request (or stream) at a time.
pub struct Pool {
    idle: Mutex<Vec<Conn>>,
}

impl Pool {
    /// An empty pool.
    pub fn new() -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Conn>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An idle connection, or a new one.
    pub async fn get(&self, net: &Net) -> Result<Conn, BenchError> {
        loop {
            let conn = self.idle().pop();
            match conn {
                Some(conn) if conn.reusable() => return Ok(conn),
                Some(_) => continue,
                None => return net.connect().await,
            }
        }
    }

    /// Gives a connection back (only call after its response was read to the end).
    pub fn put(&self, conn: Conn) {
        if conn.reusable() {
            self.idle().push(conn);
        }
    }

    /// Opens `n` connections ahead, so a timed phase does not pay for connecting.
    pub async fn warm(&self, net: &Net, n: usize) -> Result<(), BenchError> {
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            conns.push(net.connect().await?);
        }
        self.idle().extend(conns);
        Ok(())
    }

    /// Sends `req` on a pooled connection and reads the whole (small) answer.
    pub async fn fetch(
        &self,
        net: &Net,
        req: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Bytes), BenchError> {
        let mut conn = self.get(net).await?;
        let (status, body) = read_all(&mut conn, req).await?;
        self.put(conn);
        Ok((status, body))
    }
}

/// Sends `req` on `conn` and reads the whole answer.
pub async fn read_all(
    conn: &mut Conn,
    req: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes), BenchError> {
    let response = conn.send(req).await?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| BenchError::new("body", e))?
        .to_bytes();
    Ok((status, body))
}

/// An open `text/event-stream` response.
pub struct SseStream {
    body: Incoming,
    buf: Vec<u8>,
    conn: Conn,
}

/// What `GET /sse` answered.
pub enum SseOpen {
    /// 200: the stream.
    Stream(SseStream),
    /// Anything else (503 when no QR code can be had), with the connection for reuse.
    Refused(StatusCode, Conn),
}

/// Sends `GET path_and_query` on `conn` and returns the event stream.
pub async fn open_sse(
    net: &Net,
    mut conn: Conn,
    path_and_query: &str,
) -> Result<SseOpen, BenchError> {
    let mut req = net.get(path_and_query)?;
    req.headers_mut().insert(
        ACCEPT,
        hyper::header::HeaderValue::from_static("text/event-stream"),
    );
    let response = conn.send(req).await?;
    let status = response.status();
    if status != StatusCode::OK {
        // Read the (short) refusal to its end so the connection can be reused.
        let _ = response.into_body().collect().await;
        return Ok(SseOpen::Refused(status, conn));
    }
    Ok(SseOpen::Stream(SseStream {
        body: response.into_body(),
        buf: Vec::with_capacity(512),
        conn,
    }))
}

impl SseStream {
    /// The data of the next event (keep-alive comments are skipped), or `None` when the
    /// server ended the stream.
    pub async fn next_event(&mut self) -> Result<Option<String>, BenchError> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                if let Some(data) = event_data(&block)? {
                    return Ok(Some(data));
                }
                continue;
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(BenchError::new("stream", e)),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// The connection, for reuse once the stream has ended (`next_event` gave `None`).
    pub fn into_conn(self) -> Conn {
        self.conn
    }
}

/// The `data:` of one event block; `None` for a block of comments only.
fn event_data(block: &[u8]) -> Result<Option<String>, BenchError> {
    let text = std::str::from_utf8(block).map_err(|e| BenchError::new("stream", e))?;
    let mut data: Option<String> = None;
    for line in text.lines() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if let Some(value) = line.strip_prefix("data:") {
            let value = value.strip_prefix(' ').unwrap_or(value);
            match data.as_mut() {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_owned()),
            }
        }
    }
    Ok(data)
}

/// A timeout as a [`BenchError`].
pub fn timed_out(what: &'static str, after: Duration) -> BenchError {
    BenchError::new("timeout", format!("{what} after {} ms", after.as_millis()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_are_accepted() {
        assert!(Target::parse("http://127.0.0.1:8000").is_ok());
        assert!(Target::parse("127.0.0.9:80/").is_ok());
        assert_eq!(
            Target::parse("http://localhost:81")
                .map(|t| t.addr.to_string())
                .ok(),
            Some("127.0.0.1:81".to_owned())
        );
        assert!(Target::parse("http://10.0.0.1:8000").is_err());
        assert!(Target::parse("http://[::1]:8000").is_err());
        assert!(Target::parse("https://127.0.0.1:8000").is_err());
        assert!(Target::parse("http://example.com:80").is_err());
    }

    #[test]
    fn event_blocks_yield_their_data_and_comments_none() {
        assert_eq!(
            event_data(b"data: {\"a\":1}\nid: x.0\n\n").ok().flatten(),
            Some("{\"a\":1}".to_owned())
        );
        assert_eq!(event_data(b":\n\n").ok().flatten(), None);
    }
}
