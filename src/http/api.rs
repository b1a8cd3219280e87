//! The JSON API: `/v1/runs`, `/v1/runs/{id}`, `/v1/runs/{id}/events`, `/v1/legacy/{table}/{id}`,
//! `/v1/catalog`. Every answer is scoped by the bearer token.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::error::{ApiError, ApiPath, ApiQuery};
use super::read_model;
use super::viewer::{authenticate, ViewerState};
use crate::domain::{OperationRun, OperationRunType, RunOutcome, RunStatus, OPERATION_CATALOG};
use crate::store::legacy::{self, LegacyTable};
use crate::store::viewer::{self as store, RunListFilter, ViewerScope, PAGE_BYTES};

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
                    .ok()
                    .filter(|t| store::in_timestamptz_range(*t))
                    .ok_or_else(|| {
                        ApiError::invalid(format!(
                            "{k} must be an RFC 3339 time from 4713 BC to 294276 AD"
                        ))
                    })
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

/// A keyset position of a cursor, when it is one and PostgreSQL can hold its time (a cursor
/// is opaque, but anyone can write one).
fn decode_cursor(cursor: &str) -> Option<(DateTime<Utc>, i64)> {
    let text = String::from_utf8(hex::decode(cursor).ok()?).ok()?;
    let (micros, id) = text.split_once('.')?;
    let created_at = DateTime::from_timestamp_micros(micros.parse().ok()?)?;
    store::in_timestamptz_range(created_at).then_some(())?;
    Some((created_at, id.parse().ok()?))
}

/// One page of runs, each rendered by `render` as it is read (into what the answer shows and
/// its size in bytes), and the cursor of the next page (`None` on the last). A page ends at
/// `limit` runs or once the rendered runs would pass [`PAGE_BYTES`] (always at least one), so
/// an answer is bounded in bytes whatever the runs hold.
pub async fn list_page<T>(
    state: &ViewerState,
    scope: &ViewerScope,
    query: &ListQuery,
    mut render: impl FnMut(&OperationRun) -> (T, usize),
) -> Result<(Vec<T>, Option<String>), ApiError> {
    let (mut page, mut bytes, mut last, mut more) = (Vec::new(), 0usize, None, false);
    store::each_listed_run(
        &state.pool,
        scope,
        &query.filter,
        query.after,
        query.limit + 1,
        |run| {
            if page.len() as i64 >= query.limit {
                more = true;
                return false;
            }
            let (item, size) = render(&run);
            if !page.is_empty() && (bytes + size) as i64 > PAGE_BYTES {
                more = true;
                return false;
            }
            bytes += size;
            last = Some((run.created_at, run.id));
            page.push(item);
            true
        },
    )
    .await?;
    let next = last
        .filter(|_| more)
        .map(|(created_at, id)| encode_cursor(created_at, id));
    Ok((page, next))
}

/// `body` serialised as a JSON answer into a buffer of `capacity` bytes (its expected size),
/// so that a large answer is written once, not regrown.
fn json_answer(body: &impl Serialize, capacity: usize) -> Result<Response, ApiError> {
    let mut buffer = Vec::with_capacity(capacity);
    serde_json::to_writer(&mut buffer, body).map_err(|e| {
        tracing::error!(error = %e, "viewer answer did not serialise");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the answer could not be written",
        )
    })?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        buffer,
    )
        .into_response())
}

/// `GET /v1/runs`
pub async fn list(
    State(state): State<ViewerState>,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let claims = authenticate(&state.keys, &headers)?;
    let query = parse_list_query(&params)?;
    let (runs, next) = list_page(&state, &claims.scope(), &query, |r| {
        let mut v = r.to_json();
        v["label"] = json!(read_model::type_label(r.run_type));
        v["progress"] = read_model::progress(&r.summary_counts);
        let raw = serde_json::value::to_raw_value(&v).expect("a JSON value always serialises");
        let size = raw.get().len() + 1;
        (raw, size)
    })
    .await?;
    #[derive(Serialize)]
    struct Page {
        runs: Vec<Box<RawValue>>,
        next_cursor: Option<String>,
    }
    let capacity = runs.iter().map(|r| r.get().len() + 1).sum::<usize>() + 128;
    json_answer(
        &Page {
            runs,
            next_cursor: next,
        },
        capacity,
    )
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
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let claims = authenticate(&state.keys, &headers)?;
    let run = run_in_scope(&state, &claims.scope(), &id).await?;
    Ok(Json(read_model::detail(&state.pool, &run).await?))
}

/// `GET /v1/runs/{id}/events?after=SEQ`: at most [`MAX_EVENTS`] events and [`PAGE_BYTES`] of
/// them (always at least one); `next_after` is the `after` of the next page, `null` when no
/// more are stored.
pub async fn events(
    State(state): State<ViewerState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let claims = authenticate(&state.keys, &headers)?;
    let run = run_in_scope(&state, &claims.scope(), &id).await?;
    let after = match params.get("after").filter(|v| !v.is_empty()) {
        Some(v) => v
            .parse::<i64>()
            .map_err(|_| ApiError::invalid("after must be an integer"))?,
        None => 0,
    };
    let page = store::events_within(&state.pool, run.id, after, MAX_EVENTS, PAGE_BYTES).await?;
    #[derive(Serialize)]
    struct Page {
        events: Vec<Box<RawValue>>,
        next_after: Option<i64>,
    }
    let next_after = page.events.last().map(|e| e.sequence).filter(|_| page.more);
    let events: Vec<Box<RawValue>> = page.events.into_iter().map(|e| e.cloud_event).collect();
    let capacity = events.iter().map(|e| e.get().len() + 1).sum::<usize>() + 64;
    json_answer(&Page { events, next_after }, capacity)
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
    ApiPath((table, id)): ApiPath<(String, String)>,
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
