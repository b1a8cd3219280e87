//! A run as the viewer shows it, as typed answers shared by the JSON API and the pages: the
//! event's `data.run` shape plus label, progress, names, times and failures per code
//! ([`RunDetail`] for one run, [`ListedRun`] for a list row), and an identity's history
//! ([`IdentityHistory`]).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;

use crate::domain::operation_run::RELATED_CONTEXT_KEYS;
use crate::domain::{OperationRun, OperationRunType, RunStatus, SummaryCounts};
use crate::store::viewer;

/// Most distinct failure codes a listed run names (`failure_codes`).
pub const LISTED_FAILURE_CODES: usize = 5;

/// The label of a type (a stored run's type is always in the catalog: `store::runs` refuses a row
/// of another).
pub fn type_label(run_type: OperationRunType) -> &'static str {
    run_type.catalog().label
}

/// How far a run got: `processed` is the `processed` count, else succeeded + failed + skipped;
/// `percent` only when the counts carry a positive `total`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Progress {
    /// Items done.
    pub processed: u64,
    /// Items in all, when the counts say.
    pub total: Option<u64>,
    /// `processed / total`, one decimal, at most 100.
    pub percent: Option<f64>,
}

/// The [`Progress`] of `counts`.
pub fn progress(counts: &SummaryCounts) -> Progress {
    let get = |k: &str| counts.contains(k).then(|| counts.get(k));
    let processed = get("processed").unwrap_or_else(|| {
        ["succeeded", "failed", "skipped"]
            .iter()
            .filter_map(|k| get(k))
            .sum()
    });
    let total = get("total");
    let percent = total
        .filter(|t| *t > 0)
        .map(|t| ((processed as f64 / t as f64) * 1000.0).round().min(1000.0) / 10.0);
    Progress {
        processed,
        total,
        percent,
    }
}

/// The times of a run as read at `now`: how long it ran, how long it has not changed, and
/// whether that is longer than its type usually takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RunTimes {
    /// From `started_at` to `completed_at` (to now while it runs); `null` before it started.
    pub duration_seconds: Option<i64>,
    /// The type's expected duration (the catalog).
    pub expected_duration_seconds: u64,
    /// Since the run's last change (`updated_at`).
    pub idle_seconds: i64,
    /// Running, and idle for longer than the expected duration.
    pub stalled: bool,
}

/// The [`RunTimes`] of `run` at `now`.
pub fn run_times(run: &OperationRun, now: DateTime<Utc>) -> RunTimes {
    let expected = run.run_type.catalog().expected_duration.as_secs();
    let duration_seconds = run
        .started_at
        .map(|s| (run.completed_at.unwrap_or(now) - s).num_seconds().max(0));
    let idle_seconds = (now - run.updated_at).num_seconds().max(0);
    RunTimes {
        duration_seconds,
        expected_duration_seconds: expected,
        idle_seconds,
        stalled: run.status == RunStatus::Running && idle_seconds as u64 > expected,
    }
}

/// How many failures a run recorded with one code: its stored entries plus its overflow count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CodeCount {
    /// The code (`"*"`: the codes past the overflow's cap of distinct codes).
    pub code: String,
    /// Failures with it.
    pub count: u64,
}

/// Failures per code, stored entries plus overflow, largest first (then by code).
pub fn failures_by_code(run: &OperationRun) -> Vec<CodeCount> {
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    for entry in &run.failure_summary.entries {
        *counts.entry(entry.code.as_str()).or_default() += 1;
    }
    for (code, n) in &run.failure_summary.overflow {
        *counts.entry(code.as_str()).or_default() += n;
    }
    let mut out: Vec<CodeCount> = counts
        .into_iter()
        .map(|(code, count)| CodeCount {
            code: code.to_owned(),
            count,
        })
        .collect();
    out.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.code.cmp(&b.code)));
    out
}

/// The distinct codes of a run's failures (stored entries first, in their order, then the
/// overflow's), at most [`LISTED_FAILURE_CODES`].
pub fn failure_codes(run: &OperationRun) -> Vec<String> {
    let mut seen = BTreeSet::new();
    run.failure_summary
        .entries
        .iter()
        .map(|e| e.code.as_str())
        .chain(run.failure_summary.overflow.keys().map(String::as_str))
        .filter(|c| seen.insert(*c))
        .take(LISTED_FAILURE_CODES)
        .map(str::to_owned)
        .collect()
}

