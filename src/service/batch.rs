//! A batch of commands, applied: split into lanes, each lane in one transaction (one commit for
//! many commands), without letting one bad command fail the others.
//!
//! This is the one place that decides what happens to a message when applying fails
//! ([`apply_batch`] matches [`ApplyError`]): retry the batch (transient), split it (an unexpected
//! permanent database error), or dead-letter the command with its code; each failure is logged
//! here, once, with its cause chain. Refusals are decided before any write (see
//! [`super::apply`]), so inside a transaction they simply take their place in the result.
//!
//! Several instances consume one queue, so two batches may touch the same identities and runs.
//! Each batch first takes every lock it will need, in one global order (identity locks by key,
//! then run rows by id), so batches wait for each other instead of deadlocking; and it reads the
//! inbox only after that, so a command another consumer just applied is seen as applied.

use std::time::{Duration, Instant};

use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use super::apply::{ApplySettings, CommandResult};
use super::command::apply_command;
use super::error::{cause_chain, ApplyError};
use super::metrics::{Metrics, Stage};
use super::tx_buffer::TxBuffer;
use crate::domain::{Command, CommandAction, ErrorCode, Rejection, RunScope};

/// The fate of one command of a batch.
pub type BatchItem = Result<CommandResult, Rejection>;

/// Applies `commands` in up to `lanes` concurrent transactions (see [`Lanes`]) and returns the
/// results in input order. `None` when shut down first (nothing was acked, the broker will
/// redeliver).
/// Each transaction's stages are recorded in `metrics`.
pub async fn apply_in_lanes(
    pool: &PgPool,
    commands: &[&Command],
    ctx: &ApplySettings,
    lanes: usize,
    shutdown: &CancellationToken,
    metrics: &Metrics,
) -> Option<Vec<BatchItem>> {
    if lanes <= 1 || commands.len() < 2 {
        return apply_timed(pool, commands, ctx, shutdown, Some(metrics)).await;
    }
    let lanes = Lanes::split(commands, ctx, lanes);
    let applied = futures_util::future::join_all(
        lanes
            .groups
            .iter()
            .map(|g| apply_timed(pool, g, ctx, shutdown, Some(metrics))),
    )
    .await;
    Some(lanes.merge(applied.into_iter().collect::<Option<Vec<_>>>()?))
}

/// A batch split into lanes, to be applied in concurrent transactions. A command goes to the
/// lane of the run it reports on, or of its identity (dispatch), so the commands of one run keep
/// their order; lanes lock disjoint runs and identities, so they neither wait for nor deadlock
/// with each other.
#[derive(Debug)]
pub struct Lanes<'c> {
    /// The commands of each lane, in input order.
    pub groups: Vec<Vec<&'c Command>>,
    lane_of: Vec<usize>,
}

