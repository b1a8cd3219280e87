//! The operator's actions checked against what the run asked for (the `operator-actions`
//! injection, see [`crate::chaos::plan::operator`]):
//!
//! - `cancelled`: runs sent a `cancel_run` that ended `cancelled` (at once while queued, or by
//!   their executor's completion after the request);
//! - `failed_by_operator`: runs sent a `fail_run` that ended `failed` with the failure
//!   `run.failed_by_operator`;
//! - `retried`: runs sent a `retry_run` that have exactly one retry, a run whose
//!   `context.retry_of` names them, in their identity, queued. A second retry run of one run
//!   counts under `duplicate_runs`; none although the retry was applied, under `double_applied`.
//!
//! Each count must equal what was asked (else a problem fails the run). Every action command
//! applied must be recorded once in `operation_run_actions`, with the result its run's state
//! called for (`done` for a cancel while queued, a fail or a retry; `requested` for a cancel
//! while running, or `done` / `unchanged` when, with two instances consuming, it overtook the
//! start or was overtaken by the executor's completion; every retry of one run naming the same
//! new run): a second record is an action applied twice (`double_applied`). Retries are sent
//! once their run's completion is applied (as an operator retries a run seen completed), so a
//! retry is never refused. Records go with their run, so runs deleted by run retention
//! are checked on their state only.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use crate::chaos::plan::model::StepAction;
use crate::chaos::plan::workload::Workload;
use operation_runs::domain::action::FAILED_BY_OPERATOR;
use operation_runs::domain::RunOutcome;

/// The result of a cancel, a fail or a retry asked of a run in the state it asks for.
const DONE: &[&str] = &["done"];
/// The results of a cancel asked after the run's start (see [`check`]).
const CANCEL_WHILE_RUNNING: &[&str] = &["requested", "done", "unchanged"];

/// A run as stored (or as its latest event carries it), as far as the actions show.
#[derive(Debug, Clone)]
pub struct RunSeen<'a> {
    /// Its id.
    pub id: i64,
    /// Its scope and identity hash.
    pub key: (i64, Option<i64>, &'a str),
    /// `status`.
    pub status: &'a str,
    /// `outcome`.
    pub outcome: &'a str,
    /// `context.retry_of`.
    pub retry_of: Option<i64>,
    /// `failure_summary`.
    pub failure_summary: &'a Value,
    /// False when run retention deleted the row (its action records went with it).
    pub has_row: bool,
}

/// One row of `operation_run_actions`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ActionRecord {
    /// The broker command that asked for it.
    pub command_id: Option<String>,
    /// The run acted on.
    pub run_id: i64,
    /// `cancel`, `retry` or `fail`.
    pub action: String,
    /// `done`, `requested`, `unchanged` or `refused`.
    pub result: String,
    /// The run a retry dispatched or found.
    pub new_run_id: Option<i64>,
}

/// What was asked and what came of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ActionFigures {
    /// Runs sent a `cancel_run`.
    pub asked_cancel: u64,
    /// Of those, the runs that ended `cancelled`.
    pub cancelled: u64,
    /// Runs sent a `fail_run`.
    pub asked_fail: u64,
    /// Of those, the runs that ended `failed` with `run.failed_by_operator`.
    pub failed_by_operator: u64,
    /// Runs sent at least one `retry_run`.
    pub asked_retry: u64,
    /// Runs sent two (the second must find the first's retry).
    pub asked_retry_twice: u64,
    /// Of the runs sent one, those with exactly one retry run.
    pub retried: u64,
}

/// What the checks found beyond the counts.
#[derive(Debug, Default)]
pub struct ActionFindings {
    /// The counts.
    pub figures: ActionFigures,
    /// Runs whose action had another effect than asked, or one applied twice.
    pub double_applied: Vec<String>,
    /// Runs with more than one retry run.
    pub duplicate_runs: Vec<String>,
    /// Anything else wrong.
    pub problems: Vec<String>,
}

