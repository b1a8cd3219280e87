//! The pages: `/runs` (search, filters, a summary line, failures, stalled badges, rows of
//! active runs that refresh themselves), `/runs/{id}` (names, times and durations, progress
//! with an ETA, counts, failures by code, context with its related links, a timeline of what
//! each event changed, a banner once a running run stops moving, the runs of its identity and
//! the dispatches deduplicated onto each, the actions recorded on it and, for tokens that may
//! act, its Cancel, Retry and Fail forms; live while active) and
//! `/legacy/{table}/{id}` (redirects to the run's page). maud templates: every value from the
//! data is escaped by the template engine, so none reaches the HTML unescaped by omission.
//! Server-rendered, readable without JavaScript; the one script only formats times in the
//! browser's time zone, keeps relative times ticking and applies live updates (as text only).

use std::collections::HashMap;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use maud::{html, Markup};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::api::{list_page, parse_list_query, resolve_legacy, run_in_scope};
use super::auth::{AuthError, Claims};
use super::claims::{request_token, PageClaims, SignInRequired};
use super::error::{ApiError, ApiPath, ApiQuery};
use super::html::{
    badge, duration, exact_time, page, relative_time, rfc3339, short_duration, BodyData,
};
use super::read_model;
use super::run_parts;
use super::state::ViewerState;
use crate::domain::failure_cap::FailureSummary;
use crate::domain::{OperationRun, RunOutcome, RunStatus, OPERATION_CATALOG};
use crate::store::viewer::{self as store, ListSummary, TimelineChange, TimelineWindow};

/// Events on one page of a run's timeline; older and newer ones are a link away.
pub const TIMELINE_PAGE: i64 = 100;

/// Most recorded actions the run page lists (the newest; `oprun runs show` lists all).
pub const RUN_ACTIONS: i64 = 20;

/// Most failure codes a row of the list names (the count covers all).
pub const LIST_FAILURE_CODES: usize = 5;

/// The stylesheet.
pub async fn css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("assets/viewer.css"),
    )
}

/// The page script.
pub async fn js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("assets/viewer.js"),
    )
}

/// A whole page as HTML.
pub fn html_page(title: &str, body: &BodyData, content: Markup) -> Html<String> {
    Html(page(title, body, content).into_string())
}

/// Where the token a page was refused for came from: a link's `?token=` (the person followed
/// a link) or the request itself (its cookie or `Authorization`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFrom {
    /// `?token=` of a link just followed.
    Link,
    /// The sign-in cookie or a bearer header (or none at all).
    Request,
}

/// The 401 page. It speaks first to the person who followed a link (an expired or broken link
/// is opened again from the platform), then, apart, to operators (how to mint a link).
pub fn unauthorized(e: &AuthError, from: TokenFrom) -> (StatusCode, Html<String>) {
    let (heading, advice) = match (from, e) {
        (TokenFrom::Link, AuthError::Expired) => (
            "This link has expired",
            "Open the run again from the platform: its “View run” link signs you in afresh.",
        ),
        (TokenFrom::Link, _) => (
            "This link does not work",
            "It is not a valid link to this viewer. Open the run again from the platform.",
        ),
        (TokenFrom::Request, AuthError::Expired) => (
            "Your sign-in has expired",
            "Open the run again from the platform: its “View run” link signs you in afresh.",
        ),
        (TokenFrom::Request, AuthError::Missing) => (
            "Sign in",
            "This page is opened through a link: follow “View run” on the run in the platform.",
        ),
        (TokenFrom::Request, _) => (
            "Sign in again",
            "This browser's sign-in is not valid here. Open the run again from the platform.",
        ),
    };
    let body = maud::html! {
        h1 id="sign-in-heading" { (heading) }
        p id="sign-in-advice" { (advice) }
        section id="for-operators" class="aside" {
            h2 { "For operators" }
            p { "Why: " (e.to_string()) "." }
            p {
                "On the service host, " code { "oprun token --workspace ID" }
                " (with " code { "--tenant ID" } " for one tenant, " code { "--ttl 1h" }
                " for its lifetime) prints a token and a link that signs a browser in. A platform \
                 mints its own links with the secret the viewer was started with (" code { "--api-secret" } ")."
            }
        }
    };
    (
        StatusCode::UNAUTHORIZED,
        html_page("Sign in", &BodyData::default(), body),
    )
}

