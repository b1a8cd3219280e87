//! A batch of commands in one transaction: one commit for many commands, without letting one bad
//! command fail the others.
//!
//! Refusals are decided before any write (see [`super::apply`]), so they simply take their place
//! in the result. A transient database fault retries the whole batch with backoff. An
//! unexpected permanent database error splits the batch into single-command transactions, so
//! only the command that causes it is dead-lettered.

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::apply::{apply_command, ApplyContext, ApplyError, CommandResult};
use super::tx_buffer::TxBuffer;
use crate::domain::{Command, ErrorCode, Rejection};
use crate::retry::retry_transient;

/// The fate of one command of a batch.
pub type BatchItem = Result<CommandResult, Rejection>;

/// Applies `commands` in one transaction. A refused command takes its place in the result; any
/// other error aborts the whole transaction.
pub async fn apply_in_one_transaction(
    pool: &PgPool,
    commands: &[&Command],
    ctx: &ApplyContext,
) -> Result<Vec<BatchItem>, ApplyError> {
    let mut tx = pool.begin().await?;
    let mut buf = TxBuffer::default();
    let ids = commands
        .iter()
        .filter_map(|c| c.command_id.clone())
        .collect();
    buf.prefetch_inbox(&mut tx, ids).await?;
    let mut results = Vec::with_capacity(commands.len());
    for command in commands {
        match apply_command(&mut tx, &mut buf, command, ctx).await {
            Ok(r) => results.push(Ok(r)),
            Err(ApplyError::Rejected(r)) => results.push(Err(r)),
            Err(e) => return Err(e),
        }
    }
    buf.flush(&mut tx).await?;
    tx.commit().await?;
    Ok(results)
}

/// Applies `commands`, retrying transient faults until `shutdown`; `None` when shut down first
/// (nothing was acked, the broker will redeliver).
pub async fn apply_batch(
    pool: &PgPool,
    commands: &[&Command],
    ctx: &ApplyContext,
    shutdown: &CancellationToken,
) -> Option<Vec<BatchItem>> {
    if commands.is_empty() {
        return Some(Vec::new());
    }
    let attempt = retry_transient(
        shutdown,
        "applying a batch",
        ApplyError::is_transient,
        || apply_in_one_transaction(pool, commands, ctx),
    )
    .await?;
    match attempt {
        Ok(results) => Some(results),
        Err(error) if commands.len() == 1 => {
            tracing::error!(%error, "the database refused a command");
            Some(vec![Err(Rejection::new(
                ErrorCode::DatabaseRejected,
                format!("the database refused the command: {error}"),
            ))])
        }
        Err(error) => {
            tracing::warn!(%error, size = commands.len(), "batch failed permanently, applying its commands one by one");
            let mut results = Vec::with_capacity(commands.len());
            for command in commands {
                results.extend(Box::pin(apply_batch(pool, &[*command], ctx, shutdown)).await?);
            }
            Some(results)
        }
    }
}
