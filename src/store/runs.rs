//! `operation_runs`: inserting queued runs (deduplicated by the partial unique indexes), locking a
//! run inside its scope, saving progress, and reading runs for the CLI. Every lookup by identity
//! is an index probe on one of the partial unique indexes (`tests/it/dedupe.rs` checks
//! the plans).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{FromRow, PgConnection, PgExecutor, Row};

use super::error::UnparsableValue;
use crate::domain::{
    DedupeWindow, DispatchCommand, Failure, FailureSummary, OperationRun, OperationRunType,
    RunIdentityHash, RunScope, RunStatus, SummaryCounts, TraceContext,
};

/// Maps a row into the typed run, parsing every value once. A value that does not parse is a
/// column decode error naming the column and the run ([`super::StoreError::InvalidRow`] once
/// converted), never a panic. JSON columns decode straight into their types (no intermediate
/// `serde_json::Value`); stored failure messages are trusted as sanitised when written.
impl<'r> FromRow<'r, PgRow> for OperationRun {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        let id: i64 = row.try_get("id")?;
        let invalid = |column: &str, reason: String| sqlx::Error::ColumnDecode {
            index: column.to_owned(),
            source: Box::new(UnparsableValue { run_id: id, reason }),
        };
        let run_type = row.try_get::<&str, _>("type")?;
        let hash = row.try_get::<&str, _>("run_identity_hash")?;
        Ok(Self {
            id,
            workspace_id: row.try_get("workspace_id")?,
            tenant_id: row.try_get("tenant_id")?,
            user_id: row.try_get("user_id")?,
            initiator_name: row.try_get("initiator_name")?,
            run_type: OperationRunType::parse(run_type).map_err(|e| invalid("type", e.message))?,
            status: row
                .try_get::<&str, _>("status")?
                .parse()
                .map_err(|e: crate::domain::Rejection| invalid("status", e.message))?,
            outcome: row
                .try_get::<&str, _>("outcome")?
                .parse()
                .map_err(|e: crate::domain::Rejection| invalid("outcome", e.message))?,
            run_identity_hash: RunIdentityHash::parse(hash).ok_or_else(|| {
                invalid(
                    "run_identity_hash",
                    format!("{hash:?} is not 64 lowercase hex characters"),
                )
            })?,
            summary_counts: row.try_get::<Json<SummaryCounts>, _>("summary_counts")?.0,
            failure_summary: FailureSummary {
                entries: row.try_get::<Json<Vec<Failure>>, _>("failure_summary")?.0,
                overflow: row
                    .try_get::<Json<BTreeMap<String, u64>>, _>("failure_overflow")?
                    .0,
            },
            context: row.try_get("context")?,
            started_at: row.try_get("started_at")?,
            completed_at: row.try_get("completed_at")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            trace: TraceContext::from_stored(
                row.try_get("traceparent")?,
                row.try_get("tracestate")?,
            ),
        })
    }
}

/// The SQL of [`insert_or_find`] for a scope (tenant or workspace) and dedupe window: public so
/// that the plan test can `EXPLAIN` exactly what runs. Parameters: `$1` workspace, `$2` tenant,
/// `$3` user, `$4` initiator, `$5` type, `$6` identity hash, `$7` context, `$8` window, `$9`
/// traceparent, `$10` tracestate.
///
/// Both the conflict target and the lookup name one partial unique index's columns and imply its
/// predicate, so each is an index probe: `tenant_id IS NOT DISTINCT FROM $2` would not be (it
/// matches NULL too, so the planner cannot prove a partial index's predicate from it).
pub fn insert_or_find_sql(tenant_scoped: bool, window: DedupeWindow) -> String {
    let (columns, scope) = scope_sql(tenant_scoped, "$1", "$2");
    let window = window_sql(window);
    format!(
        "WITH inserted AS (
             INSERT INTO operation_runs
                 (workspace_id, tenant_id, user_id, initiator_name, type, run_identity_hash, context,
                  dedupe_window, traceparent, tracestate)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT {columns} {window} DO NOTHING
             RETURNING *)
         SELECT *, true AS inserted FROM inserted
         UNION ALL
         SELECT *, false AS inserted FROM operation_runs
         WHERE {scope} AND run_identity_hash = $6 AND {window}
           AND NOT EXISTS (SELECT 1 FROM inserted)"
    )
}

