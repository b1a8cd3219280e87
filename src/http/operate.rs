//! Operator actions over HTTP: `POST /v1/runs/{id}/cancel`, `/retry` and `/fail` (body
//! `{"reason": "..."}`, at most [`ACTION_BODY_BYTES`]; a fail needs a reason), answered with the
//! action's result shape (`{"run_id", "action", "result", "new_run_id"?, "deduplicated"?,
//! "error"?}`, 200 whatever the result) for a bearer token granting `operate`
//! ([`OperatorClaims`]); a run outside the token's scope is 404 `not_found`.
//!
//! http/ never writes to the database itself: it asks through the port
//! [`super::run_actions::RunActions`], which the service implements with the same code the CLI
//! and the broker commands act through.

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::api::run_in_scope;
use super::claims::OperatorClaims;
use super::error::{ApiError, ApiPath};
use super::run_actions::{ActError, ActionAsk};
use super::state::ViewerState;
use crate::domain::action::{Actor, RunAction, MAX_REASON_CHARS};
use crate::domain::{sanitise_message, RunScope};

/// The largest body of an action request: a reason of [`MAX_REASON_CHARS`] characters, each
/// escaped as JSON at its longest (`\uXXXX`, 6 bytes), and the object around it.
pub const ACTION_BODY_BYTES: usize = 8 * 1024;

impl From<ActError> for ApiError {
    fn from(e: ActError) -> Self {
        match e {
            ActError::NotFound => ApiError::not_found("run"),
            ActError::Failed(why) => {
                tracing::warn!(error = %why, "viewer action failed");
                ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
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

/// `POST /v1/runs/{id}/cancel`
pub async fn cancel(
    state: State<ViewerState>,
    claims: OperatorClaims,
    id: ApiPath<String>,
    body: Body,
) -> Result<Response, ApiError> {
    act_by_api(state, claims, id, RunAction::Cancel, body).await
}

/// `POST /v1/runs/{id}/retry`
pub async fn retry(
    state: State<ViewerState>,
    claims: OperatorClaims,
    id: ApiPath<String>,
    body: Body,
) -> Result<Response, ApiError> {
    act_by_api(state, claims, id, RunAction::Retry, body).await
}

/// `POST /v1/runs/{id}/fail`
pub async fn fail(
    state: State<ViewerState>,
    claims: OperatorClaims,
    id: ApiPath<String>,
    body: Body,
) -> Result<Response, ApiError> {
    act_by_api(state, claims, id, RunAction::Fail, body).await
}

async fn act_by_api(
    State(state): State<ViewerState>,
    OperatorClaims(claims): OperatorClaims,
    ApiPath(id): ApiPath<String>,
    action: RunAction,
    body: Body,
) -> Result<Response, ApiError> {
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
    let run = run_in_scope(&state, &claims.scope(), &id).await?;
    let actor = Actor {
        name: claims.sub.clone(),
        user_id: None,
        via: "api",
    };
    let done = state
        .actions
        .act(ActionAsk {
            action,
            run_id: run.id,
            scope: RunScope {
                workspace_id: run.workspace_id,
                tenant_id: run.tenant_id,
            },
            actor: &actor,
            reason: reason.as_deref(),
            bulk_id: None,
        })
        .await?;
    Ok(Json(done.reply).into_response())
}
