//! The JSON API: `/v1/runs`, `/v1/runs/{id}`, `/v1/runs/{id}/events`, `/v1/identities/{hash}`,
//! `/v1/legacy/{table}/{id}`, `/v1/catalog`. Every answer is scoped by the bearer token.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::claims::ApiClaims;
use super::error::{ApiError, ApiPath, ApiQuery};
use super::read_model::{self, IdentityHistory, ListedRun, RunDetail};
use super::state::ViewerState;
use crate::domain::command::MAX_ID_CHARS;
use crate::domain::failure::is_valid_code;
use crate::domain::{
    OperationRun, OperationRunType, RunIdentityHash, RunOutcome, RunStatus, OPERATION_CATALOG,
};
use crate::store::legacy::{self, LegacyTable};
use crate::store::viewer::{
    self as store, ContextValue, ListedRow, RunListFilter, Search, ViewerScope, PAGE_BYTES,
};

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

/// Most `context.<key>=<value>` filters of one list.
pub const MAX_CONTEXT_FILTERS: usize = 8;
/// Longest context key of a filter, in bytes.
pub const MAX_CONTEXT_KEY_BYTES: usize = 128;
/// Longest value of a context filter, in bytes.
pub const MAX_CONTEXT_VALUE_BYTES: usize = 256;
/// Longest `q`, in characters.
pub const MAX_SEARCH_CHARS: usize = 200;

/// The parameters of `GET /v1/runs` (and of the list page) besides `context.<key>`.
pub const LIST_PARAMETERS: [&str; 14] = [
    "tenant_id",
    "type",
    "status",
    "outcome",
    "created_after",
    "created_before",
    "updated_before",
    "failure_code",
    "initiator",
    "user_id",
    "identity",
    "q",
    "limit",
    "cursor",
];

/// `q`: `123` or `#123` is that run; other text matches the types whose label or wire name holds
/// it and the initiator of that name (both case-insensitively).
fn parse_search(text: &str) -> Result<Search, ApiError> {
    if text.chars().count() > MAX_SEARCH_CHARS {
        return Err(ApiError::invalid(format!(
            "q must be at most {MAX_SEARCH_CHARS} characters"
        )));
    }
    let digits = text.strip_prefix('#').unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return digits
            .parse()
            .map(Search::Run)
            .map_err(|_| ApiError::invalid("q names a run id that is too large"));
    }
    let needle = text.to_lowercase();
    let types = OPERATION_CATALOG
        .iter()
        .filter(|e| e.label.to_lowercase().contains(&needle) || e.name.contains(&needle))
        .map(|e| e.name.to_owned())
        .collect();
    Ok(Search::Text {
        text: text.to_owned(),
        types,
    })
}