/// The SQL of [`find_by_identity`] (public for the plan test). Parameters: `$1` workspace, `$2`
/// tenant, `$3` identity hash.
pub fn find_by_identity_sql(tenant_scoped: bool, window: DedupeWindow) -> String {
    let (_, scope) = scope_sql(tenant_scoped, "$1", "$2");
    let window = window_sql(window);
    format!(
        "SELECT * FROM operation_runs
         WHERE {scope} AND run_identity_hash = $3 AND {window}"
    )
}

/// The scope part of a conflict target (columns and predicate, to be followed by the window
/// predicate), and a predicate selecting the scope that implies the indexes' scope predicate. A
/// tenant belongs to one workspace (composite foreign key) and the identity hash covers the
/// workspace too, so the workspace condition of the tenant case only restates what the index
/// already guarantees.
fn scope_sql(tenant_scoped: bool, workspace: &str, tenant: &str) -> (String, String) {
    if tenant_scoped {
        (
            "(tenant_id, run_identity_hash) WHERE tenant_id IS NOT NULL AND".to_owned(),
            format!("tenant_id = {tenant}::bigint AND workspace_id = {workspace}"),
        )
    } else {
        (
            "(workspace_id, run_identity_hash) WHERE tenant_id IS NULL AND".to_owned(),
            format!(
                "workspace_id = {workspace} AND tenant_id IS NULL AND {tenant}::bigint IS NULL"
            ),
        )
    }
}

/// The predicate of the unique indexes of a dedupe window.
fn window_sql(window: DedupeWindow) -> &'static str {
    match window {
        DedupeWindow::Active => "status IN ('queued', 'running')",
        DedupeWindow::Forever => "dedupe_window = 'forever'",
    }
}

/// Inserts a queued run or finds the run that holds its identity (the active one, or with the
/// `forever` window any run), in one round trip: `(run, inserted)`. `None` when the conflicting
/// run committed after this statement's snapshot was taken (then [`find_by_identity`], in a new
/// statement, sees it). A new run keeps `trace`.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn insert_or_find(
    conn: &mut PgConnection,
    dispatch: &DispatchCommand,
    trace: &TraceContext,
) -> Result<Option<(OperationRun, bool)>, sqlx::Error> {
    let window = dispatch.run_type.catalog().dedupe_window;
    let sql = insert_or_find_sql(dispatch.scope.tenant_id.is_some(), window);
    let row: Option<PgRow> = sqlx::query(&sql)
        .bind(dispatch.scope.workspace_id)
        .bind(dispatch.scope.tenant_id)
        .bind(dispatch.user_id)
        .bind(&dispatch.initiator_name)
        .bind(dispatch.run_type.as_str())
        .bind(dispatch.identity_hash.as_str())
        .bind(Value::Object(dispatch.context.clone()))
        .bind(window.as_str())
        .bind(trace.traceparent())
        .bind(trace.tracestate())
        .fetch_optional(conn)
        .await?;
    row.map(|row| Ok((OperationRun::from_row(&row)?, row.try_get("inserted")?)))
        .transpose()
}

/// The run that holds an identity in a scope under `window`, if any.
pub async fn find_by_identity(
    executor: impl PgExecutor<'_>,
    scope: RunScope,
    identity_hash: &str,
    window: DedupeWindow,
) -> Result<Option<OperationRun>, sqlx::Error> {
    sqlx::query_as(&find_by_identity_sql(scope.tenant_id.is_some(), window))
        .bind(scope.workspace_id)
        .bind(scope.tenant_id)
        .bind(identity_hash)
        .fetch_optional(executor)
        .await
}

/// The SQL of [`count_active_by_tenant`] (public for the plan test): an index-only scan of the
/// active tenant identity index.
pub const COUNT_ACTIVE_BY_TENANT_SQL: &str = "SELECT t.id, count(r.tenant_id)
     FROM unnest($1::bigint[]) AS t(id)
     LEFT JOIN operation_runs r ON r.tenant_id = t.id AND r.status IN ('queued', 'running')
     GROUP BY t.id";

