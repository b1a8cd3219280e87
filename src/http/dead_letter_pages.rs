//! The dead-letters page, for tokens that may act on every run of their workspace (`operate`,
//! no tenant list, no run claim; see [`Claims::may_work_dead_letters`]): `GET /dead-letters`
//! (the letters waiting in the queue taken into the table first, as `oprun dlq` does; the
//! stored letters grouped by code, each group with its Replay all and Discard all; a bounded
//! page of letters, newest first), `GET /dead-letters/{id}` (one letter: body and headers,
//! secrets in the headers redacted as `oprun dlq show` shows them), the group's confirmation
//! `GET /dead-letters/by-code?code=…&verb=replay|discard` (the count, and the form that acts on
//! exactly the letters counted) and the forms `POST /dead-letters/by-code` and `POST
//! /dead-letters/{id}/replay|discard`.
//!
//! Dead letters belong to no tenant the service can vouch for (a letter's `tenant_id` is what its
//! producer wrote), so any other sign-in, or none, gets the page an unknown route gets: the page
//! does not exist for it. The forms carry the per-sign-in proof of the run page's forms
//! (decision 0072); a discard records the token's `sub` as who discarded.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{MatchedPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use maud::{html, Markup};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::action_pages::checked_form;
use super::auth::Claims;
use super::claims::{request_token, PageClaims, SignInRequired};
use super::dead_letter_actions::{DeadLetterActError, Letters};
use super::error::ApiError;
use super::html::{relative_time, BodyData};
use super::pages::{error_page, html_page, PageError, PagePath, PageQuery};
use super::run_parts::PROOF_FIELD;
use super::state::ViewerState;
use crate::broker::dlq::describe_properties;
use crate::store::dead_letters::{self as store, LetterFilter};

/// Letters on one page of the list, newest first; older ones are a link away.
pub const LETTERS_PAGE: i64 = 50;

/// Most code groups the page lists (the largest; the total counts every letter).
pub const CODE_GROUPS: i64 = 100;

/// Most bytes of a letter's body the letter's page shows (`oprun dlq show` prints all of it).
pub const SHOWN_BODY_BYTES: usize = 256 * 1024;

/// The claims of a dead-letters request, if they may work the dead letters.
fn gate(claims: Result<PageClaims, SignInRequired>) -> Option<Claims> {
    match claims {
        Ok(PageClaims(c)) if c.may_work_dead_letters() => Some(c),
        _ => None,
    }
}

/// What anyone else gets: the answer of an unknown route, word for word.
fn unknown_route() -> Response {
    error_page(ApiError::no_route())
}

/// A method the route does not take: 405 for a sign-in that may see the page, the unknown
/// route's page for anyone else (so that no method tells them the route exists).
pub async fn wrong_method(claims: Result<PageClaims, SignInRequired>) -> Response {
    match gate(claims) {
        Some(_) => error_page(ApiError::method_not_allowed()),
        None => unknown_route(),
    }
}

/// The forms' anti-forgery value for this request's sign-in.
fn proof_of(state: &ViewerState, headers: &HeaderMap) -> String {
    state
        .keys
        .action_proof(&request_token(headers).unwrap_or_default())
}

/// A page that caches do not keep (it carries the forms' proof).
fn fresh(title: &str, status: StatusCode, body: Markup) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        html_page(title, &BodyData::default(), body),
    )
        .into_response()
}

/// A letter's replay and discard buttons.
fn letter_forms(id: i64, proof: &str) -> Markup {
    html! {
        form class="inline" method="post" action={ "/dead-letters/" (id) "/replay" } {
            input type="hidden" name=(PROOF_FIELD) value=(proof);
            button type="submit" { "Replay" }
        }
        " "
        form class="inline" method="post" action={ "/dead-letters/" (id) "/discard" } {
            input type="hidden" name=(PROOF_FIELD) value=(proof);
            button type="submit" { "Discard" }
        }
    }
}

