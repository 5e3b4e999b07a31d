//! The accept loop: each connection served by hyper's HTTP/1 connection, with graceful
//! shutdown.
//!
//! Not `axum::serve`: its connection builder tells HTTP/1 from HTTP/2 by first reading up to
//! 24 bytes on their own, so hyper's first read of every connection falls short of a whole
//! request head, and the second read grows hyper's read buffer from 8 to 16 KiB. A stream is
//! held for minutes and that buffer is the largest part of its memory (BENCHMARKS.md).
//! wxlogin speaks HTTP/1.1 only: browsers reach it through a proxy or over plain HTTP, where
//! they never speak HTTP/2.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use futures_util::FutureExt as _;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt as _;

/// How long to wait after an accept error that is not about one connection (out of file
/// descriptors, most likely) before accepting again, rather than spinning.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Errors of one connection that went away before it was accepted: accept the next one.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Serves `router` on `listener` until `shutdown` completes; then stops accepting, lets each
/// connection finish its request in flight (closing idle keep-alive connections), and returns
/// once all are closed. Handlers see the peer as `ConnectInfo<SocketAddr>`. A connection
/// that sends no request head for 30 s is closed (hyper's header-read timeout), idle
/// keep-alive connections included.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let mut http = http1::Builder::new();
    // A client has 30 s (hyper's default) to send a request head: needs a timer.
    http.timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (tcp, peer): (_, SocketAddr) = match accepted {
            Ok(pair) => pair,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                tracing::error!(error = %e, "cannot accept connections; pausing for a second");
                tokio::select! {
                    () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                    () = &mut shutdown => break,
                }
            }
        };
        // Small SSE writes must leave at once, not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        let service = router
            .clone()
            .map_request(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request.map(Body::new)
            });
        let connection = graceful
            .watch(http.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(service)));
        // Mapped, not awaited in an `async` block: such a block holds the connection twice
        // (as its capture and as the future it awaits), and a held stream's task would
        // carry 1.7 KB where 0.9 KB does (BENCHMARKS.md).
        tokio::spawn(connection.map(|ended| {
            if let Err(e) = ended {
                tracing::trace!(error = %e, "connection ended with an error");
            }
        }));
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