/// Checks the actions of every run whose progress was sent (`sent(i)`: identity `i`'s run
/// `run_ids[i]` got its steps) against `runs` (rows and deleted runs' latest events) and
/// `records`; `inbox` holds the applied command ids.
pub fn check(
    workload: &Workload,
    run_ids: &[Option<i64>],
    sent: impl Fn(usize) -> bool,
    inbox: &HashSet<String>,
    runs: &[RunSeen<'_>],
    records: &[ActionRecord],
) -> ActionFindings {
    let mut found = ActionFindings::default();
    let by_id: HashMap<i64, &RunSeen<'_>> = runs.iter().map(|r| (r.id, r)).collect();
    let mut retries_of: HashMap<i64, Vec<&RunSeen<'_>>> = HashMap::new();
    for run in runs {
        if let Some(of) = run.retry_of {
            retries_of.entry(of).or_default().push(run);
        }
    }
    let mut records_of: HashMap<&str, Vec<&ActionRecord>> = HashMap::new();
    for record in records {
        match &record.command_id {
            Some(id) => records_of.entry(id).or_default().push(record),
            None => found.problems.push(format!(
                "an action on run {} was recorded without its command id",
                record.run_id
            )),
        }
    }
    let mut action_ids: HashSet<&str> = HashSet::new();
    let f = &mut found.figures;
    for (i, planned) in workload.runs.iter().enumerate() {
        let (Some(run_id), true) = (run_ids[i], sent(i)) else {
            continue;
        };
        let Some(stored) = by_id.get(&run_id) else {
            continue; // compared (and counted) by the checks of every run
        };
        if planned.cancel_asked() {
            f.asked_cancel += 1;
            f.cancelled += u64::from(stored.outcome == RunOutcome::Cancelled.as_str());
        }
        if planned.operator_failure().is_some() {
            f.asked_fail += 1;
            let coded = stored
                .failure_summary
                .as_array()
                .is_some_and(|a| a.iter().any(|e| e["code"] == FAILED_BY_OPERATOR));
            f.failed_by_operator +=
                u64::from(stored.outcome == RunOutcome::Failed.as_str() && coded);
        }
        let retries: Vec<&str> = planned.retries().map(|s| s.command_id.as_str()).collect();
        if !retries.is_empty() {
            f.asked_retry += 1;
            f.asked_retry_twice += u64::from(retries.len() > 1);
            let identity = &workload.identities[i];
            let key = (
                identity.workspace_id,
                identity.tenant_id,
                identity.hash.as_str(),
            );
            match retries_of
                .get(&run_id)
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                [retry] => {
                    f.retried += 1;
                    if retry.key != key || (retry.status, retry.outcome) != ("queued", "pending") {
                        found.problems.push(format!(
                            "run {}, the retry of run {run_id}, is {}/{} in {:?}; expected queued/pending in {key:?}",
                            retry.id, retry.status, retry.outcome, retry.key
                        ));
                    }
                }
                [] if retries.iter().all(|id| inbox.contains(*id)) => found
                    .double_applied
                    .push(format!("run {run_id}: retried, yet no run retries it")),
                [] => {} // a retry never applied counts as lost
                more => found.duplicate_runs.push(format!(
                    "run {run_id}: {} retry runs {:?}",
                    more.len(),
                    more.iter().map(|r| r.id).collect::<Vec<_>>()
                )),
            }
        }
        if !stored.has_row {
            continue;
        }
        let mut started = false;
        let mut retry_runs: HashSet<Option<i64>> = HashSet::new();
        for step in &planned.steps {
            let (action, wanted) = match &step.action {
                StepAction::Start => {
                    started = true;
                    continue;
                }
                // Asked while running, it is `requested`; a cancel that overtook the start
                // (two instances consume) finds the run queued (`done`), and one overtaken by
                // the executor's completion finds it cancelled already (`unchanged`).
                StepAction::Cancel if started => ("cancel", CANCEL_WHILE_RUNNING),
                StepAction::Cancel => ("cancel", DONE),
                StepAction::Fail { .. } => ("fail", DONE),
                StepAction::Retry => ("retry", DONE),
                _ => continue,
            };
            action_ids.insert(&step.command_id);
            if !inbox.contains(&step.command_id) {
                continue; // counted as lost
            }
            match records_of
                .get(step.command_id.as_str())
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                [record] => {
                    if (record.run_id, record.action.as_str()) != (run_id, action)
                        || !wanted.contains(&record.result.as_str())
                    {
                        found.double_applied.push(format!(
                            "run {run_id}: {} recorded as {} of run {}: {}, expected {action}: {wanted:?}",
                            step.command_id, record.action, record.run_id, record.result
                        ));
                    }
                    if action == "retry" {
                        retry_runs.insert(record.new_run_id);
                    }
                }
                [] => found.problems.push(format!(
                    "run {run_id}: action {} applied without its record",
                    step.command_id
                )),
                more => found.double_applied.push(format!(
                    "run {run_id}: action {} recorded {} times",
                    step.command_id,
                    more.len()
                )),
            }
        }
        if retry_runs.len() > 1 || retry_runs.contains(&None) {
            found.double_applied.push(format!(
                "run {run_id}: its retries name the runs {retry_runs:?}, not one"
            ));
        }
    }
    let strays = records_of
        .keys()
        .filter(|id| !action_ids.contains(**id))
        .count();
    let f = found.figures;
    if strays > 0 {
        found.problems.push(format!(
            "{strays} action record(s) of commands this run did not send as actions on a stored run"
        ));
    }
    for (what, asked, got) in [
        ("cancel", f.asked_cancel, f.cancelled),
        ("fail", f.asked_fail, f.failed_by_operator),
        ("retry", f.asked_retry, f.retried),
    ] {
        if asked != got {
            found.problems.push(format!(
                "asked for {asked} {what}(s) by the operator; {got} had their effect"
            ));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::plan::injections::Injections;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use serde_json::json;

    /// A stored run: id, identity key, status, outcome, `retry_of`, failures.
    type Row = (
        i64,
        (i64, Option<i64>, String),
        &'static str,
        &'static str,
        Option<i64>,
        Value,
    );

    struct Perfect {
        workload: Workload,
        run_ids: Vec<Option<i64>>,
        inbox: HashSet<String>,
        rows: Vec<Row>,
        records: Vec<ActionRecord>,
    }

    /// A workload whose every identity `i` got run `i + 1`, the rows and records a perfect
    /// service leaves (retry runs from 100,001 on).
    fn perfect() -> Perfect {
        let workload = Workload::generate(6000, &Injections::all(), &mut StdRng::seed_from_u64(3));
        let run_ids: Vec<Option<i64>> = (0..workload.runs.len())
            .map(|i| Some(i as i64 + 1))
            .collect();
        let inbox = workload
            .runs
            .iter()
            .flat_map(|r| r.steps.iter().map(|s| s.command_id.clone()))
            .collect();
        let (mut rows, mut records) = (Vec::new(), Vec::new());
        let mut next_retry = 100_000;
        for (i, run) in workload.runs.iter().enumerate() {
            let id = i as i64 + 1;
            let identity = &workload.identities[i];
            let key = (
                identity.workspace_id,
                identity.tenant_id,
                identity.hash.as_str().to_owned(),
            );
            let failures = match run.operator_failure() {
                Some(reason) => json!([{"code": FAILED_BY_OPERATOR, "message": reason}]),
                None => json!([]),
            };
            let outcome = run.outcome().as_str();
            rows.push((id, key.clone(), "completed", outcome, None, failures));
            let mut started = false;
            let mut retry = None;
            for step in &run.steps {
                let (action, result) = match step.action {
                    StepAction::Start => {
                        started = true;
                        continue;
                    }
                    StepAction::Cancel if started => ("cancel", "requested"),
                    StepAction::Cancel => ("cancel", "done"),
                    StepAction::Fail { .. } => ("fail", "done"),
                    StepAction::Retry => ("retry", "done"),
                    _ => continue,
                };
                if action == "retry" && retry.is_none() {
                    next_retry += 1;
                    retry = Some(next_retry);
                    rows.push((
                        next_retry,
                        key.clone(),
                        "queued",
                        "pending",
                        Some(id),
                        json!([]),
                    ));
                }
                records.push(ActionRecord {
                    command_id: Some(step.command_id.clone()),
                    run_id: id,
                    action: action.into(),
                    result: result.into(),
                    new_run_id: (action == "retry").then_some(retry).flatten(),
                });
            }
        }
        Perfect {
            workload,
            run_ids,
            inbox,
            rows,
            records,
        }
    }

    fn seen(rows: &[Row]) -> Vec<RunSeen<'_>> {
        rows.iter()
            .map(|(id, key, status, outcome, retry_of, failures)| RunSeen {
                id: *id,
                key: (key.0, key.1, key.2.as_str()),
                status,
                outcome,
                retry_of: *retry_of,
                failure_summary: failures,
                has_row: true,
            })
            .collect()
    }

    /// [`check`] of every run of `p`, each sent its progress.
    fn check_all(p: &Perfect) -> ActionFindings {
        check(
            &p.workload,
            &p.run_ids,
            |_| true,
            &p.inbox,
            &seen(&p.rows),
            &p.records,
        )
    }

    #[test]
    fn a_perfect_run_does_what_was_asked_and_records_each_action_once() {
        let p = perfect();
        let found = check_all(&p);
        let f = found.figures;
        assert!(
            f.asked_cancel > 0 && f.asked_fail > 0 && f.asked_retry > 0 && f.asked_retry_twice > 0,
            "{f:?}"
        );
        assert_eq!(
            (f.cancelled, f.failed_by_operator, f.retried),
            (f.asked_cancel, f.asked_fail, f.asked_retry)
        );
        assert!(
            found.double_applied.is_empty() && found.duplicate_runs.is_empty(),
            "{found:?}"
        );
        assert!(found.problems.is_empty(), "{:?}", found.problems);
    }

    #[test]
    fn a_second_retry_run_a_second_record_or_a_missed_cancel_are_found() {
        let mut p = perfect();
        // A second retry run of the first retried run.
        let (_, key, _, _, of, _) = p.rows.iter().find(|r| r.4.is_some()).cloned().unwrap();
        p.rows
            .push((999_999, key, "queued", "pending", of, json!([])));
        // An action recorded twice.
        let twice = p.records[0].clone();
        p.records.push(twice);
        // A cancelled run that ended otherwise.
        let cancelled = p
            .workload
            .runs
            .iter()
            .position(|r| r.cancel_asked() && r.retries().next().is_none())
            .unwrap();
        p.rows
            .iter_mut()
            .find(|r| r.0 == cancelled as i64 + 1)
            .unwrap()
            .3 = "succeeded";
        let found = check_all(&p);
        assert_eq!(found.duplicate_runs.len(), 1, "{found:?}");
        assert_eq!(found.double_applied.len(), 1, "{found:?}");
        assert_eq!(found.figures.cancelled + 1, found.figures.asked_cancel);
        assert!(
            found.problems.iter().any(|p| p.contains("cancel")),
            "{:?}",
            found.problems
        );
    }
}
