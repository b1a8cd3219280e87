//! The `operator-actions` injection: an operator acting on runs through the broker commands
//! `cancel_run`, `retry_run` and `fail_run`, in the middle of the executors' own progress. Pure:
//! it rewrites a planned run's steps, and says what each action must have done.
//!
//! - **Cancelled while queued**: the run's only step is a `cancel_run` (its executor never
//!   started it); it must end `completed`/`cancelled` with no counts.
//! - **Cancelled while running**: a `cancel_run` somewhere after the start; the executor honours
//!   it: what it still sends (counts, failures) is applied, and its completion says `cancelled`.
//! - **Failed by the operator** (the executor is gone): a `fail_run` with a reason, while queued
//!   (its only step) or after the start (nothing of the executor follows); the run must end
//!   `completed`/`failed` with one failure `run.failed_by_operator` carrying the reason, besides
//!   the failures sent before.
//! - **Retried**: a `retry_run` of a run that completed `failed`, `partially_succeeded`,
//!   `blocked` or `cancelled`, sometimes with a second `retry_run` of its own command id (an
//!   operator clicking twice), published apart once the completion is applied (as an operator
//!   retries a run seen completed), the completion itself held back to the end of the stream
//!   (see [`super::model::RetryGroup`]): exactly one new run must hold `context.retry_of` = the
//!   run, in its identity, queued (nobody executes it).
//!
//! Half the actions go over the API instead of the broker (`POST /v1/runs/{id}/cancel|retry|fail`
//! with an operate token of the run's scope, the command id as `Idempotency-Key`, sent again
//! after a lost answer). Each action may be sent twice like any other (same command id): a
//! redelivered command or a repeated request has no second effect. Only types whose runs nothing else touches get actions: not the
//! rejected type (the service may complete its runs before any progress) nor the type held for
//! ever (late progress, the viewers' large run; its runs cannot be retried).

use rand::rngs::StdRng;
use rand::Rng;

use super::model::{PlannedRun, Step, StepAction, HELD_FOREVER_TYPE, REJECTED_TYPE, TWICE};
use operation_runs::domain::action::retryable;
use operation_runs::domain::{OperationRunType, RunOutcome};

/// Share of eligible runs cancelled while queued.
const CANCEL_QUEUED: f64 = 0.015;
/// Share of eligible runs cancelled while running.
const CANCEL_RUNNING: f64 = 0.02;
/// Share of eligible runs failed by the operator while queued.
const FAIL_QUEUED: f64 = 0.005;
/// Share of eligible runs failed by the operator while running.
const FAIL_RUNNING: f64 = 0.015;
/// Share of the eligible runs ending with a retryable outcome that are retried.
const RETRY: f64 = 0.03;
/// Share of retried runs retried a second time (another command id): no second run.
const RETRY_AGAIN: f64 = 0.3;
/// Share of the actions sent over the API (`POST /v1/runs/{id}/…` with an operate token and the
/// step's command id as `Idempotency-Key`) instead of the broker.
const OVER_API: f64 = 0.5;

/// Whether runs of `run_type` may get operator actions.
pub fn eligible(run_type: OperationRunType) -> bool {
    run_type != REJECTED_TYPE && run_type != HELD_FOREVER_TYPE
}

/// With the shares above, makes run `i` (of an eligible type, without late progress) one an
/// operator acts on, then maybe retries it. Command ids stay `p-{i}-{position}`.
pub(super) fn add_operator_actions(i: usize, run: &mut PlannedRun, rng: &mut StdRng) {
    let draw: f64 = rng.random();
    let mut at = 0.0;
    let mut next = |share: f64| {
        at += share;
        draw < at
    };
    if next(CANCEL_QUEUED) {
        run.steps = vec![step(StepAction::Cancel, rng)];
    } else if next(CANCEL_RUNNING) {
        cancel_while_running(run, rng);
    } else if next(FAIL_QUEUED) {
        run.steps = vec![step(fail(i), rng)];
    } else if next(FAIL_RUNNING) {
        fail_while_running(i, run, rng);
    }
    if retryable(run.outcome()) && rng.random_bool(RETRY) {
        let (done, _) = run.completion().expect("every planned run completes");
        // A cancel of the running run is held back with the completion: applied before the
        // start (two consumers, a redelivery), it completes the queued run at once, and run
        // retention could delete that run before the held completion arrives at the end of
        // the stream (seen once on the cluster: the completion dead-lettered `run_not_found`).
        let cancel = run.steps[..done]
            .iter()
            .position(|s| matches!(s.action, StepAction::Cancel));
        run.held_from = Some(cancel.unwrap_or(done));
        run.steps.insert(done + 1, step(StepAction::Retry, rng));
        if rng.random_bool(RETRY_AGAIN) {
            let at = rng.random_range(done + 2..=run.steps.len());
            run.steps.insert(at, step(StepAction::Retry, rng));
        }
    }
    for (s, step) in run.steps.iter_mut().enumerate() {
        step.command_id = format!("p-{i}-{s}");
    }
}

