//! With `--db-failover`: how long no server of the pair took writes, as a client following the
//! primary sees it. Every [`EVERY`] the probe looks for the host that answers read-write (the
//! service's own multi-host connector, `store::hosts`, on the service's URL) and asks it
//! `SELECT 1`; the longest stretch between two answers while the run lasts is
//! `max_unavailable_s` of the closing line.

use std::time::Duration;

use sqlx::Connection;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use operation_runs::store::hosts;

/// Between two looks.
const EVERY: Duration = Duration::from_millis(200);
/// Longest one look may take (a host that accepts and never answers counts as down).
const LOOK_TIMEOUT: Duration = Duration::from_secs(2);

/// Probes `database_url` until `stop`; the longest time without a writable server.
pub fn spawn(database_url: String, stop: CancellationToken) -> JoinHandle<Duration> {
    tokio::spawn(async move {
        let mut last_answer = Instant::now();
        let mut longest = Duration::ZERO;
        loop {
            let answered = tokio::time::timeout(LOOK_TIMEOUT, look(&database_url))
                .await
                .is_ok_and(|answered| answered);
            let now = Instant::now();
            if answered {
                last_answer = now;
            }
            longest = longest.max(now - last_answer);
            tokio::select! {
                _ = tokio::time::sleep(EVERY) => {}
                _ = stop.cancelled() => return longest,
            }
        }
    })
}

/// Whether a server of `database_url` answered read-write now.
async fn look(database_url: &str) -> bool {
    let Ok(list) = hosts::parse(database_url) else {
        return false;
    };
    let Ok(primary) = list.primary_url().await else {
        return false;
    };
    let Ok(mut conn) = sqlx::PgConnection::connect(&primary).await else {
        return false;
    };
    let answered = sqlx::query("SELECT 1").execute(&mut conn).await.is_ok();
    let _ = conn.close().await;
    answered
}
