//! The pages: `/runs` (filters, paging, badges, relative times), `/runs/{id}` (status, outcome,
//! progress, counts, failures, related links, context, timeline; live while active) and
//! `/legacy/{table}/{id}` (redirects to the run's page). Server-rendered, readable without
//! JavaScript; the one script only applies live updates.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use chrono::Utc;

use super::api::{list_page, parse_list_query, resolve_legacy, run_in_scope};
use super::auth::AuthError;
use super::error::ApiError;
use super::html::{badge, escape, page, relative_time};
use super::read_model;
use super::viewer::{authenticate, ViewerState};
use crate::domain::{RunOutcome, RunStatus, OPERATION_CATALOG};
use crate::store::viewer as store;

/// The stylesheet.
pub async fn css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("assets/viewer.css"),
    )
}

/// The live-update script.
pub async fn js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("assets/viewer.js"),
    )
}

/// The 401 page: how to get a link.
pub fn unauthorized(e: &AuthError) -> (StatusCode, Html<String>) {
    let body = format!(
        "<h1>Sign in</h1><p>{}</p><p>Ask for a viewer link, or create one on the service host with \
         <code>oprun token --workspace ID</code> and open the printed link.</p>",
        escape(&e.to_string())
    );
    (StatusCode::UNAUTHORIZED, Html(page("Sign in", "", &body)))
}

fn error_page(e: ApiError) -> Response {
    let body = format!(
        "<h1>{}</h1><p>{}</p><p><a href=\"/runs\">All runs</a></p>",
        escape(e.code),
        escape(&e.message)
    );
    (e.status, Html(page(e.code, "", &body))).into_response()
}

fn options(name: &str, values: &[(&str, &str)], selected: Option<&str>) -> String {
    let mut out = format!("<select name=\"{name}\"><option value=\"\">any</option>");
    for (value, label) in values {
        let sel = if Some(*value) == selected {
            " selected"
        } else {
            ""
        };
        out.push_str(&format!(
            "<option value=\"{}\"{sel}>{}</option>",
            escape(value),
            escape(label)
        ));
    }
    out.push_str("</select>");
    out
}

/// `GET /runs`
pub async fn list(
    State(state): State<ViewerState>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let claims = match authenticate(&state.keys, &headers) {
        Ok(c) => c,
        Err(e) => return unauthorized(&e).into_response(),
    };
    let query = match parse_list_query(&params) {
        Ok(q) => q,
        Err(e) => return error_page(e),
    };
    let (runs, next) = match list_page(&state, &claims.scope(), &query).await {
        Ok(p) => p,
        Err(e) => return error_page(e),
    };
    let types: Vec<(&str, &str)> = OPERATION_CATALOG
        .iter()
        .map(|e| (e.name, e.label))
        .collect();
    let statuses: Vec<(&str, &str)> = RunStatus::ALL
        .iter()
        .map(|s| (s.as_str(), s.as_str()))
        .collect();
    let outcomes: Vec<(&str, &str)> = RunOutcome::ALL
        .iter()
        .map(|s| (s.as_str(), s.as_str()))
        .collect();
    let f = &query.filter;
    let mut body =
        String::from("<h1>Runs</h1><form class=\"filters\" method=\"get\" action=\"/runs\">");
    body.push_str(&format!(
        "<label>Tenant<input name=\"tenant_id\" inputmode=\"numeric\" value=\"{}\"></label>",
        f.tenant_id.map(|t| t.to_string()).unwrap_or_default()
    ));
    body.push_str(&format!(
        "<label>Type{}</label>",
        options("type", &types, f.run_type.as_deref())
    ));
    body.push_str(&format!(
        "<label>Status{}</label>",
        options("status", &statuses, f.status.as_deref())
    ));
    body.push_str(&format!(
        "<label>Outcome{}</label>",
        options("outcome", &outcomes, f.outcome.as_deref())
    ));
    body.push_str("<button type=\"submit\">Filter</button></form>");
    body.push_str("<table><thead><tr><th>Run</th><th>Type</th><th>Tenant</th><th>Status</th><th>Outcome</th><th>Progress</th><th>Created</th></tr></thead><tbody>");
    let now = Utc::now();
    for r in &runs {
        let p = read_model::progress(&r.summary_counts);
        let progress = match p["percent"].as_f64() {
            Some(pc) => format!("{pc}%"),
            None => p["processed"].to_string(),
        };
        body.push_str(&format!(
            "<tr><td><a href=\"/runs/{id}\">#{id}</a></td><td>{label}</td><td>{tenant}</td><td>{status}</td><td>{outcome}</td><td>{progress}</td><td>{created}</td></tr>",
            id = r.id,
            label = escape(read_model::type_label(r.run_type)),
            tenant = r.tenant_id.map(|t| t.to_string()).unwrap_or_else(|| "workspace".into()),
            status = badge("status", r.status.as_str()),
            outcome = badge("outcome", r.outcome.as_str()),
            progress = escape(&progress),
            created = relative_time(r.created_at, now),
        ));
    }
    if runs.is_empty() {
        body.push_str("<tr><td colspan=\"7\">No runs.</td></tr>");
    }
    body.push_str("</tbody></table>");
    if let Some(cursor) = next {
        let mut pairs: Vec<(String, String)> = params
            .iter()
            .filter(|(k, _)| k.as_str() != "cursor" && k.as_str() != "token")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        pairs.sort();
        pairs.push(("cursor".into(), cursor));
        let qs = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        body.push_str(&format!(
            "<p><a rel=\"next\" href=\"/runs?{}\">Older runs →</a></p>",
            escape(&qs)
        ));
    }
    Html(page("Runs", "", &body)).into_response()
}