/// An optional time as a relative one, or "unknown".
fn when(at: Option<chrono::DateTime<Utc>>, now: chrono::DateTime<Utc>) -> Markup {
    match at {
        Some(t) => relative_time(t, now),
        None => html! { "unknown" },
    }
}

/// `?name=` as a number, if given.
fn number(params: &HashMap<String, String>, name: &str) -> Result<Option<i64>, PageError> {
    params
        .get(name)
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse::<i64>()
                .map_err(|_| PageError(ApiError::invalid(format!("{name} must be a letter id"))))
        })
        .transpose()
}

/// `GET /dead-letters` (`?code=C`: that group's letters; `?before=ID`: older letters).
pub async fn list(
    State(state): State<ViewerState>,
    claims: Result<PageClaims, SignInRequired>,
    headers: HeaderMap,
    PageQuery(params): PageQuery<HashMap<String, String>>,
) -> Result<Response, PageError> {
    if gate(claims).is_none() {
        return Ok(unknown_route());
    }
    let code = params.get("code").filter(|c| !c.is_empty()).cloned();
    let before = number(&params, "before")?.unwrap_or(i64::MAX);
    // What waits in the queue first, as every `oprun dlq` command does: otherwise the page
    // would show only what someone else happened to take.
    let taken = state.dead_letters.take_from_queue().await;
    let groups = store::code_groups(&state.pool, CODE_GROUPS + 1);
    let letters = store::newest_page(&state.pool, code.as_deref(), before, LETTERS_PAGE);
    let total = store::count(&state.pool);
    let (mut groups, (letters, listed_total), total) =
        tokio::try_join!(groups, letters, total).map_err(ApiError::from)?;
    let more_groups = groups.len() as i64 > CODE_GROUPS;
    groups.truncate(CODE_GROUPS as usize);
    let proof = proof_of(&state, &headers);
    let now = Utc::now();
    let older = (letters.len() as i64 == LETTERS_PAGE)
        .then(|| letters.last().map(|l| l.id))
        .flatten()
        .map(|last| {
            let mut qs = url::form_urlencoded::Serializer::new(String::new());
            if let Some(c) = &code {
                qs.append_pair("code", c);
            }
            qs.append_pair("before", &last.to_string());
            format!("/dead-letters?{}", qs.finish())
        });
    let body = html! {
        h1 { "Dead letters" }
        @if let Err(e) = &taken {
            p id="dlq-queue-unread" class="banner" role="alert" {
                "The dead-letter queue could not be read (" (e.to_string()) "): letters still \
                 in it are not shown here yet."
            }
        }
        p id="dlq-total" class="summary" {
            (total) @if total == 1 { " dead letter" } @else { " dead letters" }
        }
        h2 { "By code" }
        div class="scroll" {
            table id="dlq-groups" {
                thead { tr {
                    th { "Code" } th { "Letters" } th { "Kinds" } th { "Oldest" } th { "Newest" }
                    th { "Actions" }
                } }
                tbody {
                    @for g in &groups {
                        tr data-code=(g.code) {
                            td { code { (g.code) } }
                            td class="dlq-group-count" { (g.letters) }
                            td {
                                (g.kinds.join(", "))
                                @if g.kind_count > g.kinds.len() as i64 {
                                    ", and " (g.kind_count - g.kinds.len() as i64) " more"
                                }
                            }
                            td { (when(g.oldest, now)) }
                            td { (when(g.newest, now)) }
                            td {
                                @let show = format!("/dead-letters?{}", url::form_urlencoded::Serializer::new(String::new()).append_pair("code", &g.code).finish());
                                a href=(show) { "Show" } " "
                                @for (verb, label) in [("replay", "Replay all…"), ("discard", "Discard all…")] {
                                    form class="inline" method="get" action="/dead-letters/by-code" {
                                        input type="hidden" name="code" value=(g.code);
                                        input type="hidden" name="verb" value=(verb);
                                        button type="submit" { (label) }
                                    }
                                    " "
                                }
                            }
                        }
                    }
                    @if groups.is_empty() { tr { td colspan="6" { "No dead letters." } } }
                }
            }
        }
        @if more_groups { p { "Only the " (CODE_GROUPS) " largest codes are listed." } }
        h2 {
            @if let Some(c) = &code { "Letters of " code { (c) } } @else { "Letters" }
            " (newest first)"
        }
        @if code.is_some() { p { a href="/dead-letters" { "All codes" } } }
        div class="scroll" {
            table id="dlq-letters" {
                thead { tr {
                    th { "Letter" } th { "Code" } th { "Kind" } th { "Command" } th { "Tenant" }
                    th { "First refused" } th { "Replays" } th { "Message" } th { "Actions" }
                } }
                tbody {
                    @for l in &letters {
                        tr data-letter=(l.id) {
                            td { a href={ "/dead-letters/" (l.id) } { "#" (l.id) } }
                            td { code { (l.code) } }
                            td { (l.kind.as_deref().unwrap_or("unknown")) }
                            td { (l.command_id.as_deref().unwrap_or("—")) }
                            td { @if let Some(t) = l.tenant_id { (t) } @else { "—" } }
                            td { (when(l.first_failed_at, now)) }
                            td { (l.replays) }
                            td { (l.message) }
                            td { (letter_forms(l.id, &proof)) }
                        }
                    }
                    @if letters.is_empty() { tr { td colspan="9" { "No letters here." } } }
                }
            }
        }
        p id="dlq-page-count" { (letters.len()) " of " (listed_total) " dead letters" }
        @if let Some(href) = older { p { a rel="next" href=(href) { "Older letters →" } } }
    };
    Ok(fresh("Dead letters", StatusCode::OK, body))
}