/// The page a token link shows to a browser already signed in as someone else (or with another
/// scope): who each sign-in is (never the tokens themselves), "stay" (the page without the
/// link's token, on the current sign-in) and "switch" (a POST of the link's token with `proof`,
/// see [`super::viewer::switch_sign_in`]). Not stored by caches: the form holds the token.
pub fn choose_sign_in(
    current: &Claims,
    link: &Claims,
    link_token: &str,
    proof: &str,
    target: &str,
) -> Response {
    let who = |c: &Claims| c.sub.as_deref().unwrap_or("an unnamed bearer").to_owned();
    let describe = |c: &Claims| {
        let tenants = match &c.tenant_ids {
            None => "all tenants".to_owned(),
            Some(t) if t.is_empty() => "no tenant".to_owned(),
            Some(t) => format!(
                "tenants {}",
                t.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
            ),
        };
        let until = DateTime::from_timestamp(c.exp.min(i64::MAX as u64) as i64, 0)
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
            .unwrap_or_default();
        html! {
            strong { (who(c)) } " · workspace " (c.workspace_id) " · " (tenants)
            @if c.may_operate() { " · may cancel, retry and fail runs" } " · until " (until)
        }
    };
    let body = html! {
        h1 { "Which sign-in?" }
        p { "This browser is signed in as " span id="current-sign-in" { (describe(current)) } "." }
        p { "The link you opened signs in as " span id="link-sign-in" { (describe(link)) } "." }
        p { "A link never replaces a sign-in by itself: choose one." }
        p { a id="stay" href=(target) { "Stay signed in as " (who(current)) } }
        form id="switch" method="post" action="/sign-in" {
            input type="hidden" name="token" value=(link_token);
            input type="hidden" name="proof" value=(proof);
            input type="hidden" name="next" value=(target);
            button type="submit" { "Switch to this link's sign-in (" (who(link)) ")" }
        }
    };
    (
        StatusCode::OK,
        [
            (header::CACHE_CONTROL, "no-store"),
            // So that its form's POST carries this origin in `Origin` (under `no-referrer`
            // browsers send `Origin: null`); other sites still get no referrer.
            (header::REFERRER_POLICY, "same-origin"),
        ],
        html_page("Which sign-in?", &BodyData::default(), body),
    )
        .into_response()
}

