//! `operation_run_jobs`: the outbox of job hand-offs to executors (exchange `N.jobs`).

use serde_json::{json, Value};
use sqlx::PgConnection;

use crate::domain::OperationRun;

/// A job waiting to be published.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct StoredJob {
    /// Outbox order.
    pub position: i64,
    /// The run whose work this is.
    pub run_id: i64,
    /// The run's type: the routing key.
    #[sqlx(rename = "type")]
    pub run_type: String,
    /// `{run_id, type, workspace_id, tenant_id, context}`.
    pub body: Value,
}

/// The job message of a run.
pub fn job_body(run: &OperationRun) -> Value {
    json!({
        "run_id": run.id,
        "type": run.run_type,
        "workspace_id": run.workspace_id,
        "tenant_id": run.tenant_id,
        "context": run.context,
    })
}

/// Up to `limit` unpublished jobs, in outbox order.
pub async fn unpublished(
    conn: &mut PgConnection,
    limit: i64,
) -> Result<Vec<StoredJob>, sqlx::Error> {
    sqlx::query_as(
        "SELECT position, run_id, type, body FROM operation_run_jobs
         WHERE published_at IS NULL ORDER BY position LIMIT $1",
    )
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Stamps jobs as handed off (published, or found unroutable and the run failed).
pub async fn mark_published(conn: &mut PgConnection, positions: &[i64]) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE operation_run_jobs SET published_at = now() WHERE position = ANY($1)")
        .bind(positions)
        .execute(conn)
        .await?;
    Ok(())
}
