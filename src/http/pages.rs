//! The pages: `/runs` (filters, paging, badges, relative times), `/runs/{id}` (status, outcome,
//! progress, counts, failures, related links, context, timeline; live while active) and
//! `/legacy/{table}/{id}` (redirects to the run's page). Server-rendered, readable without
//! JavaScript; the one script only applies live updates.

use std::collections::HashMap;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use chrono::{SecondsFormat, Utc};
use serde::de::DeserializeOwned;

use super::api::{list_page, parse_list_query, resolve_legacy, run_in_scope};
use super::auth::AuthError;
use super::error::{ApiError, ApiPath, ApiQuery};
use super::html::{badge, escape, page, relative_time};
use super::read_model;
use super::viewer::{authenticate, ViewerState};
use crate::domain::{RunOutcome, RunStatus, OPERATION_CATALOG};
use crate::store::viewer::{self as store, TimelineWindow};

/// Events on one page of a run's timeline; older and newer ones are a link away.
pub const TIMELINE_PAGE: i64 = 100;

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

/// The page a token link shows to a browser already signed in as someone else (or with another
/// scope): who each sign-in is (never the tokens themselves), "stay" (the page without the
/// link's token, on the current sign-in) and "switch" (a POST of the link's token with `proof`,
/// see [`super::viewer::switch_sign_in`]). Not stored by caches: the form holds the token.
pub fn choose_sign_in(
    current: &super::auth::Claims,
    link: &super::auth::Claims,
    link_token: &str,
    proof: &str,
    target: &str,
) -> Response {
    let who = |c: &super::auth::Claims| c.sub.as_deref().unwrap_or("an unnamed bearer").to_owned();
    let describe = |c: &super::auth::Claims| {
        let tenants = match &c.tenant_ids {
            None => "all tenants".to_owned(),
            Some(t) if t.is_empty() => "no tenant".to_owned(),
            Some(t) => format!(
                "tenants {}",
                t.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
            ),
        };
        let until = chrono::DateTime::from_timestamp(c.exp.min(i64::MAX as u64) as i64, 0)
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
            .unwrap_or_default();
        format!(
            "<strong>{}</strong> · workspace {} · {} · until {}",
            escape(&who(c)),
            c.workspace_id,
            escape(&tenants),
            escape(&until)
        )
    };
    let body = format!(
        "<h1>Which sign-in?</h1>\
         <p>This browser is signed in as <span id=\"current-sign-in\">{}</span>.</p>\
         <p>The link you opened signs in as <span id=\"link-sign-in\">{}</span>.</p>\
         <p>A link never replaces a sign-in by itself: choose one.</p>\
         <p><a id=\"stay\" href=\"{}\">Stay signed in as {}</a></p>\
         <form id=\"switch\" method=\"post\" action=\"/sign-in\">\
         <input type=\"hidden\" name=\"token\" value=\"{}\">\
         <input type=\"hidden\" name=\"proof\" value=\"{}\">\
         <input type=\"hidden\" name=\"next\" value=\"{}\">\
         <button type=\"submit\">Switch to this link's sign-in ({})</button></form>",
        describe(current),
        describe(link),
        escape(target),
        escape(&who(current)),
        escape(link_token),
        escape(proof),
        escape(target),
        escape(&who(link)),
    );
    (
        StatusCode::OK,
        [
            (header::CACHE_CONTROL, "no-store"),
            // So that its form's POST carries this origin in `Origin` (under `no-referrer`
            // browsers send `Origin: null`); other sites still get no referrer.
            (header::REFERRER_POLICY, "same-origin"),
        ],
        Html(page("Which sign-in?", "", &body)),
    )
        .into_response()
}

/// The error page of `e`: its status, code and message.
pub fn error_page(e: ApiError) -> Response {
    let body = format!(
        "<h1>{}</h1><p>{}</p><p><a href=\"/runs\">All runs</a></p>",
        escape(e.code),
        escape(&e.message)
    );
    (e.status, Html(page(e.code, "", &body))).into_response()
}

/// An error answered as a page (the API's [`ApiError`] rendered by [`error_page`]).
#[derive(Debug)]
pub struct PageError(pub ApiError);

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        error_page(self.0)
    }
}

impl From<PathRejection> for PageError {
    fn from(r: PathRejection) -> Self {
        Self(r.into())
    }
}

impl From<QueryRejection> for PageError {
    fn from(r: QueryRejection) -> Self {
        Self(r.into())
    }
}

/// axum's `Path`, rejected with the error page.
#[derive(Debug)]
pub struct PagePath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PagePath<T> {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let ApiPath(value) = ApiPath::<T>::from_request_parts(parts, state)
            .await
            .map_err(PageError)?;
        Ok(Self(value))
    }
}

