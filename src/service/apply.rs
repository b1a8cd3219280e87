//! One command, applied inside a transaction the caller owns: the inbox check, the state change,
//! the outbox rows and the inbox record. Every refusal is decided before the first write, so a
//! refused command never spoils the transaction it shares with others in a batch.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::PgConnection;

pub use super::error::ApplyError;
use super::error::Transient;
use super::tx_buffer::TxBuffer;
use crate::domain::event::EventType;
use crate::domain::event_size::{check_context_size, MAX_EVENT_BYTES};
use crate::domain::failure_cap::serialized_len;
use crate::domain::transition::{self, Applied, RunChange};
use crate::domain::{
    DispatchCommand, ErrorCode, Failure, OperationRun, OperationRunType, ProgressCommand,
    Rejection, RunEvent, RunEventType, RunOutcome, RunStatus, SummaryCounts, TraceContext,
};
use crate::store::legacy::LinkRefusal;
use crate::store::{legacy, runs};

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

/// Settings that shape what a command writes.
#[derive(Debug, Clone)]
pub struct ApplySettings {
    /// CloudEvents `source` of the events written.
    pub event_source: String,
    /// Whether a new run's job is put in the job outbox (the hand-off to executors).
    pub hand_off_jobs: bool,
    /// Most active (queued or running) runs per tenant; 0 = unlimited.
    pub max_active_runs_per_tenant: u64,
}

pub(crate) async fn dispatch(
    conn: &mut PgConnection,
    buf: &mut TxBuffer,
    d: &DispatchCommand,
    trace: &TraceContext,
    ctx: &ApplySettings,
) -> Result<CommandResult, ApplyError> {
    let scope_ok = match buf.checked_scope(d.scope, d.user_id) {
        Some(known) => known,
        None => {
            let checked = crate::store::scope::check_many(conn, &[(d.scope, d.user_id)])
                .await?
                .remove(0);
            buf.remember_scope(d.scope, d.user_id, checked.clone());
            checked
        }
    };
    scope_ok?;
    check_context_size(&d.context)?;
    let window = d.run_type.catalog().dedupe_window;
    if let Some(active) = tenant_active_runs(conn, buf, d, ctx).await? {
        let limit = ctx.max_active_runs_per_tenant;
        if active >= limit {
            // At the quota only a run that already holds the identity can answer: a duplicate
            // is deduplicated as usual, anything that would create a run is refused.
            let held =
                runs::find_by_identity(&mut *conn, d.scope, d.identity_hash.as_str(), window)
                    .await?;
            return match held {
                Some(run) => Ok(dispatch_result(&run, true)),
                None => Err(Rejection::new(
                    ErrorCode::TenantQuotaExceeded,
                    format!(
                        "tenant {} has {active} queued or running runs, the limit is {limit}",
                        d.scope.tenant_id.unwrap_or_default()
                    ),
                )
                .into()),
            };
        }
    }
    // Insert-or-find, retried: between our conflict and our read the active run may complete.
    for _ in 0..3 {
        let found = runs::insert_or_find(conn, d, trace).await?;
        if let Some((mut run, true)) = found {
            if let Some(tenant) = run.tenant_id {
                buf.count_tenant_active(tenant, 1);
            }
            buf.know_sequence(run.id, 0);
            // A new run's `created_at` is the column default `now()`: the transaction's clock,
            // known without asking.
            buf.know_now(run.created_at);
            if let Some(refused) = link_backup_schedule_run(conn, &run).await? {
                // The refusal is part of the run from its first event on.
                let appended = run.failure_summary.append(&[refused]);
                buf.store_run(run.clone(), appended.summary_changed);
            }
            let now = run.created_at;
            record_event(conn, buf, RunEventType::Queued, &run, now, None, None, ctx).await?;
            if ctx.hand_off_jobs {
                buf.push_job(run.clone());
            }
            return Ok(dispatch_result(&run, false));
        }
        if let Some((run, false)) = found {
            return Ok(dispatch_result(&run, true));
        }
        if let Some(run) =
            runs::find_by_identity(&mut *conn, d.scope, d.identity_hash.as_str(), window).await?
        {
            return Ok(dispatch_result(&run, true));
        }
    }
    Err(ApplyError::Retry(Transient::Contended))
}

