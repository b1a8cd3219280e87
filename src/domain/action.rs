//! Operator actions on a run (cancel, retry, fail): what each does to a run in a given state, as
//! a pure decision. The service locks the run, asks [`decide`], and carries the decision out in
//! the same transaction as the action's record (`service/actions.rs`).
//!
//! - **cancel**: a queued run completes at once as `cancelled` (its identity is free); a running
//!   run is asked to stop (`cancel_requested_at`, event `operation_run.cancel_requested`, a
//!   `cancel.<type>` message to its executor), and a second request is `unchanged`; a completed
//!   run is never changed (`unchanged` when it was cancelled, else `refused`).
//! - **fail**: a queued or running run completes as `failed` with failure
//!   [`FAILED_BY_OPERATOR`] and the reason as its message; a completed run is never changed.
//! - **retry**: a completed run whose outcome is `failed`, `partially_succeeded`, `blocked` or
//!   `cancelled` is dispatched again (same type, scope and context, `context.retry_of` = its id);
//!   any other run is refused, and so is a run of a type whose identity holds one run forever.

use serde_json::{json, Value};

use super::failure::Failure;
use super::operation_run::OperationRun;
use super::operation_type::DedupeWindow;
use super::status::{RunOutcome, RunStatus};

/// The failure code of a run an operator failed.
pub const FAILED_BY_OPERATOR: &str = "run.failed_by_operator";
/// The failure code of a run the reaper cancelled because its executor did not answer a cancel
/// request within the type's expected duration.
pub const CANCEL_TIMEOUT: &str = "run.cancel_timeout";
/// The context key of a retry naming the run it retries (never an identity key, so a retry
/// dedupes against the original's identity).
pub const RETRY_OF: &str = "retry_of";
/// Longest accepted reason, in characters.
pub const MAX_REASON_CHARS: usize = 1000;

/// What an operator asks of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunAction {
    /// Stop it.
    Cancel,
    /// Run it again.
    Retry,
    /// Complete it as failed.
    Fail,
}

impl RunAction {
    /// Every action.
    pub const ALL: [RunAction; 3] = [Self::Cancel, Self::Retry, Self::Fail];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cancel => "cancel",
            Self::Retry => "retry",
            Self::Fail => "fail",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// The answer to an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActionResult {
    /// The run changed as asked (completed, or a retry dispatched).
    Done,
    /// The executor was asked to stop; the run completes when it answers (or the reaper).
    Requested,
    /// The run already is where the action would take it.
    Unchanged,
    /// The action does not apply to the run in its state.
    Refused,
}

impl ActionResult {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Requested => "requested",
            Self::Unchanged => "unchanged",
            Self::Refused => "refused",
        }
    }

    /// The result of its wire name.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Done, Self::Requested, Self::Unchanged, Self::Refused]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// Who acts: the CLI's `--initiator` (default the OS user), a broker command's
/// `initiator_name` / `user_id`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Actor {
    /// Display name.
    pub name: Option<String>,
    /// The platform user.
    pub user_id: Option<i64>,
    /// Where the action came from: `cli` or `broker`.
    pub via: &'static str,
}

impl Actor {
    /// The JSON form stored with events.
    pub fn to_json(&self) -> Value {
        json!({"name": self.name, "user_id": self.user_id, "via": self.via})
    }
}

/// What carrying out an action does.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Complete the run now with `outcome` (and `failure`, if any).
    Complete {
        /// The outcome.
        outcome: RunOutcome,
        /// The failure entry appended.
        failure: Option<Failure>,
    },
    /// Ask the running run's executor to stop.
    RequestCancel,
    /// Dispatch the run again.
    Retry,
    /// Nothing to do (the reason is the answer's `error`).
    Unchanged(String),
    /// Refused (the reason is the answer's `error`).
    Refused(String),
}

impl Decision {
    /// The result an action with this decision answers (a retry is `done` once dispatched).
    pub fn result(&self) -> ActionResult {
        match self {
            Self::Complete { .. } | Self::Retry => ActionResult::Done,
            Self::RequestCancel => ActionResult::Requested,
            Self::Unchanged(_) => ActionResult::Unchanged,
            Self::Refused(_) => ActionResult::Refused,
        }
    }
}

/// Whether a completed run with `outcome` may be retried.
pub fn retryable(outcome: RunOutcome) -> bool {
    matches!(
        outcome,
        RunOutcome::Failed
            | RunOutcome::PartiallySucceeded
            | RunOutcome::Blocked
            | RunOutcome::Cancelled
    )
}

/// Decides what `action` does to `run`, whose cancel was requested already when
/// `cancel_requested` is true; `reason` is the actor's.
pub fn decide(
    action: RunAction,
    run: &OperationRun,
    cancel_requested: bool,
    reason: Option<&str>,
) -> Decision {
    let completed = |wanted: RunOutcome| {
        if run.outcome == wanted {
            Decision::Unchanged(format!(
                "run {} already completed as {}",
                run.id, run.outcome
            ))
        } else {
            Decision::Refused(format!(
                "run {} already completed as {}; a completion is never overwritten",
                run.id, run.outcome
            ))
        }
    };
    match (action, run.status) {
        (RunAction::Cancel, RunStatus::Queued) => Decision::Complete {
            outcome: RunOutcome::Cancelled,
            failure: None,
        },
        (RunAction::Cancel, RunStatus::Running) if cancel_requested => Decision::Unchanged(
            format!("a cancel of run {} was already requested", run.id),
        ),
        (RunAction::Cancel, RunStatus::Running) => Decision::RequestCancel,
        (RunAction::Cancel, RunStatus::Completed) => completed(RunOutcome::Cancelled),
        (RunAction::Fail, RunStatus::Queued | RunStatus::Running) => Decision::Complete {
            outcome: RunOutcome::Failed,
            failure: Some(Failure::new(
                FAILED_BY_OPERATOR,
                reason
                    .filter(|r| !r.trim().is_empty())
                    .unwrap_or("failed by an operator"),
            )),
        },
        (RunAction::Fail, RunStatus::Completed) => completed(RunOutcome::Failed),
        (RunAction::Retry, RunStatus::Completed)
            if run.run_type.catalog().dedupe_window == DedupeWindow::Forever =>
        {
            Decision::Refused(format!(
                "type {} keeps one run per identity forever; run {} cannot be retried",
                run.run_type, run.id
            ))
        }
        (RunAction::Retry, RunStatus::Completed) if retryable(run.outcome) => Decision::Retry,
        (RunAction::Retry, RunStatus::Completed) => Decision::Refused(format!(
            "run {} completed as {}; only failed, partially_succeeded, blocked or cancelled runs are retried",
            run.id, run.outcome
        )),
        (RunAction::Retry, status) => Decision::Refused(format!(
            "run {} is {status}; only a completed run is retried",
            run.id
        )),
    }
}

/// The result shape every side answers an action with:
/// `{"run_id", "action", "result", "new_run_id"?, "deduplicated"?, "error"?}`.
pub fn result_json(
    run_id: i64,
    action: RunAction,
    result: ActionResult,
    new_run: Option<(i64, bool)>,
    error: Option<&str>,
) -> Value {
    let mut out = json!({"run_id": run_id, "action": action.as_str(), "result": result.as_str()});
    if let Some((id, deduplicated)) = new_run {
        out["new_run_id"] = json!(id);
        out["deduplicated"] = json!(deduplicated);
    }
    if let Some(error) = error {
        out["error"] = json!(error);
    }
    out
}
