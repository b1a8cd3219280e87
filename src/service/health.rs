//! `/healthz`, `/readyz` and `/metrics` over plain HTTP/1.1. Three fixed GET routes do not need a
//! web framework; this keeps the dependency tree and the attack surface small.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;

/// What the probes report.
#[derive(Debug, Default)]
pub struct Health {
    /// The database answered the last check.
    pub database_ok: AtomicBool,
    /// The broker connection and the consumer are up.
    pub consumer_running: AtomicBool,
    /// A dead letter (or reply) of the batch in hand could not be published (the DLQ is unbound
    /// or deleted, the broker nacks): the batch waits unacked and the service is not ready.
    pub dead_letters_blocked: AtomicBool,
}

impl Health {
    /// What `/readyz` reports: the database answers, the consumer runs, and no batch waits
    /// for its dead letters.
    pub fn ready(&self) -> bool {
        self.database_ok.load(Ordering::Relaxed)
            && self.consumer_running.load(Ordering::Relaxed)
            && !self.dead_letters_blocked.load(Ordering::Relaxed)
    }
}

/// Binds `addr` and serves the probes until `shutdown`. Returns the bound address (port 0 picks
/// a free one).
pub async fn spawn(
    addr: SocketAddr,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.cancelled() => return,
            };
            if let Ok((stream, _)) = accepted {
                let (health, metrics) = (health.clone(), metrics.clone());
                tokio::spawn(async move {
                    let _ = answer(stream, &health, &metrics).await;
                });
            }
        }
    });
    Ok(bound)
}

async fn answer(mut stream: TcpStream, health: &Health, metrics: &Metrics) -> std::io::Result<()> {
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).await?;
    let request = String::from_utf8_lossy(&buf[..n]);
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let (status, content_type, body) = match path {
        "/healthz" => ("200 OK", "text/plain", "ok\n".to_owned()),
        "/readyz" if health.ready() => ("200 OK", "text/plain", "ready\n".to_owned()),
        "/readyz" => (
            "503 Service Unavailable",
            "text/plain",
            "not ready\n".to_owned(),
        ),
        "/metrics" => ("200 OK", "text/plain; version=0.0.4", metrics.render()),
        _ => ("404 Not Found", "text/plain", "not found\n".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