/// The letter `id` of a path, or the page of an unknown letter.
fn letter_id(id: &str) -> Result<i64, PageError> {
    id.parse()
        .map_err(|_| PageError(ApiError::not_found("dead letter")))
}

/// `GET /dead-letters/{id}`: the letter as `oprun dlq show` prints it.
pub async fn show(
    State(state): State<ViewerState>,
    claims: Result<PageClaims, SignInRequired>,
    headers: HeaderMap,
    PagePath(id): PagePath<String>,
) -> Result<Response, PageError> {
    if gate(claims).is_none() {
        return Ok(unknown_route());
    }
    let id = letter_id(&id)?;
    let letter = store::get(&state.pool, id)
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| PageError(ApiError::not_found("dead letter")))?;
    let now = Utc::now();
    let digest = hex::encode(Sha256::digest(&letter.body));
    let shown = &letter.body[..letter.body.len().min(SHOWN_BODY_BYTES)];
    let cut = shown.len() < letter.body.len();
    // As JSON (pretty) when the whole body is JSON, else as text, else as hex.
    let (form, text) = match std::str::from_utf8(&letter.body) {
        Ok(t) => match serde_json::from_str::<Value>(t) {
            Ok(v) => ("JSON", serde_json::to_string_pretty(&v).unwrap_or_default()),
            Err(_) => ("text", String::from_utf8_lossy(shown).into_owned()),
        },
        Err(_) => ("bytes, in hex", hex::encode(shown)),
    };
    let text: String = if cut && form == "JSON" {
        text.chars().take(SHOWN_BODY_BYTES).collect()
    } else {
        text
    };
    let properties = describe_properties(&letter.properties)
        .map(|p| serde_json::to_string_pretty(&p).unwrap_or_default())
        .unwrap_or_else(|| "(the stored properties do not decode)".to_owned());
    let proof = proof_of(&state, &headers);
    let body = html! {
        h1 { "Dead letter " small { "#" (letter.id) } }
        dl class="facts" {
            dt { "Code" } dd id="dlq-code" { code { (letter.code) } }
            dt { "Message" } dd id="dlq-message" { (letter.message) }
            dt { "Kind" } dd { (letter.kind.as_deref().unwrap_or("unknown")) }
            dt { "Command id" } dd { (letter.command_id.as_deref().unwrap_or("—")) }
            dt { "Tenant (as the body says)" } dd {
                @if let Some(t) = letter.tenant_id { (t) } @else { "—" }
            }
            dt { "Routing key" } dd { code { (letter.routing_key) } }
            dt { "First refused" } dd { (when(letter.first_failed_at, now)) }
            dt { "Last refused" } dd { (when(letter.failed_at, now)) }
            dt { "Replays" } dd { (letter.replays) }
            dt { "Delivery count" } dd { (letter.delivery_count) }
            dt { "Taken from the queue" } dd { (relative_time(letter.stored_at, now)) }
            dt { "Body" } dd { (letter.body.len()) " bytes, SHA-256 " code id="dlq-sha256" { (digest) } }
        }
        p { (letter_forms(letter.id, &proof)) }
        h2 { "Body (" (form) ")" }
        @if cut {
            p { "The first " (SHOWN_BODY_BYTES) " bytes; " code { "oprun dlq show " (letter.id) } " prints all of it." }
        }
        div class="scroll" { pre id="dlq-body" { (text) } }
        h2 { "Properties and headers" }
        p { "Values that look like secrets are shown as [REDACTED]." }
        div class="scroll" { pre id="dlq-properties" { (properties) } }
        p { a href="/dead-letters" { "All dead letters" } }
    };
    Ok(fresh("Dead letter", StatusCode::OK, body))
}

