//! What a change does to a run, as a pure function: [`apply`] takes the run, the change a progress
//! command (or the service itself: reaper, refused job) asks for and the transaction's clock, and
//! returns the run to store and the event it causes, or why the change is refused. No I/O: the
//! service locks the run, calls this, and writes what it returns (`service/apply.rs`).
//!
//! The rules, all in one place:
//! - the status moves by [`RunState::transition`]: forward only; a request for an earlier state
//!   is *stale* (ignored, never refused: out-of-order delivery produces it); a completed run with
//!   another outcome, or a malformed request, is refused (`invalid_transition`);
//! - count increments add up ([`SummaryCounts::add`]; past 2^53 − 1 refused), failures are
//!   appended within the caps of [`super::failure_cap`]; both still apply after completion and
//!   alongside a stale status;
//! - one change causes at most one event: `started` or `completed` when the status changed, else
//!   `progressed` when counts or failures changed, else none;
//! - entering `running` stamps `started_at`, entering `completed` stamps `completed_at`, and any
//!   saved change stamps `updated_at`, all with the one `now` (the events of the change carry the
//!   same `now`); a report that changes nothing on an active run is still saved, as a heartbeat
//!   for the stale-run reaper.

use chrono::{DateTime, Utc};

use super::error::Rejection;
use super::event::RunEventType;
use super::failure::Failure;
use super::operation_run::OperationRun;
use super::status::{RunOutcome, RunStatus, Transition, TransitionError};
use super::summary_counts::SummaryCounts;

/// The change a progress command (or the service) asks of a run.
#[derive(Debug, Clone, Copy)]
pub struct RunChange<'a> {
    /// The requested status, if any.
    pub status: Option<RunStatus>,
    /// The requested outcome, if any (alone: completion with it).
    pub outcome: Option<RunOutcome>,
    /// Count increments (empty: none).
    pub counts: &'a SummaryCounts,
    /// Failures to append.
    pub failures: &'a [Failure],
}

/// A change that was not refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The run after the change (the run as it was when nothing is to be saved).
    pub run: OperationRun,
    /// The event the change causes.
    pub event: Option<RunEventType>,
    /// Whether the row is to be written: a change, or the heartbeat of an active run.
    pub save: bool,
    /// The requested state was earlier than the run's (ignored).
    pub stale: bool,
    /// `failure_summary` entries were added (only then is the array rewritten).
    pub summary_changed: bool,
}

/// Why a change is refused (the command is dead-lettered with the rejection's code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The status or outcome cannot be applied (`invalid_transition`).
    #[error(transparent)]
    Transition(TransitionError),
    /// The counts would pass their bound (`invalid_summary_value`).
    #[error(transparent)]
    Counts(Rejection),
}

impl From<Refusal> for Rejection {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Transition(e) => e.rejection(),
            Refusal::Counts(r) => r,
        }
    }
}

