//! What every test binary that starts processes shares: free loopback ports and a private
//! `redis-server`. Included with `#[path]` by `tests/it` and `tests/bench_smoke.rs`.

#![allow(dead_code)]

pub mod redis_server;

use std::net::TcpListener;

/// A loopback port nobody listens on now (the OS's pick; another process may take it before
/// the caller binds it, which callers that can retry do).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}