/// The active runs of the dispatch's tenant, when the tenant quota applies to it. The batch
/// took the tenant's quota lock up front (in the global lock order); a dispatch applied outside
/// a batch takes it here.
async fn tenant_active_runs(
    conn: &mut PgConnection,
    buf: &mut TxBuffer,
    d: &DispatchCommand,
    ctx: &ApplySettings,
) -> Result<Option<u64>, sqlx::Error> {
    let Some(tenant) = d.scope.tenant_id else {
        return Ok(None);
    };
    if ctx.max_active_runs_per_tenant == 0 {
        return Ok(None);
    }
    if buf.tenant_active(tenant).is_none() {
        buf.lock_tenants(conn, &[tenant]).await?;
    }
    Ok(Some(buf.tenant_active(tenant).unwrap_or(0).max(0) as u64))
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
            "run_identity_hash": run.run_identity_hash.as_str(),
            "status": run.status.as_str(),
            "deduplicated": deduplicated,
        }),
    }
}

/// The failure code recorded on a run whose legacy link was refused.
pub const LEGACY_LINK_REFUSED: &str = "legacy_link.refused";

/// A `backup_schedule.*` run whose context names a legacy `backup_schedule_runs` row
/// (`backup_schedule_run_id`) takes over that row's redirect, if the row is of the run's tenant
/// and schedule and not linked yet. Other types never link (the key is just context to them).
/// A refused link is returned as a failure entry for the run, saying why.
async fn link_backup_schedule_run(
    conn: &mut PgConnection,
    run: &OperationRun,
) -> Result<Option<Failure>, sqlx::Error> {
    let backup_type = matches!(
        run.run_type,
        OperationRunType::BackupScheduleRunNow
            | OperationRunType::BackupScheduleRetry
            | OperationRunType::BackupScheduleScheduled
    );
    let Some(legacy_value) = run.context.get("backup_schedule_run_id") else {
        return Ok(None);
    };
    if !backup_type || legacy_value.is_null() {
        return Ok(None);
    }
    let refused = |why: String| {
        Some(Failure::new(
            LEGACY_LINK_REFUSED,
            &format!("backup_schedule_runs row {legacy_value} not linked: {why}"),
        ))
    };
    let Some(legacy_id) = id_value(legacy_value) else {
        return Ok(refused(
            "backup_schedule_run_id is not an integer id".into(),
        ));
    };
    let Some(tenant_id) = run.tenant_id else {
        return Ok(refused("a workspace-scoped run has no tenant".into()));
    };
    let Some(schedule_id) = run.context.get("backup_schedule_id").and_then(id_value) else {
        return Ok(refused("the run has no integer backup_schedule_id".into()));
    };
    let linked =
        legacy::link_backup_schedule_run(conn, legacy_id, tenant_id, schedule_id, run.id).await?;
    Ok(match linked {
        Ok(()) => None,
        Err(LinkRefusal::NotInTenant) => refused(format!("no such row in tenant {tenant_id}")),
        Err(LinkRefusal::OtherSchedule { backup_schedule_id }) => refused(format!(
            "the row belongs to backup schedule {backup_schedule_id}, the run to {schedule_id}"
        )),
        Err(LinkRefusal::AlreadyLinked { operation_run_id }) => refused(format!(
            "the row already redirects to run {operation_run_id}"
        )),
    })
}

/// An id given as a JSON integer or as its decimal string (forms producers send).
fn id_value(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

pub(crate) async fn progress(
    conn: &mut PgConnection,
    buf: &mut TxBuffer,
    p: &ProgressCommand,
    trace: Option<&TraceContext>,
    ctx: &ApplySettings,
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
            let (run, last_sequence, now) = runs::lock_in_scope(conn, p.run_id, p.scope)
                .await?
                .ok_or_else(not_found)?;
            buf.know_now(now);
            buf.adopt(run.clone(), last_sequence);
            run
        }
    };
    if run.workspace_id != p.scope.workspace_id || run.tenant_id != p.scope.tenant_id {
        return Err(not_found().into());
    }
    let change = RunChange {
        status: p.status,
        outcome: p.outcome,
        counts: &p.counts,
        failures: &p.failures,
    };
    let now = buf.now(conn).await?;
    let was_active = run.is_active();
    let applied = transition::apply(run, &change, now)?;
    save(conn, buf, applied, was_active, now, trace, None, ctx).await
}

