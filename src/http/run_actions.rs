//! The port through which the viewer has operator actions carried out: http/ never writes to
//! the database itself, and the service (which depends on http/, never the other way) implements
//! [`RunActions`] with the same code the CLI and the broker commands act through, and hands it
//! to the viewer when it starts it.

use std::fmt;

use futures_util::future::BoxFuture;
use serde_json::Value;

use crate::domain::action::{ActionResult, Actor, RunAction};
use crate::domain::RunScope;

/// One action the viewer asks of the service.
#[derive(Debug, Clone)]
pub struct ActionAsk<'a> {
    /// What to do.
    pub action: RunAction,
    /// The run, already found in the token's scope.
    pub run_id: i64,
    /// The run's own workspace and tenant: the service acts only if the run still has them.
    pub scope: RunScope,
    /// Who: the token's `sub`, and which side of the viewer (`api` or `page`).
    pub actor: &'a Actor,
    /// Why.
    pub reason: Option<&'a str>,
    /// The bulk action it is part of (the list page's).
    pub bulk_id: Option<&'a str>,
    /// The API request's `Idempotency-Key`, already checked: a repeat gets the first answer.
    pub idempotency_key: Option<&'a str>,
}

/// What an action did.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionDone {
    /// The answer.
    pub result: ActionResult,
    /// The result shape every side answers with.
    pub reply: Value,
    /// The action's record in `operation_run_actions` (none when a bulk action had already
    /// done it, or the answer is a repeat's under its `Idempotency-Key`).
    pub record_id: Option<i64>,
}

/// Why an action could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum ActError {
    /// The run is gone, or no longer in the scope asked for.
    #[error("run not found")]
    NotFound,
    /// The `Idempotency-Key` already answered another request (another action, run or
    /// reason).
    #[error("the Idempotency-Key was used for another request")]
    KeyReused,
    /// The database did not answer, or kept refusing, after a few tries.
    #[error("the action could not be carried out: {0}")]
    Failed(String),
}

/// Carries out operator actions for the viewer, each in a transaction of its own, recorded
/// with its effect (implemented by the service: `service::viewer_actions`).
pub trait RunActions: Send + Sync + fmt::Debug {
    /// Carries out `ask`.
    fn act<'a>(&'a self, ask: ActionAsk<'a>) -> BoxFuture<'a, Result<ActionDone, ActError>>;
}
