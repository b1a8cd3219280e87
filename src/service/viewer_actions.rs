//! The viewer's operator actions: [`crate::http::run_actions::RunActions`] carried out by
//! [`super::actions::act`], each in a transaction of its own on the viewer's pool (never a
//! connection the command pipeline needs), tried again a few times on a transient fault or a
//! race with another action. An action asked with an `Idempotency-Key` is kept in the inbox
//! with its answer, in the same transaction: a repeat of it is answered from there, and two
//! racing repeats meet on the inbox's key (the loser's transaction fails, its next try finds
//! the winner's answer).

use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::PgPool;

use serde_json::Value;

use super::actions::{act, ActionOutcome, ActionRequest};
use super::apply::{ApplyError, ApplySettings};
use super::tx_buffer::TxBuffer;
use crate::domain::action::ActionResult;
use crate::domain::command::CommandKind;
use crate::domain::idempotency_key::{inbox_id, request_hash};
use crate::domain::ErrorCode;
use crate::http::run_actions::{ActError, ActionAsk, ActionDone, RunActions};
use crate::store::inbox::InboxRow;

/// Tries of one action before it is answered as failed.
const ATTEMPTS: u64 = 3;

/// The service's side of the viewer's actions.
#[derive(Debug, Clone)]
pub struct ViewerActions {
    pool: PgPool,
    ctx: ApplySettings,
}

impl ViewerActions {
    /// Actions on `pool` that write what the service's commands write (`ctx`: the events'
    /// source, the job hand-off, the tenant quota a retry's dispatch is held to).
    pub fn new(pool: PgPool, ctx: ApplySettings) -> Self {
        Self { pool, ctx }
    }

    async fn once(
        &self,
        req: &ActionRequest<'_>,
        keyed: Option<&Keyed>,
    ) -> Result<Answer, ApplyError> {
        let mut tx = self.pool.begin().await?;
        let mut buf = TxBuffer::default();
        if let Some(keyed) = keyed {
            if let Some(first) = buf.processed(&mut tx, &keyed.inbox_id).await? {
                return Ok(if first.body_hash == keyed.request_hash {
                    Answer::Repeat(first.result)
                } else {
                    Answer::KeyReused
                });
            }
        }
        let done = act(&mut tx, &mut buf, req, &self.ctx).await?;
        if let Some(keyed) = keyed {
            buf.record_processed(InboxRow {
                command_id: keyed.inbox_id.clone(),
                kind: keyed.kind.as_str(),
                body_hash: keyed.request_hash.clone(),
                run_id: Some(req.run_id),
                result: done.reply.clone(),
            });
        }
        buf.flush(&mut tx).await?;
        tx.commit().await?;
        Ok(Answer::Acted(done))
    }
}

/// An action asked with an `Idempotency-Key`: where the inbox keeps it, and what a repeat must
/// ask again.
struct Keyed {
    inbox_id: String,
    request_hash: String,
    kind: CommandKind,
}

/// What one try came to.
enum Answer {
    /// Carried out now.
    Acted(ActionOutcome),
    /// Carried out before, under the same key: the first answer.
    Repeat(Value),
    /// The key answered another request.
    KeyReused,
}

impl RunActions for ViewerActions {
    fn act<'a>(&'a self, ask: ActionAsk<'a>) -> BoxFuture<'a, Result<ActionDone, ActError>> {
        Box::pin(async move {
            let keyed = ask.idempotency_key.map(|key| Keyed {
                inbox_id: inbox_id(ask.scope.workspace_id, key),
                request_hash: request_hash(ask.action, ask.run_id, ask.reason),
                kind: CommandKind::ALL
                    .into_iter()
                    .find(|k| k.run_action() == Some(ask.action))
                    .expect("every action has its command kind"),
            });
            let req = ActionRequest {
                action: ask.action,
                run_id: ask.run_id,
                scope: Some(ask.scope),
                actor: ask.actor,
                reason: ask.reason,
                bulk_id: ask.bulk_id,
                command_id: keyed.as_ref().map(|k| k.inbox_id.as_str()),
            };
            let mut attempt = 0;
            loop {
                attempt += 1;
                match self.once(&req, keyed.as_ref()).await {
                    Ok(Answer::Acted(done)) => {
                        return Ok(ActionDone {
                            result: done.result,
                            reply: done.reply,
                            record_id: done.record_id,
                        })
                    }
                    Ok(Answer::Repeat(reply)) => {
                        let result = reply["result"]
                            .as_str()
                            .and_then(ActionResult::parse)
                            .ok_or_else(|| {
                                ActError::Failed(format!(
                                    "a stored answer without a result: {reply}"
                                ))
                            })?;
                        return Ok(ActionDone {
                            result,
                            reply,
                            record_id: None,
                        });
                    }
                    Ok(Answer::KeyReused) => return Err(ActError::KeyReused),
                    Err(ApplyError::DeadLetter(r)) if r.code == ErrorCode::RunNotFound => {
                        return Err(ActError::NotFound)
                    }
                    Err(ApplyError::DeadLetter(r)) => return Err(ActError::Failed(r.message)),
                    // A transient fault, or a permanent-looking one that a second look settles
                    // (two forms of one bulk action racing on its record).
                    Err(e) if attempt < ATTEMPTS => {
                        tracing::debug!(error = %e, attempt, "viewer action failed; trying again");
                        tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                    }
                    Err(e) => return Err(ActError::Failed(e.to_string())),
                }
            }
        })
    }
}