/// Stores what [`transition::apply`] decided about a locked run (when there is anything to store)
/// and records the event it causes, stamped `now` like the run. The event carries `trace` (the
/// causing command's), else the run's own, and `action` (the operator action that caused it).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn save(
    conn: &mut PgConnection,
    buf: &mut TxBuffer,
    applied: Applied,
    was_active: bool,
    now: DateTime<Utc>,
    trace: Option<&TraceContext>,
    action: Option<&Value>,
    ctx: &ApplySettings,
) -> Result<CommandResult, ApplyError> {
    let disposition = match (applied.event, applied.stale) {
        (Some(_), _) => Disposition::Applied,
        (None, true) => Disposition::Stale,
        (None, false) => Disposition::Unchanged,
    };
    let run = applied.run;
    if applied.save {
        if let (Some(tenant), true, false) = (run.tenant_id, was_active, run.is_active()) {
            buf.count_tenant_active(tenant, -1);
        }
        buf.store_run(run.clone(), applied.summary_changed);
    }
    if let Some(event_type) = applied.event {
        record_event(conn, buf, event_type, &run, now, trace, action, ctx).await?;
    }
    Ok(CommandResult {
        disposition,
        run_id: Some(run.id),
        reply: json!({"run_id": run.id, "status": run.status.as_str(), "outcome": run.outcome.as_str()}),
    })
}

/// Records event `event_type` of `run` at `now` (the clock of the change it reports), with trace
/// context `trace` (the causing command's) or, without one, the run's own (its dispatch's), and
/// `action` as `data.action` when an operator action caused it.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn record_event(
    conn: &mut PgConnection,
    buf: &mut TxBuffer,
    event_type: impl Into<EventType> + Copy,
    run: &OperationRun,
    now: DateTime<Utc>,
    trace: Option<&TraceContext>,
    action: Option<&Value>,
    ctx: &ApplySettings,
) -> Result<(), sqlx::Error> {
    let sequence = buf.next_sequence(conn, run.id).await?;
    let trace = trace.or(run.trace.as_ref());
    let mut event = RunEvent::new(event_type, run, sequence, &ctx.event_source, now)
        .with_trace(trace)
        .with_action(action);
    if serialized_len(&event.cloud_event) > MAX_EVENT_BYTES {
        // The bounds of `domain::event_size` add up to less than this, so it cannot happen; if
        // it ever does, the event still goes out, with the failure entries only counted.
        tracing::error!(
            run_id = run.id,
            "event over {MAX_EVENT_BYTES} bytes: failure entries counted only"
        );
        let mut slim = run.clone();
        slim.failure_summary.fold_into_overflow();
        event = RunEvent::new(event_type, &slim, sequence, &ctx.event_source, now)
            .with_trace(trace)
            .with_action(action);
    }
    buf.push_event(event, run);
    Ok(())
}

/// Completes an active run with outcome `failed` and `failure`, on behalf of the service itself
/// (unroutable job, stale run). A run that completed meanwhile is left as it is (`None`).
#[tracing::instrument(level = "debug", skip_all, fields(run_id = run.id))]
pub async fn complete_as_failed(
    conn: &mut PgConnection,
    buf: &mut TxBuffer,
    run: OperationRun,
    failure: Failure,
    ctx: &ApplySettings,
) -> Result<Option<CommandResult>, ApplyError> {
    complete_as(conn, buf, run, RunOutcome::Failed, Some(failure), None, ctx).await
}

/// Completes an active, locked run with `outcome` (and `failure`, if any), on behalf of the
/// service or of an operator action (`action`, carried by the completion event). A run that
/// completed meanwhile is left as it is (`None`): a completion is never overwritten.
pub async fn complete_as(
    conn: &mut PgConnection,
    buf: &mut TxBuffer,
    run: OperationRun,
    outcome: RunOutcome,
    failure: Option<Failure>,
    action: Option<&Value>,
    ctx: &ApplySettings,
) -> Result<Option<CommandResult>, ApplyError> {
    if !run.is_active() {
        return Ok(None);
    }
    if buf.run(run.id).is_none() {
        let last_sequence = crate::store::events::last_sequence(conn, run.id).await?;
        buf.adopt(run.clone(), last_sequence);
    }
    let failures: Vec<Failure> = failure.into_iter().collect();
    let change = RunChange {
        status: Some(RunStatus::Completed),
        outcome: Some(outcome),
        counts: &SummaryCounts::default(),
        failures: &failures,
    };
    let now = buf.now(conn).await?;
    let applied = transition::apply(run, &change, now)?;
    save(conn, buf, applied, true, now, None, action, ctx)
        .await
        .map(Some)
}

/// A new trace with random ids from the operating system's generator (drawn again in the
/// 2^-64 case of an all-zero id).
pub(crate) fn new_trace() -> TraceContext {
    loop {
        let mut trace_id = [0u8; 16];
        let mut parent_id = [0u8; 8];
        getrandom::fill(&mut trace_id).expect("the operating system's random generator answers");
        getrandom::fill(&mut parent_id).expect("the operating system's random generator answers");
        if let Some(trace) =
            TraceContext::new_root(u128::from_be_bytes(trace_id), u64::from_be_bytes(parent_id))
        {
            return trace;
        }
    }
}
