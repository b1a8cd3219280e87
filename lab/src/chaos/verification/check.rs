//! The checks behind the closing figures, run once the system has settled.
//!
//! - `lost`: good commands never applied (not in the inbox, dead-lettered or not: either way the
//!   run misses their effect), bad ones not dead-lettered, identities left without a run.
//!   Dead letters of commands that were applied anyway, or that this run never sent, break "the
//!   dead-letter queue holds only the deliberately bad messages": they are problems, reported
//!   apart from the figures, and fail the run too.
//! - `double_applied`: runs whose stored effect differs from the distinct commands sent (summary
//!   counts, each failure once, final state) although every one of their commands is in the
//!   inbox: the difference can only come from a command applied twice (or wrongly). A run the
//!   service completed itself before phase 2 (its job refused, see [`crate::chaos::faults::executors`]) was
//!   sent no progress and must still be exactly that: `completed`/`failed`, no counts, its one
//!   hand-off failure. The flooded run's counts and state are exact; of its failure entries
//!   (the service keeps only the first ones, a documented cap) each stored one must have been sent
//!   and be stored once, and entries without an `item` (the service's own tally) are ignored.
//! - `duplicate_runs`: identities with more than one run, after the dispatches or at the end
//!   (a retry run, whose `context.retry_of` names the run it retries, is not a second run of the
//!   identity: [`super::operator`] checks that each retried run has exactly one).
//! - The operator's actions (`cancelled`, `retried`, `failed_by_operator`): see
//!   [`super::operator`]; a run an operator cancelled or failed is compared like any other, its
//!   outcome `cancelled` or `failed` and, when failed, one failure `run.failed_by_operator`
//!   carrying the reason given.
//! - `missing_events`: per run, over every event known (stored now, or received by the
//!   subscriber: pruned events were received before they went), each sequence number from 1 to
//!   the highest that no event carries (a skip), each further event carrying a number another
//!   event already carries (a restart at 1, or a repeat); runs without events; stored events
//!   the subscriber never received; runs whose latest event does not carry their stored state
//!   (status, outcome, counts, failures: a change whose event was lost).
//!
//! What the checks may assume about retention (the `retention` injection):
//!
//! - The inbox is kept (default window): every applied command id is still there.
//! - Pruning removes a prefix of a run's events, never its last one, and only events already
//!   published, so the subscriber received every event ever stored; a run's history is the
//!   union of what is stored and what was received.
//! - Every change of a run records an event carrying the whole run, in the same transaction,
//!   so a run's latest received event is the run as stored at its last change. A run deleted
//!   by run retention is checked on that event instead of its row: it may be gone only if
//!   that event shows it `completed` at least `--run-retention` before the check; gone
//!   otherwise, it counts under `double_applied` ("gone").
//! - Late progress goes only to runs whose identity is held for ever (scheduled backups), which
//!   run retention never deletes: a late command always finds its run and is applied, and its
//!   effect and its event are expected like any other step's. A late command on a run already
//!   deleted would be dead-lettered `run_not_found` and count as lost.
//! - Identities are counted over rows and the latest events of deleted runs, so a duplicate run
//!   deleted by retention still counts under `duplicate_runs`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;

use super::operator::{self, ActionFigures, ActionRecord, RunSeen};
use super::quiescence::DeadLetterSeen;
use super::subscriber::Received;
use crate::chaos::faults::executors::{
    closed_as_allowed, failure_codes, ClosedByService, HAND_OFF_FAILURE_CODES,
};
use crate::chaos::plan::model::PlannedRun;
use crate::chaos::plan::workload::Workload;
use operation_runs::domain::action::FAILED_BY_OPERATOR;
use operation_runs::domain::idempotency_key;
use operation_runs::domain::RunStatus;

/// Examples shown per kind of finding.
const EXAMPLES: usize = 5;

/// A run's scope and identity: what must be unique among active runs.
pub type IdentityKey = (i64, Option<i64>, String);

/// The figures of the closing line and what explains them.
#[derive(Debug, Default)]
pub struct Findings {
    /// See the module documentation.
    pub lost: u64,
    /// See the module documentation.
    pub double_applied: u64,
    /// See the module documentation.
    pub duplicate_runs: u64,
    /// See the module documentation.
    pub missing_events: u64,
    /// Lines that explain non-zero figures, with examples.
    pub notes: Vec<String>,
    /// Failures no figure counts (a dead letter with the wrong reason, an event nobody stored).
    pub problems: Vec<String>,
    /// Runs gone from the database (deleted by run retention), checked on their latest event.
    pub deleted_runs: u64,
    /// Events received and no longer stored (pruned by retention, or gone with their run).
    pub pruned_events: u64,
    /// The operator's actions: asked for, and done.
    pub actions: ActionFigures,
}

/// A stored run, as the checks read it: its row, or, once run retention deleted it, its latest
/// received event's `data.run`.
#[derive(Debug, sqlx::FromRow)]
struct StoredRun {
    id: i64,
    workspace_id: i64,
    tenant_id: Option<i64>,
    run_identity_hash: String,
    status: String,
    outcome: String,
    summary_counts: Value,
    failure_summary: Value,
    completed_at: Option<DateTime<Utc>>,
    /// `context.retry_of`: the run this one retries.
    retry_of: Option<i64>,
    /// Read from its latest event: the row is gone.
    #[sqlx(default)]
    from_event: bool,
}

