//! Operator actions (cancel, retry, fail) carried out in the caller's transaction: the run is
//! locked, [`domain::action::decide`] says what the action does, the effect (completion, cancel
//! request and its message in the job outbox, or the retry's dispatch through the normal path)
//! and the action's record in `operation_run_actions` are written together, so an action is
//! never done without its record nor recorded without being done. The CLI, the broker
//! commands `cancel_run`, `retry_run` and `fail_run`, and the viewer (`viewer_actions.rs`) all
//! act through [`act`].
//!
//! [`domain::action::decide`]: crate::domain::action::decide

use serde_json::{json, Value};
use sqlx::PgConnection;

use super::apply::{
    complete_as, dispatch, new_trace, record_event, ApplyError, ApplySettings, CommandResult,
    Disposition,
};
use super::tx_buffer::TxBuffer;
use crate::domain::action::{
    decide, result_json, ActionResult, Actor, Decision, RunAction, RETRY_OF,
};
use crate::domain::event::ActionEventType;
use crate::domain::{
    Command, DispatchCommand, ErrorCode, OperationRun, ProgressCommand, Rejection, RunScope,
};
use crate::store::actions::{self as store, ActionRecord};
use crate::store::{events, runs};

/// One action on one run.
#[derive(Debug, Clone)]
pub struct ActionRequest<'a> {
    /// What to do.
    pub action: RunAction,
    /// The run.
    pub run_id: i64,
    /// The scope the asker claims for the run (a broker command's workspace and tenant; a
    /// mismatch reads as not found); `None` for the CLI, which acts in any scope.
    pub scope: Option<RunScope>,
    /// Who.
    pub actor: &'a Actor,
    /// Why.
    pub reason: Option<&'a str>,
    /// The bulk action this one is part of.
    pub bulk_id: Option<&'a str>,
    /// The broker command asking for it.
    pub command_id: Option<&'a str>,
}

/// What an action did.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionOutcome {
    /// The answer.
    pub result: ActionResult,
    /// The answer's JSON (the result shape every side answers with).
    pub reply: Value,
    /// The action's record in `operation_run_actions` (none when the bulk action had done it
    /// already: nothing new is recorded).
    pub record_id: Option<i64>,
}

/// The rejection of a run the asker cannot see (absent, or in another workspace or tenant:
/// the same answer).
pub fn not_found(run_id: i64) -> Rejection {
    Rejection::new(ErrorCode::RunNotFound, format!("run {run_id} not found"))
}

/// Carries out `req` in the caller's transaction (`buf` flushed by the caller before commit).
/// A run the asker cannot see is `Err(DeadLetter(run_not_found))`.
#[tracing::instrument(level = "debug", skip_all, fields(run_id = req.run_id, action = req.action.as_str()))]
pub async fn act(
    conn: &mut PgConnection,
    buf: &mut TxBuffer,
    req: &ActionRequest<'_>,
    ctx: &ApplySettings,
) -> Result<ActionOutcome, ApplyError> {
    let run = lock(conn, buf, req).await?;
    if let Some(bulk_id) = req.bulk_id {
        if let Some(done) = store::done_in_bulk(conn, bulk_id, run.id, req.action).await? {
            let new_run = done["new_run_id"].as_i64().map(|id| (id, true));
            let message = format!("already done by bulk action {bulk_id}");
            let reply = result_json(
                run.id,
                req.action,
                ActionResult::Unchanged,
                new_run,
                Some(&message),
            );
            return Ok(ActionOutcome {
                result: ActionResult::Unchanged,
                reply,
                record_id: None,
            });
        }
    }
    let cancel_requested = store::cancel_requested_at(conn, run.id).await?.is_some();
    let decision = decide(req.action, &run, cancel_requested, req.reason);
    let mut result = decision.result();
    let mut error: Option<String> = None;
    let mut new_run: Option<(i64, bool)> = None;
    let event_action = |result: ActionResult, new_run_id: Option<i64>| {
        json!({"action": req.action.as_str(), "actor": req.actor.to_json(),
               "reason": req.reason, "result": result.as_str(), "new_run_id": new_run_id})
    };
    match decision {
        Decision::Complete { outcome, failure } => {
            let action = event_action(result, None);
            complete_as(conn, buf, run.clone(), outcome, failure, Some(&action), ctx).await?;
        }
        Decision::RequestCancel => {
            store::request_cancel(conn, &run).await?;
            let now = buf.now(conn).await?;
            let mut touched = run.clone();
            touched.updated_at = now;
            buf.store_run(touched.clone(), false);
            let action = event_action(result, None);
            record_event(
                conn,
                buf,
                ActionEventType::CancelRequested,
                &touched,
                now,
                None,
                Some(&action),
                ctx,
            )
            .await?;
        }
        Decision::Retry => match retry(conn, buf, &run, ctx).await? {
            Ok((id, deduplicated)) => {
                new_run = Some((id, deduplicated));
                let now = buf.now(conn).await?;
                let action = event_action(result, Some(id));
                record_event(
                    conn,
                    buf,
                    ActionEventType::Retried,
                    &run,
                    now,
                    None,
                    Some(&action),
                    ctx,
                )
                .await?;
            }
            Err(rejection) => {
                result = ActionResult::Refused;
                error = Some(rejection.message);
            }
        },
        Decision::Unchanged(why) | Decision::Refused(why) => error = Some(why),
    }
    let record_id = store::record(
        conn,
        &ActionRecord {
            run_id: run.id,
            action: req.action,
            actor: req.actor,
            reason: req.reason,
            result,
            new_run_id: new_run.map(|(id, _)| id),
            error: error.as_deref(),
            bulk_id: req.bulk_id,
            command_id: req.command_id,
        },
    )
    .await?;
    Ok(ActionOutcome {
        result,
        reply: result_json(run.id, req.action, result, new_run, error.as_deref()),
        record_id: Some(record_id),
    })
}

