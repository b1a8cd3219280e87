//! The pages' operator actions, for tokens that may act (`"scope": "operate"`): the run page's
//! forms (`POST /runs/{id}/cancel|retry|fail`, then a redirect to the run page naming the
//! action's record), and the list page's actions on every run matching its filter (`GET
//! /runs/bulk?verb=…&<filter>`, a confirmation that counts them; `POST /runs/bulk` acts on at
//! most [`BULK_RUNS`] of them, the newest, under one bulk id, and shows what came of each).
//!
//! A form changes nothing on the strength of the sign-in cookie alone: it must carry the
//! anti-forgery value the page was rendered with, an HMAC of the request's token under the
//! viewer's secret ([`super::auth::TokenKeys::action_proof`]); another site can read neither
//! the page nor the cookie, so it cannot make one. A missing or wrong one is 403, and nothing
//! is done.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{MatchedPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;

use super::api::parse_list_query;
use super::auth::{random_secret, Claims};
use super::claims::{request_token, PageClaims};
use super::error::ApiError;
use super::html::BodyData;
use super::operate::{act_in_scope, reason, routed_action, Ask};
use super::pages::{filter_pairs, html_page, list_params, PageError, PagePath, PageQuery};
use super::run_actions::{ActError, ActionAsk, ActionDone};
use super::run_parts::{verb_label, PROOF_FIELD};
use super::state::ViewerState;
use crate::domain::action::{ActionResult, Actor, RunAction, MAX_REASON_CHARS};
use crate::domain::RunScope;
use crate::store::viewer as store;

/// Most runs one bulk action of the list page acts on: the newest of those matching its filter.
/// More are acted on by narrowing the filter (a date range, say) or with `oprun runs`.
pub const BULK_RUNS: i64 = 1_000;

/// The largest body of an action form: a reason of [`MAX_REASON_CHARS`] characters
/// percent-encoded at their longest (12 bytes each), the list's filters at their bounds, the
/// proof and the bulk id.
pub const ACTION_FORM_BYTES: usize = 32 * 1024;

/// Most results of a bulk action the results page lists one by one (all are counted).
const LISTED_RESULTS: usize = 100;

/// The fields of an action form besides the list's filter.
const FORM_FIELDS: [&str; 4] = [PROOF_FIELD, "reason", "verb", "bulk_id"];

/// 403 with the error page.
fn forbidden(message: &str) -> PageError {
    PageError(ApiError::forbidden(message))
}

/// The claims of a page's action request, refused (403) unless they may act.
fn operator(claims: Claims) -> Result<Claims, PageError> {
    if claims.may_operate() {
        Ok(claims)
    } else {
        Err(forbidden(
            "this sign-in may only read: acting on runs takes a link whose token grants operate",
        ))
    }
}

/// The fields of a form (the first value of each), at most [`ACTION_FORM_BYTES`], after
/// checking its anti-forgery value against the request's sign-in.
pub(super) async fn checked_form(
    state: &ViewerState,
    headers: &HeaderMap,
    body: Body,
) -> Result<HashMap<String, String>, PageError> {
    let bytes = axum::body::to_bytes(body, ACTION_FORM_BYTES)
        .await
        .map_err(|_| PageError(ApiError::body_too_large(ACTION_FORM_BYTES)))?;
    let mut fields = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(&bytes) {
        fields
            .entry(k.into_owned())
            .or_insert_with(|| v.into_owned());
    }
    let token = request_token(headers).unwrap_or_default();
    let proof = fields.get(PROOF_FIELD).map(String::as_str).unwrap_or("");
    if !state.keys.check_action_proof(proof, &token) {
        return Err(forbidden(
            "this form was not made for this sign-in (or came from another site): \
             nothing was done; open the page again and resend it",
        ));
    }
    Ok(fields)
}

/// The actor of a page's action: the token's `sub`.
fn actor_of(claims: &Claims) -> Actor {
    Actor {
        name: claims.sub.clone(),
        user_id: None,
        via: "page",
    }
}

/// `POST /runs/{id}/cancel`, `/retry`, `/fail` (one route each, this handler): one run's form; acts, then 303 to the run page,
/// which shows the action's record.
pub async fn act_on_run(
    State(state): State<ViewerState>,
    PageClaims(claims): PageClaims,
    headers: HeaderMap,
    route: MatchedPath,
    PagePath(id): PagePath<String>,
    body: Body,
) -> Result<Response, PageError> {
    let action = routed_action(&route)?;
    let claims = operator(claims)?;
    let fields = checked_form(&state, &headers, body).await?;
    let reason = reason(action, fields.get("reason").map(String::as_str))?;
    let ask = Ask {
        action,
        reason: reason.as_deref(),
        via: "page",
        idempotency_key: None,
    };
    let done = act_in_scope(&state, &claims, &id, ask).await?;
    let run_id = done.reply["run_id"].as_i64().unwrap_or_default();
    let target = match done.record_id {
        Some(record) => format!("/runs/{run_id}?acted={record}#action-result"),
        None => format!("/runs/{run_id}"),
    };
    Ok(Redirect::to(&target).into_response())
}