impl StoredRun {
    /// The run an event body carries (`data.run`), marked as read from the event.
    fn from_event_body(body: &[u8]) -> Result<Self, String> {
        let event: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        let run = &event["data"]["run"];
        let text = |key: &str| {
            run[key]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("data.run.{key} is not a string"))
        };
        let completed_at = match &run["completed_at"] {
            Value::Null => None,
            v => Some(
                serde_json::from_value(v.clone())
                    .map_err(|e| format!("data.run.completed_at: {e}"))?,
            ),
        };
        Ok(Self {
            id: run["id"].as_i64().ok_or("data.run.id is not an integer")?,
            workspace_id: run["workspace_id"]
                .as_i64()
                .ok_or("data.run.workspace_id is not an integer")?,
            tenant_id: run["tenant_id"].as_i64(),
            run_identity_hash: text("run_identity_hash")?,
            status: text("status")?,
            outcome: text("outcome")?,
            summary_counts: run["summary_counts"].clone(),
            failure_summary: run["failure_summary"].clone(),
            completed_at,
            retry_of: run["context"]["retry_of"].as_i64(),
            from_event: true,
        })
    }

    /// What the checks of the operator's actions look at.
    fn seen(&self) -> RunSeen<'_> {
        RunSeen {
            id: self.id,
            key: (self.workspace_id, self.tenant_id, &self.run_identity_hash),
            status: &self.status,
            outcome: &self.outcome,
            retry_of: self.retry_of,
            failure_summary: &self.failure_summary,
            has_row: !self.from_event,
        }
    }

    /// Its summary counts above zero.
    fn counts(&self) -> BTreeMap<String, u64> {
        self.summary_counts
            .as_object()
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                    .filter(|(_, v)| *v > 0)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// What differs between this run and `other` in what an event must carry, if anything.
    fn state_differs(&self, other: &StoredRun) -> Option<String> {
        let mut why = Vec::new();
        if (&self.status, &self.outcome) != (&other.status, &other.outcome) {
            why.push(format!(
                "{}/{} against {}/{}",
                self.status, self.outcome, other.status, other.outcome
            ));
        }
        if self.counts() != other.counts() {
            why.push(format!(
                "counts {:?} against {:?}",
                self.counts(),
                other.counts()
            ));
        }
        if self.failure_summary != other.failure_summary {
            let len = |v: &Value| v.as_array().map_or(0, Vec::len);
            why.push(format!(
                "{} failure entries against {}",
                len(&self.failure_summary),
                len(&other.failure_summary)
            ));
        }
        (!why.is_empty()).then(|| why.join(", "))
    }

    /// Why this run, read from its event, may not be gone, if it may not: run retention deletes
    /// only runs completed at least `run_retention` before `now`.
    fn gone_unexplained(
        &self,
        run_retention: Option<Duration>,
        now: DateTime<Utc>,
    ) -> Option<String> {
        let Some(retention) = run_retention else {
            return Some("gone without run retention".into());
        };
        let retention = chrono::Duration::from_std(retention).expect("a short window");
        match self.completed_at {
            Some(at) if self.status == RunStatus::Completed.as_str() && at + retention <= now => {
                None
            }
            _ => Some(format!(
                "gone, yet its latest event shows it {} (completed at {:?}), not completed {} s ago",
                self.status,
                self.completed_at,
                retention.num_seconds()
            )),
        }
    }
}

/// The runs of every identity key in the database now.
pub async fn runs_by_identity(
    pool: &PgPool,
) -> Result<HashMap<IdentityKey, Vec<i64>>, sqlx::Error> {
    let rows: Vec<(i64, i64, Option<i64>, String)> = sqlx::query_as(
        "SELECT id, workspace_id, tenant_id, run_identity_hash FROM operation_runs ORDER BY id",
    )
    .fetch_all(pool)
    .await?;
    let mut map: HashMap<IdentityKey, Vec<i64>> = HashMap::new();
    for (id, workspace_id, tenant_id, hash) in rows {
        map.entry((workspace_id, tenant_id, hash))
            .or_default()
            .push(id);
    }
    Ok(map)
}

/// The runs the subscriber received events of that are not among `rows` (deleted by run
/// retention), as their latest event carries them: id, identity key, and for a completed one
/// what [`crate::chaos::faults::executors::completed_runs`] would have said of it.
pub fn deleted_runs(
    received: &Received,
    rows: &HashSet<i64>,
) -> Vec<(i64, IdentityKey, Option<ClosedByService>)> {
    let latest = received.latest.lock().expect("not poisoned");
    let mut deleted = Vec::new();
    for (run_id, (_, body)) in latest.iter() {
        if rows.contains(run_id) {
            continue;
        }
        let Ok(event) = serde_json::from_slice::<Value>(body) else {
            continue;
        };
        let run = &event["data"]["run"];
        let (Some(workspace_id), Some(hash)) = (
            run["workspace_id"].as_i64(),
            run["run_identity_hash"].as_str(),
        ) else {
            continue;
        };
        let closed = (run["status"] == RunStatus::Completed.as_str()).then(|| ClosedByService {
            run_type: run["type"].as_str().unwrap_or("?").to_owned(),
            codes: failure_codes(&run["failure_summary"]),
        });
        let key = (workspace_id, run["tenant_id"].as_i64(), hash.to_owned());
        deleted.push((*run_id, key, closed));
    }
    deleted.sort_by_key(|(id, _, _)| *id);
    deleted
}

/// What phase 1 found: `run_ids[i]` is identity `i`'s run, `duplicates` the identities that
/// had more than one run then, `closed` those whose run the service had completed itself (they
/// were sent no progress).
#[derive(Debug, Clone, Copy)]
pub struct AfterDispatch<'a> {
    /// See above.
    pub run_ids: &'a [Option<i64>],
    /// See above.
    pub duplicates: &'a HashSet<usize>,
    /// See above.
    pub closed: &'a HashMap<usize, ClosedByService>,
}

impl AfterDispatch<'_> {
    /// True when identity `i`'s progress was published.
    pub fn progress_sent(&self, i: usize) -> bool {
        self.run_ids[i].is_some() && !self.closed.contains_key(&i)
    }
}

/// The planned command id an inbox row or an action record stands for: an action sent over the
/// API is kept under its `Idempotency-Key` (the planned id) in the workspace's namespace.
fn as_planned(id: String) -> String {
    match idempotency_key::key_of(&id) {
        Some(key) => key.to_owned(),
        None => id,
    }
}

/// Runs every check; `run_retention` is the service's, when it deletes completed runs.
pub async fn evaluate(
    pool: &PgPool,
    workload: &Workload,
    after: AfterDispatch<'_>,
    dead_letters: &[DeadLetterSeen],
    received: &Received,
    run_retention: Option<Duration>,
) -> Result<Findings, sqlx::Error> {
    let mut findings = Findings::default();
    // One snapshot for every read: the service's pruner is still running, and a run deleted by
    // run retention between reading the runs and reading the events would look like a run
    // whose received events vanished.
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let inbox: HashSet<String> = sqlx::query_scalar("SELECT command_id FROM processed_commands")
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(as_planned)
        .collect();
    account(&mut findings, workload, after, &inbox, dead_letters);

    let mut runs: Vec<StoredRun> = sqlx::query_as(
        "SELECT id, workspace_id, tenant_id, run_identity_hash, status, outcome, summary_counts,
                failure_summary, completed_at, (context ->> 'retry_of')::bigint AS retry_of
         FROM operation_runs",
    )
    .fetch_all(&mut *tx)
    .await?;
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&mut *tx)
        .await?;
    add_deleted_runs(&mut findings, &mut runs, received);
    compare_runs(
        &mut findings,
        workload,
        after,
        &inbox,
        &runs,
        run_retention,
        now,
    );
    count_duplicates(&mut findings, workload, after.duplicates, &runs);
    check_closed(&mut findings, after);
    let mut records: Vec<ActionRecord> = sqlx::query_as(
        "SELECT command_id, run_id, action, result, new_run_id FROM operation_run_actions",
    )
    .fetch_all(&mut *tx)
    .await?;
    for record in &mut records {
        record.command_id = record.command_id.take().map(as_planned);
    }
    check_actions(&mut findings, workload, after, &inbox, &runs, &records);

    let events: Vec<(uuid::Uuid, i64, i64)> =
        sqlx::query_as("SELECT id, run_id, sequence FROM operation_run_events")
            .fetch_all(&mut *tx)
            .await?;
    tx.commit().await?;
    check_events(&mut findings, &runs, &events, received);
    Ok(findings)
}

