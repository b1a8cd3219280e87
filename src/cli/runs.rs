//! `oprun runs show|list|reap|cancel|retry|fail`.
//!
//! The actions act on the database directly, one transaction per run, through the same code as
//! the broker commands `cancel_run`, `retry_run` and `fail_run` (`service::actions::act`): the
//! effect and its record commit together, the answer is known when the command returns, and no
//! running service is needed (its relay hands off the cancel messages and retries' jobs the
//! transaction put in the job outbox).

use chrono::Utc;
use serde_json::{json, Map, Value};

use super::output::{print_rows, Format};
use super::{pool, CliError};
use crate::config::Config;
use crate::domain::action::{result_json, ActionResult, Actor, RunAction, MAX_REASON_CHARS};
use crate::domain::command::MAX_ID_CHARS;
use crate::domain::operation_run::RELATED_CONTEXT_KEYS;
use crate::domain::sanitise_message;
use crate::domain::{OperationRunType, RunStatus};
use crate::service::actions::{self, ActionRequest};
use crate::service::apply::{ApplyError, ApplySettings};
use crate::service::reaper;
use crate::service::tx_buffer::TxBuffer;
use crate::store::actions as store_actions;
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

/// The arguments of `runs cancel|retry|fail`.
#[derive(Debug, clap::Args)]
pub struct ActArgs {
    /// The run ids.
    #[arg(required = true, num_args = 1..=10_000)]
    ids: Vec<i64>,
    /// Why (stored with the action; a fail's failure message).
    #[arg(long)]
    reason: Option<String>,
    /// Who acts (stored with the action and carried by its events); default the OS user.
    #[arg(long, env = "USER")]
    initiator: Option<String>,
    /// The bulk action's id: an action this id already did on a run is not done again.
    #[arg(long)]
    bulk_id: Option<String>,
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

/// Acts on each run in its own transaction and prints one result line per run.
async fn act(
    pool: &sqlx::PgPool,
    config: &Config,
    action: RunAction,
    args: ActArgs,
) -> Result<(), CliError> {
    let reason = args
        .reason
        .map(|r| sanitise_message(&r))
        .filter(|r| !r.is_empty());
    if reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > MAX_REASON_CHARS)
    {
        return Err(CliError::Invalid(format!(
            "--reason is longer than {MAX_REASON_CHARS} characters"
        )));
    }
    let initiator = args.initiator.filter(|n| !n.is_empty());
    if initiator
        .as_ref()
        .is_some_and(|n| n.chars().count() > MAX_ID_CHARS)
    {
        return Err(CliError::Invalid(format!(
            "--initiator is longer than {MAX_ID_CHARS} characters"
        )));
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
    for id in args.ids {
        let req = ActionRequest {
            action,
            run_id: id,
            scope: None,
            actor: &actor,
            reason: reason.as_deref(),
            bulk_id: args.bulk_id.as_deref(),
            command_id: None,
        };
        let reply = act_once(pool, &req, &ctx).await?;
        println!("{reply}");
    }
    Ok(())
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
