//! The runs a bulk action selects (`oprun runs cancel|retry|fail` with a filter): counted once,
//! then read in pages of at most [`PAGE`] runs in id order (keyset: `id > after`), never past
//! the highest id the count saw, so runs created meanwhile (a bulk retry's own retries among
//! them) are not taken. Runs a retry of the same bulk action created are never selected either,
//! so a bulk retry run again after its retries failed does not retry them.
//!
//! Each statement holds only the predicates of the filters that are set, values always bound,
//! and says `status = 'completed'` (or `IN ('queued', 'running')`) as a literal when the filter
//! implies it, so the planner can use the partial indexes of completed runs (failure codes) and
//! of active runs, in generic plans too; the id range keeps every page an index range scan
//! however the rest is served.

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, Postgres, QueryBuilder};

use crate::domain::selection::RunSelection;

/// Most runs read per page.
pub const PAGE: i64 = 500;

/// A selected run: what a dry run lists.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct SelectedRun {
    /// The run.
    #[sqlx(rename = "id")]
    pub run_id: i64,
    /// Its workspace.
    pub workspace_id: i64,
    /// Its tenant.
    pub tenant_id: Option<i64>,
    /// Its type.
    #[sqlx(rename = "type")]
    #[serde(rename = "type")]
    pub run_type: String,
    /// Its status.
    pub status: String,
    /// Its outcome.
    pub outcome: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// Its last change.
    pub updated_at: DateTime<Utc>,
}

/// The predicates of `selection` after `WHERE` (of `operation_runs r`).
fn push_predicates<'a>(
    q: &mut QueryBuilder<'a, Postgres>,
    selection: &'a RunSelection,
    bulk_id: &'a str,
) {
    // Literals, never parameters: the planner proves the partial indexes' predicates from them.
    if selection.completed_only() {
        q.push("r.status = 'completed'");
    } else if selection.active_only() {
        q.push("r.status IN ('queued', 'running')");
    } else {
        q.push("true");
    }
    if let Some(w) = selection.workspace_id {
        q.push(" AND r.workspace_id = ").push_bind(w);
    }
    if let Some(t) = selection.tenant_id {
        q.push(" AND r.tenant_id = ").push_bind(t);
    }
    if let Some(t) = selection.run_type {
        q.push(" AND r.type = ").push_bind(t.as_str());
    }
    if let Some(s) = selection.status {
        q.push(" AND r.status = ").push_bind(s.as_str());
    }
    if let Some(o) = selection.outcome {
        q.push(" AND r.outcome = ").push_bind(o.as_str());
    }
    if let Some(code) = &selection.failure_code {
        super::viewer::push_failure_code(q, code);
    }
    if let Some(t) = selection.created_before {
        q.push(" AND r.created_at < ").push_bind(t);
    }
    if let Some(t) = selection.updated_before {
        q.push(" AND r.updated_at < ").push_bind(t);
    }
    // Read once as a hashed subplan; `result` as a literal matches the partial unique index of
    // a bulk action's records.
    q.push(" AND r.id NOT IN (SELECT a.new_run_id FROM operation_run_actions a WHERE a.bulk_id = ")
        .push_bind(bulk_id)
        .push(" AND a.result IN ('done', 'requested') AND a.new_run_id IS NOT NULL)");
}

/// How many runs `selection` matches now, and the highest of their ids (the end of the pages).
pub async fn snapshot(
    executor: impl PgExecutor<'_>,
    selection: &RunSelection,
    bulk_id: &str,
) -> Result<(i64, Option<i64>), sqlx::Error> {
    let mut q = QueryBuilder::new("SELECT count(*), max(r.id) FROM operation_runs r WHERE ");
    push_predicates(&mut q, selection, bulk_id);
    q.build_query_as().fetch_one(executor).await
}

/// The page statement (public, with `prefix`, for the plan test's `EXPLAIN`): runs matching
/// `selection` with `after < id <= upto`, in id order, at most `limit`.
pub fn page_query<'a>(
    prefix: &str,
    selection: &'a RunSelection,
    bulk_id: &'a str,
    after: i64,
    upto: i64,
    limit: i64,
) -> QueryBuilder<'a, Postgres> {
    let mut q = QueryBuilder::new(prefix);
    q.push(
        "SELECT r.id, r.workspace_id, r.tenant_id, r.type, r.status, r.outcome, r.created_at, \
         r.updated_at FROM operation_runs r WHERE r.id > ",
    )
    .push_bind(after)
    .push(" AND r.id <= ")
    .push_bind(upto)
    .push(" AND ");
    push_predicates(&mut q, selection, bulk_id);
    q.push(" ORDER BY r.id LIMIT ").push_bind(limit);
    q
}

/// The next page: at most `limit` (≤ [`PAGE`]) runs matching `selection` with
/// `after < id <= upto`, in id order.
pub async fn page(
    executor: impl PgExecutor<'_>,
    selection: &RunSelection,
    bulk_id: &str,
    after: i64,
    upto: i64,
    limit: i64,
) -> Result<Vec<SelectedRun>, sqlx::Error> {
    page_query("", selection, bulk_id, after, upto, limit.clamp(1, PAGE))
        .build_query_as()
        .fetch_all(executor)
        .await
}
