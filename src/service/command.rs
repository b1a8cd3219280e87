//! One command's effect inside a transaction the caller owns: the inbox check, then a
//! dispatch, a progress change or an operator action, then the inbox record.

use serde_json::Value;
use sqlx::PgConnection;

use super::actions::act_by_command;
use super::apply::{
    dispatch, new_trace, progress, ApplyError, ApplySettings, CommandResult, Disposition,
};
use super::tx_buffer::TxBuffer;
use crate::domain::{Command, CommandAction, ErrorCode, Rejection};
use crate::store::inbox::InboxRow;

/// Applies `command` in the caller's transaction; `buf` carries what earlier commands of the
/// same transaction did and collects the rows to write before commit.
#[tracing::instrument(
    level = "debug",
    skip_all,
    fields(command_id = command.command_id.as_deref(), run_id = command.run_id())
)]
pub async fn apply_command(
    conn: &mut PgConnection,
    buf: &mut TxBuffer,
    command: &Command,
    ctx: &ApplySettings,
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
        CommandAction::Dispatch(d) => {
            // A dispatch without a (valid) trace context starts a new trace.
            let trace = command.trace.clone().unwrap_or_else(new_trace);
            dispatch(conn, buf, d, &trace, ctx).await?
        }
        CommandAction::Progress(p) if p.act.is_some() => {
            act_by_command(conn, buf, p, command, ctx).await?
        }
        CommandAction::Progress(p) => progress(conn, buf, p, command.trace.as_ref(), ctx).await?,
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
