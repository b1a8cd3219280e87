//! Phase 2: each run's progress commands, planned (a start, 3 to 6 increments, 0 to 2 failure
//! appends, a completion, sometimes a stale start after it, and with the `late-progress`
//! injection, for some runs held for ever, late counts and failures after all that; the
//! operator's actions are planned by [`super::operator`]) and worded for the run's id once it
//! is known.

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::Rng;
use serde_json::{json, Value};

use super::model::{
    ApiAction, Counts, Identity, Message, PlannedFailure, PlannedRun, Step, StepAction, OPERATOR,
    OPERATOR_USER, TWICE,
};
use super::shuffled_json::to_shuffled_string;
use operation_runs::domain::action::RunAction;
use operation_runs::domain::summary_counts::SUMMARY_COUNT_KEYS;
use operation_runs::domain::RunOutcome;

/// Share of runs that also get a start report after their completion.
const LATE_START: f64 = 0.1;
/// `append_failures` commands of the failure flood (far past the stored failures' cap).
pub const FLOOD_COMMANDS: usize = 300;
/// Failure entries in each of them.
pub const FLOOD_ENTRIES: usize = 50;
/// Characters of each flood entry's message (about 1 KB, within the 1,000-character cut).
const FLOOD_MESSAGE_CHARS: usize = 990;

/// The message of `step` for run `run_id` of `identity`, keys in random order (or the API
/// request of an action sent over the API).
pub(super) fn progress_message(
    step: &Step,
    run_id: i64,
    identity: &Identity,
    rng: &mut StdRng,
) -> Message {
    if step.over_api {
        return api_message(step, run_id, identity);
    }
    let mut body = json!({
        "command_id": step.command_id,
        "run_id": run_id,
        "workspace_id": identity.workspace_id,
        "tenant_id": identity.tenant_id,
    });
    let fields = body.as_object_mut().expect("an object");
    let kind = match &step.action {
        StepAction::Start => {
            fields.insert("status".into(), json!("running"));
            "update_run"
        }
        StepAction::Increment(counts) => {
            fields.insert("counts".into(), json!(counts));
            "increment_summary_counts"
        }
        StepAction::AppendFailures(failures) => {
            fields.insert("failures".into(), failures_json(failures));
            "append_failures"
        }
        StepAction::Complete {
            outcome,
            counts,
            failures,
        } => {
            // An outcome alone also means completion: both wordings are valid.
            if rng.random_bool(0.5) {
                fields.insert("status".into(), json!("completed"));
            }
            fields.insert("outcome".into(), json!(outcome.as_str()));
            if !counts.is_empty() {
                fields.insert("summary_counts".into(), json!(counts));
            }
            if !failures.is_empty() {
                fields.insert("failures".into(), failures_json(failures));
            }
            "update_run"
        }
        StepAction::Cancel => operator_fields(fields, None, "cancel_run", rng),
        StepAction::Fail { reason } => operator_fields(fields, Some(reason), "fail_run", rng),
        StepAction::Retry => operator_fields(fields, None, "retry_run", rng),
    };
    fields.insert("kind".into(), json!(kind));
    Message {
        routing_key: kind,
        body: to_shuffled_string(&body, rng).into_bytes(),
        message_id: step.command_id.clone(),
        fresh: true,
        api: None,
    }
}

/// An operator action sent over the API: the run, the action, a fail's reason.
fn api_message(step: &Step, run_id: i64, identity: &Identity) -> Message {
    let (action, reason) = match &step.action {
        StepAction::Cancel => (RunAction::Cancel, None),
        StepAction::Retry => (RunAction::Retry, None),
        StepAction::Fail { reason } => (RunAction::Fail, Some(reason.clone())),
        other => unreachable!("only operator actions go over the API, not {other:?}"),
    };
    Message {
        routing_key: action.as_str(),
        body: Vec::new(),
        message_id: step.command_id.clone(),
        fresh: true,
        api: Some(ApiAction {
            run_id,
            action,
            reason,
            workspace_id: identity.workspace_id,
            tenant_id: identity.tenant_id,
        }),
    }
}

/// Adds who acts (and, for a fail, why; else sometimes an explicit `null` reason) to an
/// operator action's body; returns its kind.
fn operator_fields(
    fields: &mut serde_json::Map<String, Value>,
    reason: Option<&str>,
    kind: &'static str,
    rng: &mut StdRng,
) -> &'static str {
    fields.insert("initiator_name".into(), json!(OPERATOR));
    fields.insert("user_id".into(), json!(OPERATOR_USER));
    match reason {
        Some(reason) => {
            fields.insert("reason".into(), json!(reason));
        }
        None if rng.random_bool(0.5) => {
            fields.insert("reason".into(), Value::Null);
        }
        None => {}
    }
    kind
}

fn failures_json(failures: &[PlannedFailure]) -> Value {
    failures
        .iter()
        .map(|f| json!({"code": f.code, "message": f.message, "item": f.item}))
        .collect()
}

