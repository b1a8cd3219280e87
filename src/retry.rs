//! Retrying transient faults: exponential backoff with jitter (backon), cancellable by shutdown.
//!
//! Transient faults (broker or database unreachable, deadlocks) are retried for as long as the
//! service runs; they are never dead-lettered.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

/// The backoff used everywhere: 100 ms doubling to 10 s, with jitter, without end.
pub fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Runs `attempt` until it succeeds, fails permanently (`is_transient` false), or `shutdown`
/// fires (`None`). Each transient failure is logged with `what`.
pub async fn retry_transient<T, E, F, Fut>(
    shutdown: &CancellationToken,
    what: &str,
    is_transient: impl Fn(&E) -> bool,
    mut attempt: F,
) -> Option<Result<T, E>>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delays = backoff();
    loop {
        let result = tokio::select! {
            r = attempt() => r,
            _ = shutdown.cancelled() => return None,
        };
        match result {
            Err(e) if is_transient(&e) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(10));
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "{what} failed, retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return None,
                }
            }
            other => return Some(other),
        }
    }
}
