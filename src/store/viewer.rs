//! Reads of the run viewer: runs inside a token's scope with keyset paging, one run's events
//! after a sequence, the legacy rows that point at a run, related restores, and the viewer's
//! signing secret.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgExecutor, Postgres, QueryBuilder};

use crate::domain::OperationRun;
use crate::store::legacy::LegacyTable;

/// What a token may see: one workspace, and when `tenant_ids` is set only those tenants' runs
/// (never the workspace-scoped ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewerScope {
    /// The workspace.
    pub workspace_id: i64,
    /// The tenants, or `None` for the whole workspace.
    pub tenant_ids: Option<Vec<i64>>,
}

/// Filters of `GET /v1/runs`; all optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunListFilter {
    /// Only this tenant.
    pub tenant_id: Option<i64>,
    /// Only this type (wire name).
    pub run_type: Option<String>,
    /// Only this status (wire name).
    pub status: Option<String>,
    /// Only this outcome (wire name).
    pub outcome: Option<String>,
    /// Created at or after.
    pub created_after: Option<DateTime<Utc>>,
    /// Created before.
    pub created_before: Option<DateTime<Utc>>,
}

/// The list query with only the predicates of the filters that are set, so that each
/// combination is its own statement whose plan (custom or generic) can use the indexes; values
/// are always bound parameters.
fn list_query<'a>(
    prefix: &str,
    scope: &'a ViewerScope,
    filter: &'a RunListFilter,
    after: Option<(DateTime<Utc>, i64)>,
    limit: i64,
) -> QueryBuilder<'a, Postgres> {
    let mut q = QueryBuilder::new(prefix);
    q.push("SELECT * FROM operation_runs WHERE workspace_id = ");
    q.push_bind(scope.workspace_id);
    if let Some(tenants) = &scope.tenant_ids {
        q.push(" AND tenant_id = ANY(")
            .push_bind(tenants.as_slice())
            .push(")");
    }
    if let Some(t) = filter.tenant_id {
        q.push(" AND tenant_id = ").push_bind(t);
    }
    if let Some(t) = &filter.run_type {
        q.push(" AND type = ").push_bind(t.as_str());
    }
    if let Some(s) = &filter.status {
        q.push(" AND status = ").push_bind(s.as_str());
    }
    if let Some(o) = &filter.outcome {
        q.push(" AND outcome = ").push_bind(o.as_str());
    }
    if let Some(t) = filter.created_after {
        q.push(" AND created_at >= ").push_bind(t);
    }
    if let Some(t) = filter.created_before {
        q.push(" AND created_at < ").push_bind(t);
    }
    if let Some((created_at, id)) = after {
        // The first predicate bounds the index range; the row comparison breaks ties by id.
        q.push(" AND created_at <= ").push_bind(created_at);
        q.push(" AND (created_at, id) < (").push_bind(created_at);
        q.push(", ").push_bind(id).push(")");
    }
    q.push(" ORDER BY created_at DESC, id DESC LIMIT ")
        .push_bind(limit);
    q
}

/// Runs in `scope` matching `filter`, newest first (`created_at`, then `id`), strictly after the
/// keyset position `after` when given, at most `limit`.
pub async fn list_runs(
    executor: impl PgExecutor<'_>,
    scope: &ViewerScope,
    filter: &RunListFilter,
    after: Option<(DateTime<Utc>, i64)>,
    limit: i64,
) -> Result<Vec<OperationRun>, sqlx::Error> {
    list_query("", scope, filter, after, limit)
        .build_query_as()
        .fetch_all(executor)
        .await
}

/// The plan (`EXPLAIN (FORMAT JSON)`) of the [`list_runs`] statement for these arguments: what
/// the plan test checks.
pub async fn explain_list_runs(
    executor: impl PgExecutor<'_>,
    scope: &ViewerScope,
    filter: &RunListFilter,
    after: Option<(DateTime<Utc>, i64)>,
    limit: i64,
) -> Result<Value, sqlx::Error> {
    list_query("EXPLAIN (FORMAT JSON) ", scope, filter, after, limit)
        .build_query_scalar()
        .fetch_one(executor)
        .await
}

