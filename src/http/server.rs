//! The one HTTP server of the process (probes, metrics, the run viewer): axum routers served by
//! hyper's HTTP/1.1 connection driver from an accept loop of our own, because `axum::serve` has
//! neither a header-read timeout nor an idle timeout nor a connection cap, and each of those is
//! what stands between a burst of idle sockets and an exhausted file-descriptor table.
//!
//! - **Connection cap**: the loop takes a semaphore permit *before* `accept`, so at the cap it
//!   stops accepting; further clients wait in the kernel's listen backlog and hold no descriptor
//!   of ours. The permit lives as long as the connection's task.
//! - **Header-read timeout**: hyper's own (`header_read_timeout`), against slow senders.
//! - **Idle timeout**: a connection with no byte read or written for the idle timeout is dropped
//!   (closed), whether it never sent a request, sits between keep-alive requests, or stalls
//!   mid-response. Streaming responses (the viewer's SSE) send heartbeats well within it.
//! - **Accept errors** (`EMFILE` and friends) pause the loop instead of spinning on them.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Bounds of one listener. Every field is a documented setting (docs/configuration.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// How long a client may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// A connection with no traffic in either direction for this long is closed.
    pub idle_timeout: Duration,
    /// Most connections open at once on this listener.
    pub max_connections: usize,
}

impl HttpLimits {
    /// How often a streaming response must send something so that the idle timeout never
    /// closes it: a third of the idle timeout, at most 15 s.
    pub fn heartbeat(&self) -> Duration {
        (self.idle_timeout / 3)
            .min(Duration::from_secs(15))
            .max(Duration::from_millis(10))
    }
}

/// A running listener.
#[derive(Debug, Clone)]
pub struct HttpServer {
    /// The bound address (port 0 picks a free one).
    pub addr: SocketAddr,
    open: Arc<AtomicUsize>,
}

impl HttpServer {
    /// Connections open right now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// Binds `addr` and serves `router` with `limits` until `shutdown`.
pub async fn spawn(
    addr: SocketAddr,
    router: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) -> std::io::Result<HttpServer> {
    let listener = TcpListener::bind(addr).await?;
    let server = HttpServer {
        addr: listener.local_addr()?,
        open: Arc::new(AtomicUsize::new(0)),
    };
    tokio::spawn(accept_loop(
        listener,
        router,
        limits,
        server.open.clone(),
        shutdown,
    ));
    Ok(server)
}

async fn accept_loop(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    open: Arc<AtomicUsize>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = shutdown.cancelled() => return,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.cancelled() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors or a connection reset before accept: retrying at once
                // would spin a core; wait a little and let connections close.
                tracing::warn!(error = %e, "HTTP accept failed; pausing the listener");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    _ = shutdown.cancelled() => return,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let (router, open, shutdown) = (router.clone(), open.clone(), shutdown.clone());
        tokio::spawn(async move {
            open.fetch_add(1, Ordering::Relaxed);
            serve_connection(stream, router, limits, shutdown).await;
            open.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
}

async fn serve_connection(
    stream: TcpStream,
    router: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) {
    let epoch = Instant::now();
    let last_activity = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(Tracked {
        inner: stream,
        epoch,
        last_activity: last_activity.clone(),
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let connection = builder.serve_connection(io, TowerToHyperService::new(router));
    tokio::pin!(connection);
    let check_every = (limits.idle_timeout / 4).max(Duration::from_millis(10));
    let mut ticks = tokio::time::interval(check_every);
    loop {
        tokio::select! {
            _ = connection.as_mut() => return,
            _ = ticks.tick() => {
                let now = epoch.elapsed().as_millis() as u64;
                let idle = now.saturating_sub(last_activity.load(Ordering::Relaxed));
                if idle >= limits.idle_timeout.as_millis() as u64 {
                    // Dropping the connection closes the socket and frees the slot.
                    return;
                }
            }
            _ = shutdown.cancelled() => {
                connection.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(Duration::from_secs(1), connection.as_mut()).await;
                return;
            }
        }
    }
}

/// A socket that records when a byte last moved in either direction.
struct Tracked {
    inner: TcpStream,
    epoch: Instant,
    last_activity: Arc<AtomicU64>,
}

impl Tracked {
    fn touch(&self) {
        self.last_activity
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Raises this process's open-file soft limit to its hard limit, so the connection caps, the
/// database pool and the broker connection fit with room to spare. Returns the new soft limit.
pub fn raise_open_file_limit() -> std::io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}
