//! The JSON API: `/v1/runs`, `/v1/runs/{id}`, `/v1/runs/{id}/events`, `/v1/legacy/{table}/{id}`,
//! `/v1/catalog`. Every answer is scoped by the bearer token.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::error::ApiError;
use super::read_model;
use super::viewer::{authenticate, ViewerState};
use crate::domain::{OperationRun, OperationRunType, RunOutcome, RunStatus, OPERATION_CATALOG};
use crate::store::legacy::{self, LegacyTable};
use crate::store::viewer::{self as store, RunListFilter, ViewerScope};

/// Default page size of `GET /v1/runs`.
pub const DEFAULT_LIMIT: i64 = 50;
/// Largest page size of `GET /v1/runs`.
pub const MAX_LIMIT: i64 = 200;
/// Most events one `GET /v1/runs/{id}/events` answers; page on with `after`.
pub const MAX_EVENTS: i64 = 500;

/// A parsed `GET /v1/runs` query.
#[derive(Debug, Clone, PartialEq)]
pub struct ListQuery {
    /// The filters.
    pub filter: RunListFilter,
    /// Page size.
    pub limit: i64,
    /// Keyset position to continue after.
    pub after: Option<(DateTime<Utc>, i64)>,
}

/// Parses and checks the list parameters (unknown parameters are ignored).
pub fn parse_list_query(params: &HashMap<String, String>) -> Result<ListQuery, ApiError> {
    let get = |k: &str| params.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let int = |k: &str| -> Result<Option<i64>, ApiError> {
        get(k)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| ApiError::invalid(format!("{k} must be an integer")))
            })
            .transpose()
    };
    let time = |k: &str| -> Result<Option<DateTime<Utc>>, ApiError> {
        get(k)
            .map(|v| {
                DateTime::parse_from_rfc3339(v)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| ApiError::invalid(format!("{k} must be an RFC 3339 time")))
            })
            .transpose()
    };
    let run_type = get("type")
        .map(|t| OperationRunType::parse(t).map(|t| t.as_str().to_owned()))
        .transpose()
        .map_err(|r| ApiError::invalid(r.message))?;
    let status = get("status")
        .map(|s| s.parse::<RunStatus>().map(|s| s.as_str().to_owned()))
        .transpose()
        .map_err(|r| ApiError::invalid(r.message))?;
    let outcome = get("outcome")
        .map(|s| s.parse::<RunOutcome>().map(|s| s.as_str().to_owned()))
        .transpose()
        .map_err(|r| ApiError::invalid(r.message))?;
    let limit = int("limit")?.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "limit must be from 1 to {MAX_LIMIT}"
        )));
    }
    let after = get("cursor")
        .map(|c| decode_cursor(c).ok_or_else(|| ApiError::invalid("cursor is not valid")))
        .transpose()?;
    Ok(ListQuery {
        filter: RunListFilter {
            tenant_id: int("tenant_id")?,
            run_type,
            status,
            outcome,
            created_after: time("created_after")?,
            created_before: time("created_before")?,
        },
        limit,
        after,
    })
}

/// The opaque cursor of a keyset position.
pub fn encode_cursor(created_at: DateTime<Utc>, id: i64) -> String {
    hex::encode(format!("{}.{id}", created_at.timestamp_micros()))
}

fn decode_cursor(cursor: &str) -> Option<(DateTime<Utc>, i64)> {
    let text = String::from_utf8(hex::decode(cursor).ok()?).ok()?;
    let (micros, id) = text.split_once('.')?;
    Some((
        DateTime::from_timestamp_micros(micros.parse().ok()?)?,
        id.parse().ok()?,
    ))
}

/// One page of runs and the cursor of the next (`None` on the last page).
pub async fn list_page(
    state: &ViewerState,
    scope: &ViewerScope,
    query: &ListQuery,
) -> Result<(Vec<OperationRun>, Option<String>), ApiError> {
    let mut runs = store::list_runs(
        &state.pool,
        scope,
        &query.filter,
        query.after,
        query.limit + 1,
    )
    .await?;
    let next = if runs.len() as i64 > query.limit {
        runs.truncate(query.limit as usize);
        runs.last().map(|r| encode_cursor(r.created_at, r.id))
    } else {
        None
    };
    Ok((runs, next))
}