/// The error page of `e`: its status, code and message.
pub fn error_page(e: ApiError) -> Response {
    let body = html! {
        h1 { (e.code) }
        p { (e.message) }
        p { a href="/runs" { "All runs" } }
    };
    (e.status, html_page(e.code, &BodyData::default(), body)).into_response()
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

fn options(name: &str, values: &[(&str, &str)], selected: Option<&str>) -> Markup {
    html! {
        select name=(name) {
            option value="" { "any" }
            @for (value, label) in values {
                option value=(value) selected[Some(*value) == selected] { (label) }
            }
        }
    }
}

/// A run's failures grouped by code, the stored entries and the overflow counted together,
/// largest first (ties by code), and their total.
pub fn failures_by_code(summary: &FailureSummary) -> (Vec<(String, u64)>, u64) {
    let mut by_code: HashMap<&str, u64> = HashMap::new();
    for f in &summary.entries {
        *by_code.entry(f.code.as_str()).or_default() += 1;
    }
    for (code, n) in &summary.overflow {
        *by_code.entry(code.as_str()).or_default() += n;
    }
    let mut codes: Vec<(String, u64)> = by_code
        .into_iter()
        .map(|(c, n)| (c.to_owned(), n))
        .collect();
    codes.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let total = codes.iter().map(|(_, n)| n).sum();
    (codes, total)
}

/// Seconds since the run last changed, and whether it is stalled: running, and idle for longer
/// than its type's expected duration.
pub fn idle_and_stalled(run: &OperationRun, now: DateTime<Utc>) -> (i64, bool) {
    let idle = (now - run.updated_at).num_seconds().max(0);
    let expected = run.run_type.catalog().expected_duration.as_secs() as i64;
    (idle, run.status == RunStatus::Running && idle > expected)
}

/// "12 / 40 (30%)", "12 / 40", "12".
fn progress_text(counts: &crate::domain::SummaryCounts) -> (String, Option<f64>) {
    let p = read_model::progress(counts);
    let text = match (p.total, p.percent) {
        (Some(t), Some(pc)) => format!("{} / {t} ({pc}%)", p.processed),
        (Some(t), None) => format!("{} / {t}", p.processed),
        _ => p.processed.to_string(),
    };
    (text, p.percent)
}

/// One row of the run list, as read (names are looked up once the page is read).
struct ListRow {
    id: i64,
    label: &'static str,
    tenant_id: Option<i64>,
    status: RunStatus,
    outcome: RunOutcome,
    progress: String,
    failures: u64,
    codes: Vec<String>,
    created_at: DateTime<Utc>,
    stalled: bool,
}

impl ListRow {
    fn of(r: &OperationRun, now: DateTime<Utc>) -> (Self, usize) {
        let (codes, failures) = failures_by_code(&r.failure_summary);
        let codes: Vec<String> = codes
            .into_iter()
            .take(LIST_FAILURE_CODES)
            .map(|(c, _)| c)
            .collect();
        let size = 600 + codes.iter().map(String::len).sum::<usize>();
        let row = Self {
            id: r.id,
            label: read_model::type_label(r.run_type),
            tenant_id: r.tenant_id,
            status: r.status,
            outcome: r.outcome,
            progress: progress_text(&r.summary_counts).0,
            failures,
            codes,
            created_at: r.created_at,
            stalled: idle_and_stalled(r, now).1,
        };
        (row, size)
    }
}

/// The list page's own parameters, turned into the API's: `from` and `to` (dates, UTC; `to`
/// inclusive) become `created_after` and `created_before`.
pub fn list_params(params: &HashMap<String, String>) -> Result<HashMap<String, String>, ApiError> {
    let mut api = params.clone();
    let day = |k: &str| -> Result<Option<NaiveDate>, ApiError> {
        params
            .get(k)
            .filter(|v| !v.is_empty())
            .map(|v| {
                NaiveDate::parse_from_str(v, "%Y-%m-%d")
                    .map_err(|_| ApiError::invalid(format!("{k} must be a date (YYYY-MM-DD)")))
            })
            .transpose()
    };
    let midnight = |d: NaiveDate| rfc3339(d.and_hms_opt(0, 0, 0).expect("midnight").and_utc());
    if let Some(from) = day("from")? {
        api.insert("created_after".into(), midnight(from));
    }
    if let Some(to) = day("to")? {
        let next = to
            .succ_opt()
            .ok_or_else(|| ApiError::invalid("to is too late"))?;
        api.insert("created_before".into(), midnight(next));
    }
    api.remove("from");
    api.remove("to");
    Ok(api)
}

/// The list page's filter as given (without its page position or a sign-in token), sorted.
pub fn filter_pairs(params: &HashMap<String, String>) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| k.as_str() != "cursor" && k.as_str() != "token")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    pairs.sort();
    pairs
}

/// "120 runs, 3 failed, 2 running" (of the newest [`store::SUMMARY_CAP`] past it).
fn summary_line(s: &ListSummary) -> String {
    let runs = match (s.capped, s.runs) {
        (true, n) => format!("More than {n} runs (of the newest {n}:"),
        (false, 1) => "1 run".to_owned(),
        (false, n) => format!("{n} runs"),
    };
    let tail = if s.capped { ")" } else { "" };
    format!("{runs}, {} failed, {} running{tail}", s.failed, s.running)
}

