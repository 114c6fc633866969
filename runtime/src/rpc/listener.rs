//! Accepting connections for the master's and workers' gRPC servers, bounded: a peer that opens
//! connections and sends nothing must not use up the process's file handles or its slots, since
//! the job token is checked only once a request arrives.
//!
//! - at most [`Limits::total`] connections at once; past it, accepting pauses (new connections
//!   wait in the kernel's queue) until one closes;
//! - at most [`Limits::per_peer`] from one address; more are closed at once;
//! - a connection that sends nothing for [`Limits::first_bytes`] after it is accepted, or
//!   nothing at all for [`Limits::idle`] later, is closed (healthy peers answer the server's
//!   HTTP/2 keepalive pings, see [`server`], well within it).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::exec::lock_unpoisoned;

/// Bounds on what connections may hold.
#[derive(Clone, Debug)]
pub struct Limits {
    pub total: usize,
    pub per_peer: usize,
    pub first_bytes: Duration,
    pub idle: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            // A worker holds a few connections to the master and to each peer; 1000 workers
            // stay well within it. The file-handle limit is raised above it at start.
            total: 4096,
            per_peer: 64,
            first_bytes: Duration::from_secs(10),
            idle: Duration::from_secs(120),
        }
    }
}

/// HTTP/2 keepalive: the server pings every connection this often and drops it when the
/// answer takes longer than [`KEEPALIVE_TIMEOUT`], so a dead peer does not hold a slot.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for a TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A gRPC server builder with keepalives set, and TLS (with a handshake timeout) when given.
pub fn server(tls: Option<&super::Tls>) -> Result<tonic::transport::Server, String> {
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT));
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls.server().timeout(TLS_HANDSHAKE_TIMEOUT))
            .map_err(|e| format!("TLS: {e}"))?;
    }
    Ok(builder)
}

/// Connections per peer address, shared by the listener and its connections.
type PeerCounts = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// Binds `addr` and returns its connections as tonic's `serve_with_incoming` takes them.
pub async fn bind(
    addr: SocketAddr,
    limits: Limits,
) -> io::Result<impl Stream<Item = io::Result<Guarded>> + Send + 'static> {
    let listener = TcpListener::bind(addr).await?;
    let state = Accepting {
        listener,
        slots: Arc::new(Semaphore::new(limits.total.max(1))),
        peers: PeerCounts::default(),
        refused: Arc::new(AtomicU64::new(0)),
        last_warning: None,
        limits,
    };
    Ok(futures::stream::unfold(state, |mut state| async move {
        let next = state.accept().await;
        Some((next, state))
    }))
}

struct Accepting {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    peers: PeerCounts,
    refused: Arc<AtomicU64>,
    last_warning: Option<Instant>,
    limits: Limits,
}

impl Accepting {
    async fn accept(&mut self) -> io::Result<Guarded> {
        loop {
            let slot = self
                .slots
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| io::Error::other("the connection limiter closed"))?;
            let (stream, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                // Out of file handles, or a connection reset before it was accepted: the
                // listener itself is fine; wait a little rather than spin.
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let ip = peer.ip();
            let admitted = {
                let mut peers = lock_unpoisoned(&self.peers);
                let n = peers.entry(ip).or_insert(0);
                if *n < self.limits.per_peer {
                    *n += 1;
                    true
                } else {
                    false
                }
            };
            if !admitted {
                drop(stream);
                self.refused(ip);
                continue;
            }
            let _ = stream.set_nodelay(true);
            return Ok(Guarded {
                stream,
                deadline: Box::pin(tokio::time::sleep(self.limits.first_bytes)),
                idle: self.limits.idle,
                _slot: slot,
                peer: PeerSlot {
                    ip,
                    peers: self.peers.clone(),
                },
            });
        }
    }

    fn refused(&mut self, ip: IpAddr) {
        let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let now = Instant::now();
        if self
            .last_warning
            .is_none_or(|at| now.duration_since(at) > Duration::from_secs(10))
        {
            self.last_warning = Some(now);
            tracing::warn!(peer = %ip, per_peer = self.limits.per_peer, refused_total = n, "refused a connection: too many from one address");
        }
    }
}

/// Gives a peer's connection back when it closes.
struct PeerSlot {
    ip: IpAddr,
    peers: PeerCounts,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut peers = lock_unpoisoned(&self.peers);
        if let Some(n) = peers.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                peers.remove(&self.ip);
            }
        }
    }
}

/// An accepted connection that fails its reads once it has been silent too long, and holds
/// its slots until dropped.
pub struct Guarded {
    stream: TcpStream,
    deadline: Pin<Box<Sleep>>,
    idle: Duration,
    _slot: OwnedSemaphorePermit,
    peer: PeerSlot,
}

impl Guarded {
    /// The peer's address.
    pub fn peer(&self) -> IpAddr {
        self.peer.ip
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let next = Instant::now() + self.idle;
                    self.deadline.as_mut().reset(next);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the peer sent nothing for too long",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl Connected for Guarded {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

/// Raises this process's soft limit on open files to its hard limit, so that a burst of
/// connections meets the connection limits above before the kernel's. Returns the new limit.
pub fn raise_file_limit() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => return Some(hard),
            Err(e) => tracing::warn!(error = %e, soft, hard, "cannot raise the open-file limit"),
        }
    }
    Some(soft)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn limits() -> Limits {
        Limits {
            total: 3,
            per_peer: 2,
            first_bytes: Duration::from_millis(300),
            idle: Duration::from_millis(600),
        }
    }

    #[tokio::test]
    async fn silent_connections_are_closed_and_their_slots_come_back() {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = probe.local_addr().expect("addr");
        drop(probe);
        let incoming = bind(addr, limits()).await.expect("bind");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut incoming = Box::pin(incoming);
            while let Some(connection) = incoming.next().await {
                if tx.send(connection).is_err() {
                    break;
                }
            }
        });
        // Two silent connections from one address: both accepted; a third is closed at once.
        let mut silent = Vec::new();
        for _ in 0..3 {
            silent.push(TcpStream::connect(addr).await.expect("connect"));
        }
        let mut accepted = Vec::new();
        for _ in 0..2 {
            accepted.push(rx.recv().await.expect("stream").expect("accepted"));
        }
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(2), silent[2].read(&mut buf))
            .await
            .expect("closed promptly");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
        // A silent connection's read fails after first_bytes.
        let started = Instant::now();
        let err = accepted[0].read(&mut buf).await.expect_err("timed out");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(250));
        // A talking one lives on, past the first-bytes window.
        silent[1].write_all(b"x").await.expect("write");
        assert_eq!(accepted[1].read(&mut buf).await.expect("read"), 1);
        tokio::time::sleep(Duration::from_millis(350)).await;
        silent[1].write_all(b"y").await.expect("write");
        assert_eq!(accepted[1].read(&mut buf).await.expect("read"), 1);
        // Dropping connections gives their slots back: a new one from the same address is taken.
        drop(accepted);
        let _again = TcpStream::connect(addr).await.expect("connect");
        let next = tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .expect("accepted again")
            .expect("stream")
            .expect("accepted");
        assert_eq!(next.peer(), addr.ip());
    }
}
