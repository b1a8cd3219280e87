//! The checks behind the closing figures, run once the system has settled.
//!
//! - `lost`: good commands never applied (not in the inbox, dead-lettered or not: either way the
//!   run misses their effect), bad ones not dead-lettered, identities left without a run.
//!   Dead letters of commands that were applied anyway, or that this run never sent, break "the
//!   dead-letter queue holds only the deliberately bad messages": they are problems, reported
//!   apart from the figures, and fail the run too.
//! - `double_applied`: runs whose stored effect differs from the distinct commands sent (summary
//!   counts, each failure once, final state) although every one of their commands is in the
//!   inbox: the difference can only come from a command applied twice (or wrongly).
//! - `duplicate_runs`: identities with more than one run, after the dispatches or at the end.
//! - `missing_events`: gaps in a run's event sequences, runs without events, and stored events
//!   the subscriber never received.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;
use sqlx::PgPool;

use super::quiescence::DeadLetterSeen;
use super::subscriber::Received;
use super::workload::Workload;
use crate::domain::RunStatus;

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

/// Runs every check. `run_ids[i]` is identity `i`'s run as resolved after the dispatches,
/// `duplicates_after_dispatch` the identities that had more than one run then.
pub async fn evaluate(
    pool: &PgPool,
    workload: &Workload,
    run_ids: &[Option<i64>],
    duplicates_after_dispatch: &HashSet<usize>,
    dead_letters: &[DeadLetterSeen],
    received: &Received,
) -> Result<Findings, sqlx::Error> {
    let mut findings = Findings::default();
    let inbox: HashSet<String> = sqlx::query_scalar("SELECT command_id FROM processed_commands")
        .fetch_all(pool)
        .await?
        .into_iter()
        .collect();
    account(&mut findings, workload, run_ids, &inbox, dead_letters);

    let runs: Vec<StoredRun> = sqlx::query_as(
        "SELECT id, workspace_id, tenant_id, run_identity_hash, status, outcome, summary_counts, failure_summary
         FROM operation_runs",
    )
    .fetch_all(pool)
    .await?;
    compare_runs(&mut findings, workload, run_ids, &inbox, &runs);
    count_duplicates(&mut findings, workload, duplicates_after_dispatch, &runs);

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
    run_ids: &[Option<i64>],
    inbox: &HashSet<String>,
    dead_letters: &[DeadLetterSeen],
) {
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
        .zip(run_ids)
        .filter(|(_, id)| id.is_some())
        .flat_map(|(run, _)| run.steps.iter().map(|s| s.command_id.as_str()));
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
    run_ids: &[Option<i64>],
    inbox: &HashSet<String>,
    runs: &[StoredRun],
) {
    let by_id: HashMap<i64, &StoredRun> = runs.iter().map(|r| (r.id, r)).collect();
    let mut differ = Vec::new();
    for (i, planned) in workload.runs.iter().enumerate() {
        let Some(run_id) = run_ids[i] else { continue };
        let Some(stored) = by_id.get(&run_id) else {
            differ.push(format!("run {run_id}: gone"));
            continue;
        };
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
        let mut items: HashMap<String, usize> = HashMap::new();
        for failure in stored.failure_summary.as_array().into_iter().flatten() {
            let item = failure.get("item").and_then(Value::as_str).unwrap_or("?");
            *items.entry(item.to_owned()).or_default() += 1;
        }
        let expected_items = planned.expected_failure_items();
        let once = expected_items.iter().all(|i| items.get(*i) == Some(&1));
        if !once || items.len() != expected_items.len() {
            why.push(format!(
                "{} failure entries for {} sent",
                items.values().sum::<usize>(),
                expected_items.len()
            ));
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

    let seen = received.ids.lock().expect("not poisoned");
    let stored: HashSet<String> = events.iter().map(|(id, _, _)| id.to_string()).collect();
    let unseen: Vec<String> = events
        .iter()
        .filter(|(id, _, _)| !seen.contains(&id.to_string()))
        .map(|(id, run_id, sequence)| format!("{id} (run {run_id} #{sequence})"))
        .collect();
    note(
        findings,
        &unseen,
        "stored event(s) the subscriber never received",
    );
    findings.missing_events += unseen.len() as u64;
    let phantom = seen.iter().filter(|id| !stored.contains(*id)).count();
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
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use serde_json::json;

    /// A small workload, each identity resolved to run `i + 1`, and the inbox and dead-letter
    /// queue of a perfect run.
    fn perfect() -> (
        Workload,
        Vec<Option<i64>>,
        HashSet<String>,
        Vec<DeadLetterSeen>,
    ) {
        let workload = Workload::generate(120, &mut StdRng::seed_from_u64(5));
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

    #[test]
    fn a_perfect_run_has_no_findings() {
        let (workload, run_ids, inbox, dead) = perfect();
        let mut findings = Findings::default();
        account(&mut findings, &workload, &run_ids, &inbox, &dead);
        let runs = stored_runs(&workload);
        compare_runs(&mut findings, &workload, &run_ids, &inbox, &runs);
        count_duplicates(&mut findings, &workload, &HashSet::new(), &runs);
        assert_eq!(
            (
                findings.lost,
                findings.double_applied,
                findings.duplicate_runs
            ),
            (0, 0, 0),
            "{:?}",
            findings.notes
        );
        assert!(findings.problems.is_empty(), "{:?}", findings.problems);
    }

    #[test]
    fn missing_commands_and_stray_dead_letters_are_counted_apart() {
        let (workload, run_ids, mut inbox, mut dead) = perfect();
        let step = workload.runs[0].steps[1].command_id.clone();
        inbox.remove(&step);
        dead.retain(|d| d.command_id.as_deref() != Some(workload.bad[0].command_id.as_str()));
        let applied = workload.dispatches[0].command_id.clone();
        dead.push(DeadLetterSeen {
            command_id: Some(applied),
            code: "database_rejected".into(),
        });
        let mut findings = Findings::default();
        account(&mut findings, &workload, &run_ids, &inbox, &dead);
        assert_eq!(findings.lost, 2, "{:?}", findings.notes);
        assert_eq!(findings.problems.len(), 1, "{:?}", findings.problems);
        assert!(findings.problems[0].contains("applied, yet dead-lettered"));
    }

    #[test]
    fn an_effect_applied_twice_counts_unless_a_command_is_missing() {
        let (workload, run_ids, mut inbox, _) = perfect();
        let mut runs = stored_runs(&workload);
        let doubled: BTreeMap<String, u64> = workload.runs[0]
            .expected_counts()
            .into_iter()
            .map(|(k, v)| (k, v * 2))
            .collect();
        runs[0].summary_counts = json!(doubled);
        let mut findings = Findings::default();
        compare_runs(&mut findings, &workload, &run_ids, &inbox, &runs);
        assert_eq!(findings.double_applied, 1);

        inbox.remove(&workload.runs[0].steps[0].command_id);
        let mut findings = Findings::default();
        compare_runs(&mut findings, &workload, &run_ids, &inbox, &runs);
        assert_eq!(findings.double_applied, 0, "explained by the lost command");
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
        received
            .ids
            .lock()
            .unwrap()
            .extend(events.iter().skip(1).map(|(i, _, _)| i.to_string()));
        let mut findings = Findings::default();
        check_events(&mut findings, &runs, &events, &received);
        assert_eq!(findings.missing_events, 1 + 1 + 1, "{:?}", findings.notes);
    }
}
