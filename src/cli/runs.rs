//! `oprun runs show|list|reap|cancel|retry|fail`.
//!
//! `cancel|retry|fail` take run ids, or a filter (a bulk action): then they print the number of
//! matching runs and act only with `--yes` (`--dry-run` lists them), at most `--rate` actions a
//! second, one JSON line per run and a closing line of counts per result. A bulk action has an
//! id (by default derived from the action, the filter and the minute); run again with it, it
//! does not act twice on a run.
//!
//! The actions act on the database directly, one transaction per run, through the same code as
//! the broker commands `cancel_run`, `retry_run` and `fail_run` (`service::actions::act`): the
//! effect and its record commit together, the answer is known when the command returns, and no
//! running service is needed (its relay hands off the cancel messages and retries' jobs the
//! transaction put in the job outbox).

use std::collections::BTreeMap;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde_json::{json, Map, Value};

use super::output::{print_rows, Format};
use super::{pool, CliError};
use crate::config::{parse_duration, Config};
use crate::domain::action::{result_json, ActionResult, Actor, RunAction, MAX_REASON_CHARS};
use crate::domain::command::MAX_ID_CHARS;
use crate::domain::failure::is_valid_code;
use crate::domain::operation_run::RELATED_CONTEXT_KEYS;
use crate::domain::sanitise_message;
use crate::domain::selection::RunSelection;
use crate::domain::{OperationRunType, RunStatus};
use crate::service::actions::{self, ActionRequest};
use crate::service::apply::{ApplyError, ApplySettings};
use crate::service::reaper;
use crate::service::tx_buffer::TxBuffer;
use crate::store::actions as store_actions;
use crate::store::bulk;
use crate::store::events;
use crate::store::runs::{self, RunFilter};