/// Applies `change` to `run` at `now` (the transaction's clock).
pub fn apply(
    run: OperationRun,
    change: &RunChange<'_>,
    now: DateTime<Utc>,
) -> Result<Applied, Refusal> {
    let current = run.state();
    let (state, stale) = match current.transition(change.status, change.outcome) {
        Ok(Transition::Apply(next)) => (next, false),
        Ok(Transition::NoOp) => (current, false),
        Err(e) if e.is_stale() => (current, true),
        Err(e) => return Err(Refusal::Transition(e)),
    };
    let counts = run
        .summary_counts
        .add(change.counts)
        .map_err(Refusal::Counts)?;
    let event = if state != current {
        match state.status {
            RunStatus::Running => Some(RunEventType::Started),
            RunStatus::Completed => Some(RunEventType::Completed),
            RunStatus::Queued => None,
        }
    } else if counts != run.summary_counts || !change.failures.is_empty() {
        Some(RunEventType::Progressed)
    } else {
        None
    };
    let save = event.is_some() || (run.is_active() && !stale);
    if !save {
        return Ok(Applied {
            run,
            event,
            save,
            stale,
            summary_changed: false,
        });
    }
    let mut run = run;
    run.status = state.status;
    run.outcome = state.outcome;
    run.summary_counts = counts;
    let appended = run.failure_summary.append(change.failures);
    if run.status == RunStatus::Running && run.started_at.is_none() {
        run.started_at = Some(now);
    }
    if run.status == RunStatus::Completed && run.completed_at.is_none() {
        run.completed_at = Some(now);
    }
    run.updated_at = now;
    Ok(Applied {
        run,
        event,
        save,
        stale,
        summary_changed: appended.summary_changed,
    })
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;
    use crate::domain::failure_cap::{FailureSummary, MAX_STORED_FAILURES};
    use crate::domain::summary_counts::MAX_SUMMARY_COUNT;
    use crate::domain::{ErrorCode, OperationRunType, RunIdentityHash};
    use RunOutcome::*;
    use RunStatus::*;

    fn at(minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 27, 10, minute, 0).unwrap()
    }

    /// A run in `status`/`outcome`, last changed at minute 0, with `counts` and `failures`
    /// stored failure entries.
    fn run(status: RunStatus, outcome: RunOutcome, counts: &str, failures: usize) -> OperationRun {
        let mut failure_summary = FailureSummary::default();
        failure_summary.append(&vec![Failure::new("old", "x"); failures]);
        OperationRun {
            id: 7,
            workspace_id: 1,
            tenant_id: Some(10),
            user_id: None,
            initiator_name: None,
            run_type: OperationRunType::parse("policy.sync").unwrap(),
            status,
            outcome,
            run_identity_hash: RunIdentityHash::parse(&"a".repeat(64)).unwrap(),
            summary_counts: counts_of(counts),
            failure_summary,
            context: json!({}),
            started_at: (status != Queued).then(|| at(0)),
            completed_at: (status == Completed).then(|| at(0)),
            created_at: at(0),
            updated_at: at(0),
            trace: None,
        }
    }

    fn counts_of(json: &str) -> SummaryCounts {
        SummaryCounts::parse(&serde_json::from_str(json).unwrap()).unwrap()
    }

    /// What a case expects.
    #[derive(Debug, PartialEq)]
    enum Expect {
        /// Saved in this state, with this event.
        Saved(RunStatus, RunOutcome, Option<RunEventType>),
        /// Stale and nothing saved.
        Stale,
        /// Nothing to change and nothing saved (a completed run asked for its own state).
        Unchanged,
        /// Refused with this code.
        Refused(ErrorCode),
    }

    /// A case: name, run, requested status and outcome, count increments, failures appended,
    /// expected result.
    type Case = (
        &'static str,
        OperationRun,
        Option<RunStatus>,
        Option<RunOutcome>,
        &'static str,
        usize,
        Expect,
    );

    #[test]
    fn every_change_behaves_as_listed() {
        use Expect::*;
        use RunEventType::{Completed as CompletedEvent, Progressed, Started};
        let none = "{}";
        #[rustfmt::skip]
        let table: Vec<Case> = vec![
            // name, run, status, outcome, count increments, failures, expected
            ("start", run(Queued, Pending, none, 0), Some(Running), None, none, 0, Saved(Running, Pending, Some(Started))),
            ("fail before start", run(Queued, Pending, none, 0), Some(Completed), Some(Failed), none, 0, Saved(Completed, Failed, Some(CompletedEvent))),
            ("block before start", run(Queued, Pending, none, 0), None, Some(Blocked), none, 0, Saved(Completed, Blocked, Some(CompletedEvent))),
            ("complete", run(Running, Pending, none, 0), Some(Completed), Some(Succeeded), none, 0, Saved(Completed, Succeeded, Some(CompletedEvent))),
            ("complete partially", run(Running, Pending, none, 0), None, Some(PartiallySucceeded), none, 0, Saved(Completed, PartiallySucceeded, Some(CompletedEvent))),
            ("heartbeat while queued", run(Queued, Pending, none, 0), None, None, none, 0, Saved(Queued, Pending, None)),
            ("heartbeat while running", run(Running, Pending, none, 0), Some(Running), None, none, 0, Saved(Running, Pending, None)),
            ("start with counts", run(Queued, Pending, none, 0), Some(Running), None, r#"{"total": 3}"#, 0, Saved(Running, Pending, Some(Started))),
            ("counts", run(Running, Pending, none, 0), None, None, r#"{"items": 1}"#, 0, Saved(Running, Pending, Some(Progressed))),
            ("failures", run(Running, Pending, none, 0), None, None, none, 2, Saved(Running, Pending, Some(Progressed))),
            ("back to queued", run(Running, Pending, none, 0), Some(Queued), None, none, 0, Stale),
            ("start after completion", run(Completed, Failed, none, 0), Some(Running), None, none, 0, Stale),
            ("queue after completion", run(Completed, Failed, none, 0), Some(Queued), None, none, 0, Stale),
            ("stale start with counts", run(Completed, Succeeded, none, 0), Some(Running), None, r#"{"items": 1}"#, 0, Saved(Completed, Succeeded, Some(Progressed))),
            ("same completion", run(Completed, Succeeded, none, 0), Some(Completed), Some(Succeeded), none, 0, Unchanged),
            ("nothing on a completed run", run(Completed, Succeeded, none, 0), None, None, none, 0, Unchanged),
            ("counts after completion", run(Completed, Succeeded, none, 0), None, None, r#"{"items": 1}"#, 0, Saved(Completed, Succeeded, Some(Progressed))),
            ("failures after completion", run(Completed, Failed, none, 0), None, None, none, 1, Saved(Completed, Failed, Some(Progressed))),
            ("other outcome after completion", run(Completed, Succeeded, none, 0), Some(Completed), Some(Failed), none, 0, Refused(ErrorCode::InvalidTransition)),
            ("other outcome alone after completion", run(Completed, Succeeded, none, 0), None, Some(Blocked), none, 0, Refused(ErrorCode::InvalidTransition)),
            ("completion without outcome", run(Running, Pending, none, 0), Some(Completed), None, none, 0, Refused(ErrorCode::InvalidTransition)),
            ("outcome while running", run(Queued, Pending, none, 0), Some(Running), Some(Succeeded), none, 0, Refused(ErrorCode::InvalidTransition)),
            ("counts past the bound", run(Running, Pending, r#"{"items": 9007199254740991}"#, 0), None, None, r#"{"items": 1}"#, 0, Refused(ErrorCode::InvalidSummaryValue)),
            ("refused transition with counts", run(Completed, Succeeded, none, 0), None, Some(Failed), r#"{"items": 1}"#, 1, Refused(ErrorCode::InvalidTransition)),
        ];
        for (name, before, status, outcome, counts, failures, expected) in table {
            let counts = counts_of(counts);
            let failures = vec![Failure::new("new", "y"); failures];
            let change = RunChange {
                status,
                outcome,
                counts: &counts,
                failures: &failures,
            };
            let now = at(5);
            let got = match apply(before.clone(), &change, now) {
                Err(refusal) => Refused(Rejection::from(refusal).code),
                Ok(a) if a.stale && !a.save => {
                    assert_eq!(
                        a.run, before,
                        "{name}: a stale change leaves the run as it was"
                    );
                    Stale
                }
                Ok(a) if !a.save => {
                    assert_eq!((a.run.clone(), a.event), (before.clone(), None), "{name}");
                    Unchanged
                }
                Ok(a) => {
                    let r = &a.run;
                    assert_eq!(r.updated_at, now, "{name}: a saved change is stamped now");
                    let entered = |s: RunStatus| r.status == s && before.status != s;
                    let started = if entered(Running) {
                        Some(now)
                    } else {
                        before.started_at
                    };
                    let completed = if entered(Completed) {
                        Some(now)
                    } else {
                        before.completed_at
                    };
                    assert_eq!(r.started_at, started, "{name}: started_at");
                    assert_eq!(r.completed_at, completed, "{name}: completed_at");
                    assert_eq!(
                        r.summary_counts,
                        before.summary_counts.add(&counts).unwrap(),
                        "{name}"
                    );
                    assert_eq!(
                        r.failure_summary.total(),
                        before.failure_summary.total() + failures.len() as u64,
                        "{name}"
                    );
                    assert_eq!(a.summary_changed, !failures.is_empty(), "{name}");
                    Saved(r.status, r.outcome, a.event)
                }
            };
            assert_eq!(got, expected, "{name}");
        }
    }

    #[test]
    fn counts_accumulate_over_changes() {
        let mut current = run(Running, Pending, r#"{"total": 10}"#, 0);
        let one = counts_of(r#"{"items": 1, "processed": 2}"#);
        for minute in 1..=3 {
            let change = RunChange {
                status: None,
                outcome: None,
                counts: &one,
                failures: &[],
            };
            let applied = apply(current, &change, at(minute)).unwrap();
            assert_eq!(applied.event, Some(RunEventType::Progressed));
            current = applied.run;
        }
        assert_eq!(
            current.summary_counts,
            counts_of(r#"{"total": 10, "items": 3, "processed": 6}"#)
        );
        assert_eq!(current.updated_at, at(3));
        let last = counts_of(&format!(r#"{{"items": {}}}"#, MAX_SUMMARY_COUNT - 3));
        let change = RunChange {
            status: None,
            outcome: None,
            counts: &last,
            failures: &[],
        };
        assert_eq!(
            apply(current, &change, at(4))
                .unwrap()
                .run
                .summary_counts
                .get("items"),
            MAX_SUMMARY_COUNT
        );
    }

    #[test]
    fn failures_past_the_cap_are_only_counted() {
        let full = run(Running, Pending, "{}", MAX_STORED_FAILURES);
        let failures = [Failure::new("late", "z"), Failure::new("late", "z")];
        let change = RunChange {
            status: None,
            outcome: None,
            counts: &SummaryCounts::default(),
            failures: &failures,
        };
        let applied = apply(full.clone(), &change, at(1)).unwrap();
        assert_eq!(
            applied.event,
            Some(RunEventType::Progressed),
            "an overflow count is a change"
        );
        assert!(
            !applied.summary_changed,
            "a full summary is never rewritten"
        );
        assert_eq!(
            applied.run.failure_summary.entries,
            full.failure_summary.entries
        );
        assert_eq!(applied.run.failure_summary.overflow.get("late"), Some(&2));
    }

    #[test]
    fn the_run_and_its_timestamps_share_one_clock() {
        let queued = run(Queued, Pending, "{}", 0);
        let change = RunChange {
            status: None,
            outcome: Some(Failed),
            counts: &SummaryCounts::default(),
            failures: &[],
        };
        let done = apply(queued, &change, at(9)).unwrap().run;
        assert_eq!(
            (done.started_at, done.completed_at, done.updated_at),
            (None, Some(at(9)), at(9))
        );
    }
}
