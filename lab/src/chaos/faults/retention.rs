//! The `retention` injection: every `oprun serve` of the run prunes on a short window, so the
//! pruner deletes history while commands, late progress and viewer reads arrive. Events go
//! [`EVENT_RETENTION`] after they were recorded (a run's last one always stays), completed runs
//! [`RUN_RETENTION`] after their completion (with their events and job; a run whose identity is
//! held for ever, a scheduled backup's, always stays), a pass every [`PRUNE_INTERVAL`]. The inbox
//! and the jobs keep their defaults: the checks read the inbox, and a job's hand-off is waited
//! for.
//!
//! Late progress (see [`crate::chaos::plan::workload`]) goes to runs held for ever, [`LATE_DELAY`] after
//! their completion was published: their earlier events are pruned by then, so the late event's
//! sequence must follow the run's last one, never start again at 1.

use std::time::Duration;

/// `--event-retention` of the run.
pub const EVENT_RETENTION: Duration = Duration::from_secs(2);
/// `--run-retention` of the run: short enough that runs completed early in the progress phase
/// are deleted before the checks, long enough that a command redelivered behind its run's
/// completion (two consumers, a SIGKILL) still finds the run: with 20 s, a start that arrived
/// 32 s after its run's completion on the cluster run found the run deleted and was
/// dead-lettered `run_not_found`, correctly, but as a command never applied. (A run the
/// service completes itself during the dispatches, a refused job's, may be deleted before the
/// identities are resolved: it is then found by its latest event.)
pub const RUN_RETENTION: Duration = Duration::from_secs(60);
/// `--prune-interval` of the run.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(1);
/// How long after its run's completion was published a late command is published: two
/// event-retention windows and two pruning passes, so the run's history is pruned by then.
pub const LATE_DELAY: Duration = Duration::from_secs(6);

/// The `serve` flags of the injection.
pub fn serve_args() -> Vec<String> {
    let secs = |d: Duration| format!("{}s", d.as_secs());
    vec![
        "--event-retention".into(),
        secs(EVENT_RETENTION),
        "--run-retention".into(),
        secs(RUN_RETENTION),
        "--prune-interval".into(),
        secs(PRUNE_INTERVAL),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use operation_runs::config::parse_duration;

    #[test]
    fn the_serve_flags_parse_as_the_windows_they_name() {
        let args = serve_args();
        let parsed: Vec<Duration> = args
            .chunks(2)
            .map(|pair| parse_duration(&pair[1]).unwrap())
            .collect();
        assert_eq!(parsed, [EVENT_RETENTION, RUN_RETENTION, PRUNE_INTERVAL]);
        assert!(LATE_DELAY >= 2 * (EVENT_RETENTION + PRUNE_INTERVAL));
    }
}