/// `GET /runs`
pub async fn list(
    State(state): State<ViewerState>,
    PageClaims(claims): PageClaims,
    PageQuery(params): PageQuery<HashMap<String, String>>,
) -> Result<Response, PageError> {
    let query = parse_list_query(&list_params(&params)?)?;
    let now = Utc::now();
    let scope = claims.scope();
    let (rows, next) = list_page(&state, &scope, &query, |r| ListRow::of(&r.run, now)).await?;
    let summary = store::summarise_listed_runs(&state.pool, &scope, &query.filter)
        .await
        .map_err(ApiError::from)?;
    let mut tenant_ids: Vec<i64> = rows.iter().filter_map(|r| r.tenant_id).collect();
    tenant_ids.sort_unstable();
    tenant_ids.dedup();
    let names: HashMap<i64, String> =
        store::tenant_names(&state.pool, scope.workspace_id, &tenant_ids)
            .await
            .map_err(ApiError::from)?
            .into_iter()
            .collect();
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
    let param = |k: &str| params.get(k).cloned().unwrap_or_default();
    let filter_pairs = filter_pairs(&params);
    let next_link = next.map(|cursor| {
        let mut pairs = filter_pairs.clone();
        pairs.push(("cursor".into(), cursor));
        let qs = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        format!("/runs?{qs}")
    });
    let body = html! {
        h1 { "Runs" }
        form class="filters" method="get" action="/runs" {
            label class="search" { "Search"
                input type="search" name="q" value=(param("q"))
                    placeholder="#123, a type, who started it";
            }
            label { "Tenant"
                input name="tenant_id" inputmode="numeric"
                    value=(f.tenant_id.map(|t| t.to_string()).unwrap_or_default());
            }
            label { "Type" (options("type", &types, f.run_type.as_deref())) }
            label { "Status" (options("status", &statuses, f.status.as_deref())) }
            label { "Outcome" (options("outcome", &outcomes, f.outcome.as_deref())) }
            label { "From (UTC)" input type="date" name="from" value=(param("from")); }
            label { "To (UTC)" input type="date" name="to" value=(param("to")); }
            button type="submit" { "Filter" }
        }
        p id="summary" class="summary" { (summary_line(&summary)) }
        @if claims.may_operate() { (run_parts::bulk_forms(&filter_pairs)) }
        div class="scroll" {
            table class="runs" {
                thead { tr {
                    th { "Run" } th { "Type" } th { "Tenant" } th { "Status" } th { "Outcome" }
                    th { "Progress" } th { "Failures" } th { "Created" }
                } }
                tbody {
                    @for r in &rows {
                        @let active = r.status != RunStatus::Completed;
                        tr data-active-run=[active.then_some(r.id)] {
                            td { a href={ "/runs/" (r.id) } { "#" (r.id) } }
                            td { (r.label) }
                            td { @match r.tenant_id {
                                Some(t) => { (names.get(&t).cloned().unwrap_or_else(|| format!("tenant {t}"))) }
                                None => { "workspace" }
                            } }
                            td class="run-status" {
                                (badge("status", r.status.as_str(), None))
                                @if r.stalled { " " span class="badge stalled" { "stalled" } }
                            }
                            td class="run-outcome" { (badge("outcome", r.outcome.as_str(), None)) }
                            td class="run-progress" { (r.progress) }
                            td class="run-failures" {
                                @if r.failures > 0 {
                                    (r.failures) " "
                                    span class="codes" { (r.codes.join(", ")) }
                                }
                            }
                            td { (relative_time(r.created_at, now)) }
                        }
                    }
                    @if rows.is_empty() { tr { td colspan="8" { "No runs." } } }
                }
            }
        }
        @if let Some(href) = next_link {
            p { a rel="next" href=(href) { "Older runs →" } }
        }
    };
    let data = BodyData {
        nav: if claims.may_work_dead_letters() {
            vec![("/dead-letters", "Dead letters")]
        } else {
            Vec::new()
        },
        ..BodyData::default()
    };
    Ok(html_page("Runs", &data, body).into_response())
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

/// A value of the context or of a failure's item as text: a string as itself, anything else
/// as compact JSON.
fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// What `e` changed since `before` (the run as the event before it left it; `None` before the
/// first event): "status running", "+3 processed", "+2 failures", "outcome failed".
pub fn changes(before: Option<&TimelineChange>, e: &TimelineChange) -> Vec<String> {
    let mut out = Vec::new();
    let prev_status = before.and_then(|b| b.status.as_deref());
    if let Some(s) = e.status.as_deref().filter(|s| Some(*s) != prev_status) {
        out.push(format!("status {s}"));
    }
    let empty = serde_json::Map::new();
    let counts = |c: Option<&TimelineChange>| {
        c.and_then(|c| c.counts.as_ref())
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_else(|| empty.clone())
    };
    let (old, new) = (counts(before), counts(Some(e)));
    for (key, value) in &new {
        let was = old.get(key).and_then(Value::as_i64).unwrap_or(0);
        let delta = value.as_i64().unwrap_or(0) - was;
        if delta != 0 {
            out.push(format!("{delta:+} {key}"));
        }
    }
    let added = e.failures - before.map_or(0, |b| b.failures);
    if added != 0 {
        let noun = if added.abs() == 1 {
            "failure"
        } else {
            "failures"
        };
        out.push(format!("{added:+} {noun}"));
    }
    let prev_outcome = before.and_then(|b| b.outcome.as_deref());
    if let Some(o) = e
        .outcome
        .as_deref()
        .filter(|o| Some(*o) != prev_outcome && *o != "pending")
    {
        out.push(format!("outcome {o}"));
    }
    out
}

/// Seconds left at the pace so far, while a started run with a `total` has done part of it.
fn eta_seconds(run: &OperationRun, now: DateTime<Utc>) -> Option<i64> {
    let started = run
        .started_at
        .filter(|_| run.status == RunStatus::Running)?;
    let p = read_model::progress(&run.summary_counts);
    let (done, total) = (p.processed, p.total?);
    (done > 0 && done < total).then_some(())?;
    let elapsed = (now - started).num_seconds().max(0) as f64;
    Some((elapsed * (total - done) as f64 / done as f64).round() as i64)
}

/// The run's context as key/value rows; a key that names a related record (as
/// [`read_model::related`] found it) links to the runs about the same record.
fn context_rows(context: &Value, related: &[Value]) -> Markup {
    let empty = serde_json::Map::new();
    let object = context.as_object().unwrap_or(&empty);
    html! {
        table id="run-context" class="kv" {
            tbody {
                @for (key, value) in object {
                    tr {
                        th scope="row" { (key) }
                        td {
                            (value_text(value))
                            @if let Some(link) = related.iter().find(|l| l["key"].as_str() == Some(key)) {
                                @let href = format!("/runs?{}", url::form_urlencoded::Serializer::new(String::new())
                                    .append_pair(&format!("context.{key}"), &value_text(value))
                                    .finish());
                                " · " a class="related" href=(href) { "runs of " (link["label"].as_str().unwrap_or_default()) }
                            }
                        }
                    }
                }
                @if object.is_empty() { tr { td colspan="2" { "No context." } } }
            }
        }
    }
}

/// `GET /runs/{id}` (`?before=SEQ` / `?after=SEQ`: an older or newer part of the timeline)
pub async fn show(
    State(state): State<ViewerState>,
    PageClaims(claims): PageClaims,
    headers: HeaderMap,
    PagePath(id): PagePath<String>,
    PageQuery(params): PageQuery<HashMap<String, String>>,
) -> Result<Response, PageError> {
    let run = run_in_scope(&state, &claims.scope(), &id).await?;
    let window = timeline_window(&params)?;
    let now = Utc::now();
    let scope = claims.scope();
    let (detail, names, events, identity, actions) = tokio::try_join!(
        read_model::detail(&state.pool, run.clone(), now),
        store::workspace_and_tenant_names(&state.pool, run.workspace_id, run.tenant_id),
        // One more than a page: whether there is more beyond it in the direction read (and,
        // reading back, the event before the first shown, to say what that one changed).
        store::timeline_changes(&state.pool, run.id, window, TIMELINE_PAGE + 1),
        read_model::identity_runs(&state.pool, &scope, run.run_identity_hash.as_str()),
        store::recorded_actions(&state.pool, run.id, RUN_ACTIONS),
    )
    .map_err(ApiError::from)?;
    let mut identity_ids: Vec<i64> = identity.runs.iter().map(|r| r.run.id).collect();
    identity_ids.push(run.id);
    let deduplicated = read_model::deduplicated_onto(&state.pool, &identity_ids)
        .await
        .map_err(ApiError::from)?;
    let (workspace_name, tenant_name) = names;
    let mut events = events;
    let beyond = events.len() as i64 > TIMELINE_PAGE;
    let mut baseline = None;
    if beyond {
        match window {
            TimelineWindow::After(_) => events.truncate(TIMELINE_PAGE as usize),
            _ => baseline = Some(events.remove(0)),
        }
    }
    if let (TimelineWindow::After(_), Some(first)) = (window, events.first()) {
        baseline = store::timeline_changes(
            &state.pool,
            run.id,
            TimelineWindow::Before(first.sequence),
            1,
        )
        .await
        .map_err(ApiError::from)?
        .pop();
    }
    let (older, newer) = match window {
        TimelineWindow::Newest => (beyond, false),
        TimelineWindow::Before(_) => (beyond, true),
        TimelineWindow::After(_) => (!events.is_empty(), beyond),
    };
    let label = read_model::type_label(run.run_type);
    let (progress, percent) = progress_text(&run.summary_counts);
    let (by_code, failures_total) = failures_by_code(&run.failure_summary);
    let (idle, stalled) = idle_and_stalled(&run, now);
    let expected = run.run_type.catalog().expected_duration.as_secs() as i64;
    let elapsed = run
        .started_at
        .map(|s| (run.completed_at.unwrap_or(now) - s).num_seconds().max(0));
    let eta = eta_seconds(&run, now);
    // The related links and legacy rows as the API shows them.
    let related: Vec<Value> = detail
        .related
        .iter()
        .map(|r| serde_json::to_value(r).expect("a link serialises"))
        .collect();
    let legacy: Vec<Value> = detail
        .legacy
        .iter()
        .map(|r| serde_json::to_value(r).expect("a row serialises"))
        .collect();
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
    let stored = run.failure_summary.entries.len() as u64;
    // `?acted=ID`: the record of the action this page's form just carried out.
    let acted = params.get("acted").and_then(|a| a.parse::<i64>().ok());
    // The forms' anti-forgery value, bound to this sign-in (decision 0072).
    let proof = claims.may_operate().then(|| {
        state
            .keys
            .action_proof(&request_token(&headers).unwrap_or_default())
    });
    let body = html! {
        h1 { (label) " " small { "#" (run.id) } }
        @if let Some(a) = acted.and_then(|id| actions.iter().find(|a| a.id == id)) {
            (run_parts::action_result(a))
        }
        p { span id="live" class="live" {} }
        p id="stalled" class="banner" role="status" hidden[!stalled] {
            @if stalled {
                "No progress for " (short_duration(idle)) " (usually takes about " (short_duration(expected)) ")"
            }
        }
        dl class="facts" {
            dt { "Status" } dd { (badge("status", run.status.as_str(), Some("run-status"))) }
            dt { "Outcome" } dd { (badge("outcome", run.outcome.as_str(), Some("run-outcome"))) }
            dt { "Progress" } dd {
                progress id="progress-bar" max="100" value=(percent.unwrap_or(0.0)) {}
                " " span id="progress-text" { (progress) }
                " " span id="eta" { @if let Some(s) = eta { "about " (short_duration(s)) " left" } }
            }
            dt { "Type" } dd { (label) " " code { (run.run_type.as_str()) } }
            dt { "Workspace" } dd id="workspace-name" {
                (workspace_name.unwrap_or_else(|| format!("workspace {}", run.workspace_id)))
            }
            dt { "Tenant" } dd id="tenant-name" {
                @match (run.tenant_id, tenant_name) {
                    (Some(_), Some(name)) => { (name) }
                    (Some(t), None) => { "tenant " (t) }
                    (None, _) => { "none (a workspace run)" }
                }
            }
            dt { "Initiator" } dd id="initiator" {
                (run.initiator_name.as_deref().unwrap_or("—"))
                @if let Some(u) = run.user_id { " " small { "(user " (u) ")" } }
            }
            dt { "Created" } dd { (exact_time(run.created_at, now)) }
            dt { "Started" } dd {
                @if let Some(t) = run.started_at { (exact_time(t, now)) } @else { "not yet" }
            }
            dt { "Completed" } dd {
                @if let Some(t) = run.completed_at { (exact_time(t, now)) } @else { "not yet" }
            }
            dt { "Duration" } dd {
                @match (elapsed, run.completed_at, run.started_at) {
                    (Some(s), None, Some(since)) => {
                        span id="elapsed" data-elapsed-since=(rfc3339(since)) { (duration(s)) }
                        " so far"
                    }
                    (Some(s), _, _) => { span id="elapsed" { (duration(s)) } }
                    _ => { "—" }
                }
            }
            dt { "Usually takes" } dd { "about " (short_duration(expected)) }
            dt { "Last change" } dd id="last-change" { (relative_time(run.updated_at, now)) }
            dt { "Identity" } dd {
                a href={ "/runs?identity=" (run.run_identity_hash.as_str()) } { "runs of this identity" }
            }
        }
        h2 { "Counts" }
        table id="run-counts" class="kv" {
            tbody {
                @for key in crate::domain::summary_counts::SUMMARY_COUNT_KEYS {
                    @if run.summary_counts.contains(key) {
                        tr { th scope="row" { (key) } td { (run.summary_counts.get(key)) } }
                    }
                }
                @if run.summary_counts.is_empty() { tr { td colspan="2" { "No counts yet." } } }
            }
        }
        h2 { "Failures" }
        p id="failures-total" {
            (failures_total) @if failures_total == 1 { " failure" } @else { " failures" }
            @if failures_total > stored { " (" (stored) " stored below, the rest counted by code)" }
        }
        div class="scroll" {
            table id="failures-by-code" {
                thead { tr { th { "Code" } th { "Count" } } }
                tbody { @for (code, n) in &by_code { tr { td { code { (code) } } td { (n) } } } }
            }
        }
        div class="scroll" {
            table id="run-failures" {
                thead { tr { th { "Code" } th { "Message" } th { "Item" } } }
                tbody {
                    @for f in &run.failure_summary.entries {
                        tr {
                            td { code { (f.code) } @if let Some(r) = &f.reason_code { " " small { (r) } } }
                            td { (f.message) }
                            td { @if let Some(item) = &f.item { (value_text(item)) } }
                        }
                    }
                }
            }
        }
        h2 { "Context" }
        div class="scroll" { (context_rows(&run.context, &related)) }
        (run_parts::identity_runs(&run, &identity, &deduplicated, now))
        @if let Some(proof) = &proof { (run_parts::action_forms(&run, proof)) }
        (run_parts::recorded_actions(&actions, now))
        @if !legacy.is_empty() {
            h2 { "Legacy rows" }
            ul {
                @for l in &legacy {
                    li { (l["table"].as_str().unwrap_or_default()) " row " (value_text(&l["row"]["id"])) }
                }
            }
        }
        h2 { "Timeline" }
        (nav)
        ol id="timeline" class="timeline" {
            @for (i, e) in events.iter().enumerate() {
                @let before = if i == 0 { baseline.as_ref() } else { events.get(i - 1) };
                li value=(e.sequence) {
                    time datetime=(e.created_at.to_rfc3339_opts(SecondsFormat::Micros, true)) data-local {
                        (e.created_at.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                    }
                    " " span class="event" { "#" (e.sequence) " " (e.event_type) }
                    " " span class="changes" { (changes(before, e).join(", ")) }
                }
            }
        }
        (nav)
    };
    // Only the newest part of the timeline follows the run live.
    let live = run.is_active() && window == TimelineWindow::Newest;
    let data = BodyData {
        attrs: vec![
            ("run-id", run.id.to_string()),
            ("live", live.to_string()),
            ("last-sequence", last.to_string()),
            ("counts", run.summary_counts.to_json().to_string()),
            ("failures", failures_total.to_string()),
            ("status", run.status.as_str().to_owned()),
            ("updated-at", rfc3339(run.updated_at)),
            (
                "started-at",
                run.started_at.map(rfc3339).unwrap_or_default(),
            ),
            ("expected-seconds", expected.to_string()),
        ],
        ..BodyData::default()
    };
    Ok(html_page(label, &data, body).into_response())
}

/// The links to the older and newer parts of a timeline (plain links: they work without
/// JavaScript), and to the newest when not showing it.
fn timeline_nav(
    run_id: i64,
    window: TimelineWindow,
    older_than: Option<i64>,
    newer_than: Option<i64>,
) -> Markup {
    let newest = window != TimelineWindow::Newest;
    if older_than.is_none() && newer_than.is_none() && !newest {
        return html! {};
    }
    html! {
        p class="timeline-nav" {
            @if let Some(first) = older_than {
                a rel="prev" href={ "/runs/" (run_id) "?before=" (first) } { "← Older events" } " "
            }
            @if let Some(last) = newer_than {
                a rel="next" href={ "/runs/" (run_id) "?after=" (last) } { "Newer events →" } " "
            }
            @if newest { a href={ "/runs/" (run_id) } { "Newest events" } }
        }
    }
}

/// `GET /legacy/{table}/{id}`: to the run's page.
pub async fn legacy(
    State(state): State<ViewerState>,
    PageClaims(claims): PageClaims,
    PagePath((table, id)): PagePath<(String, String)>,
) -> Result<Response, PageError> {
    let run_id = resolve_legacy(&state, &claims.scope(), &table, &id).await?;
    Ok(Redirect::to(&format!("/runs/{run_id}")).into_response())
}

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

/// A page refused for want of a valid token is the sign-in page.
impl IntoResponse for SignInRequired {
    fn into_response(self) -> Response {
        unauthorized(&self.0, TokenFrom::Request).into_response()
    }
}
