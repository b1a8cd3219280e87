//! The viewer's operator actions: [`crate::http::run_actions::RunActions`] carried out by
//! [`super::actions::act`], each in a transaction of its own on the viewer's pool (never a
//! connection the command pipeline needs), tried again a few times on a transient fault or a
//! race with another action.

use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::PgPool;

use super::actions::{act, ActionOutcome, ActionRequest};
use super::apply::{ApplyError, ApplySettings};
use super::tx_buffer::TxBuffer;
use crate::domain::ErrorCode;
use crate::http::run_actions::{ActError, ActionAsk, ActionDone, RunActions};

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

    async fn once(&self, req: &ActionRequest<'_>) -> Result<ActionOutcome, ApplyError> {
        let mut tx = self.pool.begin().await?;
        let mut buf = TxBuffer::default();
        let done = act(&mut tx, &mut buf, req, &self.ctx).await?;
        buf.flush(&mut tx).await?;
        tx.commit().await?;
        Ok(done)
    }
}

impl RunActions for ViewerActions {
    fn act<'a>(&'a self, ask: ActionAsk<'a>) -> BoxFuture<'a, Result<ActionDone, ActError>> {
        Box::pin(async move {
            let req = ActionRequest {
                action: ask.action,
                run_id: ask.run_id,
                scope: Some(ask.scope),
                actor: ask.actor,
                reason: ask.reason,
                bulk_id: ask.bulk_id,
                command_id: None,
            };
            let mut attempt = 0;
            loop {
                attempt += 1;
                match self.once(&req).await {
                    Ok(done) => {
                        return Ok(ActionDone {
                            result: done.result,
                            reply: done.reply,
                            record_id: done.record_id,
                        })
                    }
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
