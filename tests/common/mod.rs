//! What every test binary that starts processes shares: free loopback ports, guarded child
//! processes, a private `redis-server`, Sentinel set or Redis Cluster, the `wxlogin sandbox`
//! binary, the example sites and an SSE reader.
//! Included with `#[path]` by `tests/it`, `tests/browser.rs`, `tests/example_site.rs` and
//! `tests/bench_smoke.rs`.

#![allow(dead_code)]

pub mod cluster;
pub mod example_site;
pub mod process;
pub mod redis_server;
pub mod sandbox;
pub mod sentinel;
pub mod sse;

use std::net::TcpListener;

/// A loopback port nobody listens on now (the OS's pick; another process may take it before
/// the caller binds it, which callers that can retry do).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}
