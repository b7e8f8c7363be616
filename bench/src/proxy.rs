//! A loopback TCP proxy that counts requests: how many separate writes the client sent to the
//! proxied server. A pipeline goes out in one write, so this counts round trips (it can only
//! over-count, when a large request is split across reads). Used to count Redis round trips
//! per receive batch.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A running counting proxy; stops when dropped.
pub struct CountingProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Client→server writes (one per round trip).
    pub round_trips: Arc<AtomicU64>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl CountingProxy {
    /// Proxy to `target`.
    pub fn start(target: SocketAddr) -> anyhow::Result<CountingProxy> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let round_trips = Arc::new(AtomicU64::new(0));
        let counter = round_trips.clone();
        runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    pump(client, server, counter).await;
                });
            }
        });
        Ok(CountingProxy {
            addr,
            round_trips,
            runtime: Some(runtime),
        })
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn redis_url(&self) -> String {
        format!("redis://{}", self.addr)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Copy both ways; count each chunk the client sends. A pipeline the client sends in one go
/// counts once, however many commands it holds.
async fn pump(
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    counter: Arc<AtomicU64>,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            if server_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = server_write.shutdown().await;
    };
    let down = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if client_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = client_write.shutdown().await;
    };
    tokio::join!(up, down);
}
