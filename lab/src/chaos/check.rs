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
//!   service completed itself before phase 2 (its job refused, see [`super::executors`]) was
//!   sent no progress and must still be exactly that: `completed`/`failed`, no counts, its one
//!   hand-off failure. The flooded run's counts and state are exact; of its failure entries
//!   (the service keeps only the first ones, a documented cap) each stored one must have been sent
//!   and be stored once, and entries without an `item` (the service's own tally) are ignored.
//! - `duplicate_runs`: identities with more than one run, after the dispatches or at the end.
//! - `missing_events`: gaps in a run's event sequences, runs without events, and stored events
//!   the subscriber never received.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;
use sqlx::PgPool;

use super::executors::{closed_as_allowed, failure_codes, ClosedByService, HAND_OFF_FAILURE_CODES};
use super::quiescence::DeadLetterSeen;
use super::subscriber::Received;
use super::workload::{PlannedRun, Workload};
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
}

/// A stored run, as the checks read it.
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

/// Runs every check.
pub async fn evaluate(
    pool: &PgPool,
    workload: &Workload,
    after: AfterDispatch<'_>,
    dead_letters: &[DeadLetterSeen],
    received: &Received,
) -> Result<Findings, sqlx::Error> {
    let mut findings = Findings::default();
    let inbox: HashSet<String> = sqlx::query_scalar("SELECT command_id FROM processed_commands")
        .fetch_all(pool)
        .await?
        .into_iter()
        .collect();
    account(&mut findings, workload, after, &inbox, dead_letters);

    let runs: Vec<StoredRun> = sqlx::query_as(
        "SELECT id, workspace_id, tenant_id, run_identity_hash, status, outcome, summary_counts, failure_summary
         FROM operation_runs",
    )
    .fetch_all(pool)
    .await?;
    compare_runs(&mut findings, workload, after, &inbox, &runs);
    count_duplicates(&mut findings, workload, after.duplicates, &runs);
    check_closed(&mut findings, after);

    let events: Vec<(uuid::Uuid, i64, i64)> =
        sqlx::query_as("SELECT id, run_id, sequence FROM operation_run_events")
            .fetch_all(pool)
            .await?;
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

/// `double_applied`: each run must hold exactly the effect of the distinct commands sent.
fn compare_runs(
    findings: &mut Findings,
    workload: &Workload,
    after: AfterDispatch<'_>,
    inbox: &HashSet<String>,
    runs: &[StoredRun],
) {
    let by_id: HashMap<i64, &StoredRun> = runs.iter().map(|r| (r.id, r)).collect();
    let mut differ = Vec::new();
    for (i, planned) in workload.runs.iter().enumerate() {
        let Some(run_id) = after.run_ids[i] else {
            continue;
        };
        let Some(stored) = by_id.get(&run_id) else {
            differ.push(format!("run {run_id}: gone"));
            continue;
        };
        if after.closed.contains_key(&i) {
            if let Some(why) = closed_run_differs(stored) {
                differ.push(format!("run {run_id} (completed by the service): {why}"));
            }
            continue;
        }
        let mut why = Vec::new();
        let counts: BTreeMap<String, u64> = stored
            .summary_counts
            .as_object()
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                    .filter(|(_, v)| *v > 0)
                    .collect()
            })
            .unwrap_or_default();
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
/// sent stored exactly once; for the flooded run, each stored item sent and stored once (the
/// service keeps only the first entries) and item-less entries ignored.
fn failures_differ(planned: &PlannedRun, failure_summary: &Value) -> Option<String> {
    let entries: Vec<&Value> = failure_summary.as_array().into_iter().flatten().collect();
    let mut items: HashMap<&str, usize> = HashMap::new();
    for failure in &entries {
        match failure.get("item").and_then(Value::as_str) {
            Some(item) => *items.entry(item).or_default() += 1,
            None if planned.flood => {}
            None => *items.entry("?").or_default() += 1,
        }
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
                super::workload::REJECTED_TYPE
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
    for run in runs {
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

/// `missing_events`: sequences 1..n per run, and every stored event received.
fn check_events(
    findings: &mut Findings,
    runs: &[StoredRun],
    events: &[(uuid::Uuid, i64, i64)],
    received: &Received,
) {
    let mut sequences: HashMap<i64, Vec<i64>> = runs.iter().map(|r| (r.id, Vec::new())).collect();
    for (_, run_id, sequence) in events {
        sequences.entry(*run_id).or_default().push(*sequence);
    }
    let mut gaps = Vec::new();
    let mut missing_numbers = 0;
    for (run_id, seqs) in &mut sequences {
        seqs.sort_unstable();
        seqs.dedup();
        let highest = seqs.last().copied().unwrap_or(0).max(1);
        let absent = highest - seqs.len() as i64;
        if absent > 0 {
            missing_numbers += absent as u64;
            gaps.push(format!("run {run_id}: sequences {seqs:?}"));
        }
    }
    note(findings, &gaps, "run(s) whose event sequences are not 1..n");
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
    let phantom = seen.keys().filter(|id| !stored.contains(*id)).count();
    if phantom > 0 {
        findings.problems.push(format!(
            "the subscriber received {phantom} event(s) that are not stored"
        ));
    }
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
    use crate::chaos::injections::Injections;
    use crate::chaos::workload::REJECTED_TYPE;
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
                let items: Vec<Value> = run
                    .expected_failure_items()
                    .iter()
                    .map(|item| json!({"code": "x", "message": "m", "item": item}))
                    .collect();
                StoredRun {
                    id: i as i64 + 1,
                    workspace_id: identity.workspace_id,
                    tenant_id: identity.tenant_id,
                    run_identity_hash: identity.hash.as_str().to_owned(),
                    status: "completed".into(),
                    outcome: run.outcome().as_str().into(),
                    summary_counts: json!(run.expected_counts()),
                    failure_summary: Value::Array(items),
                }
            })
            .collect()
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
        compare_runs(&mut findings, &workload, after, &inbox, &runs);
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
        compare_runs(
            &mut findings,
            &workload,
            after(&run_ids, &none, &closed),
            &inbox,
            &runs,
        );
        assert_eq!(findings.double_applied, 1);

        inbox.remove(&workload.runs[0].steps[0].command_id);
        let mut findings = Findings::default();
        compare_runs(
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
            compare_runs(
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
        compare_runs(&mut findings, &workload, after, &inbox, &runs);
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
        compare_runs(&mut findings, &workload, after, &inbox, &runs);
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
}
