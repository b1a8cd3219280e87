//! The end-of-transaction writes of a batch, in one statement: the changed runs, the new events
//! (and their outbox positions), the new jobs (job outbox) and the inbox rows. Data-modifying CTEs run them
//! together; none reads another's rows, and every array may be empty.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::PgConnection;
use uuid::Uuid;

use super::inbox::InboxRow;
use super::jobs::job_body;
use crate::domain::{Failure, OperationRun, RunEvent, SummaryCounts};

/// What a transaction writes at its end.
#[derive(Debug, Default)]
pub struct BatchWrite<'a> {
    /// Runs whose status, outcome, counts, failures or timestamps changed, each with whether its
    /// `failure_summary` entries changed: only then is the array written. An unchanged array is
    /// left as stored (`coalesce` keeps the row's own TOAST pointer), so progress on a run with a
    /// full summary never rewrites it; see [`crate::domain::failure_cap`].
    pub runs: Vec<(&'a OperationRun, bool)>,
    /// New events, with the workspace and tenant of their run, in order (positions follow it).
    pub events: &'a [(RunEvent, i64, Option<i64>)],
    /// New runs whose job is handed off.
    pub jobs: &'a [OperationRun],
    /// Applied commands.
    pub inbox: &'a [InboxRow],
}

const SQL: &str = "
WITH changed_runs AS (
    UPDATE operation_runs r SET
        status = u.status, outcome = u.outcome, summary_counts = u.summary_counts,
        failure_summary = coalesce(u.failure_summary, r.failure_summary),
        failure_overflow = u.failure_overflow, started_at = u.started_at,
        completed_at = u.completed_at, updated_at = u.updated_at
    FROM unnest($1::bigint[], $2::text[], $3::text[], $4::jsonb[], $5::jsonb[],
                $6::timestamptz[], $7::timestamptz[], $8::timestamptz[], $24::jsonb[])
         AS u(id, status, outcome, summary_counts, failure_summary, started_at, completed_at,
              updated_at, failure_overflow)
    WHERE r.id = u.id
    RETURNING 1
), new_events AS (
    INSERT INTO operation_run_events (id, run_id, sequence, type, workspace_id, tenant_id, cloud_event)
    SELECT id, run_id, sequence, type, workspace_id, tenant_id, cloud_event
    FROM unnest($9::uuid[], $10::bigint[], $11::bigint[], $12::text[], $13::bigint[], $14::bigint[], $15::jsonb[])
         WITH ORDINALITY AS e(id, run_id, sequence, type, workspace_id, tenant_id, cloud_event, n)
    ORDER BY n
    RETURNING position
), new_outbox AS (
    INSERT INTO operation_run_event_outbox (position) SELECT position FROM new_events
), new_jobs AS (
    INSERT INTO operation_run_jobs (run_id, type, body)
    SELECT * FROM unnest($16::bigint[], $17::text[], $18::jsonb[])
    RETURNING 1
)
INSERT INTO processed_commands (command_id, kind, body_hash, run_id, result)
SELECT * FROM unnest($19::text[], $20::text[], $21::text[], $22::bigint[], $23::jsonb[])";

/// Writes everything in `write` with one round trip.
pub async fn write(conn: &mut PgConnection, write: &BatchWrite<'_>) -> Result<(), sqlx::Error> {
    let (runs, events, jobs, inbox) = (&write.runs, write.events, write.jobs, write.inbox);
    if runs.is_empty() && events.is_empty() && jobs.is_empty() && inbox.is_empty() {
        return Ok(());
    }
    sqlx::query(SQL)
        .bind(runs.iter().map(|(r, _)| r.id).collect::<Vec<i64>>())
        .bind(
            runs.iter()
                .map(|(r, _)| r.status.as_str())
                .collect::<Vec<&str>>(),
        )
        .bind(
            runs.iter()
                .map(|(r, _)| r.outcome.as_str())
                .collect::<Vec<&str>>(),
        )
        .bind(
            runs.iter()
                .map(|(r, _)| Json(&r.summary_counts))
                .collect::<Vec<Json<&SummaryCounts>>>(),
        )
        .bind(
            runs.iter()
                .map(|(r, changed)| changed.then_some(Json(&r.failure_summary.entries)))
                .collect::<Vec<Option<Json<&Vec<Failure>>>>>(),
        )
        .bind(
            runs.iter()
                .map(|(r, _)| r.started_at)
                .collect::<Vec<Option<DateTime<Utc>>>>(),
        )
        .bind(
            runs.iter()
                .map(|(r, _)| r.completed_at)
                .collect::<Vec<Option<DateTime<Utc>>>>(),
        )
        .bind(
            runs.iter()
                .map(|(r, _)| r.updated_at)
                .collect::<Vec<DateTime<Utc>>>(),
        )
        .bind(events.iter().map(|(e, _, _)| e.id).collect::<Vec<Uuid>>())
        .bind(
            events
                .iter()
                .map(|(e, _, _)| e.run_id)
                .collect::<Vec<i64>>(),
        )
        .bind(
            events
                .iter()
                .map(|(e, _, _)| e.sequence)
                .collect::<Vec<i64>>(),
        )
        .bind(
            events
                .iter()
                .map(|(e, _, _)| e.event_type.as_str())
                .collect::<Vec<&str>>(),
        )
        .bind(events.iter().map(|(_, w, _)| *w).collect::<Vec<i64>>())
        .bind(
            events
                .iter()
                .map(|(_, _, t)| *t)
                .collect::<Vec<Option<i64>>>(),
        )
        .bind(
            events
                .iter()
                .map(|(e, _, _)| &e.cloud_event)
                .collect::<Vec<&Value>>(),
        )
        .bind(jobs.iter().map(|r| r.id).collect::<Vec<i64>>())
        .bind(
            jobs.iter()
                .map(|r| r.run_type.as_str())
                .collect::<Vec<&str>>(),
        )
        .bind(jobs.iter().map(job_body).collect::<Vec<Value>>())
        .bind(
            inbox
                .iter()
                .map(|r| r.command_id.as_str())
                .collect::<Vec<&str>>(),
        )
        .bind(inbox.iter().map(|r| r.kind).collect::<Vec<&str>>())
        .bind(
            inbox
                .iter()
                .map(|r| r.body_hash.as_str())
                .collect::<Vec<&str>>(),
        )
        .bind(inbox.iter().map(|r| r.run_id).collect::<Vec<Option<i64>>>())
        .bind(inbox.iter().map(|r| &r.result).collect::<Vec<&Value>>())
        .bind(
            runs.iter()
                .map(|(r, _)| Json(&r.failure_summary.overflow))
                .collect::<Vec<Json<&std::collections::BTreeMap<String, u64>>>>(),
        )
        .execute(conn)
        .await?;
    Ok(())
}
