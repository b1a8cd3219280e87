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
    /// Publishes of this job the broker has nacked so far.
    pub attempts: i32,
    /// The run's W3C `traceparent` (its dispatch's trace), sent as the job's AMQP header.
    pub traceparent: Option<String>,
    /// The run's W3C `tracestate`, if any.
    pub tracestate: Option<String>,
}

/// A nacked job to try again later.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRetry {
    /// The job's outbox position.
    pub position: i64,
    /// Nacked publishes so far, this one included.
    pub attempts: i32,
    /// How long to wait before the next publish, in milliseconds.
    pub delay_ms: i64,
    /// What the broker said.
    pub error: String,
}

/// Whether a stored job is a run's cancel message (routing key `cancel.<type>`).
pub fn is_cancel(job: &StoredJob) -> bool {
    job.run_type.starts_with("cancel.")
}

/// The job message of a run.
pub fn job_body(run: &OperationRun) -> Value {
    json!({
        "run_id": run.id,
        "type": run.run_type.as_str(),
        "workspace_id": run.workspace_id,
        "tenant_id": run.tenant_id,
        "context": run.context,
    })
}

/// Up to `limit` unpublished jobs that are due (not waiting for a retry delay), in outbox order.
pub async fn unpublished(
    conn: &mut PgConnection,
    limit: i64,
) -> Result<Vec<StoredJob>, sqlx::Error> {
    sqlx::query_as(
        "SELECT j.position, j.run_id, j.type, j.body, j.attempts, r.traceparent, r.tracestate
         FROM operation_run_jobs j LEFT JOIN operation_runs r ON r.id = j.run_id
         WHERE j.published_at IS NULL AND (j.next_attempt_at IS NULL OR j.next_attempt_at <= now())
         ORDER BY j.position LIMIT $1",
    )
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Stamps jobs as handed off (published, or settled by failing their run: unroutable, or
/// rejected too often).
pub async fn mark_published(conn: &mut PgConnection, positions: &[i64]) -> Result<(), sqlx::Error> {
    if positions.is_empty() {
        return Ok(());
    }
    sqlx::query("UPDATE operation_run_jobs SET published_at = now() WHERE position = ANY($1)")
        .bind(positions)
        .execute(conn)
        .await?;
    Ok(())
}

/// Records nacked publishes: each job's attempt count, and when it is due again.
pub async fn schedule_retries(
    conn: &mut PgConnection,
    retries: &[JobRetry],
) -> Result<(), sqlx::Error> {
    if retries.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE operation_run_jobs j SET attempts = u.attempts,
             next_attempt_at = now() + u.delay_ms * interval '1 millisecond',
             last_error = u.error
         FROM unnest($1::bigint[], $2::int[], $3::bigint[], $4::text[])
              AS u(position, attempts, delay_ms, error)
         WHERE j.position = u.position",
    )
    .bind(retries.iter().map(|r| r.position).collect::<Vec<i64>>())
    .bind(retries.iter().map(|r| r.attempts).collect::<Vec<i32>>())
    .bind(retries.iter().map(|r| r.delay_ms).collect::<Vec<i64>>())
    .bind(
        retries
            .iter()
            .map(|r| r.error.as_str())
            .collect::<Vec<&str>>(),
    )
    .execute(conn)
    .await?;
    Ok(())
}