/// The verb of a group's form or confirmation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Replay,
    Discard,
}

impl Verb {
    fn parse(v: Option<&str>) -> Result<Self, PageError> {
        match v {
            Some("replay") => Ok(Self::Replay),
            Some("discard") => Ok(Self::Discard),
            _ => Err(PageError(ApiError::invalid(
                "verb must be replay or discard",
            ))),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Replay => "replay",
            Self::Discard => "discard",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Replay => "Replay",
            Self::Discard => "Discard",
        }
    }
}

/// `GET /dead-letters/by-code?code=C&verb=replay|discard`: how many letters of the code the
/// action would take, and its form (naming the highest id counted, so that letters stored
/// after the count are left alone).
pub async fn confirm_group(
    State(state): State<ViewerState>,
    claims: Result<PageClaims, SignInRequired>,
    headers: HeaderMap,
    PageQuery(params): PageQuery<HashMap<String, String>>,
) -> Result<Response, PageError> {
    if gate(claims).is_none() {
        return Ok(unknown_route());
    }
    let verb = Verb::parse(params.get("verb").map(String::as_str))?;
    let code = params
        .get("code")
        .filter(|c| !c.is_empty())
        .ok_or_else(|| PageError(ApiError::invalid("code is required")))?;
    let filter = LetterFilter::Matching {
        code: code.clone(),
        kind: None,
        failed_before: None,
    };
    let (count, last) = store::count_matching(&state.pool, &filter)
        .await
        .map_err(ApiError::from)?;
    let proof = proof_of(&state, &headers);
    let label = verb.label();
    let noun = |n: i64| if n == 1 { "letter" } else { "letters" };
    let body = html! {
        h1 { (label) " dead letters of " code { (code) } }
        @if count == 0 {
            p id="dlq-count" { "No letter has this code: nothing to do." }
        } @else {
            p id="dlq-count" { (count) " " (noun(count)) " of this code." }
            p {
                @match verb {
                    Verb::Replay => {
                        "Each is republished to the commands exchange and removed once the broker \
                         confirms it; letters older than the service's inbox retention are refused \
                         (oprun dlq replay --force takes them)."
                    }
                    Verb::Discard => {
                        "Each is recorded (who, when, code, kind, command id, body digest) and \
                         then deleted for good."
                    }
                }
                " Letters stored after this count are left alone."
            }
            form id="dlq-group-confirm" method="post" action="/dead-letters/by-code" {
                input type="hidden" name=(PROOF_FIELD) value=(proof);
                input type="hidden" name="verb" value=(verb.as_str());
                input type="hidden" name="code" value=(code);
                input type="hidden" name="upto" value=(last.unwrap_or(0));
                button type="submit" { (label) " " (count) " " (noun(count)) }
            }
        }
        p { a id="back" href="/dead-letters" { "Back to the dead letters" } }
    };
    Ok(fresh(
        &format!("{label} dead letters"),
        StatusCode::OK,
        body,
    ))
}

