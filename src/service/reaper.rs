//! The stale-run reaper: a run queued or running with no change for longer than its type's
//! expected duration × a factor is completed as `failed` with failure `run.stale`. Any progress
//! command refreshes `updated_at`, so it counts as a heartbeat. A running run whose cancel was
//! requested longer ago than its type's expected duration (its executor did not answer) is
//! completed `cancelled` with failure `run.cancel_timeout`. Rows are taken with SKIP LOCKED, so
//! several instances never reap one run twice.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::apply::{complete_as, complete_as_failed, ApplyError, ApplySettings};
use super::tx_buffer::TxBuffer;
use crate::domain::action::CANCEL_TIMEOUT;
use crate::domain::RunOutcome;
use crate::domain::{Failure, OperationRun, OPERATION_CATALOG};
use crate::store::actions;
use crate::store::runs;

/// Most runs one round reaps.
const REAP_BATCH: i64 = 100;

/// `(type, seconds)` deadlines for every catalog type.
pub fn deadlines(factor: f64) -> Vec<(String, f64)> {
    OPERATION_CATALOG
        .iter()
        .map(|e| {
            (
                e.name.to_owned(),
                e.expected_duration.as_secs_f64() * factor,
            )
        })
        .collect()
}

/// Runs that a reap at `now` would take (without changing anything).
pub async fn stale_runs(
    pool: &PgPool,
    factor: f64,
    now: DateTime<Utc>,
) -> Result<Vec<OperationRun>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let found = runs::lock_stale(&mut tx, &deadlines(factor), now, 1000).await?;
    tx.rollback().await?;
    Ok(found)
}

/// Reaps up to one batch of stale runs; returns the ids it completed.
pub async fn reap_once(
    pool: &PgPool,
    ctx: &ApplySettings,
    factor: f64,
    now: DateTime<Utc>,
) -> Result<Vec<i64>, ApplyError> {
    let mut tx = pool.begin().await?;
    let stale = runs::lock_stale(&mut tx, &deadlines(factor), now, REAP_BATCH).await?;
    let mut buf = TxBuffer::default();
    let mut reaped = Vec::with_capacity(stale.len());
    for run in stale {
        let id = run.id;
        let idle = now - run.updated_at;
        let failure = Failure::new(
            "run.stale",
            &format!(
                "no progress for {} s, more than the expected duration of {} × {factor}",
                idle.num_seconds(),
                run.run_type
            ),
        );
        if complete_as_failed(&mut tx, &mut buf, run, failure, ctx)
            .await?
            .is_some()
        {
            tracing::warn!(run_id = id, "reaped a stale run");
            reaped.push(id);
        }
    }
    let unanswered =
        actions::lock_cancel_timed_out(&mut tx, &deadlines(1.0), now, REAP_BATCH).await?;
    for run in unanswered {
        let id = run.id;
        if reaped.contains(&id) {
            continue; // reaped as stale above, in this transaction
        }
        let failure = Failure::new(
            CANCEL_TIMEOUT,
            &format!(
                "the executor did not answer the cancel request within the expected duration of {}",
                run.run_type
            ),
        );
        if complete_as(
            &mut tx,
            &mut buf,
            run,
            RunOutcome::Cancelled,
            Some(failure),
            None,
            ctx,
        )
        .await?
        .is_some()
        {
            tracing::warn!(run_id = id, "cancelled a run whose executor did not answer");
            reaped.push(id);
        }
    }
    buf.flush(&mut tx).await?;
    tx.commit().await?;
    Ok(reaped)
}