/// axum's `Query`, rejected with the error page.
#[derive(Debug)]
pub struct PageQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for PageQuery<T> {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let ApiQuery(value) = ApiQuery::<T>::from_request_parts(parts, state)
            .await
            .map_err(PageError)?;
        Ok(Self(value))
    }
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
    PageQuery(params): PageQuery<HashMap<String, String>>,
) -> Response {
    let claims = match authenticate(&state.keys, &headers) {
        Ok(c) => c,
        Err(e) => return unauthorized(&e).into_response(),
    };
    let query = match parse_list_query(&params) {
        Ok(q) => q,
        Err(e) => return error_page(e),
    };
    let now = Utc::now();
    let rendered = list_page(&state, &claims.scope(), &query, |r| {
        let row = list_row(&r.run, now);
        let size = row.len();
        (row, size)
    })
    .await;
    let (runs, next) = match rendered {
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
    for row in &runs {
        body.push_str(row);
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

/// One row of the run list.
fn list_row(r: &crate::domain::OperationRun, now: chrono::DateTime<Utc>) -> String {
    let p = read_model::progress(&r.summary_counts);
    let progress = match p.percent {
        Some(pc) => format!("{pc}%"),
        None => p.processed.to_string(),
    };
    format!(
        "<tr><td><a href=\"/runs/{id}\">#{id}</a></td><td>{label}</td><td>{tenant}</td><td>{status}</td><td>{outcome}</td><td>{progress}</td><td>{created}</td></tr>",
        id = r.id,
        label = escape(read_model::type_label(r.run_type)),
        tenant = r.tenant_id.map(|t| t.to_string()).unwrap_or_else(|| "workspace".into()),
        status = badge("status", r.status.as_str()),
        outcome = badge("outcome", r.outcome.as_str()),
        progress = escape(&progress),
        created = relative_time(r.created_at, now),
    )
}

/// Which part of the timeline `?before=SEQ` / `?after=SEQ` asks for (neither: the newest).
fn timeline_window(params: &HashMap<String, String>) -> Result<TimelineWindow, ApiError> {
    let seq = |k: &str| -> Result<Option<i64>, ApiError> {
        params
            .get(k)
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| ApiError::invalid(format!("{k} must be an event sequence")))
            })
            .transpose()
    };
    Ok(match (seq("before")?, seq("after")?) {
        (Some(_), Some(_)) => return Err(ApiError::invalid("give before or after, not both")),
        (Some(b), None) => TimelineWindow::Before(b),
        (None, Some(a)) => TimelineWindow::After(a),
        (None, None) => TimelineWindow::Newest,
    })
}

fn pretty(v: &impl serde::Serialize) -> String {
    escape(&serde_json::to_string_pretty(v).unwrap_or_default())
}

/// `GET /runs/{id}` (`?before=SEQ` / `?after=SEQ`: an older or newer part of the timeline)
pub async fn show(
    State(state): State<ViewerState>,
    headers: HeaderMap,
    PagePath(id): PagePath<String>,
    PageQuery(params): PageQuery<HashMap<String, String>>,
) -> Response {
    let claims = match authenticate(&state.keys, &headers) {
        Ok(c) => c,
        Err(e) => return unauthorized(&e).into_response(),
    };
    let run = match run_in_scope(&state, &claims.scope(), &id).await {
        Ok(r) => r,
        Err(e) => return error_page(e),
    };
    let detail = match read_model::detail(&state.pool, run.clone(), Utc::now()).await {
        Ok(d) => serde_json::to_value(d).expect("a run's detail always serialises"),
        Err(e) => return error_page(e.into()),
    };
    let window = match timeline_window(&params) {
        Ok(w) => w,
        Err(e) => return error_page(e),
    };
    // One more than a page: whether there is more beyond it in the direction read.
    let mut events = match store::timeline(&state.pool, run.id, window, TIMELINE_PAGE + 1).await {
        Ok(e) => e,
        Err(e) => return error_page(e.into()),
    };
    let beyond = events.len() as i64 > TIMELINE_PAGE;
    if beyond {
        match window {
            TimelineWindow::After(_) => events.truncate(TIMELINE_PAGE as usize),
            _ => {
                events.remove(0);
            }
        }
    }
    let (older, newer) = match window {
        TimelineWindow::Newest => (beyond, false),
        TimelineWindow::Before(_) => (beyond, true),
        TimelineWindow::After(_) => (!events.is_empty(), beyond),
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
    body.push_str("<h2>Timeline</h2>");
    let (first, last) = (
        events.first().map(|e| e.sequence),
        events.last().map(|e| e.sequence).unwrap_or(0),
    );
    let nav = timeline_nav(
        run.id,
        window,
        older.then_some(first).flatten(),
        newer.then_some(last),
    );
    body.push_str(&nav);
    body.push_str("<ol id=\"timeline\">");
    for e in &events {
        body.push_str(&format!(
            "<li value=\"{seq}\">#{seq} {} · {}</li>",
            escape(&e.event_type),
            escape(&e.created_at.to_rfc3339_opts(SecondsFormat::Micros, true)),
            seq = e.sequence,
        ));
    }
    body.push_str("</ol>");
    body.push_str(&nav);
    // Only the newest part of the timeline follows the run live.
    let live = run.is_active() && window == TimelineWindow::Newest;
    let attrs = format!(
        " data-run-id=\"{}\" data-live=\"{live}\" data-last-sequence=\"{last}\"",
        run.id,
    );
    Html(page(
        detail["label"].as_str().unwrap_or("Run"),
        &attrs,
        &body,
    ))
    .into_response()
}

/// The links to the older and newer parts of a timeline (plain links: they work without
/// JavaScript), and to the newest when not showing it.
fn timeline_nav(
    run_id: i64,
    window: TimelineWindow,
    older_than: Option<i64>,
    newer_than: Option<i64>,
) -> String {
    let mut links = Vec::new();
    if let Some(first) = older_than {
        links.push(format!(
            "<a rel=\"prev\" href=\"/runs/{run_id}?before={first}\">← Older events</a>"
        ));
    }
    if let Some(last) = newer_than {
        links.push(format!(
            "<a rel=\"next\" href=\"/runs/{run_id}?after={last}\">Newer events →</a>"
        ));
    }
    if window != TimelineWindow::Newest {
        links.push(format!("<a href=\"/runs/{run_id}\">Newest events</a>"));
    }
    if links.is_empty() {
        return String::new();
    }
    format!("<p class=\"timeline-nav\">{}</p>", links.join(" · "))
}

/// `GET /legacy/{table}/{id}`: to the run's page.
pub async fn legacy(
    State(state): State<ViewerState>,
    headers: HeaderMap,
    PagePath((table, id)): PagePath<(String, String)>,
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