impl<'c> Lanes<'c> {
    /// Splits `commands` into `lanes` lanes (some may be empty).
    pub fn split(commands: &[&'c Command], ctx: &ApplySettings, lanes: usize) -> Self {
        let lanes = lanes.max(1);
        let lane_of: Vec<usize> = commands.iter().map(|c| lane_key(c, ctx) % lanes).collect();
        let mut groups: Vec<Vec<&Command>> = vec![Vec::new(); lanes];
        for (command, lane) in commands.iter().zip(&lane_of) {
            groups[*lane].push(command);
        }
        Self { groups, lane_of }
    }

    /// The results of the lanes (one list per group, in group order) back in input order.
    pub fn merge(&self, results: Vec<Vec<BatchItem>>) -> Vec<BatchItem> {
        let mut results: Vec<_> = results.into_iter().map(Vec::into_iter).collect();
        self.lane_of
            .iter()
            .map(|lane| results[*lane].next().expect("one result per command"))
            .collect()
    }
}

/// The lane of a command: its run, or its identity; with the tenant quota on, a tenant's
/// dispatches share one lane, since they serialise on the tenant's quota lock anyway (in
/// different lanes they would only wait for each other's commits).
fn lane_key(command: &Command, ctx: &ApplySettings) -> usize {
    match &command.action {
        CommandAction::Dispatch(d) => match d.scope.tenant_id {
            Some(tenant) if ctx.max_active_runs_per_tenant > 0 => tenant.unsigned_abs() as usize,
            _ => identity_lock_key(d.identity_hash.as_str()).unsigned_abs() as usize,
        },
        CommandAction::Progress(p) => p.run_id.unsigned_abs() as usize,
    }
}

/// Applies `commands` until every one has its fate, deciding on each failure what happens to the
/// messages: the one match of [`ApplyError`].
///
/// - `Retry`: the batch is tried again after a backoff, until `shutdown` (then `None`: nothing
///   was acked, the broker will redeliver);
/// - `Split`: the commands are applied one per transaction, so only the one causing the error is
///   dead-lettered (`database_rejected`);
/// - `DeadLetter`: a command refused outside its own place in the batch (refusals are normally
///   kept in place by [`apply_in_one_transaction`]) is dead-lettered alone, after a split.
pub async fn apply_batch(
    pool: &PgPool,
    commands: &[&Command],
    ctx: &ApplySettings,
    shutdown: &CancellationToken,
) -> Option<Vec<BatchItem>> {
    apply_timed(pool, commands, ctx, shutdown, None).await
}

/// [`apply_batch`], recording each transaction's stages in `metrics` when given.
#[tracing::instrument(level = "debug", skip_all, fields(commands = commands.len()))]
async fn apply_timed(
    pool: &PgPool,
    commands: &[&Command],
    ctx: &ApplySettings,
    shutdown: &CancellationToken,
    metrics: Option<&Metrics>,
) -> Option<Vec<BatchItem>> {
    if commands.is_empty() {
        return Some(Vec::new());
    }
    let mut delays = crate::retry::backoff();
    loop {
        let attempt = tokio::select! {
            r = apply_in_one_transaction(pool, commands, ctx, metrics) => r,
            _ = shutdown.cancelled() => return None,
        };
        let error = match attempt {
            Ok(results) => return Some(results),
            Err(error) => error,
        };
        match error {
            ApplyError::Retry(_) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(10));
                tracing::warn!(
                    error = %cause_chain(&error),
                    size = commands.len(),
                    retry_in_ms = delay.as_millis() as u64,
                    "applying a batch failed, retrying"
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return None,
                }
            }
            // Logged once, as the command's dead letter (`log_fate`).
            ApplyError::DeadLetter(rejection) if commands.len() == 1 => {
                return Some(vec![Err(rejection)])
            }
            ApplyError::Split(_) if commands.len() == 1 => {
                return Some(vec![Err(Rejection::new(
                    ErrorCode::DatabaseRejected,
                    format!("the database refused the command: {}", cause_chain(&error)),
                ))])
            }
            ApplyError::Split(_) | ApplyError::DeadLetter(_) => {
                tracing::warn!(
                    error = %cause_chain(&error),
                    size = commands.len(),
                    "batch failed permanently, applying its commands one by one"
                );
                let mut results = Vec::with_capacity(commands.len());
                for command in commands {
                    results.extend(
                        Box::pin(apply_timed(pool, &[*command], ctx, shutdown, metrics)).await?,
                    );
                }
                return Some(results);
            }
        }
    }
}

/// Applies `commands` in one transaction. A refused command takes its place in the result; any
/// other error aborts the whole transaction and goes back to [`apply_batch`]. With `metrics`,
/// records the transaction's and the commit's time per command, and when it committed (for the
/// relay's pick-up time).
#[tracing::instrument(level = "debug", skip_all, fields(commands = commands.len()))]
pub async fn apply_in_one_transaction(
    pool: &PgPool,
    commands: &[&Command],
    ctx: &ApplySettings,
    metrics: Option<&Metrics>,
) -> Result<Vec<BatchItem>, ApplyError> {
    let started = Instant::now();
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
            Err(ApplyError::DeadLetter(r)) => results.push(Err(r)),
            Err(e) => return Err(e),
        }
    }
    buf.flush(&mut tx).await.map_err(ApplyError::from_flush)?;
    let commit_sent = Instant::now();
    tx.commit().await?;
    if let Some(metrics) = metrics {
        let committed = Instant::now();
        metrics.stage(Stage::Transaction, commit_sent - started, commands.len());
        metrics.stage(Stage::Commit, committed - commit_sent, commands.len());
        if let Some(clock) = buf.known_now() {
            metrics.committed(clock, committed);
        }
    }
    Ok(results)
}

/// Takes the batch's identity locks (transaction-scoped advisory locks keyed by the identity
/// hash), then, with the tenant quota on, the quota locks of the dispatches' tenants (counting
/// their active runs), then the run row locks, each class in ascending order; the locked runs
/// and the counts are cached in `buf`.
async fn lock_in_order(
    conn: &mut PgConnection,
    buf: &mut TxBuffer,
    commands: &[&Command],
    ctx: &ApplySettings,
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
