//! One command, applied inside a transaction the caller owns: the inbox check, the state change,
//! the outbox rows and the inbox record. Every refusal is decided before the first write, so a
//! refused command never spoils the transaction it shares with others in a batch.

use chrono::Utc;
use serde_json::{json, Value};
use sqlx::PgConnection;

use super::tx_buffer::TxBuffer;
use crate::domain::{
    Command, CommandAction, DispatchCommand, ErrorCode, Failure, OperationRun, ProgressCommand,
    Rejection, RunEvent, RunEventType, RunState, RunStatus, SummaryCounts, Transition,
};
use crate::store::inbox::InboxRow;
use crate::store::{self, legacy, runs};

/// What applying a command did, for replies, logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Disposition {
    /// The command changed a run (or created one).
    Applied,
    /// A dispatch found an active run of its identity.
    Deduplicated,
    /// A progress command asked for an earlier state; ignored.
    Stale,
    /// A progress command asked for the current state; nothing to change.
    Unchanged,
    /// The command id was applied before; its first result is replayed.
    AlreadyProcessed,
}

impl Disposition {
    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Deduplicated => "deduplicated",
            Self::Stale => "stale",
            Self::Unchanged => "unchanged",
            Self::AlreadyProcessed => "already_processed",
        }
    }
}

/// The result of an applied (not refused) command.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandResult {
    /// What happened.
    pub disposition: Disposition,
    /// The run concerned.
    pub run_id: Option<i64>,
    /// The reply body: `{run_id, run_identity_hash, status, deduplicated}` for a dispatch,
    /// `{run_id, status, outcome}` otherwise.
    pub reply: Value,
}

/// Why a command was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The command can never succeed: dead-letter it with this reason.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The database failed; [`store::StoreError::is_transient`] decides whether to retry.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// Concurrent dispatches kept racing on one identity; try again.
    #[error("identity kept changing under concurrent dispatches")]
    Contended,
    /// Another consumer applied one of the batch's command ids while this transaction ran; the
    /// retry finds it in the inbox and replays its result.
    #[error("a command id was applied concurrently by another consumer: {0}")]
    AppliedConcurrently(sqlx::Error),
}

impl From<sqlx::Error> for ApplyError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}

impl ApplyError {
    /// True when the same command may succeed later.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Rejected(_) => false,
            Self::Store(e) => e.is_transient(),
            Self::Contended | Self::AppliedConcurrently(_) => true,
        }
    }

    /// Classifies an error of the end-of-transaction writes: a duplicate inbox key means the
    /// race above, not bad data.
    pub fn from_flush(e: sqlx::Error) -> Self {
        let inbox_race = e
            .as_database_error()
            .and_then(|d| d.constraint())
            .is_some_and(|c| c == "processed_commands_pkey");
        if inbox_race {
            Self::AppliedConcurrently(e)
        } else {
            e.into()
        }
    }
}

/// Settings that shape what a command writes.
#[derive(Debug, Clone)]
pub struct ApplyContext {
    /// CloudEvents `source` of the events written.
    pub event_source: String,
    /// Whether a new run's job is put in the job outbox (the hand-off to executors).
    pub hand_off_jobs: bool,
}

/// Applies `command` in the caller's transaction; `buf` carries what earlier commands of the
/// same transaction did and collects the rows to write before commit.
pub async fn apply_command(
    conn: &mut PgConnection,
    buf: &mut TxBuffer,
    command: &Command,
    ctx: &ApplyContext,
) -> Result<CommandResult, ApplyError> {
    if let Some(command_id) = &command.command_id {
        if let Some(done) = buf.processed(conn, command_id).await? {
            if done.body_hash != command.body_hash {
                return Err(Rejection::new(
                    ErrorCode::CommandIdConflict,
                    format!(
                        "command_id {command_id:?} was already used by a command with another body"
                    ),
                )
                .into());
            }
            return Ok(CommandResult {
                disposition: Disposition::AlreadyProcessed,
                run_id: done.result.get("run_id").and_then(Value::as_i64),
                reply: done.result,
            });
        }
    }
    let result = match &command.action {
        CommandAction::Dispatch(d) => dispatch(conn, buf, d, ctx).await?,
        CommandAction::Progress(p) => progress(conn, buf, p, ctx).await?,
    };
    if let Some(command_id) = &command.command_id {
        buf.record_processed(InboxRow {
            command_id: command_id.clone(),
            kind: command.kind.as_str(),
            body_hash: command.body_hash.clone(),
            run_id: result.run_id,
            result: result.reply.clone(),
        });
    }
    Ok(result)
}