/// One run of a list (`GET /v1/runs`, the list page).
#[derive(Debug, Clone, Serialize)]
pub struct ListedRun<'a> {
    /// The run in the shape of an event's `data.run` (`started_at`, `completed_at`,
    /// `updated_at` among them).
    #[serde(flatten)]
    pub run: &'a OperationRun,
    /// The type's label.
    pub label: &'static str,
    /// How far it got.
    pub progress: Progress,
    /// The tenant's name (`null` for a workspace-scoped run).
    pub tenant_name: Option<&'a str>,
    /// Distinct failure codes, at most [`LISTED_FAILURE_CODES`].
    pub failure_codes: Vec<String>,
    /// Duration, idle time and whether it stalled.
    #[serde(flatten)]
    pub times: RunTimes,
}

impl<'a> ListedRun<'a> {
    /// The list row of `run`, whose tenant is named `tenant_name`, at `now`.
    pub fn new(run: &'a OperationRun, tenant_name: Option<&'a str>, now: DateTime<Utc>) -> Self {
        Self {
            run,
            label: type_label(run.run_type),
            progress: progress(&run.summary_counts),
            tenant_name,
            failure_codes: failure_codes(run),
            times: run_times(run, now),
        }
    }
}

/// Most runs `GET /v1/identities/{hash}` lists (newest first); the rest are paged with
/// `GET /v1/runs?identity=HASH`.
pub const IDENTITY_RUNS: i64 = 20;

/// An identity's history (`GET /v1/identities/{hash}`): its type, how long it stays taken,
/// the run holding it now, and its runs, all within the token's scope.
#[derive(Debug, Clone, Serialize)]
pub struct IdentityHistory<'a> {
    /// The identity (`run_identity_hash`).
    pub identity_hash: &'a str,
    /// Its runs' type (the identity document holds the type).
    #[serde(rename = "type")]
    pub run_type: &'static str,
    /// `active` (taken while a run is queued or running) or `forever`.
    pub dedupe_window: &'static str,
    /// The run that holds it now (a dispatch of it is deduplicated to this run), if in scope.
    pub holder: Option<ListedRun<'a>>,
    /// Its runs, newest first, at most [`IDENTITY_RUNS`].
    pub runs: Vec<ListedRun<'a>>,
    /// More runs than listed: page them with `GET /v1/runs?identity=HASH`.
    pub more: bool,
}

/// An identity's runs within a scope, as read: what `GET /v1/identities/{hash}` answers and
/// the run page's "Runs of this identity" shows (one query for both).
#[derive(Debug, Clone)]
pub struct IdentityRuns {
    /// Its runs, newest first, at most [`IDENTITY_RUNS`].
    pub runs: Vec<viewer::ListedRow>,
    /// The run that holds it now, if in scope.
    pub holder: Option<viewer::ListedRow>,
    /// More runs than listed.
    pub more: bool,
}

/// The runs of identity `hash` within `scope` (none in scope: an empty list).
pub async fn identity_runs(
    pool: &PgPool,
    scope: &viewer::ViewerScope,
    hash: &str,
) -> Result<IdentityRuns, sqlx::Error> {
    let filter = viewer::RunListFilter {
        identity: Some(hash.to_owned()),
        ..viewer::RunListFilter::default()
    };
    let (mut runs, holder) = tokio::try_join!(
        viewer::list_runs(pool, scope, &filter, None, IDENTITY_RUNS + 1),
        viewer::identity_holder(pool, scope, hash),
    )?;
    let more = runs.len() as i64 > IDENTITY_RUNS;
    runs.truncate(IDENTITY_RUNS as usize);
    Ok(IdentityRuns { runs, holder, more })
}

/// The dispatches deduplicated onto a run: how many, and when the latest came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deduplicated {
    /// Dispatches answered with the run because it held their identity.
    pub count: i64,
    /// When the latest was.
    pub latest: DateTime<Utc>,
}

/// The dispatches deduplicated onto each of `runs` (already in scope) that had any, as the
/// inbox records them (dispatches with a `command_id`, for the inbox retention).
pub async fn deduplicated_onto(
    pool: &PgPool,
    runs: &[i64],
) -> Result<BTreeMap<i64, Deduplicated>, sqlx::Error> {
    Ok(viewer::deduplicated_dispatches(pool, runs)
        .await?
        .into_iter()
        .map(|(run, count, latest)| (run, Deduplicated { count, latest }))
        .collect())
}