/// `POST /dead-letters/by-code`: the group's confirmed form.
pub async fn act_on_group(
    State(state): State<ViewerState>,
    claims: Result<PageClaims, SignInRequired>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, PageError> {
    let Some(claims) = gate(claims) else {
        return Ok(unknown_route());
    };
    let fields = checked_form(&state, &headers, body).await?;
    let verb = Verb::parse(fields.get("verb").map(String::as_str))?;
    let code = fields
        .get("code")
        .filter(|c| !c.is_empty())
        .cloned()
        .ok_or_else(|| PageError(ApiError::invalid("code is required")))?;
    let upto =
        number(&fields, "upto")?.ok_or_else(|| PageError(ApiError::invalid("upto is required")))?;
    act(&state, &claims, verb, Letters::OfCode { code, upto }).await
}

/// `POST /dead-letters/{id}/replay`, `/discard` (one route each, this handler).
pub async fn act_on_letter(
    State(state): State<ViewerState>,
    claims: Result<PageClaims, SignInRequired>,
    headers: HeaderMap,
    route: MatchedPath,
    PagePath(id): PagePath<String>,
    body: Body,
) -> Result<Response, PageError> {
    let Some(claims) = gate(claims) else {
        return Ok(unknown_route());
    };
    checked_form(&state, &headers, body).await?;
    let verb = if route.as_str().ends_with("/replay") {
        Verb::Replay
    } else {
        Verb::Discard
    };
    let id = letter_id(&id)?;
    act(&state, &claims, verb, Letters::One(id)).await
}

/// Carries out `verb` on `letters` through the service's port and shows what came of it.
async fn act(
    state: &ViewerState,
    claims: &Claims,
    verb: Verb,
    letters: Letters,
) -> Result<Response, PageError> {
    let unavailable = |e: DeadLetterActError| {
        PageError(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "dead_letters_unavailable",
            format!("nothing more was done: {e}; send the form again"),
        ))
    };
    let noun = |n: usize| if n == 1 { "letter" } else { "letters" };
    let what = match &letters {
        Letters::One(id) => html! { "Letter " a href={ "/dead-letters/" (id) } { "#" (id) } },
        Letters::OfCode { code, .. } => html! { "Letters of " code { (code) } },
    };
    let result = match verb {
        Verb::Replay => {
            let done = state
                .dead_letters
                .replay(&letters)
                .await
                .map_err(unavailable)?;
            html! {
                p id="dlq-result" class="summary" {
                    (done.replayed) " " (noun(done.replayed)) " replayed"
                    @if !done.refused.is_empty() { ", " (done.refused.len()) " refused" }
                    @if done.failed > 0 { ", " (done.failed) " returned by the broker (kept)" }
                    @if done.skipped > 0 { ", " (done.skipped) " held by another replay or gone" }
                    "."
                }
                @if !done.refused.is_empty() {
                    ul id="dlq-refused" {
                        @for (id, why) in done.refused.iter().take(100) {
                            li { a href={ "/dead-letters/" (id) } { "#" (id) } ": " (why) }
                        }
                    }
                }
            }
        }
        Verb::Discard => {
            let done = state
                .dead_letters
                .discard(&letters, claims.sub.as_deref())
                .await
                .map_err(unavailable)?;
            let n = done.discarded as usize;
            html! {
                p id="dlq-result" class="summary" {
                    (n) " " (noun(n)) " discarded (on the record)"
                    @if done.discarded < done.matching {
                        ", " (done.matching - done.discarded)
                        " not taken (held by a replay, gone, or stored after the count)"
                    }
                    "."
                }
            }
        }
    };
    let label = verb.label();
    let body = html! {
        h1 { (label) ": results" }
        p { (what) }
        (result)
        p { a id="back" href="/dead-letters" { "Back to the dead letters" } }
    };
    Ok(fresh(&format!("{label}: results"), StatusCode::OK, body))
}
