//! `operation_run_actions` (the record of operator actions), a running run's cancel request
//! (`cancel_requested_at` and its `cancel.<type>` message in the job outbox), and a run's
//! retries.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::PgConnection;

use super::jobs::job_body;
use crate::domain::action::{ActionResult, Actor, RunAction};
use crate::domain::OperationRun;

/// One action to record.
#[derive(Debug, Clone)]
pub struct ActionRecord<'a> {
    /// The run acted on.
    pub run_id: i64,
    /// The action.
    pub action: RunAction,
    /// Who.
    pub actor: &'a Actor,
    /// Why (the actor's words).
    pub reason: Option<&'a str>,
    /// The answer.
    pub result: ActionResult,
    /// The run a retry dispatched or found.
    pub new_run_id: Option<i64>,
    /// The answer's error, if any.
    pub error: Option<&'a str>,
    /// The bulk action's id.
    pub bulk_id: Option<&'a str>,
    /// The broker command's id.
    pub command_id: Option<&'a str>,
}

/// Records an action in the caller's transaction; the record's id.
pub async fn record(conn: &mut PgConnection, r: &ActionRecord<'_>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO operation_run_actions
             (run_id, action, actor_name, actor_user_id, via, reason, result, new_run_id, error,
              bulk_id, command_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         RETURNING id",
    )
    .bind(r.run_id)
    .bind(r.action.as_str())
    .bind(r.actor.name.as_deref())
    .bind(r.actor.user_id)
    .bind(r.actor.via)
    .bind(r.reason)
    .bind(r.result.as_str())
    .bind(r.new_run_id)
    .bind(r.error)
    .bind(r.bulk_id)
    .bind(r.command_id)
    .fetch_one(conn)
    .await
}

/// Whether bulk action `bulk_id` already did `action` on `run_id` (a re-run of the bulk action
/// skips it).
pub async fn done_in_bulk(
    conn: &mut PgConnection,
    bulk_id: &str,
    run_id: i64,
    action: RunAction,
) -> Result<Option<Value>, sqlx::Error> {
    let row: Option<(String, Option<i64>)> = sqlx::query_as(
        "SELECT result, new_run_id FROM operation_run_actions
         WHERE bulk_id = $1 AND run_id = $2 AND action = $3 AND result IN ('done', 'requested')",
    )
    .bind(bulk_id)
    .bind(run_id)
    .bind(action.as_str())
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(result, new_run_id)| json!({"result": result, "new_run_id": new_run_id})))
}

/// A run's actions, oldest first, as JSON for `oprun runs show`.
pub async fn for_run(conn: &mut PgConnection, run_id: i64) -> Result<Vec<Value>, sqlx::Error> {
    let rows: Vec<Value> = sqlx::query_scalar(
        "SELECT jsonb_build_object('action', action, 'actor',
                    jsonb_build_object('name', actor_name, 'user_id', actor_user_id, 'via', via),
                    'at', at, 'reason', reason, 'result', result, 'new_run_id', new_run_id,
                    'error', error, 'bulk_id', bulk_id, 'command_id', command_id)
         FROM operation_run_actions WHERE run_id = $1 ORDER BY id",
    )
    .bind(run_id)
    .fetch_all(conn)
    .await?;
    Ok(rows)
}

/// The ids of the runs retrying `run_id`, oldest first (an index probe on
/// `operation_runs_retry_of_idx`).
pub async fn retries_of(conn: &mut PgConnection, run_id: i64) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM operation_runs
         WHERE context ? 'retry_of' AND (context ->> 'retry_of') = $1::text ORDER BY id",
    )
    .bind(run_id.to_string())
    .fetch_all(conn)
    .await
}

/// When the cancel of run `run_id` was requested (the caller holds the row lock).
pub async fn cancel_requested_at(
    conn: &mut PgConnection,
    run_id: i64,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar("SELECT cancel_requested_at FROM operation_runs WHERE id = $1")
        .bind(run_id)
        .fetch_one(conn)
        .await
}

/// The routing key of a run's cancel message.
pub fn cancel_routing_key(run: &OperationRun) -> String {
    format!("cancel.{}", run.run_type.as_str())
}

/// Stamps the cancel request of a running run (the caller holds its row lock) and puts its
/// cancel message (the job's body plus `"cancel": true`, routing key `cancel.<type>`) in the job
/// outbox, in the caller's transaction: the request is never recorded without its message.
pub async fn request_cancel(
    conn: &mut PgConnection,
    run: &OperationRun,
) -> Result<(), sqlx::Error> {
    let mut body = job_body(run);
    body["cancel"] = json!(true);
    sqlx::query(
        "WITH stamped AS (UPDATE operation_runs SET cancel_requested_at = now() WHERE id = $1)
         INSERT INTO operation_run_jobs (run_id, type, body) VALUES ($1, $2, $3)
         ON CONFLICT (run_id, type) DO NOTHING",
    )
    .bind(run.id)
    .bind(cancel_routing_key(run))
    .bind(body)
    .execute(conn)
    .await?;
    Ok(())
}

/// Locks up to `limit` running runs whose cancel request is older than their type's deadline
/// (`(type, seconds)` pairs), skipping runs another transaction holds.
pub async fn lock_cancel_timed_out(
    conn: &mut PgConnection,
    deadlines: &[(String, f64)],
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<OperationRun>, sqlx::Error> {
    let (types, seconds): (Vec<String>, Vec<f64>) = deadlines.iter().cloned().unzip();
    sqlx::query_as(
        "SELECT r.* FROM operation_runs r
         JOIN unnest($1::text[], $2::float8[]) AS d(type, seconds) ON d.type = r.type
         WHERE r.cancel_requested_at IS NOT NULL AND r.status = 'running'
           AND r.cancel_requested_at < $3 - make_interval(secs => d.seconds)
         ORDER BY r.cancel_requested_at
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
