//! A tiny TCP proxy between the browser and wxlogin, so a test can cut the browser's
//! connections from the server side (as a load balancer or a restarted proxy would) and keep
//! new ones waiting for a while.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};

pub struct Proxy {
    pub addr: SocketAddr,
    /// Forwarding tasks, one per connection; aborting one drops both of its sockets.
    connections: Arc<Mutex<Vec<AbortHandle>>>,
    /// `true`: new connections are forwarded; `false`: they are accepted and wait.
    open: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("proxy binds");
        let addr = listener.local_addr().expect("proxy address");
        let connections: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (open, gate) = watch::channel(true);
        let list = connections.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut gate = gate.clone();
                let task = tokio::spawn(async move {
                    if gate.wait_for(|open| *open).await.is_err() {
                        return;
                    }
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                let mut list = list.lock().expect("proxy list");
                list.retain(|t| !t.is_finished());
                list.push(task.abort_handle());
            }
        });
        Self {
            addr,
            connections,
            open,
            accept,
        }
    }

    /// Drops every open connection, both sides: the browser sees its streams end, the server
    /// sees its clients gone.
    pub fn cut(&self) -> usize {
        let list = std::mem::take(&mut *self.connections.lock().expect("proxy list"));
        let live = list.iter().filter(|t| !t.is_finished()).count();
        for task in list {
            task.abort();
        }
        live
    }

    /// New connections wait (accepted, not forwarded) until [`Proxy::release`].
    pub fn hold(&self) {
        self.open.send_replace(false);
    }

    /// Forwards the waiting connections and every new one.
    pub fn release(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