/// Takes the per-tenant quota locks of `tenants`: transaction advisory locks in the two-key
/// space `(QUOTA_LOCK_CLASS, hashtext(tenant))`, which never collides with the one-key identity
/// locks of a batch. They are taken in ascending key order (two tenants may share a key; that
/// only makes them wait for each other), so two transactions never wait for each other in a
/// cycle.
pub async fn lock_tenant_quotas(
    conn: &mut PgConnection,
    tenants: &[i64],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT pg_advisory_xact_lock($1, k)
         FROM (SELECT DISTINCT hashtext(t::text) AS k FROM unnest($2::bigint[]) AS t ORDER BY k) s",
    )
    .bind(QUOTA_LOCK_CLASS)
    .bind(tenants)
    .execute(conn)
    .await?;
    Ok(())
}

/// The first key of the tenant quota locks (`'quot'` in ASCII).
pub const QUOTA_LOCK_CLASS: i32 = 0x71756f74;

/// How many queued or running runs each of `tenants` has (the per-tenant quota).
pub async fn count_active_by_tenant(
    conn: &mut PgConnection,
    tenants: &[i64],
) -> Result<HashMap<i64, i64>, sqlx::Error> {
    let rows: Vec<(i64, i64)> = sqlx::query_as(COUNT_ACTIVE_BY_TENANT_SQL)
        .bind(tenants)
        .fetch_all(conn)
        .await?;
    Ok(rows.into_iter().collect())
}

/// Locks run `run_id` for update, but only if it belongs to `scope`: a run of another workspace
/// or tenant is as absent as a run that does not exist. Returns the run with the last sequence
/// number of its events, and the transaction's `now()`.
#[tracing::instrument(level = "debug", skip_all, fields(run_id = run_id))]
pub async fn lock_in_scope(
    conn: &mut PgConnection,
    run_id: i64,
    scope: RunScope,
) -> Result<Option<(OperationRun, i64, DateTime<Utc>)>, sqlx::Error> {
    let run: Option<OperationRun> = sqlx::query_as(
        "SELECT * FROM operation_runs
         WHERE id = $1 AND workspace_id = $2 AND tenant_id IS NOT DISTINCT FROM $3
         FOR UPDATE",
    )
    .bind(run_id)
    .bind(scope.workspace_id)
    .bind(scope.tenant_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(run) = run else { return Ok(None) };
    let (now, last) = last_sequences(conn, &[run.id]).await?;
    let seq = last.get(&run.id).copied().unwrap_or(0);
    Ok(Some((run, seq, now)))
}

/// A locked run and the last sequence of its events.
pub type LockedRun = (OperationRun, i64);

/// Locks runs `ids` in ascending id order (the global lock order of batches) and returns them
/// with the last sequence of their events, and the transaction's `now()`.
#[tracing::instrument(level = "debug", skip_all, fields(runs = ids.len()))]
pub async fn lock_many(
    conn: &mut PgConnection,
    ids: &[i64],
) -> Result<(Vec<LockedRun>, DateTime<Utc>), sqlx::Error> {
    let runs: Vec<OperationRun> =
        sqlx::query_as("SELECT * FROM operation_runs WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .bind(ids)
            .fetch_all(&mut *conn)
            .await?;
    let (now, last) = last_sequences(conn, ids).await?;
    let runs = runs
        .into_iter()
        .map(|run| {
            let seq = last.get(&run.id).copied().unwrap_or(0);
            (run, seq)
        })
        .collect();
    Ok((runs, now))
}

/// The last event sequence of each of `ids` (absent: no events), and the transaction's `now()`.
///
/// This must be its own statement, *after* the row locks: a `SELECT … FOR UPDATE` that waited
/// for another transaction re-reads the locked row, but any subquery in it still sees the
/// snapshot taken before the wait, and would miss the events that transaction just committed.
async fn last_sequences(
    conn: &mut PgConnection,
    ids: &[i64],
) -> Result<(DateTime<Utc>, std::collections::HashMap<i64, i64>), sqlx::Error> {
    let (now, runs, lasts): (DateTime<Utc>, Vec<i64>, Vec<i64>) = sqlx::query_as(
        "SELECT now(), coalesce(array_agg(s.run_id), '{}'), coalesce(array_agg(s.last), '{}')
         FROM (SELECT run_id, max(sequence) AS last FROM operation_run_events
               WHERE run_id = ANY($1) GROUP BY run_id) s",
    )
    .bind(ids)
    .fetch_one(conn)
    .await?;
    Ok((now, runs.into_iter().zip(lasts).collect()))
}

/// One run by id.
pub async fn get(
    executor: impl PgExecutor<'_>,
    run_id: i64,
) -> Result<Option<OperationRun>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM operation_runs WHERE id = $1")
        .bind(run_id)
        .fetch_optional(executor)
        .await
}

/// Filters of `oprun runs list`.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Only this workspace.
    pub workspace_id: Option<i64>,
    /// Only this tenant.
    pub tenant_id: Option<i64>,
    /// Only this type.
    pub run_type: Option<String>,
    /// Only this status.
    pub status: Option<RunStatus>,
    /// At most this many rows.
    pub limit: i64,
}