/// `lost`: every good command id must be in the inbox, every bad one in the dead-letter queue
/// with its reason; the dead-letter queue must hold nothing else.
fn account(
    findings: &mut Findings,
    workload: &Workload,
    after: AfterDispatch<'_>,
    inbox: &HashSet<String>,
    dead_letters: &[DeadLetterSeen],
) {
    let run_ids = after.run_ids;
    let mut dead: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut without_id = 0;
    for letter in dead_letters {
        match &letter.command_id {
            Some(id) => dead.entry(id).or_default().push(&letter.code),
            None => without_id += 1,
        }
    }
    let bad: HashMap<&str, &str> = workload
        .bad
        .iter()
        .map(|b| (b.command_id.as_str(), b.expected_code))
        .collect();

    let dispatch_ids = workload.dispatches.iter().map(|d| d.command_id.as_str());
    let step_ids = workload
        .runs
        .iter()
        .enumerate()
        .filter(|(i, _)| after.progress_sent(*i))
        .flat_map(|(_, run)| run.steps.iter().map(|s| s.command_id.as_str()));
    let good: HashSet<&str> = dispatch_ids.chain(step_ids).collect();
    let mut missing: Vec<String> = good
        .iter()
        .filter(|id| !inbox.contains(**id))
        .map(|id| match dead.get(id) {
            Some(codes) => format!("{id} (dead-lettered: {})", codes.join(", ")),
            None => (*id).to_owned(),
        })
        .collect();
    missing.sort();
    note(
        findings,
        &missing,
        "good command(s) never applied (not in the inbox)",
    );
    findings.lost += missing.len() as u64;

    let runless: Vec<String> = run_ids
        .iter()
        .enumerate()
        .filter(|(_, id)| id.is_none())
        .map(|(i, _)| format!("identity {i} ({})", workload.identities[i].hash))
        .collect();
    note(
        findings,
        &runless,
        "identity(ies) without a run after the dispatches (their progress was not sent)",
    );
    findings.lost += runless.len() as u64;

    let mut not_dead: Vec<&str> = Vec::new();
    for (id, expected) in &bad {
        match dead.get(id) {
            None => not_dead.push(id),
            Some(codes) if !codes.contains(expected) => findings.problems.push(format!(
                "bad command {id} was dead-lettered as {codes:?}, expected {expected}"
            )),
            Some(_) => {}
        }
    }
    not_dead.sort();
    note(findings, &not_dead, "bad command(s) not dead-lettered");
    findings.lost += not_dead.len() as u64;

    // Good commands dead-lettered and never applied are counted as lost above; the others
    // break "the dead-letter queue holds only the deliberately bad messages" without a figure.
    let mut unexpected: Vec<String> = dead
        .iter()
        .filter(|(id, _)| !bad.contains_key(*id))
        .filter(|(id, _)| !good.contains(*id) || inbox.contains(**id))
        .map(|(id, codes)| {
            let applied = if inbox.contains(*id) {
                "applied, yet dead-lettered"
            } else {
                "never sent by this run"
            };
            format!("{id} ({applied}: {})", codes.join(", "))
        })
        .collect();
    unexpected.sort();
    if !unexpected.is_empty() {
        let examples: Vec<&str> = unexpected
            .iter()
            .take(EXAMPLES)
            .map(String::as_str)
            .collect();
        findings.problems.push(format!(
            "the dead-letter queue holds {} unexpected command(s), e.g. {}",
            unexpected.len(),
            examples.join("; ")
        ));
    }
    if without_id > 0 {
        findings
            .problems
            .push(format!("{without_id} dead letter(s) without a command id"));
    }
}