/// Locks the run (cached by the batch when it locked it up front), in the asker's scope.
async fn lock(
    conn: &mut PgConnection,
    buf: &mut TxBuffer,
    req: &ActionRequest<'_>,
) -> Result<OperationRun, ApplyError> {
    let in_scope = |run: &OperationRun| {
        req.scope
            .is_none_or(|s| run.workspace_id == s.workspace_id && run.tenant_id == s.tenant_id)
    };
    if let Some(run) = buf.run(req.run_id) {
        return if in_scope(run) {
            Ok(run.clone())
        } else {
            Err(not_found(req.run_id).into())
        };
    }
    let run = match req.scope {
        Some(scope) => {
            runs::lock_in_scope(conn, req.run_id, scope)
                .await?
                .map(|(run, last, now)| {
                    buf.know_now(now);
                    (run, last)
                })
        }
        None => match runs::lock_by_id(conn, req.run_id).await? {
            Some(run) => {
                let last = events::last_sequence(conn, run.id).await?;
                Some((run, last))
            }
            None => None,
        },
    };
    let Some((run, last_sequence)) = run else {
        return Err(not_found(req.run_id).into());
    };
    buf.adopt(run.clone(), last_sequence);
    Ok(run)
}

/// Dispatches `run` again (same type, scope, initiator and context, `context.retry_of` = its id)
/// through the normal dispatch path: the new run's id, and whether the identity was held by an
/// active run (deduplicated); or the dispatch's refusal.
async fn retry(
    conn: &mut PgConnection,
    buf: &mut TxBuffer,
    run: &OperationRun,
    ctx: &ApplySettings,
) -> Result<Result<(i64, bool), Rejection>, ApplyError> {
    let mut context = run.context.as_object().cloned().unwrap_or_default();
    context.insert(RETRY_OF.into(), json!(run.id));
    let scope = RunScope {
        workspace_id: run.workspace_id,
        tenant_id: run.tenant_id,
    };
    // The original's identity: `retry_of` is no identity key, so the retry holds the same one
    // and dedupes against an active run of it.
    let identity_hash = run.run_identity_hash.clone();
    let command = DispatchCommand {
        scope,
        user_id: run.user_id,
        initiator_name: run.initiator_name.clone(),
        run_type: run.run_type,
        context,
        identity_hash,
    };
    let trace = run.trace.clone().unwrap_or_else(new_trace);
    match dispatch(conn, buf, &command, &trace, ctx).await {
        Ok(done) => {
            let id = done.reply["run_id"].as_i64().unwrap_or_default();
            let deduplicated = done.reply["deduplicated"].as_bool().unwrap_or(false);
            Ok(Ok((id, deduplicated)))
        }
        Err(ApplyError::DeadLetter(rejection)) => Ok(Err(rejection)),
        Err(e) => Err(e),
    }
}

/// An operator action asked for by a broker command (`cancel_run`, `retry_run`, `fail_run`), in
/// the command's scope; the reply is the action's result shape.
pub(crate) async fn act_by_command(
    conn: &mut PgConnection,
    buf: &mut TxBuffer,
    p: &ProgressCommand,
    command: &Command,
    ctx: &ApplySettings,
) -> Result<CommandResult, ApplyError> {
    let Some(ask) = &p.act else {
        unreachable!("called for action commands only")
    };
    let actor = Actor {
        name: ask.initiator_name.clone(),
        user_id: ask.user_id,
        via: "broker",
    };
    let req = ActionRequest {
        action: ask.action,
        run_id: p.run_id,
        scope: Some(p.scope),
        actor: &actor,
        reason: ask.reason.as_deref(),
        bulk_id: None,
        command_id: command.command_id.as_deref(),
    };
    let done = act(conn, buf, &req, ctx).await?;
    Ok(CommandResult {
        disposition: match done.result {
            ActionResult::Done | ActionResult::Requested => Disposition::Applied,
            ActionResult::Unchanged | ActionResult::Refused => Disposition::Unchanged,
        },
        run_id: Some(p.run_id),
        reply: done.reply,
    })
}