fn pretty(v: &impl serde::Serialize) -> String {
    escape(&serde_json::to_string_pretty(v).unwrap_or_default())
}

/// `GET /runs/{id}`
pub async fn show(
    State(state): State<ViewerState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let claims = match authenticate(&state.keys, &headers) {
        Ok(c) => c,
        Err(e) => return unauthorized(&e).into_response(),
    };
    let run = match run_in_scope(&state, &claims.scope(), &id).await {
        Ok(r) => r,
        Err(e) => return error_page(e),
    };
    let detail = match read_model::detail(&state.pool, &run).await {
        Ok(d) => d,
        Err(e) => return error_page(e.into()),
    };
    let events = match store::events_after(&state.pool, run.id, 0, super::api::MAX_EVENTS).await {
        Ok(e) => e,
        Err(e) => return error_page(e.into()),
    };
    let now = Utc::now();
    let p = &detail["progress"];
    let progress_text = match (p["total"].as_u64(), p["percent"].as_f64()) {
        (Some(t), Some(pc)) => format!("{} / {t} ({pc}%)", p["processed"]),
        (Some(t), None) => format!("{} / {t}", p["processed"]),
        _ => p["processed"].to_string(),
    };
    let percent = p["percent"].as_f64().unwrap_or(0.0);
    let mut body = format!(
        "<h1>{label} <small>#{id}</small></h1><p><span id=\"live\" class=\"live\"></span></p><dl>\
         <dt>Status</dt><dd>{status}</dd><dt>Outcome</dt><dd>{outcome}</dd>\
         <dt>Progress</dt><dd><progress id=\"progress-bar\" max=\"100\" value=\"{percent}\"></progress> <span id=\"progress-text\">{progress}</span></dd>\
         <dt>Workspace</dt><dd>{ws}</dd><dt>Tenant</dt><dd>{tenant}</dd>\
         <dt>Initiator</dt><dd>{initiator}</dd><dt>Created</dt><dd>{created}</dd><dt>Updated</dt><dd>{updated}</dd></dl>",
        label = escape(detail["label"].as_str().unwrap_or_default()),
        id = run.id,
        status = badge("status", run.status.as_str()).replace("data-status", "id=\"run-status\""),
        outcome = badge("outcome", run.outcome.as_str()).replace("data-outcome", "id=\"run-outcome\""),
        progress = escape(&progress_text),
        ws = run.workspace_id,
        tenant = run.tenant_id.map(|t| t.to_string()).unwrap_or_else(|| "workspace-scoped".into()),
        initiator = escape(run.initiator_name.as_deref().unwrap_or("")),
        created = relative_time(run.created_at, now),
        updated = relative_time(run.updated_at, now),
    );
    body.push_str(&format!(
        "<h2>Counts</h2><pre id=\"run-counts\">{}</pre>",
        pretty(&run.summary_counts)
    ));
    body.push_str(&format!(
        "<h2>Failures</h2><pre id=\"run-failures\">{}</pre>",
        pretty(&run.failure_summary.entries)
    ));
    body.push_str("<h2>Related</h2><ul>");
    for link in detail["related"].as_array().into_iter().flatten() {
        body.push_str(&format!(
            "<li>{}</li>",
            escape(link["label"].as_str().unwrap_or_default())
        ));
    }
    for legacy in detail["legacy"].as_array().into_iter().flatten() {
        body.push_str(&format!(
            "<li>Legacy {} row {}</li>",
            escape(legacy["table"].as_str().unwrap_or_default()),
            escape(&legacy["row"]["id"].to_string())
        ));
    }
    body.push_str("</ul>");
    body.push_str(&format!(
        "<h2>Context</h2><pre>{}</pre>",
        pretty(&run.context)
    ));
    body.push_str("<h2>Timeline</h2><ol id=\"timeline\">");
    for e in &events {
        let time = e.cloud_event["time"].as_str().unwrap_or_default();
        body.push_str(&format!(
            "<li>#{} {} · {}</li>",
            e.sequence,
            escape(&e.event_type),
            escape(time)
        ));
    }
    body.push_str("</ol>");
    let last = events.last().map(|e| e.sequence).unwrap_or(0);
    let attrs = format!(
        " data-run-id=\"{}\" data-live=\"{}\" data-last-sequence=\"{last}\"",
        run.id,
        run.is_active()
    );
    Html(page(
        detail["label"].as_str().unwrap_or("Run"),
        &attrs,
        &body,
    ))
    .into_response()
}

/// `GET /legacy/{table}/{id}`: to the run's page.
pub async fn legacy(
    State(state): State<ViewerState>,
    headers: HeaderMap,
    Path((table, id)): Path<(String, String)>,
) -> Response {
    let claims = match authenticate(&state.keys, &headers) {
        Ok(c) => c,
        Err(e) => return unauthorized(&e).into_response(),
    };
    match resolve_legacy(&state, &claims.scope(), &table, &id).await {
        Ok(run_id) => Redirect::to(&format!("/runs/{run_id}")).into_response(),
        Err(e) => error_page(e),
    }
}