async fn dispatch(
    conn: &mut PgConnection,
    buf: &mut TxBuffer,
    d: &DispatchCommand,
    ctx: &ApplyContext,
) -> Result<CommandResult, ApplyError> {
    let scope_ok = match buf.checked_scope(d.scope, d.user_id) {
        Some(known) => known,
        None => {
            let checked = store::scope::check_many(conn, &[(d.scope, d.user_id)])
                .await?
                .remove(0);
            buf.remember_scope(d.scope, d.user_id, checked.clone());
            checked
        }
    };
    scope_ok?;
    // Insert-or-find, retried: between our conflict and our read the active run may complete.
    for _ in 0..3 {
        let found = runs::insert_or_find_active(conn, d).await?;
        if let Some((run, true)) = found {
            buf.know_sequence(run.id, 0);
            record_event(conn, buf, RunEventType::Queued, &run, ctx).await?;
            if ctx.hand_off_jobs {
                buf.push_job(run.clone());
            }
            link_backup_schedule_run(conn, &run).await?;
            return Ok(dispatch_result(&run, false));
        }
        if let Some((run, false)) = found {
            return Ok(dispatch_result(&run, true));
        }
        if let Some(run) =
            runs::find_active_by_identity(&mut *conn, d.scope, d.identity_hash.as_str()).await?
        {
            return Ok(dispatch_result(&run, true));
        }
    }
    Err(ApplyError::Contended)
}

fn dispatch_result(run: &OperationRun, deduplicated: bool) -> CommandResult {
    CommandResult {
        disposition: if deduplicated {
            Disposition::Deduplicated
        } else {
            Disposition::Applied
        },
        run_id: Some(run.id),
        reply: json!({
            "run_id": run.id,
            "run_identity_hash": run.run_identity_hash,
            "status": run.status.as_str(),
            "deduplicated": deduplicated,
        }),
    }
}

/// A retry of a scheduled backup points at its legacy schedule run; link it to the new run.
async fn link_backup_schedule_run(
    conn: &mut PgConnection,
    run: &OperationRun,
) -> Result<(), sqlx::Error> {
    let legacy_id = run
        .context
        .get("backup_schedule_run_id")
        .and_then(Value::as_i64);
    if let (Some(legacy_id), Some(tenant_id)) = (legacy_id, run.tenant_id) {
        legacy::link_backup_schedule_run(conn, legacy_id, tenant_id, run.id).await?;
    }
    Ok(())
}

async fn progress(
    conn: &mut PgConnection,
    buf: &mut TxBuffer,
    p: &ProgressCommand,
    ctx: &ApplyContext,
) -> Result<CommandResult, ApplyError> {
    let not_found = || {
        Rejection::new(
            ErrorCode::RunNotFound,
            format!(
                "run {} not found in workspace {} tenant {}",
                p.run_id,
                p.scope.workspace_id,
                p.scope
                    .tenant_id
                    .map_or("null".to_owned(), |t| t.to_string())
            ),
        )
    };
    // The batch locked and cached its runs up front; a miss (a run created in this very batch)
    // asks the database, under the same scope rule.
    let run = match buf.run(p.run_id) {
        Some(run) => run.clone(),
        None => {
            let (run, last_sequence) = runs::lock_in_scope(conn, p.run_id, p.scope)
                .await?
                .ok_or_else(not_found)?;
            buf.adopt(run.clone(), last_sequence);
            run
        }
    };
    if run.workspace_id != p.scope.workspace_id || run.tenant_id != p.scope.tenant_id {
        return Err(not_found().into());
    }
    let (state, stale) = match run.state().transition(p.status, p.outcome) {
        Ok(Transition::Apply(next)) => (next, false),
        Ok(Transition::NoOp) => (run.state(), false),
        Err(e) if e.is_stale() => (run.state(), true),
        Err(e) => return Err(e.rejection().into()),
    };
    let counts = SummaryCounts::from_stored(&run.summary_counts).add(&p.counts)?;
    let outcome = ProgressOutcome {
        state,
        counts,
        failures: p.failures.clone(),
        stale,
    };
    save_run_progress(conn, buf, run, outcome, ctx).await
}