/// Runs matching `filter`, newest first. With a workspace or tenant the `(…, created_at)` indexes
/// serve the order.
pub async fn list(
    executor: impl PgExecutor<'_>,
    filter: &RunFilter,
) -> Result<Vec<OperationRun>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM operation_runs
         WHERE ($1::bigint IS NULL OR workspace_id = $1)
           AND ($2::bigint IS NULL OR tenant_id = $2)
           AND ($3::text IS NULL OR type = $3)
           AND ($4::text IS NULL OR status = $4)
         ORDER BY created_at DESC, id DESC
         LIMIT $5",
    )
    .bind(filter.workspace_id)
    .bind(filter.tenant_id)
    .bind(&filter.run_type)
    .bind(filter.status.map(|s| s.as_str()))
    .bind(filter.limit)
    .fetch_all(executor)
    .await
}

/// Active runs whose last change is older than their type's deadline, oldest first, locked
/// with SKIP LOCKED so that two reapers never take the same run.
pub async fn lock_stale(
    conn: &mut PgConnection,
    deadlines: &[(String, f64)],
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<OperationRun>, sqlx::Error> {
    let (types, seconds): (Vec<String>, Vec<f64>) = deadlines.iter().cloned().unzip();
    sqlx::query_as(
        "SELECT r.* FROM operation_runs r
         JOIN unnest($1::text[], $2::float8[]) AS d(type, seconds) ON d.type = r.type
         WHERE r.status IN ('queued', 'running')
           AND r.updated_at < $3 - make_interval(secs => d.seconds)
         ORDER BY r.updated_at
         LIMIT $4
         FOR UPDATE OF r SKIP LOCKED",
    )
    .bind(types)
    .bind(seconds)
    .bind(now)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Locks run `run_id` for update, whatever its scope (for the service's own changes).
pub async fn lock_by_id(
    conn: &mut PgConnection,
    run_id: i64,
) -> Result<Option<OperationRun>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM operation_runs WHERE id = $1 FOR UPDATE")
        .bind(run_id)
        .fetch_optional(conn)
        .await
}

/// Queued or running runs of one type, for the polled gauges.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ActiveOfType {
    /// The type's wire name.
    pub run_type: String,
    /// Its queued and running runs (`oprun_active_runs`).
    pub active: i64,
    /// Seconds since the least recently changed of its running runs last changed, by the
    /// database's clock; 0 when none runs (`oprun_run_idle_ratio_max`).
    pub longest_idle_seconds: f64,
}

/// Queued or running runs per type (types without any are absent), and how long the longest-idle
/// running one of each has gone without a change: one pass over `operation_runs_active_idx`
/// (the active runs only), whose rows the count reads anyway.
pub async fn active_by_type(
    executor: impl PgExecutor<'_>,
) -> Result<Vec<ActiveOfType>, sqlx::Error> {
    sqlx::query_as(
        "SELECT type AS run_type, count(*) AS active,
                COALESCE(EXTRACT(EPOCH FROM now()
                    - min(updated_at) FILTER (WHERE status = 'running')), 0)::float8
                    AS longest_idle_seconds
         FROM operation_runs
         WHERE status IN ('queued', 'running') GROUP BY type",
    )
    .fetch_all(executor)
    .await
}
