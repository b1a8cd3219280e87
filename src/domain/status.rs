//! Run status and outcome, and the rule that says which changes are legal.
//!
//! `queued → running → completed`, or `queued → completed` (failed or blocked before it started).
//! The outcome leaves `pending` only on completion. Repeating the current state is a no-op; going
//! back is refused as `invalid_transition`, which the consumer treats as a stale, out-of-order
//! message (see [`TransitionError::is_stale`]).

use std::fmt;
use std::str::FromStr;

use super::error::{ErrorCode, Rejection};

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RunStatus {
    /// Accepted, not started.
    Queued,
    /// An executor reported the start.
    Running,
    /// Finished, with a final outcome.
    Completed,
}

/// How a run ended; `pending` until it completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunOutcome {
    /// Not finished.
    Pending,
    /// Finished with no failures.
    Succeeded,
    /// Finished, some items failed.
    PartiallySucceeded,
    /// Finished without success.
    Failed,
    /// Could not run (a precondition was not met).
    Blocked,
    /// Stopped on request: cancelled while queued, or by its executor after a cancel request.
    Cancelled,
}

macro_rules! wire_enum {
    ($t:ty, $what:literal, $($variant:ident => $s:literal),+ $(,)?) => {
        impl $t {
            /// The wire form.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $s),+ }
            }
            /// Every value, in order.
            pub const ALL: &'static [$t] = &[$(Self::$variant),+];
        }
        impl FromStr for $t {
            type Err = Rejection;
            fn from_str(s: &str) -> Result<Self, Rejection> {
                match s {
                    $($s => Ok(Self::$variant),)+
                    other => Err(Rejection::new(
                        ErrorCode::InvalidField,
                        format!(concat!("unknown ", $what, " {:?}"), other),
                    )),
                }
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_enum!(RunStatus, "status", Queued => "queued", Running => "running", Completed => "completed");
wire_enum!(RunOutcome, "outcome",
    Pending => "pending",
    Succeeded => "succeeded",
    PartiallySucceeded => "partially_succeeded",
    Failed => "failed",
    Blocked => "blocked",
    Cancelled => "cancelled",
);

/// A run's status and outcome together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunState {
    /// The status.
    pub status: RunStatus,
    /// The outcome; `pending` exactly when the status is not `completed`.
    pub outcome: RunOutcome,
}

/// What applying a requested state to the current one does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The run moves to the new state.
    Apply(RunState),
    /// The run is already there: nothing changes.
    NoOp,
}

/// Why a requested state cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// The request goes back (e.g. start after completion).
    #[error("cannot go back from {from} to {to}")]
    Backward {
        /// The current status.
        from: RunStatus,
        /// The requested status.
        to: RunStatus,
    },
    /// The run completed with another outcome.
    #[error("run already completed as {current}, cannot complete it as {requested}")]
    ConflictingOutcome {
        /// The stored outcome.
        current: RunOutcome,
        /// The requested outcome.
        requested: RunOutcome,
    },
    /// The request itself is malformed (completion without a final outcome, or a final outcome
    /// without completion).
    #[error("{0}")]
    Malformed(&'static str),
}

impl TransitionError {
    /// A backward move is what out-of-order delivery produces: the consumer acks and ignores it.
    pub fn is_stale(&self) -> bool {
        matches!(self, Self::Backward { .. })
    }

    /// The rejection sent to the dead-letter queue or the reply.
    pub fn rejection(&self) -> Rejection {
        Rejection::new(ErrorCode::InvalidTransition, self.to_string())
    }
}

impl RunState {
    /// A new run: queued, pending.
    pub const QUEUED: RunState = RunState {
        status: RunStatus::Queued,
        outcome: RunOutcome::Pending,
    };

    /// Decides what a request for `status` (and `outcome`) does to this state.
    ///
    /// An outcome without a status means completion with that outcome.
    pub fn transition(
        self,
        status: Option<RunStatus>,
        outcome: Option<RunOutcome>,
    ) -> Result<Transition, TransitionError> {
        let target_status = match (status, outcome) {
            (Some(s), _) => s,
            (None, Some(RunOutcome::Pending)) | (None, None) => return Ok(Transition::NoOp),
            (None, Some(_)) => RunStatus::Completed,
        };
        let target_outcome = outcome.unwrap_or(RunOutcome::Pending);
        match (target_status, target_outcome) {
            (RunStatus::Completed, RunOutcome::Pending) => {
                return Err(TransitionError::Malformed(
                    "completing a run needs an outcome: succeeded, partially_succeeded, failed, blocked or cancelled",
                ))
            }
            (RunStatus::Queued | RunStatus::Running, o) if o != RunOutcome::Pending => {
                return Err(TransitionError::Malformed(
                    "an outcome other than pending is only allowed with status completed",
                ))
            }
            _ => {}
        }
        let target = RunState {
            status: target_status,
            outcome: target_outcome,
        };
        if target_status < self.status {
            return Err(TransitionError::Backward {
                from: self.status,
                to: target_status,
            });
        }
        if target_status == self.status {
            if target.outcome == self.outcome {
                return Ok(Transition::NoOp);
            }
            return Err(TransitionError::ConflictingOutcome {
                current: self.outcome,
                requested: target.outcome,
            });
        }
        Ok(Transition::Apply(target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RunOutcome::*;
    use RunStatus::*;

    fn st(status: RunStatus, outcome: RunOutcome) -> RunState {
        RunState { status, outcome }
    }

    #[derive(Debug, PartialEq)]
    enum Expect {
        Apply(RunStatus, RunOutcome),
        NoOp,
        Stale,
        Invalid,
    }

    #[test]
    fn every_transition_behaves_as_listed() {
        use Expect::*;
        let table: Vec<(RunState, Option<RunStatus>, Option<RunOutcome>, Expect)> = vec![
            (
                st(Queued, Pending),
                Some(Running),
                None,
                Apply(Running, Pending),
            ),
            (
                st(Queued, Pending),
                Some(Completed),
                Some(Failed),
                Apply(Completed, Failed),
            ),
            (
                st(Queued, Pending),
                Some(Completed),
                Some(Blocked),
                Apply(Completed, Blocked),
            ),
            (
                st(Queued, Pending),
                None,
                Some(Succeeded),
                Apply(Completed, Succeeded),
            ),
            (st(Queued, Pending), Some(Queued), None, NoOp),
            (st(Queued, Pending), None, None, NoOp),
            (st(Queued, Pending), Some(Completed), None, Invalid),
            (st(Queued, Pending), Some(Running), Some(Succeeded), Invalid),
            (
                st(Running, Pending),
                Some(Completed),
                Some(Succeeded),
                Apply(Completed, Succeeded),
            ),
            (
                st(Running, Pending),
                Some(Completed),
                Some(PartiallySucceeded),
                Apply(Completed, PartiallySucceeded),
            ),
            (st(Running, Pending), Some(Running), None, NoOp),
            (st(Running, Pending), Some(Running), Some(Pending), NoOp),
            (st(Running, Pending), Some(Queued), None, Stale),
            (
                st(Completed, Succeeded),
                Some(Completed),
                Some(Succeeded),
                NoOp,
            ),
            (st(Completed, Succeeded), None, Some(Succeeded), NoOp),
            (
                st(Completed, Succeeded),
                Some(Completed),
                Some(Failed),
                Invalid,
            ),
            (
                st(Running, Pending),
                Some(Completed),
                Some(Cancelled),
                Apply(Completed, Cancelled),
            ),
            (
                st(Completed, Cancelled),
                Some(Completed),
                Some(Succeeded),
                Invalid,
            ),
            (st(Completed, Failed), Some(Running), None, Stale),
            (st(Completed, Failed), Some(Queued), None, Stale),
        ];
        for (from, status, outcome, expected) in table {
            let got = match from.transition(status, outcome) {
                Ok(Transition::Apply(s)) => Apply(s.status, s.outcome),
                Ok(Transition::NoOp) => NoOp,
                Err(e) if e.is_stale() => Stale,
                Err(e) => {
                    assert_eq!(e.rejection().code, ErrorCode::InvalidTransition);
                    Invalid
                }
            };
            assert_eq!(got, expected, "from {from:?} with {status:?}/{outcome:?}");
        }
    }

    #[test]
    fn statuses_and_outcomes_round_trip_their_wire_form() {
        for s in RunStatus::ALL {
            assert_eq!(s.as_str().parse::<RunStatus>().unwrap(), *s);
        }
        for o in RunOutcome::ALL {
            assert_eq!(o.as_str().parse::<RunOutcome>().unwrap(), *o);
        }
        assert!("done".parse::<RunStatus>().is_err());
    }
}