/// The verb of a bulk form.
fn verb(fields: &HashMap<String, String>) -> Result<RunAction, PageError> {
    fields
        .get("verb")
        .and_then(|v| RunAction::parse(v))
        .ok_or_else(|| PageError(ApiError::invalid("verb must be cancel, retry or fail")))
}

/// The list's filter of a bulk form or query: every field but the form's own.
fn filter_of(fields: &HashMap<String, String>) -> HashMap<String, String> {
    fields
        .iter()
        .filter(|(k, _)| !FORM_FIELDS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The runs a bulk action with `filter` acts on (the newest [`BULK_RUNS`] in scope), and
/// whether more match.
async fn bulk_targets(
    state: &ViewerState,
    claims: &Claims,
    filter: &HashMap<String, String>,
) -> Result<(Vec<(i64, Option<i64>)>, bool), PageError> {
    let query = parse_list_query(&list_params(filter)?)?;
    let mut runs =
        store::listed_run_ids(&state.pool, &claims.scope(), &query.filter, BULK_RUNS + 1)
            .await
            .map_err(ApiError::from)?;
    let more = runs.len() as i64 > BULK_RUNS;
    runs.truncate(BULK_RUNS as usize);
    Ok((runs, more))
}

/// The filter as people read it: "status = running, tenant_id = 10", or "every run".
fn describe(filter: &HashMap<String, String>) -> String {
    let pairs: Vec<String> = filter_pairs(filter)
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k} = {v}"))
        .collect();
    if pairs.is_empty() {
        "every run".to_owned()
    } else {
        pairs.join(", ")
    }
}

/// `GET /runs/bulk?verb=…&<filter>`: how many runs the action would act on, and the form that
/// does it (with a fresh bulk id, so that sending it twice acts once).
pub async fn confirm_bulk(
    State(state): State<ViewerState>,
    PageClaims(claims): PageClaims,
    headers: HeaderMap,
    PageQuery(params): PageQuery<HashMap<String, String>>,
) -> Result<Response, PageError> {
    let claims = operator(claims)?;
    let action = verb(&params)?;
    let filter = filter_of(&params);
    let (runs, more) = bulk_targets(&state, &claims, &filter).await?;
    let proof = state
        .keys
        .action_proof(&request_token(&headers).unwrap_or_default());
    let bulk_id = format!("page-{}", &random_secret()[..32]);
    let label = verb_label(action.as_str());
    let count = runs.len();
    let back = back_to_list(&filter);
    let body = html! {
        h1 { (label) " runs" }
        p { "Filter: " span id="bulk-filter" { (describe(&filter)) } }
        @if count == 0 {
            p id="bulk-count" { "No run in your scope matches this filter: nothing to do." }
        } @else {
            p id="bulk-count" {
                @if more {
                    "More than " (BULK_RUNS) " runs match: " (label) " acts on the newest "
                    (BULK_RUNS) " of them. Narrow the filter (a date range) for the others."
                } @else {
                    (count) @if count == 1 { " run matches" } @else { " runs match" } "."
                }
            }
            p { "Each run is acted on as its state allows (a completed run is never changed); \
                 the results are shown once done." }
            form id="bulk-confirm" method="post" action="/runs/bulk" {
                input type="hidden" name=(PROOF_FIELD) value=(proof);
                input type="hidden" name="verb" value=(action.as_str());
                input type="hidden" name="bulk_id" value=(bulk_id);
                @for (k, v) in filter_pairs(&filter) { input type="hidden" name=(k) value=(v); }
                label {
                    @if action == RunAction::Fail { "Reason" } @else { "Reason (optional)" }
                    input name="reason" maxlength=(MAX_REASON_CHARS)
                        required[action == RunAction::Fail];
                }
                button type="submit" { (label) " " (count) @if count == 1 { " run" } @else { " runs" } }
            }
        }
        p { a id="back" href=(back) { "Back to the list" } }
    };
    Ok((
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        html_page(&format!("{label} runs"), &BodyData::default(), body),
    )
        .into_response())
}

/// The list page with `filter`.
fn back_to_list(filter: &HashMap<String, String>) -> String {
    let qs = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(filter_pairs(filter))
        .finish();
    if qs.is_empty() {
        "/runs".to_owned()
    } else {
        format!("/runs?{qs}")
    }
}

/// Whether `id` is a bulk id this page makes (`page-` and 32 hex digits).
fn page_bulk_id(id: &str) -> bool {
    id.strip_prefix("page-")
        .is_some_and(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `POST /runs/bulk`: acts on each run the filter matches now (at most [`BULK_RUNS`], one at a
/// time, each in its own transaction, under the form's bulk id, so that the form sent again
/// does nothing twice), and shows the results.
pub async fn bulk(
    State(state): State<ViewerState>,
    PageClaims(claims): PageClaims,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, PageError> {
    let claims = operator(claims)?;
    let fields = checked_form(&state, &headers, body).await?;
    let action = verb(&fields)?;
    let bulk_id = fields
        .get("bulk_id")
        .filter(|b| page_bulk_id(b))
        .ok_or_else(|| {
            PageError(ApiError::invalid(
                "the form's bulk_id is missing or malformed",
            ))
        })?;
    let reason = reason(action, fields.get("reason").map(String::as_str))?;
    let filter = filter_of(&fields);
    let (runs, more) = bulk_targets(&state, &claims, &filter).await?;
    let actor = actor_of(&claims);
    let mut results: Vec<(i64, Result<ActionDone, ActError>)> = Vec::with_capacity(runs.len());
    for (run_id, tenant_id) in runs {
        let done = state
            .actions
            .act(ActionAsk {
                action,
                run_id,
                scope: RunScope {
                    workspace_id: claims.workspace_id,
                    tenant_id,
                },
                actor: &actor,
                reason: reason.as_deref(),
                bulk_id: Some(bulk_id),
                idempotency_key: None,
            })
            .await;
        // The database gave up: stop here; the same form sent again resumes (what was done is
        // not done twice).
        let stop = matches!(done, Err(ActError::Failed(_)));
        results.push((run_id, done));
        if stop {
            break;
        }
    }
    Ok(bulk_results(action, bulk_id, &filter, &results, more).into_response())
}

/// The results page of a bulk action.
fn bulk_results(
    action: RunAction,
    bulk_id: &str,
    filter: &HashMap<String, String>,
    results: &[(i64, Result<ActionDone, ActError>)],
    more: bool,
) -> (StatusCode, axum::response::Html<String>) {
    let name = |r: &Result<ActionDone, ActError>| match r {
        Ok(d) => d.result.as_str(),
        Err(ActError::NotFound) => "not_found",
        Err(ActError::Failed(_)) => "failed",
        Err(ActError::KeyReused) => "key_reused",
    };
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for (_, r) in results {
        match counts.iter_mut().find(|(n, _)| *n == name(r)) {
            Some((_, c)) => *c += 1,
            None => counts.push((name(r), 1)),
        }
    }
    let stopped = results
        .last()
        .is_some_and(|(_, r)| matches!(r, Err(ActError::Failed(_))));
    let notable: Vec<&(i64, Result<ActionDone, ActError>)> = results
        .iter()
        .filter(|(_, r)| !matches!(r, Ok(d) if d.result == ActionResult::Done))
        .take(LISTED_RESULTS)
        .collect();
    let label = verb_label(action.as_str());
    let body = html! {
        h1 { (label) ": results" }
        p { "Filter: " (describe(filter)) " · bulk " code id="bulk-id" { (bulk_id) } }
        p id="bulk-summary" class="summary" {
            (results.len()) @if results.len() == 1 { " run: " } @else { " runs: " }
            @for (i, (n, c)) in counts.iter().enumerate() {
                @if i > 0 { ", " } (c) " " (n)
            }
            @if results.is_empty() { "nothing matched" }
        }
        @if stopped {
            p class="banner" role="alert" {
                "The database did not answer, so the action stopped there. Send the form again \
                 (reload and confirm): what was done is not done twice."
            }
        }
        @if more {
            p { "More runs matched than one action takes (" (BULK_RUNS) "): narrow the filter for the others." }
        }
        @if !notable.is_empty() {
            div class="scroll" {
                table id="bulk-results" {
                    thead { tr { th { "Run" } th { "Result" } th { "Why" } } }
                    tbody {
                        @for (id, r) in &notable {
                            tr data-run=(id) {
                                td { a href={ "/runs/" (id) } { "#" (id) } }
                                td { (name(r)) }
                                td {
                                    @match r {
                                        Ok(d) => {
                                            (d.reply["error"].as_str().unwrap_or(""))
                                            @if let Some(n) = d.reply["new_run_id"].as_i64() {
                                                " " a href={ "/runs/" (n) } { "#" (n) }
                                            }
                                        }
                                        Err(e) => { (e.to_string()) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        p { a id="back" href=(back_to_list(filter)) { "Back to the list" } }
    };
    let status = if stopped {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (
        status,
        html_page(&format!("{label}: results"), &BodyData::default(), body),
    )
}
