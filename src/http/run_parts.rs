//! Parts of the pages beside a run's facts, counts and timeline, as maud markup: the runs of
//! the run's identity (which one holds it, and how many dispatches each answered because it
//! did); for tokens that may act, the run page's Cancel, Retry and Fail forms and the list
//! page's forms for every run of the filter; the actions recorded on the run.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use maud::{html, Markup};

use super::html::{badge, relative_time};
use super::read_model::{Deduplicated, IdentityRuns};
use crate::domain::action::{retryable, MAX_REASON_CHARS};
use crate::domain::{OperationRun, RunStatus};
use crate::store::viewer::RecordedAction;

/// The name of the anti-forgery field of the action forms (its value: the sign-in's
/// [`super::auth::TokenKeys::action_proof`]).
pub const PROOF_FIELD: &str = "proof";

/// "Runs of this identity": who holds the identity now (a dispatch of it is answered with that
/// run), the dispatches deduplicated onto this run, and the identity's runs in the token's
/// scope, newest first, each with the dispatches deduplicated onto it.
pub fn identity_runs(
    run: &OperationRun,
    found: &IdentityRuns,
    deduplicated: &BTreeMap<i64, Deduplicated>,
    now: DateTime<Utc>,
) -> Markup {
    let hash = run.run_identity_hash.as_str();
    let holder = found.holder.as_ref().map(|h| h.run.id);
    let dispatches = |n: i64| if n == 1 { "dispatch" } else { "dispatches" };
    html! {
        h2 id="identity" { "Runs of this identity" }
        p id="identity-holder" {
            @match holder {
                Some(h) if h == run.id => {
                    "This run holds the identity: a dispatch of it now is deduplicated onto this run."
                }
                Some(h) => {
                    a href={ "/runs/" (h) } { "#" (h) }
                    " holds the identity: a dispatch of it now is deduplicated onto that run."
                }
                None => { "No run holds the identity now: a dispatch of it starts a new run." }
            }
        }
        p id="deduplicated" {
            @match deduplicated.get(&run.id) {
                Some(d) => {
                    (d.count) " " (dispatches(d.count))
                    " deduplicated onto this run (it held the identity when they came), the latest "
                    (relative_time(d.latest, now)) "."
                }
                None => { "No dispatch was deduplicated onto this run." }
            }
            " " small {
                "As the inbox records them: dispatches that carried a command_id, for the inbox retention."
            }
        }
        div class="scroll" {
            table id="identity-runs" {
                thead { tr {
                    th { "Run" } th { "Status" } th { "Outcome" } th { "Created" }
                    th { "Deduplicated onto it" }
                } }
                tbody {
                    @for r in &found.runs {
                        @let id = r.run.id;
                        tr data-run=(id) {
                            td {
                                @if id == run.id { "#" (id) " (this run)" }
                                @else { a href={ "/runs/" (id) } { "#" (id) } }
                                @if Some(id) == holder { " " span class="badge holder" { "holds the identity" } }
                            }
                            td { (badge("status", r.run.status.as_str(), None)) }
                            td { (badge("outcome", r.run.outcome.as_str(), None)) }
                            td { (relative_time(r.run.created_at, now)) }
                            td class="deduplicated" {
                                @if let Some(d) = deduplicated.get(&id) { (d.count) " " (dispatches(d.count)) }
                            }
                        }
                    }
                }
            }
        }
        @if found.more {
            p { a href={ "/runs?identity=" (hash) } { "All runs of this identity →" } }
        }
    }
}

/// The run page's action forms, for a token that may act (`proof` is its forms' anti-forgery
/// value): Cancel and Fail (with a reason, required) while the run is queued or running, Retry
/// once it completed failed, partially succeeded, blocked or cancelled.
pub fn action_forms(run: &OperationRun, proof: &str) -> Markup {
    let active = run.status != RunStatus::Completed;
    let retry = run.status == RunStatus::Completed && retryable(run.outcome);
    let form = |verb: &str, label: &str, reason_required: bool| {
        html! {
            form class="act" id={ "act-" (verb) } method="post" action={ "/runs/" (run.id) "/" (verb) } {
                input type="hidden" name=(PROOF_FIELD) value=(proof);
                label {
                    @if reason_required { "Reason" } @else { "Reason (optional)" }
                    input name="reason" maxlength=(MAX_REASON_CHARS) required[reason_required];
                }
                button type="submit" { (label) }
            }
        }
    };
    html! {
        section id="act" {
            h2 { "Act on this run" }
            @if active {
                (form("cancel", "Cancel run", false))
                (form("fail", "Fail run", true))
            }
            @if retry { (form("retry", "Retry run", false)) }
            @if !active && !retry {
                p { "Nothing to do: a completed run is never changed, and only a failed, partially \
                     succeeded, blocked or cancelled run is retried." }
            }
        }
    }
}

/// The banner of the action the run page's form just carried out.
pub fn action_result(a: &RecordedAction) -> Markup {
    html! {
        p id="action-result" class={ "banner result-" (a.result) } role="status" {
            (verb_label(&a.action)) ": " (a.result)
            @if let Some(e) = &a.error { " — " (e) }
            @if let Some(n) = a.new_run_id { " — the retry is " a href={ "/runs/" (n) } { "#" (n) } }
        }
    }
}

/// The actions recorded on the run, newest first.
pub fn recorded_actions(actions: &[RecordedAction], now: DateTime<Utc>) -> Markup {
    html! {
        @if !actions.is_empty() {
            h2 id="actions" { "Actions" }
            div class="scroll" {
                table id="run-actions" {
                    thead { tr {
                        th { "When" } th { "Action" } th { "Who" } th { "Reason" } th { "Result" }
                    } }
                    tbody {
                        @for a in actions {
                            tr data-action=(a.id) {
                                td { (relative_time(a.at, now)) }
                                td { (a.action) }
                                td { (a.actor_name.as_deref().unwrap_or("—")) " " small { "(" (a.via) ")" } }
                                td { (a.reason.as_deref().unwrap_or("")) }
                                td {
                                    (a.result)
                                    @if let Some(n) = a.new_run_id { " " a href={ "/runs/" (n) } { "#" (n) } }
                                    @if let Some(e) = &a.error { " " small { (e) } }
                                    @if let Some(b) = &a.bulk_id { " " small { "bulk " (b) } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// "Cancel", "Retry", "Fail".
pub fn verb_label(action: &str) -> &'static str {
    match action {
        "cancel" => "Cancel",
        "retry" => "Retry",
        "fail" => "Fail",
        _ => "Action",
    }
}

/// The list page's forms for a token that may act: each verb for every run matching the
/// filter `params` (the list's own parameters), after a confirmation page that counts them.
pub fn bulk_forms(params: &[(String, String)]) -> Markup {
    html! {
        form id="bulk" class="bulk" method="get" action="/runs/bulk" {
            @for (k, v) in params { input type="hidden" name=(k) value=(v); }
            "Every run matching this filter: "
            button type="submit" name="verb" value="cancel" { "Cancel…" } " "
            button type="submit" name="verb" value="retry" { "Retry…" } " "
            button type="submit" name="verb" value="fail" { "Fail…" }
        }
    }
}