/// The progress commands of run `i`: a start, 3 to 6 increments with 0 to 2 failure appends
/// among them, a completion (sometimes with counts and a failure of its own) and sometimes a
/// late start; each one published twice with probability [`TWICE`].
pub(super) fn plan_run(i: usize, rng: &mut StdRng) -> PlannedRun {
    let mut actions = Vec::new();
    for _ in 0..rng.random_range(3..=6) {
        actions.push(StepAction::Increment(random_counts(rng)));
    }
    for _ in 0..rng.random_range(0..=2) {
        let at = rng.random_range(0..=actions.len());
        actions.insert(at, StepAction::AppendFailures(Vec::new()));
    }
    actions.insert(0, StepAction::Start);
    let outcome = *[
        RunOutcome::Succeeded,
        RunOutcome::PartiallySucceeded,
        RunOutcome::Failed,
        RunOutcome::Blocked,
    ]
    .choose(rng)
    .expect("not empty");
    let counts = if rng.random_bool(0.3) {
        random_counts(rng)
    } else {
        Counts::new()
    };
    let with_failure = rng.random_bool(0.1);
    actions.push(StepAction::Complete {
        outcome,
        counts,
        failures: Vec::new(),
    });
    if rng.random_bool(LATE_START) {
        // A start report that arrives after the completion (a slow executor thread): it must be
        // accounted for and ignored as stale, changing nothing.
        actions.push(StepAction::Start);
    }
    let steps = actions
        .into_iter()
        .enumerate()
        .map(|(s, mut action)| {
            let command_id = format!("p-{i}-{s}");
            match &mut action {
                StepAction::AppendFailures(f) => {
                    *f = random_failures(&command_id, rng.random_range(1..=2), rng)
                }
                StepAction::Complete { failures, .. } if with_failure => {
                    *failures = random_failures(&command_id, 1, rng)
                }
                _ => {}
            }
            Step {
                command_id,
                action,
                twice: rng.random_bool(TWICE),
                over_api: false,
            }
        })
        .collect();
    PlannedRun {
        steps,
        flood: false,
        late_from: None,
        held_from: None,
    }
}

/// Adds 1 or 2 late commands to run `i` (after its completion and any stale start): counts
/// and failures a slow executor reports once the run is over. They are applied (a completed run
/// takes late counts and failures), so they are part of what the run must end up as.
pub(super) fn add_late_progress(i: usize, run: &mut PlannedRun, rng: &mut StdRng) {
    run.late_from = Some(run.steps.len());
    for _ in 0..rng.random_range(1..=2) {
        let command_id = format!("p-{i}-{}", run.steps.len());
        let action = if rng.random_bool(0.6) {
            StepAction::Increment(random_counts(rng))
        } else {
            StepAction::AppendFailures(random_failures(&command_id, rng.random_range(1..=2), rng))
        };
        run.steps.push(Step {
            command_id,
            action,
            twice: rng.random_bool(TWICE),
            over_api: false,
        });
    }
}

/// Turns run `i` into the failure flood: [`FLOOD_COMMANDS`] `append_failures` of
/// [`FLOOD_ENTRIES`] entries each right after its start (about 16 MB of failures for one run),
/// command ids renumbered so they stay `p-{i}-{position}`.
pub(super) fn add_failure_flood(i: usize, run: &mut PlannedRun) {
    let flood = (0..FLOOD_COMMANDS).map(|k| {
        let failures = (0..FLOOD_ENTRIES)
            .map(|j| {
                let item = format!("flood-{i}-{k}#{j}");
                let mut message = format!("item {item} could not be processed: ");
                let pad = FLOOD_MESSAGE_CHARS.saturating_sub(message.len());
                message.push_str(&"throttled by the provider; ".repeat(pad / 27 + 1)[..pad]);
                PlannedFailure {
                    code: "graph.throttled",
                    message,
                    item,
                }
            })
            .collect();
        Step {
            command_id: String::new(),
            action: StepAction::AppendFailures(failures),
            twice: false,
            over_api: false,
        }
    });
    let start = run
        .steps
        .iter()
        .position(|s| matches!(s.action, StepAction::Start));
    let at = start.map_or(0, |s| s + 1);
    run.steps.splice(at..at, flood);
    for (s, step) in run.steps.iter_mut().enumerate() {
        step.command_id = format!("p-{i}-{s}");
    }
    run.flood = true;
}

fn random_counts(rng: &mut StdRng) -> Counts {
    let keys = rng.random_range(1..=3);
    let chosen: Vec<&'static str> = SUMMARY_COUNT_KEYS
        .choose_multiple(rng, keys)
        .copied()
        .collect();
    chosen
        .into_iter()
        .map(|k| (k, rng.random_range(1..=40)))
        .collect()
}

fn random_failures(command_id: &str, n: usize, rng: &mut StdRng) -> Vec<PlannedFailure> {
    (0..n)
        .map(|j| {
            let item = format!("{command_id}#{j}");
            PlannedFailure {
                code: [
                    "graph.throttled",
                    "item.invalid",
                    "policy.conflict",
                    "timeout",
                ]
                .choose(rng)
                .expect("not empty"),
                message: format!("item {item} could not be processed"),
                item,
            }
        })
        .collect()
}
