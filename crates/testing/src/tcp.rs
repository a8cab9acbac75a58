//! Raw TCP upstreams: one that answers after the peer's half-close, one
//! that speaks first.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::tasks::Tasks;

/// Binds `127.0.0.1:0` and runs `serve` for each accepted connection.
async fn listen<F, Fut>(what: &str, serve: F) -> (SocketAddr, Tasks, Arc<AtomicU64>)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap_or_else(|e| panic!("{what}: bind 127.0.0.1:0: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("{what}: local_addr: {e}"));
    let tasks = Tasks::default();
    let count = Arc::new(AtomicU64::new(0));
    let (accept_tasks, accept_count) = (tasks.clone(), count.clone());
    tasks.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            accept_count.fetch_add(1, Ordering::SeqCst);
            let _ = stream.set_nodelay(true);
            let conn = serve(stream);
            accept_tasks.spawn(async move {
                let _ = conn.await;
            });
        }
    });
    (addr, tasks, count)
}

/// For each connection: reads until the peer half-closes (EOF), then writes
/// `received <N> bytes: <first 64 bytes, lossy UTF-8>` and closes. A reply
/// proves the half-close reached the server; the client seeing EOF after it
/// proves the server's close came back. Stops when dropped.
pub struct TcpEchoServer {
    addr: SocketAddr,
    tasks: Tasks,
    connections: Arc<AtomicU64>,
}

impl TcpEchoServer {
    /// Starts on `127.0.0.1:0`.
    ///
    /// # Panics
    /// If the listener cannot be bound.
    pub async fn start() -> TcpEchoServer {
        let (addr, tasks, connections) =
            listen("tcp echo server", |mut stream: TcpStream| async move {
                let mut head = Vec::with_capacity(64);
                let mut total = 0usize;
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = stream.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    let take = n.min(64 - head.len());
                    head.extend_from_slice(&buf[..take]);
                    total += n;
                }
                let reply = format!("received {total} bytes: {}", String::from_utf8_lossy(&head));
                stream.write_all(reply.as_bytes()).await?;
                stream.shutdown().await
            })
            .await;
        TcpEchoServer {
            addr,
            tasks,
            connections,
        }
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many connections were accepted.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }

    /// Stops the server and waits until its tasks have ended.
    pub async fn shutdown(self) {
        self.tasks.shutdown().await;
    }
}

impl Drop for TcpEchoServer {
    fn drop(&mut self) {
        self.tasks.close();
    }
}

/// A server-first protocol (like SMTP or MySQL): writes the banner as soon
/// as it accepts, before reading anything, then echoes what it reads; on
/// the peer's EOF it closes its side too. Stops when dropped.
pub struct BannerServer {
    addr: SocketAddr,
    tasks: Tasks,
    connections: Arc<AtomicU64>,
}

impl BannerServer {
    /// Starts on `127.0.0.1:0`.
    ///
    /// # Panics
    /// If the listener cannot be bound.
    pub async fn start(banner: &[u8]) -> BannerServer {
        let banner: Arc<[u8]> = banner.into();
        let (addr, tasks, connections) = listen("banner server", move |mut stream: TcpStream| {
            let banner = banner.clone();
            async move {
                stream.write_all(&banner).await?;
                let (mut rd, mut wr) = stream.split();
                tokio::io::copy(&mut rd, &mut wr).await?;
                wr.shutdown().await
            }
        })
        .await;
        BannerServer {
            addr,
            tasks,
            connections,
        }
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many connections were accepted.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }

    /// Stops the server and waits until its tasks have ended.
    pub async fn shutdown(self) {
        self.tasks.shutdown().await;
    }
}

impl Drop for BannerServer {
    fn drop(&mut self) {
        self.tasks.close();
    }
}
