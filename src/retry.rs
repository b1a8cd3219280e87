//! Retrying transient faults: exponential backoff with jitter (backon), cancellable by shutdown.
//!
//! Transient faults (broker or database unreachable, deadlocks) are retried for as long as the
//! service runs; they are never dead-lettered.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

/// The first delay of a backoff.
pub const MIN_DELAY: Duration = Duration::from_millis(100);

/// No delay of [`backoff`] is ever longer than this (the documented ceiling).
pub const MAX_DELAY: Duration = Duration::from_secs(10);

/// A connection that stayed up (and consuming) at least this long was healthy: the reconnect
/// backoff starts again from [`MIN_DELAY`] after it fails.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(30);

/// The backoff used everywhere: 100 ms doubling, with jitter, never over 10 s, without end.
///
/// backon's jitter *adds* up to 100% of the current delay, so the exponential part stops at half
/// the ceiling (5 s) and the jittered delay lands in 5..10 s; the final `min` holds the ceiling
/// even against rounding.
pub fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(MIN_DELAY)
        .with_max_delay(MAX_DELAY / 2)
        .with_jitter()
        .without_max_times()
        .build()
        .map(|delay| delay.min(MAX_DELAY))
}

/// The reconnect delays of one long-running loop: [`backoff`], started again after a healthy
/// period, so a connection that worked for hours and then drops is retried within 100–200 ms,
/// not after the 10 s its first outages of the day had grown the delay to.
pub struct ReconnectBackoff {
    delays: Box<dyn Iterator<Item = Duration> + Send + Sync>,
}

impl Default for ReconnectBackoff {
    fn default() -> Self {
        Self::new()
    }
}

impl ReconnectBackoff {
    /// A backoff at its first (shortest) delay.
    pub fn new() -> Self {
        Self {
            delays: Box::new(backoff()),
        }
    }

    /// Forgets earlier failures: the next delay is the first one again.
    pub fn on_healthy(&mut self) {
        self.delays = Box::new(backoff());
    }

    /// The delay before the next attempt, after an attempt that failed. `healthy_for` is how long
    /// that attempt had been up and working (zero if it never got that far): at least
    /// [`HEALTHY_AFTER`] counts as a healthy period and resets the backoff first.
    pub fn on_failure(&mut self, healthy_for: Duration) -> Duration {
        if healthy_for >= HEALTHY_AFTER {
            self.on_healthy();
        }
        self.delays.next().unwrap_or(MAX_DELAY)
    }
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
                let delay = delays.next().unwrap_or(MAX_DELAY);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_backoff_delay_exceeds_the_ten_second_ceiling() {
        // backon's jitter adds up to 100% of the delay: with max_delay 10 s, 19.9 s was observed.
        for round in 0..5 {
            let delays: Vec<Duration> = backoff().take(100).collect();
            assert_eq!(delays.len(), 100, "the backoff never ends");
            for (i, d) in delays.iter().enumerate() {
                assert!(*d <= MAX_DELAY, "round {round}, delay {i} is {d:?}");
                assert!(*d >= MIN_DELAY, "round {round}, delay {i} is {d:?}");
            }
        }
    }

    #[test]
    fn the_backoff_still_grows_to_seconds() {
        // Holding the ceiling must not flatten the curve: after a dozen failures the delay is
        // at least the un-jittered half-ceiling.
        let twelfth = backoff().nth(11).unwrap();
        assert!(twelfth >= MAX_DELAY / 2, "{twelfth:?}");
    }

    #[test]
    fn the_reconnect_backoff_grows_on_quick_failures_and_resets_after_a_healthy_period() {
        let mut reconnect = ReconnectBackoff::new();
        let first = reconnect.on_failure(Duration::ZERO);
        assert!(first <= MIN_DELAY * 2, "{first:?}");
        let mut last = first;
        for _ in 0..10 {
            // Connections that die within seconds are not a healthy period: keep backing off.
            last = reconnect.on_failure(Duration::from_secs(5));
        }
        assert!(
            last >= MAX_DELAY / 2,
            "grown after 11 quick failures: {last:?}"
        );
        assert!(last <= MAX_DELAY, "{last:?}");

        // A connection that stayed up past HEALTHY_AFTER: the next outage is retried at once.
        let after_healthy = reconnect.on_failure(HEALTHY_AFTER);
        assert!(after_healthy <= MIN_DELAY * 2, "{after_healthy:?}");
        let next = reconnect.on_failure(Duration::ZERO);
        assert!(
            next <= MIN_DELAY * 4,
            "grows again from the start: {next:?}"
        );

        reconnect.on_failure(Duration::ZERO);
        reconnect.on_failure(Duration::ZERO);
        reconnect.on_healthy();
        let reset = reconnect.on_failure(Duration::ZERO);
        assert!(reset <= MIN_DELAY * 2, "{reset:?}");
    }
}
