//! Operator actions over HTTP: `POST /v1/runs/{id}/cancel`, `/retry` and `/fail` (body
//! `{"reason": "..."}`, at most [`ACTION_BODY_BYTES`]; a fail needs a reason), answered with the
//! action's result shape (`{"run_id", "action", "result", "new_run_id"?, "deduplicated"?,
//! "error"?}`, 200 whatever the result) for a bearer token granting `operate`
//! ([`OperatorClaims`]); a run outside the token's scope is 404 `not_found`.
//!
//! An `Idempotency-Key` header (1 to
//! [`MAX_IDEMPOTENCY_KEY_CHARS`](crate::domain::idempotency_key::MAX_IDEMPOTENCY_KEY_CHARS)
//! visible ASCII characters) makes a request safe to send again after a lost answer: a repeat
//! with the same key, action, run and reason gets the first answer, with no second effect and no
//! second record; the same key with another request is 422 `idempotency_key_reused`. Keys are
//! kept as long as the inbox keeps command ids (`--inbox-retention`).
//!
//! http/ never writes to the database itself: it asks through the port
//! [`super::run_actions::RunActions`], which the service implements with the same code the CLI
//! and the broker commands act through.

use axum::body::Body;
use axum::extract::{MatchedPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::api::run_in_scope;
use super::auth::Claims;
use super::claims::OperatorClaims;
use super::error::{ApiError, ApiPath};
use super::run_actions::{ActError, ActionAsk, ActionDone};
use super::state::ViewerState;
use crate::domain::action::{Actor, RunAction, MAX_REASON_CHARS};
use crate::domain::idempotency_key::{check_key, KeyError};
use crate::domain::{sanitise_message, RunScope};

/// The largest body of an action request: a reason of [`MAX_REASON_CHARS`] characters, each
/// escaped as JSON at its longest (`\uXXXX`, 6 bytes), and the object around it.
pub const ACTION_BODY_BYTES: usize = 8 * 1024;

impl From<ActError> for ApiError {
    fn from(e: ActError) -> Self {
        match e {
            ActError::NotFound => ApiError::not_found("run"),
            ActError::KeyReused => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was sent with another action, run or reason",
            ),
            ActError::Failed(why) => {
                tracing::warn!(error = %why, "viewer action failed");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database_unavailable",
                    "the action could not be carried out; retry",
                )
            }
        }
    }
}

/// The reason of an action as given (a form's field or the body's `reason`): at most
/// [`MAX_REASON_CHARS`] characters, secrets redacted as in failure messages, blank as none; a
/// fail needs one (it becomes the failure's message).
pub fn reason(action: RunAction, given: Option<&str>) -> Result<Option<String>, ApiError> {
    if given.is_some_and(|r| r.chars().count() > MAX_REASON_CHARS) {
        return Err(ApiError::invalid(format!(
            "reason must be at most {MAX_REASON_CHARS} characters"
        )));
    }
    let reason = given.map(sanitise_message).filter(|r| !r.trim().is_empty());
    if action == RunAction::Fail && reason.is_none() {
        return Err(ApiError::invalid(
            "a fail needs a reason: it becomes the run's failure message",
        ));
    }
    Ok(reason)
}

/// The body of an action request.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    #[serde(default)]
    reason: Option<String>,
}

/// What is asked of one run, from the API or a page.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// The action.
    pub action: RunAction,
    /// Why (already checked by [`reason`]).
    pub reason: Option<&'a str>,
    /// `api` or `page`, as recorded.
    pub via: &'static str,
    /// The request's `Idempotency-Key` (the API's), already checked.
    pub idempotency_key: Option<&'a str>,
}

/// Carries out `ask` on run `id` (of the path) for `claims`, which may act: the run is looked up
/// in the token's scope (outside it: 404 `not_found`), and the action recorded with the token's
/// `sub`.
pub async fn act_in_scope(
    state: &ViewerState,
    claims: &Claims,
    id: &str,
    ask: Ask<'_>,
) -> Result<ActionDone, ApiError> {
    let run = run_in_scope(state, &claims.scope(), id).await?;
    let actor = Actor {
        name: claims.sub.clone(),
        user_id: None,
        via: ask.via,
    };
    let Ask {
        action,
        reason,
        idempotency_key,
        ..
    } = ask;
    let ask = ActionAsk {
        action,
        run_id: run.id,
        scope: RunScope {
            workspace_id: run.workspace_id,
            tenant_id: run.tenant_id,
        },
        actor: &actor,
        reason,
        bulk_id: None,
        idempotency_key,
    };
    Ok(state.actions.act(ask).await?)
}

/// The action whose route matched: the last segment of `/…/{id}/cancel` (`/retry`, `/fail`).
pub fn routed_action(route: &MatchedPath) -> Result<RunAction, ApiError> {
    route
        .as_str()
        .rsplit('/')
        .next()
        .and_then(RunAction::parse)
        .ok_or_else(ApiError::no_route)
}

/// `POST /v1/runs/{id}/cancel`, `/retry`, `/fail` (one route each, this handler)
pub async fn act(
    State(state): State<ViewerState>,
    OperatorClaims(claims): OperatorClaims,
    route: MatchedPath,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let action = routed_action(&route)?;
    let idempotency_key = idempotency_key(&headers)?;
    let bytes = axum::body::to_bytes(body, ACTION_BODY_BYTES)
        .await
        .map_err(|_| ApiError::body_too_large(ACTION_BODY_BYTES))?;
    let body: ActionBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        ActionBody::default()
    } else {
        serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::invalid(format!(
                "the body must be a JSON object {{\"reason\": \"...\"}}: {e}"
            ))
        })?
    };
    let reason = reason(action, body.reason.as_deref())?;
    let ask = Ask {
        action,
        reason: reason.as_deref(),
        via: "api",
        idempotency_key,
    };
    let done = act_in_scope(&state, &claims, &id, ask).await?;
    Ok(Json(done.reply).into_response())
}

/// The request's `Idempotency-Key`, if it sent one: 400 `invalid_parameter` when it is not
/// 1 to [`MAX_IDEMPOTENCY_KEY_CHARS`](crate::domain::idempotency_key::MAX_IDEMPOTENCY_KEY_CHARS)
/// visible ASCII characters, or sent twice.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let mut keys = headers.get_all("idempotency-key").iter();
    let Some(key) = keys.next() else {
        return Ok(None);
    };
    if keys.next().is_some() {
        return Err(ApiError::invalid("send one Idempotency-Key, not several"));
    }
    let key = key
        .to_str()
        .map_err(|_| ApiError::invalid(KeyError::Characters.to_string()))?;
    check_key(key).map_err(|e| ApiError::invalid(e.to_string()))?;
    Ok(Some(key))
}
