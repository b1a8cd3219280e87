//! Parts of the run page beside its facts, counts and timeline, as maud markup: the runs of
//! the run's identity (which one holds it, and how many dispatches each answered because it
//! did).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use maud::{html, Markup};

use super::html::{badge, relative_time};
use super::read_model::{Deduplicated, IdentityRuns};
use crate::domain::OperationRun;

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
