//! `/healthz`, `/readyz` and `/metrics`: an axum router on the shared HTTP server
//! ([`crate::http::server`]), which bounds header reads, idle connections and open connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;
use crate::http::server::{self, HttpLimits, HttpServer};

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

/// Binds `addr` and serves the probes with `limits` until `shutdown`.
pub async fn spawn_with(
    addr: SocketAddr,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    limits: HttpLimits,
    shutdown: CancellationToken,
) -> std::io::Result<HttpServer> {
    server::spawn(addr, router(health, metrics), limits, shutdown).await
}

/// The probes' routes.
pub fn router(health: Arc<Health>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state((health, metrics))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
}

type ProbeState = State<(Arc<Health>, Arc<Metrics>)>;

async fn readyz(State((health, _)): ProbeState) -> impl IntoResponse {
    if health.ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn render_metrics(State((_, metrics)): ProbeState) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics.render(),
    )
}