/// Adds the runs the subscriber received events of that have no row any more (deleted by run
/// retention), as their latest event carries them.
fn add_deleted_runs(findings: &mut Findings, runs: &mut Vec<StoredRun>, received: &Received) {
    let rows: HashSet<i64> = runs.iter().map(|r| r.id).collect();
    let latest = received.latest.lock().expect("not poisoned");
    let mut unreadable = Vec::new();
    for (run_id, (_, body)) in latest.iter() {
        if rows.contains(run_id) {
            continue;
        }
        match StoredRun::from_event_body(body) {
            Ok(run) if run.id == *run_id => {
                findings.deleted_runs += 1;
                runs.push(run);
            }
            Ok(run) => unreadable.push(format!("run {run_id}: its event names run {}", run.id)),
            Err(e) => unreadable.push(format!("run {run_id}: {e}")),
        }
    }
    if !unreadable.is_empty() {
        unreadable.sort();
        findings.problems.push(format!(
            "{} deleted run(s) whose latest event cannot be read, e.g. {}",
            unreadable.len(),
            unreadable
                .into_iter()
                .take(EXAMPLES)
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
}

/// `double_applied`: each run must hold exactly the effect of the distinct commands sent; a
/// run read from its latest event must also be one run retention was allowed to delete.
fn compare_runs(
    findings: &mut Findings,
    workload: &Workload,
    after: AfterDispatch<'_>,
    inbox: &HashSet<String>,
    runs: &[StoredRun],
    run_retention: Option<Duration>,
    now: DateTime<Utc>,
) {
    let by_id: HashMap<i64, &StoredRun> = runs.iter().map(|r| (r.id, r)).collect();
    let mut differ = Vec::new();
    for (i, planned) in workload.runs.iter().enumerate() {
        let Some(run_id) = after.run_ids[i] else {
            continue;
        };
        let Some(stored) = by_id.get(&run_id) else {
            differ.push(format!("run {run_id}: gone, and no event of it received"));
            continue;
        };
        if stored.from_event {
            if let Some(why) = stored.gone_unexplained(run_retention, now) {
                differ.push(format!("run {run_id}: {why}"));
                continue;
            }
        }
        if after.closed.contains_key(&i) {
            if let Some(why) = closed_run_differs(stored) {
                differ.push(format!("run {run_id} (completed by the service): {why}"));
            }
            continue;
        }
        let mut why = Vec::new();
        let counts = stored.counts();
        let expected_counts = planned.expected_counts();
        if counts != expected_counts {
            why.push(format!(
                "summary_counts {counts:?}, sent {expected_counts:?}"
            ));
        }
        if let Some(wrong) = failures_differ(planned, &stored.failure_summary) {
            why.push(wrong);
        }
        let completed = RunStatus::Completed.as_str();
        if stored.status != completed || stored.outcome != planned.outcome().as_str() {
            why.push(format!(
                "{}/{}, sent completed/{}",
                stored.status,
                stored.outcome,
                planned.outcome()
            ));
        }
        // A difference explained by a command that never arrived is counted as lost already.
        let all_applied = planned.steps.iter().all(|s| inbox.contains(&s.command_id));
        if !why.is_empty() && all_applied {
            differ.push(format!("run {run_id}: {}", why.join(", ")));
        }
    }
    note(
        findings,
        &differ,
        "run(s) whose stored effect differs from the commands sent",
    );
    findings.double_applied += differ.len() as u64;
}

/// What is wrong with the stored failure entries of `planned`'s run, if anything: each item
/// sent stored exactly once, and no entry without an item but, for a run the operator failed,
/// the one `run.failed_by_operator` with its reason; for the flooded run, each stored item sent
/// and stored once (the service keeps only the first entries) and item-less entries ignored.
fn failures_differ(planned: &PlannedRun, failure_summary: &Value) -> Option<String> {
    let entries: Vec<&Value> = failure_summary.as_array().into_iter().flatten().collect();
    let mut items: HashMap<&str, usize> = HashMap::new();
    let mut operator_failure = planned.operator_failure();
    for failure in &entries {
        match failure.get("item").and_then(Value::as_str) {
            Some(item) => *items.entry(item).or_default() += 1,
            None if planned.flood => {}
            None if operator_failure.is_some_and(|reason| {
                failure["code"] == FAILED_BY_OPERATOR && failure["message"] == reason
            }) =>
            {
                operator_failure = None;
            }
            None => *items.entry("?").or_default() += 1,
        }
    }
    if operator_failure.is_some() {
        return Some(format!(
            "no {FAILED_BY_OPERATOR} failure with the reason given among {} entries",
            entries.len()
        ));
    }
    let expected_items = planned.expected_failure_items();
    let stored: usize = items.values().sum();
    if planned.flood {
        let sent: HashSet<&str> = expected_items.iter().copied().collect();
        let twice = items.values().filter(|n| **n > 1).count();
        let unsent = items.keys().filter(|i| !sent.contains(**i)).count();
        return (twice > 0 || unsent > 0).then(|| {
            format!(
                "flooded run: {stored} failure entries kept of {} sent, {twice} stored more than once, {unsent} never sent",
                expected_items.len()
            )
        });
    }
    let once = expected_items.iter().all(|i| items.get(*i) == Some(&1));
    (!once || items.len() != expected_items.len())
        .then(|| format!("{stored} failure entries for {} sent", expected_items.len()))
}

/// What is wrong with a run the service completed before phase 2, if anything: it must still be
/// `completed`/`failed` with no counts and its one hand-off failure.
fn closed_run_differs(stored: &StoredRun) -> Option<String> {
    let mut why = Vec::new();
    if stored.status != RunStatus::Completed.as_str() || stored.outcome != "failed" {
        why.push(format!("{}/{}", stored.status, stored.outcome));
    }
    let counted = stored
        .summary_counts
        .as_object()
        .is_some_and(|o| o.values().any(|v| v.as_u64() != Some(0)));
    if counted {
        why.push(format!("summary_counts {}", stored.summary_counts));
    }
    let codes = failure_codes(&stored.failure_summary);
    if codes.len() != 1 || !HAND_OFF_FAILURE_CODES.contains(&codes[0].as_str()) {
        why.push(format!("failure codes {codes:?}"));
    }
    (!why.is_empty()).then(|| why.join(", "))
}

/// Only runs of the rejected type may have been completed by the service before phase 2, and
/// only for a refused or unroutable job: anything else is a problem.
fn check_closed(findings: &mut Findings, after: AfterDispatch<'_>) {
    let mut closed: Vec<(&usize, &ClosedByService)> = after.closed.iter().collect();
    closed.sort_by_key(|(i, _)| **i);
    for (i, closed) in closed {
        if !closed_as_allowed(closed) {
            findings.problems.push(format!(
                "run {:?} ({}) was completed by the service before any progress with {:?}; only {} runs may be, with one of {HAND_OFF_FAILURE_CODES:?}",
                after.run_ids[*i],
                closed.run_type,
                closed.codes,
                crate::chaos::plan::model::REJECTED_TYPE
            ));
        }
    }
}

/// `duplicate_runs`: one run per identity, after the dispatches and at the end.
fn count_duplicates(
    findings: &mut Findings,
    workload: &Workload,
    duplicates_after_dispatch: &HashSet<usize>,
    runs: &[StoredRun],
) {
    let mut by_identity: HashMap<IdentityKey, Vec<(i64, &str)>> = HashMap::new();
    for run in runs.iter().filter(|r| r.retry_of.is_none()) {
        by_identity
            .entry((
                run.workspace_id,
                run.tenant_id,
                run.run_identity_hash.clone(),
            ))
            .or_default()
            .push((run.id, run.status.as_str()));
    }
    let mut duplicated: Vec<String> = Vec::new();
    for (i, identity) in workload.identities.iter().enumerate() {
        let key = (
            identity.workspace_id,
            identity.tenant_id,
            identity.hash.as_str().to_owned(),
        );
        let found = by_identity.remove(&key).unwrap_or_default();
        if found.len() > 1 || duplicates_after_dispatch.contains(&i) {
            duplicated.push(format!("identity {i}: runs {found:?}"));
        }
    }
    note(
        findings,
        &duplicated,
        "identity(ies) with more than one run",
    );
    findings.duplicate_runs += duplicated.len() as u64;
    if !by_identity.is_empty() {
        findings.problems.push(format!(
            "{} run(s) of identities the workload never dispatched",
            by_identity.len()
        ));
    }
}

/// The operator's actions ([`super::operator`]): their figures, and what they add to
/// `double_applied`, `duplicate_runs` and the problems.
fn check_actions(
    findings: &mut Findings,
    workload: &Workload,
    after: AfterDispatch<'_>,
    inbox: &HashSet<String>,
    runs: &[StoredRun],
    records: &[ActionRecord],
) {
    let seen: Vec<RunSeen<'_>> = runs.iter().map(StoredRun::seen).collect();
    let found = operator::check(
        workload,
        after.run_ids,
        |i| after.progress_sent(i),
        inbox,
        &seen,
        records,
    );
    findings.actions = found.figures;
    note(
        findings,
        &found.double_applied,
        "run(s) whose operator action had another effect than asked, or one twice",
    );
    findings.double_applied += found.double_applied.len() as u64;
    note(
        findings,
        &found.duplicate_runs,
        "run(s) retried into more than one run",
    );
    findings.duplicate_runs += found.duplicate_runs.len() as u64;
    findings.problems.extend(found.problems);
}

/// `missing_events`: per run, over the events stored and received, sequences 1..n each carried
/// by one event; every stored event received; each run's latest event carrying its row's state.
fn check_events(
    findings: &mut Findings,
    runs: &[StoredRun],
    events: &[(uuid::Uuid, i64, i64)],
    received: &Received,
) {
    // run → sequence → the ids of the events carrying it.
    let mut history: HashMap<i64, BTreeMap<i64, BTreeSet<String>>> =
        runs.iter().map(|r| (r.id, BTreeMap::new())).collect();
    let mut highest_stored: HashMap<i64, i64> = HashMap::new();
    for (id, run_id, sequence) in events {
        let highest = highest_stored.entry(*run_id).or_insert(*sequence);
        *highest = (*highest).max(*sequence);
        history
            .entry(*run_id)
            .or_default()
            .entry(*sequence)
            .or_default()
            .insert(id.to_string());
    }
    let sequences = received.sequences.lock().expect("not poisoned");
    for (id, (run_id, sequence)) in sequences.iter() {
        history
            .entry(*run_id)
            .or_default()
            .entry(*sequence)
            .or_default()
            .insert(id.clone());
    }
    let (mut skipped, mut restarted) = (Vec::new(), Vec::new());
    let mut missing_numbers = 0;
    let mut sorted: Vec<(&i64, &BTreeMap<i64, BTreeSet<String>>)> = history.iter().collect();
    sorted.sort_by_key(|(run_id, _)| **run_id);
    for (run_id, numbers) in sorted {
        let highest = numbers.keys().next_back().copied().unwrap_or(0).max(1);
        let absent = (1..=highest).filter(|n| !numbers.contains_key(n)).count() as u64;
        if absent > 0 {
            missing_numbers += absent;
            let shown: Vec<&i64> = numbers.keys().take(20).collect();
            skipped.push(format!("run {run_id}: sequences {shown:?}"));
        }
        let again: u64 = numbers.values().map(|ids| ids.len() as u64 - 1).sum();
        if again > 0 {
            missing_numbers += again;
            let repeated: Vec<String> = numbers
                .iter()
                .filter(|(_, ids)| ids.len() > 1)
                .map(|(n, ids)| format!("#{n} × {}", ids.len()))
                .take(5)
                .collect();
            restarted.push(format!("run {run_id}: {}", repeated.join(", ")));
        }
    }
    note(
        findings,
        &skipped,
        "run(s) whose event sequences skip a number (or that have no event)",
    );
    note(
        findings,
        &restarted,
        "run(s) with two events of one sequence (numbering restarted or repeated)",
    );
    findings.missing_events += missing_numbers;

    let seen = received.arrivals.lock().expect("not poisoned");
    let stored: HashSet<String> = events.iter().map(|(id, _, _)| id.to_string()).collect();
    let unseen: Vec<String> = events
        .iter()
        .filter(|(id, _, _)| !seen.contains_key(&id.to_string()))
        .map(|(id, run_id, sequence)| format!("{id} (run {run_id} #{sequence})"))
        .collect();
    note(
        findings,
        &unseen,
        "stored event(s) the subscriber never received",
    );
    findings.missing_events += unseen.len() as u64;

    findings.pruned_events = seen.keys().filter(|id| !stored.contains(*id)).count() as u64;
    // Pruning removes only events followed by a later one of a run that still has a row: a
    // received event at or past its run's highest stored sequence must still be stored.
    let rows: HashSet<i64> = runs
        .iter()
        .filter(|r| !r.from_event)
        .map(|r| r.id)
        .collect();
    let phantom = seen
        .keys()
        .filter(|id| !stored.contains(*id))
        .filter(|id| match sequences.get(*id) {
            Some((run_id, sequence)) => {
                rows.contains(run_id) && highest_stored.get(run_id).is_none_or(|h| sequence >= h)
            }
            None => true,
        })
        .count();
    if phantom > 0 {
        findings.problems.push(format!(
            "the subscriber received {phantom} event(s) that are not stored and that pruning cannot have removed"
        ));
    }

    let latest = received.latest.lock().expect("not poisoned");
    let mut stale = Vec::new();
    for run in runs.iter().filter(|r| !r.from_event) {
        let Some((sequence, body)) = latest.get(&run.id) else {
            continue;
        };
        match StoredRun::from_event_body(body) {
            Ok(carried) => {
                if let Some(why) = carried.state_differs(run) {
                    stale.push(format!("run {} (#{sequence}): {why}", run.id));
                }
            }
            Err(e) => stale.push(format!("run {} (#{sequence}): unreadable: {e}", run.id)),
        }
    }
    stale.sort();
    note(
        findings,
        &stale,
        "run(s) whose latest event does not carry their stored state (event against row)",
    );
    findings.missing_events += stale.len() as u64;
}

/// Adds "`n` `what`: first examples" when `items` is not empty.
fn note(findings: &mut Findings, items: &[impl AsRef<str>], what: &str) {
    if items.is_empty() {
        return;
    }
    let examples: Vec<&str> = items.iter().take(EXAMPLES).map(AsRef::as_ref).collect();
    findings.notes.push(format!(
        "{} {what}, e.g. {}",
        items.len(),
        examples.join("; ")
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::plan::injections::Injections;
    use crate::chaos::plan::model::REJECTED_TYPE;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use serde_json::json;

    /// A workload with every injection, each identity resolved to run `i + 1`, and the inbox
    /// and dead-letter queue of a perfect run.
    fn perfect() -> (
        Workload,
        Vec<Option<i64>>,
        HashSet<String>,
        Vec<DeadLetterSeen>,
    ) {
        let workload = Workload::generate(1500, &Injections::all(), &mut StdRng::seed_from_u64(5));
        let run_ids = (0..workload.runs.len())
            .map(|i| Some(i as i64 + 1))
            .collect();
        let inbox = workload
            .dispatches
            .iter()
            .map(|d| d.command_id.clone())
            .chain(
                workload
                    .runs
                    .iter()
                    .flat_map(|r| r.steps.iter().map(|s| s.command_id.clone())),
            )
            .collect();
        let dead = workload
            .bad
            .iter()
            .map(|b| DeadLetterSeen {
                command_id: Some(b.command_id.clone()),
                code: b.expected_code.to_owned(),
            })
            .collect();
        (workload, run_ids, inbox, dead)
    }

    fn after<'a>(
        run_ids: &'a [Option<i64>],
        duplicates: &'a HashSet<usize>,
        closed: &'a HashMap<usize, ClosedByService>,
    ) -> AfterDispatch<'a> {
        AfterDispatch {
            run_ids,
            duplicates,
            closed,
        }
    }

    /// The stored rows a perfect run leaves.
    fn stored_runs(workload: &Workload) -> Vec<StoredRun> {
        workload
            .runs
            .iter()
            .enumerate()
            .map(|(i, run)| {
                let identity = &workload.identities[i];
                let mut items: Vec<Value> = run
                    .expected_failure_items()
                    .iter()
                    .map(|item| json!({"code": "x", "message": "m", "item": item}))
                    .collect();
                items.extend(
                    run.operator_failure()
                        .map(|reason| json!({"code": FAILED_BY_OPERATOR, "message": reason})),
                );
                StoredRun {
                    id: i as i64 + 1,
                    workspace_id: identity.workspace_id,
                    tenant_id: identity.tenant_id,
                    run_identity_hash: identity.hash.as_str().to_owned(),
                    status: "completed".into(),
                    outcome: run.outcome().as_str().into(),
                    summary_counts: json!(run.expected_counts()),
                    failure_summary: Value::Array(items),
                    completed_at: Some(Utc::now() - chrono::Duration::minutes(5)),
                    retry_of: None,
                    from_event: false,
                }
            })
            .collect()
    }

    /// [`compare_runs`] of a service that deletes no run.
    fn compare_without_retention(
        findings: &mut Findings,
        workload: &Workload,
        after: AfterDispatch<'_>,
        inbox: &HashSet<String>,
        runs: &[StoredRun],
    ) {
        compare_runs(findings, workload, after, inbox, runs, None, Utc::now());
    }

    /// All figures, and the problems.
    fn figures(f: &Findings) -> (u64, u64, u64, usize) {
        (f.lost, f.double_applied, f.duplicate_runs, f.problems.len())
    }

    #[test]
    fn a_perfect_run_has_no_findings() {
        let (workload, run_ids, inbox, dead) = perfect();
        let (none, closed) = (HashSet::new(), HashMap::new());
        let after = after(&run_ids, &none, &closed);
        let mut findings = Findings::default();
        account(&mut findings, &workload, after, &inbox, &dead);
        let runs = stored_runs(&workload);
        compare_without_retention(&mut findings, &workload, after, &inbox, &runs);
        count_duplicates(&mut findings, &workload, &none, &runs);
        check_closed(&mut findings, after);
        assert_eq!(
            figures(&findings),
            (0, 0, 0, 0),
            "{:?} {:?}",
            findings.notes,
            findings.problems
        );
    }

    #[test]
    fn missing_commands_and_stray_dead_letters_are_counted_apart() {
        let (workload, run_ids, mut inbox, mut dead) = perfect();
        let (none, closed) = (HashSet::new(), HashMap::new());
        let step = workload.runs[0].steps[1].command_id.clone();
        inbox.remove(&step);
        dead.retain(|d| d.command_id.as_deref() != Some(workload.bad[0].command_id.as_str()));
        let applied = workload.dispatches[0].command_id.clone();
        dead.push(DeadLetterSeen {
            command_id: Some(applied),
            code: "database_rejected".into(),
        });
        let mut findings = Findings::default();
        account(
            &mut findings,
            &workload,
            after(&run_ids, &none, &closed),
            &inbox,
            &dead,
        );
        assert_eq!(findings.lost, 2, "{:?}", findings.notes);
        assert_eq!(findings.problems.len(), 1, "{:?}", findings.problems);
        assert!(findings.problems[0].contains("applied, yet dead-lettered"));
    }

    #[test]
    fn a_burst_message_missing_from_the_dlq_is_lost_and_one_with_another_code_is_a_problem() {
        let (workload, run_ids, inbox, mut dead) = perfect();
        let (none, closed) = (HashSet::new(), HashMap::new());
        let burst_code = |code: &str| {
            let bad = workload
                .bad
                .iter()
                .find(|b| b.expected_code == code)
                .unwrap();
            assert!(bad.burst.is_some());
            bad.command_id.clone()
        };
        // Lost while the DLQ was unbound; applied last-wins instead of refused.
        let unbound = burst_code("message_too_large");
        dead.retain(|d| d.command_id.as_ref() != Some(&unbound));
        let last_wins = burst_code("duplicate_key");
        dead.retain(|d| d.command_id.as_ref() != Some(&last_wins));
        // Refused by the database instead of at decode.
        let nul = burst_code("invalid_string");
        for letter in dead
            .iter_mut()
            .filter(|d| d.command_id.as_ref() == Some(&nul))
        {
            letter.code = "database_rejected".into();
        }
        let mut findings = Findings::default();
        account(
            &mut findings,
            &workload,
            after(&run_ids, &none, &closed),
            &inbox,
            &dead,
        );
        assert_eq!(findings.lost, 2, "{:?}", findings.notes);
        assert_eq!(findings.problems.len(), 1, "{:?}", findings.problems);
        assert!(findings.problems[0].contains("expected invalid_string"));
    }

    #[test]
    fn an_effect_applied_twice_counts_unless_a_command_is_missing() {
        let (workload, run_ids, mut inbox, _) = perfect();
        let (none, closed) = (HashSet::new(), HashMap::new());
        let mut runs = stored_runs(&workload);
        let doubled: BTreeMap<String, u64> = workload.runs[0]
            .expected_counts()
            .into_iter()
            .map(|(k, v)| (k, v * 2))
            .collect();
        runs[0].summary_counts = json!(doubled);
        let mut findings = Findings::default();
        compare_without_retention(
            &mut findings,
            &workload,
            after(&run_ids, &none, &closed),
            &inbox,
            &runs,
        );
        assert_eq!(findings.double_applied, 1);

        inbox.remove(&workload.runs[0].steps[0].command_id);
        let mut findings = Findings::default();
        compare_without_retention(
            &mut findings,
            &workload,
            after(&run_ids, &none, &closed),
            &inbox,
            &runs,
        );
        assert_eq!(findings.double_applied, 0, "explained by the lost command");
    }

    #[test]
    fn the_flooded_run_may_keep_only_its_first_entries_but_none_twice_or_unsent() {
        let (workload, run_ids, inbox, _) = perfect();
        let (none, closed) = (HashSet::new(), HashMap::new());
        let flooded = workload.runs.iter().position(|r| r.flood).unwrap();
        let mut runs = stored_runs(&workload);
        let compare = |runs: &[StoredRun]| {
            let mut findings = Findings::default();
            compare_without_retention(
                &mut findings,
                &workload,
                after(&run_ids, &none, &closed),
                &inbox,
                runs,
            );
            findings.double_applied
        };
        let all = runs[flooded].failure_summary.as_array().unwrap().clone();
        assert!(all.len() >= 15_000);
        // Capped: the first 100 kept, the rest tallied by code in an entry without an item.
        let mut capped: Vec<Value> = all[..100].to_vec();
        capped.push(json!({"code": "graph.throttled", "message": "14900 more", "count": 14_900}));
        runs[flooded].failure_summary = Value::Array(capped.clone());
        assert_eq!(compare(&runs), 0);

        let mut twice = capped.clone();
        twice.push(all[5].clone());
        runs[flooded].failure_summary = Value::Array(twice);
        assert_eq!(compare(&runs), 1, "an entry stored twice");

        let mut unsent = capped;
        unsent.push(json!({"code": "x", "message": "m", "item": "never-sent"}));
        runs[flooded].failure_summary = Value::Array(unsent);
        assert_eq!(compare(&runs), 1, "an entry never sent");

        // Counts stay exact on the flooded run too.
        runs[flooded].failure_summary = Value::Array(all);
        runs[flooded].summary_counts = json!({"failed": 1});
        assert_eq!(compare(&runs), 1);
    }

    #[test]
    fn a_run_failed_by_the_service_before_its_progress_must_stay_as_the_service_left_it() {
        let (workload, run_ids, mut inbox, dead) = perfect();
        let none = HashSet::new();
        let i = workload
            .identities
            .iter()
            .position(|id| id.run_type == REJECTED_TYPE)
            .expect("the workload has runs of the rejected type");
        // Its progress was never sent.
        for step in &workload.runs[i].steps {
            inbox.remove(&step.command_id);
        }
        let closed = HashMap::from([(
            i,
            ClosedByService {
                run_type: REJECTED_TYPE.as_str().into(),
                codes: vec!["dispatch.rejected".into()],
            },
        )]);
        let after = after(&run_ids, &none, &closed);
        let mut runs = stored_runs(&workload);
        runs[i].status = "completed".into();
        runs[i].outcome = "failed".into();
        runs[i].summary_counts = json!({});
        runs[i].failure_summary = json!([{"code": "dispatch.rejected", "message": "refused"}]);
        let mut findings = Findings::default();
        account(&mut findings, &workload, after, &inbox, &dead);
        compare_without_retention(&mut findings, &workload, after, &inbox, &runs);
        check_closed(&mut findings, after);
        assert_eq!(
            figures(&findings),
            (0, 0, 0, 0),
            "{:?} {:?}",
            findings.notes,
            findings.problems
        );

        // Changed afterwards (a progress command applied to it): its effect differs.
        runs[i].summary_counts = json!({"total": 3});
        let mut findings = Findings::default();
        compare_without_retention(&mut findings, &workload, after, &inbox, &runs);
        assert_eq!(findings.double_applied, 1, "{:?}", findings.notes);

        // Another type, or another code: a problem.
        let j = (0..workload.identities.len())
            .find(|j| workload.identities[*j].run_type != REJECTED_TYPE)
            .unwrap();
        let wrong = HashMap::from([
            (
                j,
                ClosedByService {
                    run_type: workload.identities[j].run_type.as_str().into(),
                    codes: vec!["dispatch.rejected".into()],
                },
            ),
            (
                i,
                ClosedByService {
                    run_type: REJECTED_TYPE.as_str().into(),
                    codes: vec!["run.stale".into()],
                },
            ),
        ]);
        let mut findings = Findings::default();
        check_closed(
            &mut findings,
            AfterDispatch {
                closed: &wrong,
                ..after
            },
        );
        assert_eq!(findings.problems.len(), 2, "{:?}", findings.problems);
    }

    #[test]
    fn gaps_runs_without_events_and_unreceived_events_are_missing_events() {
        let (workload, _, _, _) = perfect();
        let runs = stored_runs(&workload);
        let id = |n: u128| uuid::Uuid::from_u128(n);
        // Run 1: 1, 2, 4 (3 missing); run 2: nothing; others: 1 each.
        let mut events = vec![(id(1), 1, 1), (id(2), 1, 2), (id(3), 1, 4)];
        events.extend((3..=runs.len() as i64).map(|r| (id(100 + r as u128), r, 1)));
        let received = Received::default();
        received.arrivals.lock().unwrap().extend(
            events
                .iter()
                .skip(1)
                .map(|(i, _, _)| (i.to_string(), vec![tokio::time::Instant::now()])),
        );
        let mut findings = Findings::default();
        check_events(&mut findings, &runs, &events, &received);
        assert_eq!(findings.missing_events, 1 + 1 + 1, "{:?}", findings.notes);
    }

    /// The body of an event carrying `run` (only what the checks read).
    fn event_body(run: &StoredRun) -> Vec<u8> {
        json!({
            "specversion": "1.0",
            "data": {
                "sequence": 1,
                "run": {
                    "id": run.id,
                    "workspace_id": run.workspace_id,
                    "tenant_id": run.tenant_id,
                    "run_identity_hash": run.run_identity_hash,
                    "status": run.status,
                    "outcome": run.outcome,
                    "summary_counts": run.summary_counts,
                    "failure_summary": run.failure_summary,
                    "failure_overflow": {},
                    "completed_at": run.completed_at,
                }
            }
        })
        .to_string()
        .into_bytes()
    }

    /// Run `r`'s event number `sequence`, id `n`, received with `body`.
    fn receive(received: &Received, n: u128, run_id: i64, sequence: i64, body: &[u8]) {
        let id = uuid::Uuid::from_u128(n).to_string();
        received.record_event(&id, run_id, sequence, body);
        received
            .arrivals
            .lock()
            .unwrap()
            .insert(id, vec![tokio::time::Instant::now()]);
    }

    /// Every run but `except` has one event, number 1, stored and received.
    fn one_event_each(
        runs: &[StoredRun],
        except: &[i64],
        received: &Received,
    ) -> Vec<(uuid::Uuid, i64, i64)> {
        runs.iter()
            .filter(|r| !except.contains(&r.id))
            .map(|r| {
                let n = 1_000_000 + r.id as u128;
                receive(received, n, r.id, 1, &event_body(r));
                (uuid::Uuid::from_u128(n), r.id, 1)
            })
            .collect()
    }

    #[test]
    fn a_sequence_that_starts_again_at_one_after_the_history_was_pruned_is_missing() {
        let (workload, _, _, _) = perfect();
        let runs = stored_runs(&workload);
        let received = Received::default();
        let mut events = one_event_each(&runs, &[1], &received);
        let body = event_body(&runs[0]);
        // Run 1: 1, 2, 3 published and received, then pruned; a late count numbered 1 again.
        for sequence in 1..=3 {
            receive(&received, sequence as u128, 1, sequence, &body);
        }
        receive(&received, 9, 1, 1, &body);
        events.push((uuid::Uuid::from_u128(9), 1, 1));
        let mut findings = Findings::default();
        check_events(&mut findings, &runs, &events, &received);
        assert_eq!(findings.missing_events, 1, "{:?}", findings.notes);
        assert!(
            findings.notes.iter().any(|n| n.contains("restarted")),
            "{:?}",
            findings.notes
        );
    }

    #[test]
    fn a_pruned_history_is_not_missing_but_a_number_no_event_ever_carried_is() {
        let (workload, _, _, _) = perfect();
        let runs = stored_runs(&workload);
        let received = Received::default();
        let mut events = one_event_each(&runs, &[1, 2], &received);
        // Run 1: 1..=5 received, 1..=3 pruned: nothing missing.
        let body = event_body(&runs[0]);
        for sequence in 1..=5 {
            receive(&received, 10 + sequence as u128, 1, sequence, &body);
        }
        events.push((uuid::Uuid::from_u128(14), 1, 4));
        events.push((uuid::Uuid::from_u128(15), 1, 5));
        // Run 2: 1 and 2 received and pruned, then 4: number 3 skipped.
        let body = event_body(&runs[1]);
        for sequence in [1, 2, 4] {
            receive(&received, 20 + sequence as u128, 2, sequence, &body);
        }
        events.push((uuid::Uuid::from_u128(24), 2, 4));
        let mut findings = Findings::default();
        check_events(&mut findings, &runs, &events, &received);
        assert_eq!(findings.missing_events, 1, "{:?}", findings.notes);
        assert!(findings.notes[0].contains("run 2"), "{:?}", findings.notes);
        assert!(findings.problems.is_empty(), "{:?}", findings.problems);
    }

    #[test]
    fn a_run_whose_latest_event_lacks_its_stored_state_is_missing_an_event() {
        let (workload, _, _, _) = perfect();
        let mut runs = stored_runs(&workload);
        let received = Received::default();
        let events = one_event_each(&runs, &[], &received);
        let mut findings = Findings::default();
        check_events(&mut findings, &runs, &events, &received);
        assert_eq!(findings.missing_events, 0, "{:?}", findings.notes);

        // A late count applied to run 1, whose event never came.
        runs[0].summary_counts = json!({"total": 999});
        let mut findings = Findings::default();
        check_events(&mut findings, &runs, &events, &received);
        assert_eq!(findings.missing_events, 1, "{:?}", findings.notes);
    }

    #[test]
    fn a_run_deleted_by_retention_is_checked_on_its_latest_event_and_only_retention_may_delete_it()
    {
        let (workload, run_ids, inbox, _) = perfect();
        let (none, closed) = (HashSet::new(), HashMap::new());
        let after = after(&run_ids, &none, &closed);
        let received = Received::default();
        let mut runs = stored_runs(&workload);
        let deleted = runs.remove(0);
        receive(&received, 1, deleted.id, 7, &event_body(&deleted));
        let compare = |runs: &[StoredRun], retention: Option<Duration>| {
            let mut runs: Vec<StoredRun> = runs
                .iter()
                .map(|r| {
                    StoredRun::from_event_body(&event_body(r))
                        .map(|mut r| {
                            r.from_event = false;
                            r
                        })
                        .unwrap()
                })
                .collect();
            let mut findings = Findings::default();
            add_deleted_runs(&mut findings, &mut runs, &received);
            compare_runs(
                &mut findings,
                &workload,
                after,
                &inbox,
                &runs,
                retention,
                Utc::now(),
            );
            (findings.double_applied, findings.problems.len())
        };
        let retention = Some(Duration::from_secs(45));
        assert_eq!(
            compare(&runs, retention),
            (0, 0),
            "completed 5 minutes ago, kept 45 s"
        );
        assert_eq!(
            compare(&runs, None),
            (1, 0),
            "no run retention deletes nothing"
        );
        assert_eq!(
            compare(&runs, Some(Duration::from_secs(600))),
            (1, 0),
            "not due yet"
        );

        // Its latest event shows a count applied twice.
        let mut doubled = StoredRun::from_event_body(&event_body(&deleted)).unwrap();
        doubled.summary_counts = json!({"total": 100_000});
        receive(&received, 2, deleted.id, 8, &event_body(&doubled));
        assert_eq!(compare(&runs, retention), (1, 0));
    }

    #[test]
    fn a_run_deleted_before_the_identities_are_resolved_is_found_by_its_latest_event() {
        let (workload, _, _, _) = perfect();
        let mut runs = stored_runs(&workload);
        runs[0].outcome = "failed".into();
        runs[0].failure_summary = json!([{"code": "dispatch.rejected", "message": "refused"}]);
        let received = Received::default();
        receive(&received, 1, runs[0].id, 2, &event_body(&runs[0]));
        receive(&received, 2, runs[1].id, 1, &event_body(&runs[1]));
        let rows = HashSet::from([runs[1].id]);
        let deleted = deleted_runs(&received, &rows);
        assert_eq!(deleted.len(), 1);
        let (id, key, closed) = &deleted[0];
        assert_eq!(*id, runs[0].id);
        assert_eq!(
            key,
            &(
                runs[0].workspace_id,
                runs[0].tenant_id,
                runs[0].run_identity_hash.clone()
            )
        );
        assert_eq!(closed.as_ref().unwrap().codes, ["dispatch.rejected"]);
    }
}
