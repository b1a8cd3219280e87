//! A batch of commands in one transaction: one commit for many commands, without letting one bad
//! command fail the others.
//!
//! Refusals are decided before any write (see [`super::apply`]), so they simply take their place
//! in the result. A transient database fault retries the whole batch with backoff. An
//! unexpected permanent database error splits the batch into single-command transactions, so
//! only the command that causes it is dead-lettered.
//!
//! Several instances consume one queue, so two batches may touch the same identities and runs.
//! Each batch first takes every lock it will need, in one global order (identity locks by key,
//! then run rows by id), so batches wait for each other instead of deadlocking; and it reads the
//! inbox only after that, so a command another consumer just applied is seen as applied.

use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use super::apply::{apply_command, ApplyContext, ApplyError, CommandResult};
use super::tx_buffer::TxBuffer;
use crate::domain::{Command, CommandAction, ErrorCode, Rejection, RunScope};
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
    lock_in_order(&mut tx, &mut buf, commands, ctx).await?;
    let ids = commands
        .iter()
        .filter_map(|c| c.command_id.clone())
        .collect();
    buf.prefetch_inbox(&mut tx, ids).await?;
    check_scopes(&mut tx, &mut buf, commands).await?;
    let mut results = Vec::with_capacity(commands.len());
    for command in commands {
        match apply_command(&mut tx, &mut buf, command, ctx).await {
            Ok(r) => results.push(Ok(r)),
            Err(ApplyError::Rejected(r)) => results.push(Err(r)),
            Err(e) => return Err(e),
        }
    }
    buf.flush(&mut tx).await.map_err(ApplyError::from_flush)?;
    tx.commit().await?;
    Ok(results)
}

/// Applies `commands` in up to `lanes` concurrent transactions and returns the results in input
/// order. A command goes to the lane of the run it reports on, or of its identity (dispatch), so
/// the commands of one run keep their order; lanes lock disjoint runs and identities, so they
/// neither wait for nor deadlock with each other. `None` when shut down first.
pub async fn apply_in_lanes(
    pool: &PgPool,
    commands: &[&Command],
    ctx: &ApplyContext,
    lanes: usize,
    shutdown: &CancellationToken,
) -> Option<Vec<BatchItem>> {
    if lanes <= 1 || commands.len() < 2 {
        return apply_batch(pool, commands, ctx, shutdown).await;
    }
    let lane_of: Vec<usize> = commands.iter().map(|c| lane_key(c, ctx) % lanes).collect();
    let mut groups: Vec<Vec<&Command>> = vec![Vec::new(); lanes];
    for (command, lane) in commands.iter().zip(&lane_of) {
        groups[*lane].push(command);
    }
    let applied =
        futures_util::future::join_all(groups.iter().map(|g| apply_batch(pool, g, ctx, shutdown)))
            .await;
    let mut results: Vec<_> = applied
        .into_iter()
        .map(|r| r.map(Vec::into_iter))
        .collect::<Option<Vec<_>>>()?;
    Some(
        lane_of
            .iter()
            .map(|lane| results[*lane].next().expect("one result per command"))
            .collect(),
    )
}

/// The lane of a command: its run, or its identity; with the tenant quota on, a tenant's
/// dispatches share one lane, since they serialise on the tenant's quota lock anyway (in
/// different lanes they would only wait for each other's commits).
fn lane_key(command: &Command, ctx: &ApplyContext) -> usize {
    match &command.action {
        CommandAction::Dispatch(d) => match d.scope.tenant_id {
            Some(tenant) if ctx.max_active_runs_per_tenant > 0 => tenant.unsigned_abs() as usize,
            _ => identity_lock_key(d.identity_hash.as_str()).unsigned_abs() as usize,
        },
        CommandAction::Progress(p) => p.run_id.unsigned_abs() as usize,
    }
}

/// Takes the batch's identity locks (transaction-scoped advisory locks keyed by the identity
/// hash), then, with the tenant quota on, the quota locks of the dispatches' tenants (counting
/// their active runs), then the run row locks, each class in ascending order; the locked runs
/// and the counts are cached in `buf`.
async fn lock_in_order(
    conn: &mut PgConnection,
    buf: &mut TxBuffer,
    commands: &[&Command],
    ctx: &ApplyContext,
) -> Result<(), sqlx::Error> {
    let mut identities: Vec<i64> = Vec::new();
    let mut tenants: Vec<i64> = Vec::new();
    let mut runs: Vec<i64> = Vec::new();
    for command in commands {
        match &command.action {
            CommandAction::Dispatch(d) => {
                identities.push(identity_lock_key(d.identity_hash.as_str()));
                tenants.extend(d.scope.tenant_id);
            }
            CommandAction::Progress(p) => runs.push(p.run_id),
        }
    }
    identities.sort_unstable();
    identities.dedup();
    if !identities.is_empty() {
        crate::store::locks::lock_keys_in_order(conn, &identities).await?;
    }
    if ctx.max_active_runs_per_tenant > 0 && !tenants.is_empty() {
        tenants.sort_unstable();
        tenants.dedup();
        buf.lock_tenants(conn, &tenants).await?;
    }
    if !runs.is_empty() {
        runs.sort_unstable();
        runs.dedup();
        buf.lock_runs(conn, &runs).await?;
    }
    Ok(())
}

/// Checks every distinct dispatch scope of the batch in one round trip.
async fn check_scopes(
    conn: &mut PgConnection,
    buf: &mut TxBuffer,
    commands: &[&Command],
) -> Result<(), sqlx::Error> {
    let mut scopes: Vec<(RunScope, Option<i64>)> = Vec::new();
    for command in commands {
        if let CommandAction::Dispatch(d) = &command.action {
            if !scopes.contains(&(d.scope, d.user_id)) {
                scopes.push((d.scope, d.user_id));
            }
        }
    }
    if scopes.is_empty() {
        return Ok(());
    }
    let checked = crate::store::scope::check_many(conn, &scopes).await?;
    for ((scope, user), result) in scopes.into_iter().zip(checked) {
        buf.remember_scope(scope, user, result);
    }
    Ok(())
}

/// The first 8 bytes of an identity hash (which already covers type, workspace and tenant).
fn identity_lock_key(hash: &str) -> i64 {
    let prefix = hash.get(..16).unwrap_or(hash);
    u64::from_str_radix(prefix, 16).unwrap_or(0) as i64
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