/// A link to a record the run's context names.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RelatedLink {
    /// The context key.
    pub key: &'static str,
    /// Its value, as stored.
    pub id: Value,
    /// For people, e.g. `Policy 7`.
    pub label: String,
}

/// A legacy row that points at the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LegacyRow {
    /// Its table.
    pub table: String,
    /// The row.
    pub row: Value,
}

fn related_label(key: &str) -> &'static str {
    match key {
        "provider_connection_id" => "Provider connection",
        "backup_schedule_id" => "Backup schedule",
        "backup_schedule_run_id" => "Backup schedule run",
        "backup_set_id" => "Backup set",
        "policy_id" => "Policy",
        "restore_run_id" => "Restore run",
        _ => "Related record",
    }
}

/// The related links of `run` from its context keys. A `restore_run_id` is shown only when that
/// restore belongs to the run's own tenant.
pub async fn related(pool: &PgPool, run: &OperationRun) -> Result<Vec<RelatedLink>, sqlx::Error> {
    let mut links = Vec::new();
    for key in RELATED_CONTEXT_KEYS {
        let Some(id) = run.context.get(key).filter(|v| !v.is_null()) else {
            continue;
        };
        if key == "restore_run_id" {
            let restore = id
                .as_i64()
                .or_else(|| id.as_str().and_then(|s| s.parse().ok()));
            let visible = match (restore, run.tenant_id) {
                (Some(r), Some(t)) => viewer::restore_run_of_tenant(pool, r, t).await?,
                _ => false,
            };
            if !visible {
                continue;
            }
        }
        let shown = id
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| id.to_string());
        links.push(RelatedLink {
            key,
            id: id.clone(),
            label: format!("{} {}", related_label(key), shown),
        });
    }
    Ok(links)
}

/// The whole detail of one run (`GET /v1/runs/{id}`, the run page).
#[derive(Debug, Clone, Serialize)]
pub struct RunDetail {
    /// The run in the shape of an event's `data.run`.
    #[serde(flatten)]
    pub run: OperationRun,
    /// The type's label.
    pub label: &'static str,
    /// Links from the context keys.
    pub related: Vec<RelatedLink>,
    /// The legacy rows that point here.
    pub legacy: Vec<LegacyRow>,
    /// How far it got.
    pub progress: Progress,
    /// The workspace's name.
    pub workspace_name: String,
    /// The tenant's name (`null` for a workspace-scoped run).
    pub tenant_name: Option<String>,
    /// Duration, expected duration, idle time and whether it stalled.
    #[serde(flatten)]
    pub times: RunTimes,
    /// Failures per code, entries plus overflow, largest first.
    pub failures_by_code: Vec<CodeCount>,
}

/// The whole detail of one run (already checked to be in scope), at `now`.
pub async fn detail(
    pool: &PgPool,
    run: OperationRun,
    now: DateTime<Utc>,
) -> Result<RunDetail, sqlx::Error> {
    // Independent reads on pool connections: one round trip of latency, not three.
    let (related, legacy, (workspace_name, tenant_name)) = tokio::try_join!(
        related(pool, &run),
        viewer::legacy_rows_for_run(pool, run.id),
        viewer::scope_names(pool, run.workspace_id, run.tenant_id),
    )?;
    Ok(RunDetail {
        label: type_label(run.run_type),
        related,
        legacy: legacy
            .into_iter()
            .map(|(table, row)| LegacyRow { table, row })
            .collect(),
        progress: progress(&run.summary_counts),
        workspace_name,
        tenant_name,
        times: run_times(&run, now),
        failures_by_code: failures_by_code(&run),
        run,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn progress(counts: &Value) -> Value {
        serde_json::to_value(super::progress(&SummaryCounts::parse(counts).unwrap())).unwrap()
    }

    #[test]
    fn progress_has_a_percent_only_with_a_total() {
        assert_eq!(
            progress(&json!({"total": 8, "processed": 2})),
            json!({"processed": 2, "total": 8, "percent": 25.0})
        );
        assert_eq!(
            progress(&json!({"succeeded": 2, "failed": 1})),
            json!({"processed": 3, "total": null, "percent": null})
        );
        assert_eq!(
            progress(&json!({"total": 0})),
            json!({"processed": 0, "total": 0, "percent": null})
        );
    }
}