/// Run `id` if it is in `scope`; a run outside it is as absent as one that does not exist.
pub async fn get_run(
    executor: impl PgExecutor<'_>,
    scope: &ViewerScope,
    id: i64,
) -> Result<Option<OperationRun>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM operation_runs
         WHERE id = $1 AND workspace_id = $2 AND ($3::bigint[] IS NULL OR tenant_id = ANY($3))",
    )
    .bind(id)
    .bind(scope.workspace_id)
    .bind(scope.tenant_ids.as_deref())
    .fetch_optional(executor)
    .await
}

/// One stored event as the viewer sends it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ViewerEvent {
    /// Position in the run's history, from 1.
    pub sequence: i64,
    /// CloudEvents `type`.
    #[sqlx(rename = "type")]
    pub event_type: String,
    /// The CloudEvents document.
    pub cloud_event: Value,
}

/// Events of `run_id` with a sequence above `after`, in sequence order, at most `limit`.
pub async fn events_after(
    executor: impl PgExecutor<'_>,
    run_id: i64,
    after: i64,
    limit: i64,
) -> Result<Vec<ViewerEvent>, sqlx::Error> {
    sqlx::query_as(
        "SELECT sequence, type, cloud_event FROM operation_run_events
         WHERE run_id = $1 AND sequence > $2 ORDER BY sequence LIMIT $3",
    )
    .bind(run_id)
    .bind(after)
    .bind(limit)
    .fetch_all(executor)
    .await
}

/// The legacy rows that redirect to `run_id`: `(table, row)`.
pub async fn legacy_rows_for_run(
    executor: impl PgExecutor<'_>,
    run_id: i64,
) -> Result<Vec<(String, Value)>, sqlx::Error> {
    // Fixed table names from the enum, never input.
    let sql = LegacyTable::ALL
        .iter()
        .map(|t| {
            format!(
                "SELECT '{0}'::text AS tbl, t.id, to_jsonb(t) AS row FROM {0} t WHERE t.operation_run_id = $1",
                t.table_name()
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
        + " ORDER BY tbl, id";
    let rows: Vec<(String, i64, Value)> = sqlx::query_as(&sql)
        .bind(run_id)
        .fetch_all(executor)
        .await?;
    Ok(rows.into_iter().map(|(t, _, row)| (t, row)).collect())
}

/// Whether restore run `restore_run_id` exists and belongs to `tenant_id`.
pub async fn restore_run_of_tenant(
    executor: impl PgExecutor<'_>,
    restore_run_id: i64,
    tenant_id: i64,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM restore_runs WHERE id = $1 AND tenant_id = $2)",
    )
    .bind(restore_run_id)
    .bind(tenant_id)
    .fetch_one(executor)
    .await
}

/// The viewer's signing secret: the stored one, or `candidate` stored now if there is none
/// (concurrent starts agree on the first one written).
pub async fn api_secret(
    executor: impl PgExecutor<'_>,
    candidate: &str,
) -> Result<String, sqlx::Error> {
    sqlx::query_scalar(
        "WITH ins AS (
             INSERT INTO api_secrets (name, secret) VALUES ('viewer', $1)
             ON CONFLICT (name) DO NOTHING RETURNING secret)
         SELECT secret FROM ins
         UNION ALL
         SELECT secret FROM api_secrets WHERE name = 'viewer' AND NOT EXISTS (SELECT 1 FROM ins)",
    )
    .bind(candidate)
    .fetch_one(executor)
    .await
}

/// Whether tenant `tenant_id` is inside `scope` (its workspace, and its tenant list if any).
pub async fn tenant_in_scope(
    executor: impl PgExecutor<'_>,
    scope: &ViewerScope,
    tenant_id: i64,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM tenants
                        WHERE id = $1 AND workspace_id = $2
                          AND ($3::bigint[] IS NULL OR id = ANY($3)))",
    )
    .bind(tenant_id)
    .bind(scope.workspace_id)
    .bind(scope.tenant_ids.as_deref())
    .fetch_one(executor)
    .await
}