/// `oprun runs …`
#[derive(Debug, clap::Subcommand)]
pub enum RunsCommand {
    /// One run with its related links and its event history.
    Show {
        /// The run id.
        id: i64,
    },
    /// Runs, newest first.
    List {
        /// Only this workspace.
        #[arg(long)]
        workspace: Option<i64>,
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<i64>,
        /// Only this type (e.g. inventory.sync).
        #[arg(long = "type")]
        run_type: Option<String>,
        /// Only this status (queued, running, completed).
        #[arg(long)]
        status: Option<String>,
        /// At most this many runs (1 to 10000).
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Cancel runs: a queued run completes `cancelled` at once, a running run's executor is asked
    /// to stop. One JSON line per run.
    Cancel(ActArgs),
    /// Retry completed runs (failed, partially_succeeded, blocked or cancelled): a new run with
    /// `context.retry_of`. One JSON line per run.
    Retry(ActArgs),
    /// Complete queued or running runs as failed (run.failed_by_operator, the reason as message).
    /// One JSON line per run.
    Fail(ActArgs),
    /// Complete stale runs as failed (run.stale), as the service's reaper does.
    Reap {
        /// Only list what would be reaped.
        #[arg(long)]
        dry_run: bool,
        /// Deadline factor: expected duration × this.
        #[arg(long, default_value_t = 3.0)]
        factor: f64,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

/// The arguments of `runs cancel|retry|fail`: run ids, or a filter.
#[derive(Debug, clap::Args)]
pub struct ActArgs {
    /// The run ids (or, instead, a filter: `--type`, `--status`, …).
    #[arg(num_args = 0..=10_000)]
    ids: Vec<i64>,
    /// Why (stored with the action; a fail's failure message).
    #[arg(long)]
    reason: Option<String>,
    /// Who acts (stored with the action and carried by its events); default the OS user.
    #[arg(long, env = "USER")]
    initiator: Option<String>,
    /// The bulk action's id: an action this id already did on a run is not done again. With a
    /// filter, default: derived from the action, the filter and the minute (printed first), so
    /// an interrupted bulk action run again with it skips what it did.
    #[arg(long)]
    bulk_id: Option<String>,
    /// The runs to act on, instead of ids.
    #[command(flatten)]
    filter: FilterArgs,
    /// With a filter: act on the matching runs (without it, only their number is printed).
    #[arg(long, conflicts_with = "dry_run")]
    yes: bool,
    /// With a filter: list the matching runs, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Most actions per second (1 to 1000).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    rate: u32,
}

/// The filter of a bulk `runs cancel|retry|fail`: every option given must match.
#[derive(Debug, clap::Args)]
struct FilterArgs {
    /// Only runs of this workspace.
    #[arg(long)]
    workspace: Option<i64>,
    /// Only runs of this tenant.
    #[arg(long)]
    tenant: Option<i64>,
    /// Only runs of this type (e.g. inventory.sync).
    #[arg(long = "type")]
    run_type: Option<String>,
    /// Only runs with this status (queued, running, completed).
    #[arg(long)]
    status: Option<String>,
    /// Only runs with this outcome (failed, partially_succeeded, blocked, cancelled, …).
    #[arg(long)]
    outcome: Option<String>,
    /// Only runs with a failure of this code.
    #[arg(long)]
    failure_code: Option<String>,
    /// Only runs created before this: an RFC 3339 time, or a duration ago (`2h`, `7d`).
    #[arg(long)]
    created_before: Option<String>,
    /// Only runs whose last change is before this: an RFC 3339 time, or a duration ago.
    #[arg(long)]
    updated_before: Option<String>,
}

impl FilterArgs {
    /// The selection, relative times counted back from `minute` (the bulk action's minute, so
    /// that the same command within the minute selects, and derives, the same).
    fn selection(&self, minute: DateTime<Utc>) -> Result<RunSelection, CliError> {
        let invalid = |r: crate::domain::Rejection| CliError::Invalid(r.message);
        let failure_code = match &self.failure_code {
            Some(c) if !is_valid_code(c) => {
                return Err(CliError::Invalid(format!(
                    "--failure-code must match [A-Za-z0-9_.-]{{1,128}}, got {c:?}"
                )))
            }
            other => other.clone(),
        };
        Ok(RunSelection {
            workspace_id: self.workspace,
            tenant_id: self.tenant,
            run_type: self
                .run_type
                .as_deref()
                .map(OperationRunType::parse)
                .transpose()
                .map_err(invalid)?,
            status: self
                .status
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(invalid)?,
            outcome: self
                .outcome
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(invalid)?,
            failure_code,
            created_before: time_bound("created-before", self.created_before.as_deref(), minute)?,
            updated_before: time_bound("updated-before", self.updated_before.as_deref(), minute)?,
        })
    }
}

/// An RFC 3339 time, or a duration (`parse_duration`) before `minute`.
fn time_bound(
    flag: &str,
    text: Option<&str>,
    minute: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, CliError> {
    let Some(text) = text else { return Ok(None) };
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(Some(t.to_utc()));
    }
    let ago = parse_duration(text)
        .ok()
        .and_then(|d| chrono::Duration::from_std(d).ok())
        .ok_or_else(|| {
            CliError::Invalid(format!(
                "--{flag}: expected an RFC 3339 time or a duration ago (30m, 2h, 7d), got {text:?}"
            ))
        })?;
    Ok(Some(minute - ago))
}

const LIST_COLUMNS: [&str; 8] = [
    "id",
    "workspace_id",
    "tenant_id",
    "type",
    "status",
    "outcome",
    "created_at",
    "summary_counts",
];

impl RunsCommand {
    /// Runs the subcommand.
    pub async fn run(self, config: &Config) -> Result<(), CliError> {
        let pool = pool(config)?;
        match self {
            RunsCommand::Cancel(args) => act(&pool, config, RunAction::Cancel, args).await,
            RunsCommand::Retry(args) => act(&pool, config, RunAction::Retry, args).await,
            RunsCommand::Fail(args) => act(&pool, config, RunAction::Fail, args).await,
            RunsCommand::Show { id } => {
                let run = runs::get(&pool, id)
                    .await?
                    .ok_or_else(|| CliError::NotFound(format!("run {id} not found")))?;
                let mut conn = pool.acquire().await?;
                let actions = store_actions::for_run(&mut conn, id).await?;
                let retries = store_actions::retries_of(&mut conn, id).await?;
                drop(conn);
                let history: Vec<Value> = events::for_run(&pool, id)
                    .await?
                    .into_iter()
                    .map(|e| {
                        json!({"sequence": e.sequence, "type": e.event_type, "id": e.id,
                               "created_at": e.created_at, "published": e.published})
                    })
                    .collect();
                let label = run.run_type.catalog().label;
                let links = related_links(&run.context);
                let mut out = run.to_json();
                out["label"] = json!(label);
                out["related"] = links;
                out["events"] = Value::Array(history);
                out["actions"] = Value::Array(actions);
                out["retries"] = json!(retries);
                println!(
                    "{}",
                    serde_json::to_string_pretty(&out).expect("JSON values serialise")
                );
                Ok(())
            }
            RunsCommand::List {
                workspace,
                tenant,
                run_type,
                status,
                limit,
                format,
            } => {
                if !(1..=10_000).contains(&limit) {
                    return Err(CliError::Invalid(format!(
                        "--limit must be from 1 to 10000, got {limit}"
                    )));
                }
                if let Some(t) = &run_type {
                    OperationRunType::parse(t).map_err(|r| CliError::Invalid(r.message))?;
                }
                let status = status
                    .map(|s| s.parse::<RunStatus>())
                    .transpose()
                    .map_err(|r| CliError::Invalid(r.message))?;
                let filter = RunFilter {
                    workspace_id: workspace,
                    tenant_id: tenant,
                    run_type,
                    status,
                    limit,
                };
                let rows: Vec<Value> = runs::list(&pool, &filter)
                    .await?
                    .iter()
                    .map(|r| r.to_json())
                    .collect();
                print_rows(format, &rows, &LIST_COLUMNS)?;
                Ok(())
            }
            RunsCommand::Reap {
                dry_run,
                factor,
                format,
            } => {
                if factor.is_nan() || factor <= 0.0 {
                    return Err(CliError::Invalid("--factor must be positive".into()));
                }
                let stale = reaper::stale_runs(&pool, factor, Utc::now()).await?;
                let rows: Vec<Value> = stale.iter().map(|r| r.to_json()).collect();
                print_rows(format, &rows, &["id", "type", "status", "updated_at"])?;
                if !dry_run {
                    let ctx = ApplySettings {
                        event_source: format!("/operation-runs/{}", config.namespace),
                        hand_off_jobs: false,
                        max_active_runs_per_tenant: 0,
                    };
                    let mut total = 0;
                    loop {
                        let reaped = reaper::reap_once(&pool, &ctx, factor, Utc::now())
                            .await
                            .map_err(|e| CliError::Invalid(e.to_string()))?;
                        if reaped.is_empty() {
                            break;
                        }
                        total += reaped.len();
                    }
                    eprintln!("reaped {total} runs");
                }
                Ok(())
            }
        }
    }
}

/// Acts on each run (the ids, or those the filter matches) in its own transaction and prints
/// one result line per run.
async fn act(
    pool: &sqlx::PgPool,
    config: &Config,
    action: RunAction,
    args: ActArgs,
) -> Result<(), CliError> {
    let reason = args
        .reason
        .as_deref()
        .map(sanitise_message)
        .filter(|r| !r.is_empty());
    if reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > MAX_REASON_CHARS)
    {
        return Err(CliError::Invalid(format!(
            "--reason is longer than {MAX_REASON_CHARS} characters"
        )));
    }
    let initiator = args.initiator.clone().filter(|n| !n.is_empty());
    for (flag, value) in [("--initiator", &initiator), ("--bulk-id", &args.bulk_id)] {
        if value
            .as_ref()
            .is_some_and(|n| n.chars().count() > MAX_ID_CHARS)
        {
            return Err(CliError::Invalid(format!(
                "{flag} is longer than {MAX_ID_CHARS} characters"
            )));
        }
    }
    let actor = Actor {
        name: initiator,
        user_id: None,
        via: "cli",
    };
    let ctx = ApplySettings {
        event_source: format!("/operation-runs/{}", config.namespace),
        hand_off_jobs: true,
        max_active_runs_per_tenant: 0,
    };
    let now = Utc::now();
    let minute = now.duration_trunc(TimeDelta::minutes(1)).unwrap_or(now);
    let selection = args.filter.selection(minute)?;
    let mut pace = Pace::new(args.rate);
    let act_on = |run_id, bulk_id| ActionRequest {
        action,
        run_id,
        scope: None,
        actor: &actor,
        reason: reason.as_deref(),
        bulk_id,
        command_id: None,
    };
    if !args.ids.is_empty() {
        if !selection.is_empty() || args.yes || args.dry_run {
            return Err(CliError::Invalid(
                "give run ids or a filter (--type, --status, …, with --dry-run or --yes), not both"
                    .into(),
            ));
        }
        for &id in &args.ids {
            pace.wait().await;
            let reply = act_once(pool, &act_on(id, args.bulk_id.as_deref()), &ctx).await?;
            println!("{reply}");
        }
        return Ok(());
    }
    if selection.is_empty() {
        return Err(CliError::Invalid(
            "give run ids, or a filter: --workspace, --tenant, --type, --status, --outcome, \
             --failure-code, --created-before, --updated-before"
                .into(),
        ));
    }
    let bulk_id = args
        .bulk_id
        .clone()
        .unwrap_or_else(|| selection.bulk_id(action, now));
    let (matching, last) = bulk::snapshot(pool, &selection, &bulk_id).await?;
    println!(
        "{}",
        json!({"action": action.as_str(), "bulk_id": bulk_id, "matching": matching,
               "filter": selection.to_json()})
    );
    if !args.yes && !args.dry_run {
        eprintln!(
            "{matching} runs match; --dry-run lists them, --yes acts on them (as bulk action \
             {bulk_id}; give --bulk-id {bulk_id} to resume it later)"
        );
        return Ok(());
    }
    let mut counts: BTreeMap<&str, u64> = [
        ActionResult::Done,
        ActionResult::Requested,
        ActionResult::Unchanged,
        ActionResult::Refused,
    ]
    .into_iter()
    .map(|r| (r.as_str(), 0))
    .collect();
    let mut seen = 0_u64;
    let mut after = 0;
    let upto = last.unwrap_or(0);
    loop {
        let page = bulk::page(pool, &selection, &bulk_id, after, upto, bulk::PAGE).await?;
        let Some(tail) = page.last() else { break };
        after = tail.run_id;
        for run in &page {
            seen += 1;
            if args.dry_run {
                println!("{}", json!(run));
                continue;
            }
            pace.wait().await;
            let reply = act_once(pool, &act_on(run.run_id, Some(&bulk_id)), &ctx).await?;
            println!("{reply}");
            if let Some(n) = reply["result"].as_str().and_then(|r| counts.get_mut(r)) {
                *n += 1;
            }
        }
    }
    let mut summary =
        json!({"action": action.as_str(), "bulk_id": bulk_id, "dry_run": args.dry_run});
    if args.dry_run {
        summary["listed"] = json!(seen);
    } else {
        summary["acted"] = json!(seen);
        for (result, n) in counts {
            summary[result] = json!(n);
        }
    }
    println!("{summary}");
    Ok(())
}

/// At most `rate` actions per second: each starts at least `1 / rate` s after the one before
/// (a slow action is never made up for by a burst).
struct Pace {
    interval: tokio::time::Interval,
}

impl Pace {
    fn new(rate: u32) -> Self {
        let mut interval = tokio::time::interval(std::time::Duration::from_secs_f64(
            1.0 / f64::from(rate.max(1)),
        ));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self { interval }
    }

    async fn wait(&mut self) {
        self.interval.tick().await;
    }
}

/// One action in one transaction, tried again on a transient fault.
async fn act_once(
    pool: &sqlx::PgPool,
    req: &ActionRequest<'_>,
    ctx: &ApplySettings,
) -> Result<Value, CliError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut tx = pool.begin().await?;
        let mut buf = TxBuffer::default();
        match actions::act(&mut tx, &mut buf, req, ctx).await {
            Ok(done) => {
                buf.flush(&mut tx).await?;
                tx.commit().await?;
                return Ok(done.reply);
            }
            Err(ApplyError::DeadLetter(rejection)) => {
                tx.rollback().await?;
                return Ok(result_json(
                    req.run_id,
                    req.action,
                    ActionResult::Refused,
                    None,
                    Some(&rejection.message),
                ));
            }
            Err(ApplyError::Retry(_)) if attempt < 5 => {
                tx.rollback().await?;
                tokio::time::sleep(std::time::Duration::from_millis(100 * attempt)).await;
            }
            Err(e) => return Err(CliError::Invalid(e.to_string())),
        }
    }
}

/// The related records a run's context points at.
fn related_links(context: &Value) -> Value {
    let mut links = Map::new();
    for key in RELATED_CONTEXT_KEYS {
        if let Some(v) = context.get(key).filter(|v| !v.is_null()) {
            links.insert(key.to_owned(), v.clone());
        }
    }
    Value::Object(links)
}