/// Parses and checks the list parameters; an unknown one is refused, named.
pub fn parse_list_query(params: &HashMap<String, String>) -> Result<ListQuery, ApiError> {
    let mut context = Vec::new();
    let mut names: Vec<&String> = params.keys().collect();
    names.sort();
    for name in names {
        if let Some(key) = name.strip_prefix("context.") {
            if key.is_empty() || key.len() > MAX_CONTEXT_KEY_BYTES {
                return Err(ApiError::invalid(format!(
                    "{name}: a context key is 1 to {MAX_CONTEXT_KEY_BYTES} bytes"
                )));
            }
            let value = &params[name];
            if value.len() > MAX_CONTEXT_VALUE_BYTES {
                return Err(ApiError::invalid(format!(
                    "{name} must be at most {MAX_CONTEXT_VALUE_BYTES} bytes"
                )));
            }
            context.push((key.to_owned(), ContextValue::parse(value)));
        } else if !LIST_PARAMETERS.contains(&name.as_str()) {
            return Err(ApiError::invalid(format!(
                "unknown parameter {name:?}: the filters are {}, context.<key>",
                LIST_PARAMETERS.join(", ")
            )));
        }
    }
    if context.len() > MAX_CONTEXT_FILTERS {
        return Err(ApiError::invalid(format!(
            "at most {MAX_CONTEXT_FILTERS} context filters"
        )));
    }
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
    let failure_code = get("failure_code")
        .map(|c| {
            is_valid_code(c).then(|| c.to_owned()).ok_or_else(|| {
                ApiError::invalid("failure_code must be 1 to 128 of A-Z a-z 0-9 _ . -")
            })
        })
        .transpose()?;
    let initiator = get("initiator")
        .map(|i| {
            (i.chars().count() <= MAX_ID_CHARS)
                .then(|| i.to_owned())
                .ok_or_else(|| {
                    ApiError::invalid(format!(
                        "initiator must be at most {MAX_ID_CHARS} characters"
                    ))
                })
        })
        .transpose()?;
    let identity = get("identity")
        .map(|h| {
            RunIdentityHash::parse(h)
                .map(|_| h.to_owned())
                .ok_or_else(|| ApiError::invalid("identity must be 64 lowercase hex characters"))
        })
        .transpose()?;
    Ok(ListQuery {
        filter: RunListFilter {
            tenant_id: int("tenant_id")?,
            run_type,
            status,
            outcome,
            created_after: time("created_after")?,
            created_before: time("created_before")?,
            context,
            failure_code,
            initiator,
            user_id: int("user_id")?,
            identity,
            updated_before: time("updated_before")?,
            q: get("q").map(parse_search).transpose()?,
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
    mut render: impl FnMut(&ListedRow) -> (T, usize),
) -> Result<(Vec<T>, Option<String>), ApiError> {
    let (mut page, mut bytes, mut last, mut more) = (Vec::new(), 0usize, None, false);
    store::each_listed_run(
        &state.pool,
        scope,
        &query.filter,
        query.after,
        query.limit + 1,
        |row| {
            if page.len() as i64 >= query.limit {
                more = true;
                return false;
            }
            let (item, size) = render(&row);
            if !page.is_empty() && (bytes + size) as i64 > PAGE_BYTES {
                more = true;
                return false;
            }
            bytes += size;
            last = Some((row.run.created_at, row.run.id));
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
    ApiClaims(claims): ApiClaims,
    ApiQuery(params): ApiQuery<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let query = parse_list_query(&params)?;
    let now = Utc::now();
    let (runs, next) = list_page(&state, &claims.scope(), &query, |r| {
        let listed = ListedRun::new(&r.run, r.tenant_name.as_deref(), now);
        let raw = serde_json::value::to_raw_value(&listed).expect("a listed run always serialises");
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
    ApiClaims(claims): ApiClaims,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<RunDetail>, ApiError> {
    let run = run_in_scope(&state, &claims.scope(), &id).await?;
    Ok(Json(
        read_model::detail(&state.pool, run, Utc::now()).await?,
    ))
}

/// `GET /v1/identities/{hash}`: the identity's history within the token's scope; a hash with
/// no run in scope (or not a hash at all) is 404 `not_found`.
pub async fn identity(
    State(state): State<ViewerState>,
    ApiClaims(claims): ApiClaims,
    ApiPath(hash): ApiPath<String>,
) -> Result<Response, ApiError> {
    RunIdentityHash::parse(&hash).ok_or_else(|| ApiError::not_found("identity"))?;
    let found = read_model::identity_runs(&state.pool, &claims.scope(), &hash).await?;
    let newest = found
        .runs
        .first()
        .ok_or_else(|| ApiError::not_found("identity"))?;
    let entry = newest.run.run_type.catalog();
    let now = Utc::now();
    fn listed(r: &ListedRow, now: DateTime<Utc>) -> ListedRun<'_> {
        ListedRun::new(&r.run, r.tenant_name.as_deref(), now)
    }
    let history = IdentityHistory {
        identity_hash: &hash,
        run_type: entry.name,
        dedupe_window: entry.dedupe_window.as_str(),
        holder: found.holder.as_ref().map(|r| listed(r, now)),
        runs: found.runs.iter().map(|r| listed(r, now)).collect(),
        more: found.more,
    };
    json_answer(&history, 4096)
}

/// `GET /v1/runs/{id}/events?after=SEQ`: at most [`MAX_EVENTS`] events and [`PAGE_BYTES`] of
/// them (always at least one); `next_after` is the `after` of the next page, `null` when no
/// more are stored.
pub async fn events(
    State(state): State<ViewerState>,
    ApiClaims(claims): ApiClaims,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<HashMap<String, String>>,
) -> Result<Response, ApiError> {
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
    ApiClaims(claims): ApiClaims,
    ApiPath((table, id)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    let run_id = resolve_legacy(&state, &claims.scope(), &table, &id).await?;
    Ok((
        StatusCode::PERMANENT_REDIRECT,
        [(header::LOCATION, format!("/v1/runs/{run_id}"))],
    )
        .into_response())
}

/// `GET /v1/catalog`
pub async fn catalog(_: ApiClaims) -> Result<Json<Value>, ApiError> {
    let types: Vec<Value> = OPERATION_CATALOG
        .iter()
        .map(|e| {
            json!({"type": e.name, "label": e.label, "identity_keys": e.identity_keys,
                   "expected_duration_seconds": e.expected_duration.as_secs()})
        })
        .collect();
    Ok(Json(json!({ "types": types })))
}
