//! How far the service has got: the number of command ids in its inbox, polled from the
//! database. It paces the producer (never far ahead of the service, so every fault hits a
//! service with work in hand) and places the faults along the workload.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often the inbox is counted.
const POLL: Duration = Duration::from_millis(200);

/// The service's progress through `total` good commands.
#[derive(Debug, Clone)]
pub struct Progress {
    processed: Arc<AtomicU64>,
    total: u64,
}

impl Progress {
    /// Progress through `total` commands, none processed yet.
    pub fn new(total: u64) -> Self {
        Self {
            processed: Arc::new(AtomicU64::new(0)),
            total,
        }
    }

    /// Command ids in the inbox at the last poll.
    pub fn processed(&self) -> u64 {
        self.processed.load(Ordering::Relaxed)
    }

    /// Processed share of the workload, from 0 to 1.
    pub fn fraction(&self) -> f64 {
        self.processed() as f64 / self.total.max(1) as f64
    }

    /// Counts the inbox of `pool` until `stop`. While the database is down the last count
    /// stands.
    pub fn spawn_poller(&self, pool: PgPool, stop: CancellationToken) -> JoinHandle<()> {
        let processed = self.processed.clone();
        tokio::spawn(async move {
            loop {
                let count: Result<i64, _> =
                    sqlx::query_scalar("SELECT count(*) FROM processed_commands")
                        .fetch_one(&pool)
                        .await;
                if let Ok(n) = count {
                    processed.store(n as u64, Ordering::Relaxed);
                }
                tokio::select! {
                    _ = tokio::time::sleep(POLL) => {}
                    _ = stop.cancelled() => return,
                }
            }
        })
    }

    /// Waits until no more than `ahead` of the `sent` fresh commands are unprocessed; false when
    /// `deadline` passes first.
    pub async fn wait_for_room(&self, sent: u64, ahead: u64, deadline: Instant) -> bool {
        while sent.saturating_sub(self.processed()) > ahead {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }
}