/// What a progress report (or the service itself: reaper, unroutable job) does to a locked run.
#[derive(Debug, Clone)]
pub struct ProgressOutcome {
    /// The state to store.
    pub state: RunState,
    /// The full counts to store.
    pub counts: SummaryCounts,
    /// Failures to append.
    pub failures: Vec<Failure>,
    /// The requested state was earlier than the current one (ignored).
    pub stale: bool,
}

/// Saves `outcome` on the locked `run` and records the event it causes: `started` or `completed`
/// when the status changed, else `progressed` when counts or failures changed, else none.
pub async fn save_run_progress(
    conn: &mut PgConnection,
    buf: &mut TxBuffer,
    run: OperationRun,
    outcome: ProgressOutcome,
    ctx: &ApplyContext,
) -> Result<CommandResult, ApplyError> {
    let state_changed = outcome.state != run.state();
    let counts_json = outcome.counts.to_json();
    let data_changed = counts_json != run.summary_counts || !outcome.failures.is_empty();
    let event_type = if state_changed {
        match outcome.state.status {
            RunStatus::Running => Some(RunEventType::Started),
            RunStatus::Completed => Some(RunEventType::Completed),
            RunStatus::Queued => None,
        }
    } else if data_changed {
        Some(RunEventType::Progressed)
    } else {
        None
    };
    let disposition = match (event_type, outcome.stale) {
        (Some(_), _) => Disposition::Applied,
        (None, true) => Disposition::Stale,
        (None, false) => Disposition::Unchanged,
    };
    // A no-change report on an active run is still a heartbeat for the stale-run reaper.
    let saved = if event_type.is_some() || (run.is_active() && !outcome.stale) {
        let now = buf.now(conn).await?;
        let mut saved = run;
        saved.status = outcome.state.status;
        saved.outcome = outcome.state.outcome;
        saved.summary_counts = counts_json;
        if let Value::Array(entries) = &mut saved.failure_summary {
            entries.extend(outcome.failures.iter().map(Failure::to_json));
        }
        if saved.status == RunStatus::Running && saved.started_at.is_none() {
            saved.started_at = Some(now);
        }
        if saved.status == RunStatus::Completed && saved.completed_at.is_none() {
            saved.completed_at = Some(now);
        }
        saved.updated_at = now;
        buf.store_run(saved.clone());
        saved
    } else {
        run
    };
    if let Some(event_type) = event_type {
        record_event(conn, buf, event_type, &saved, ctx).await?;
    }
    Ok(CommandResult {
        disposition,
        run_id: Some(saved.id),
        reply: json!({"run_id": saved.id, "status": saved.status.as_str(), "outcome": saved.outcome.as_str()}),
    })
}

async fn record_event(
    conn: &mut PgConnection,
    buf: &mut TxBuffer,
    event_type: RunEventType,
    run: &OperationRun,
    ctx: &ApplyContext,
) -> Result<(), sqlx::Error> {
    let sequence = buf.next_sequence(conn, run.id).await?;
    let event = RunEvent::new(event_type, run, sequence, &ctx.event_source, Utc::now());
    buf.push_event(event, run);
    Ok(())
}

/// Completes an active run with outcome `failed` and `failure`, on behalf of the service itself
/// (unroutable job, stale run). A run that completed meanwhile is left as it is (`None`).
pub async fn complete_as_failed(
    conn: &mut PgConnection,
    buf: &mut TxBuffer,
    run: OperationRun,
    failure: Failure,
    ctx: &ApplyContext,
) -> Result<Option<CommandResult>, ApplyError> {
    let state = match run.state().transition(
        Some(RunStatus::Completed),
        Some(crate::domain::RunOutcome::Failed),
    ) {
        Ok(Transition::Apply(next)) => next,
        _ => return Ok(None),
    };
    let counts = SummaryCounts::from_stored(&run.summary_counts);
    let last_sequence = crate::store::events::last_sequence(conn, run.id).await?;
    buf.adopt(run.clone(), last_sequence);
    let outcome = ProgressOutcome {
        state,
        counts,
        failures: vec![failure],
        stale: false,
    };
    save_run_progress(conn, buf, run, outcome, ctx)
        .await
        .map(Some)
}