/// `GET /v1/runs`
pub async fn list(
    State(state): State<ViewerState>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let claims = authenticate(&state.keys, &headers)?;
    let query = parse_list_query(&params)?;
    let (runs, next) = list_page(&state, &claims.scope(), &query).await?;
    let runs: Vec<Value> = runs
        .iter()
        .map(|r| {
            let mut v = r.to_json();
            v["label"] = json!(read_model::type_label(r.run_type));
            v["progress"] = read_model::progress(&r.summary_counts);
            v
        })
        .collect();
    Ok(Json(json!({"runs": runs, "next_cursor": next})))
}

/// Run `id` of the path, when it is a number and the run is in scope.
pub async fn run_in_scope(
    state: &ViewerState,
    scope: &ViewerScope,
    id: &str,
) -> Result<OperationRun, ApiError> {
    let id: i64 = id.parse().map_err(|_| ApiError::not_found("run"))?;
    store::get_run(&state.pool, scope, id)
        .await?
        .ok_or_else(|| ApiError::not_found("run"))
}

/// `GET /v1/runs/{id}`
pub async fn show(
    State(state): State<ViewerState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let claims = authenticate(&state.keys, &headers)?;
    let run = run_in_scope(&state, &claims.scope(), &id).await?;
    Ok(Json(read_model::detail(&state.pool, &run).await?))
}

/// `GET /v1/runs/{id}/events?after=SEQ`
pub async fn events(
    State(state): State<ViewerState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let claims = authenticate(&state.keys, &headers)?;
    let run = run_in_scope(&state, &claims.scope(), &id).await?;
    let after = match params.get("after").filter(|v| !v.is_empty()) {
        Some(v) => v
            .parse::<i64>()
            .map_err(|_| ApiError::invalid("after must be an integer"))?,
        None => 0,
    };
    let events = store::events_after(&state.pool, run.id, after, MAX_EVENTS).await?;
    let events: Vec<Value> = events.into_iter().map(|e| e.cloud_event).collect();
    Ok(Json(json!({ "events": events })))
}

/// Where legacy row `id` of `table` leads inside `scope`: the run id, or an error answer.
pub async fn resolve_legacy(
    state: &ViewerState,
    scope: &ViewerScope,
    table: &str,
    id: &str,
) -> Result<i64, ApiError> {
    let table: LegacyTable = table.parse().map_err(|message: String| {
        ApiError::new(StatusCode::NOT_FOUND, "unknown_legacy_table", message)
    })?;
    let id: i64 = id.parse().map_err(|_| ApiError::not_found("legacy row"))?;
    let record = legacy::find(&state.pool, table, id)
        .await?
        .ok_or_else(|| ApiError::not_found("legacy row"))?;
    match record.operation_run_id {
        Some(run_id) => match store::get_run(&state.pool, scope, run_id).await? {
            Some(_) => Ok(run_id),
            None => Err(ApiError::not_found("legacy row")),
        },
        None => {
            let tenant = record.row.get("tenant_id").and_then(Value::as_i64);
            let visible = match tenant {
                Some(t) => store::tenant_in_scope(&state.pool, scope, t).await?,
                None => false,
            };
            if !visible {
                return Err(ApiError::not_found("legacy row"));
            }
            let mut e = ApiError::new(
                StatusCode::NOT_FOUND,
                "legacy_unmapped",
                format!("{table} row {id} points at no operation run"),
            );
            e.extra = Some(("legacy", record.row));
            Err(e)
        }
    }
}

/// `GET /v1/legacy/{table}/{id}`: 308 to the run.
pub async fn legacy(
    State(state): State<ViewerState>,
    headers: HeaderMap,
    Path((table, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let claims = authenticate(&state.keys, &headers)?;
    let run_id = resolve_legacy(&state, &claims.scope(), &table, &id).await?;
    Ok((
        StatusCode::PERMANENT_REDIRECT,
        [(header::LOCATION, format!("/v1/runs/{run_id}"))],
    )
        .into_response())
}

/// `GET /v1/catalog`
pub async fn catalog(
    State(state): State<ViewerState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authenticate(&state.keys, &headers)?;
    let types: Vec<Value> = OPERATION_CATALOG
        .iter()
        .map(|e| {
            json!({"type": e.name, "label": e.label, "identity_keys": e.identity_keys,
                   "expected_duration_seconds": e.expected_duration.as_secs()})
        })
        .collect();
    Ok(Json(json!({ "types": types })))
}