/// A `cancel_run` between the start and the completion, which then says `cancelled`.
fn cancel_while_running(run: &mut PlannedRun, rng: &mut StdRng) {
    let complete = completion(run);
    let at = rng.random_range(1..=complete);
    run.steps.insert(at, step(StepAction::Cancel, rng));
    if let StepAction::Complete { outcome, .. } = &mut run.steps[complete + 1].action {
        *outcome = RunOutcome::Cancelled;
    }
}

/// A `fail_run` after the start, and nothing of the executor after it.
fn fail_while_running(i: usize, run: &mut PlannedRun, rng: &mut StdRng) {
    let at = rng.random_range(1..=completion(run));
    run.steps.truncate(at);
    run.steps.push(step(fail(i), rng));
}

/// The position of the run's `Complete` step (after its start, at 0).
fn completion(run: &PlannedRun) -> usize {
    run.steps
        .iter()
        .position(|s| matches!(s.action, StepAction::Complete { .. }))
        .expect("every planned run completes")
}

fn fail(i: usize) -> StepAction {
    StepAction::Fail {
        reason: format!("executor of run {i} is gone; failed by the chaos operator"),
    }
}

/// An action step, over the broker or the API, whose command id is set by the caller.
fn step(action: StepAction, rng: &mut StdRng) -> Step {
    Step {
        command_id: String::new(),
        action,
        twice: rng.random_bool(TWICE),
        over_api: rng.random_bool(OVER_API),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::plan::steps::plan_run;
    use rand::SeedableRng;

    fn acted_on(seed: u64) -> Vec<PlannedRun> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..4000)
            .map(|i| {
                let mut run = plan_run(i, &mut rng);
                add_operator_actions(i, &mut run, &mut rng);
                run
            })
            .collect()
    }

    fn has(run: &PlannedRun, wanted: fn(&StepAction) -> bool) -> bool {
        run.steps.iter().any(|s| wanted(&s.action))
    }

    #[test]
    fn every_kind_of_action_is_planned_and_every_run_still_completes_once() {
        let runs = acted_on(1);
        let cancelled_queued = runs
            .iter()
            .filter(|r| matches!(r.steps[0].action, StepAction::Cancel))
            .count();
        let cancelled_running = runs
            .iter()
            .filter(|r| {
                !matches!(r.steps[0].action, StepAction::Cancel)
                    && has(r, |a| matches!(a, StepAction::Cancel))
            })
            .count();
        let failed = runs
            .iter()
            .filter(|r| has(r, |a| matches!(a, StepAction::Fail { .. })))
            .count();
        let retried = runs
            .iter()
            .filter(|r| has(r, |a| matches!(a, StepAction::Retry)))
            .count();
        for n in [cancelled_queued, cancelled_running, failed, retried] {
            assert!(
                n >= 10,
                "{cancelled_queued} {cancelled_running} {failed} {retried}"
            );
        }
        for run in &runs {
            let (done, _) = run.completion().expect("completes");
            let after_completion = run.steps[done + 1..]
                .iter()
                .all(|s| matches!(s.action, StepAction::Retry | StepAction::Start));
            assert!(after_completion, "{:?}", run.steps);
        }
    }

    #[test]
    fn a_cancel_while_running_is_honoured_by_the_completion_and_a_fail_ends_the_executor() {
        for run in acted_on(2) {
            let kinds: Vec<&StepAction> = run.steps.iter().map(|s| &s.action).collect();
            if let Some(at) = kinds.iter().position(|a| matches!(a, StepAction::Cancel)) {
                if at > 0 {
                    assert!(matches!(kinds[0], StepAction::Start));
                    assert_eq!(run.outcome(), RunOutcome::Cancelled);
                    assert!(kinds[at..]
                        .iter()
                        .any(|a| matches!(a, StepAction::Complete { .. })));
                } else {
                    assert!(kinds[1..].iter().all(|a| matches!(a, StepAction::Retry)));
                }
            }
            if let Some(at) = kinds
                .iter()
                .position(|a| matches!(a, StepAction::Fail { .. }))
            {
                assert_eq!(run.outcome(), RunOutcome::Failed);
                assert!(kinds[at + 1..]
                    .iter()
                    .all(|a| matches!(a, StepAction::Retry)));
            }
            if let Some(at) = kinds.iter().position(|a| matches!(a, StepAction::Retry)) {
                assert!(retryable(run.outcome()));
                assert_eq!(run.completion().map(|(done, _)| done), Some(at - 1));
            }
        }
    }
}
