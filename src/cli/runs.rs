//! `oprun runs show|list|reap`.

use chrono::Utc;
use serde_json::{json, Map, Value};

use super::output::{print_rows, Format};
use super::{pool, CliError};
use crate::config::Config;
use crate::domain::operation_run::RELATED_CONTEXT_KEYS;
use crate::domain::{OperationRunType, RunStatus};
use crate::service::apply::ApplyContext;
use crate::service::reaper;
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
            RunsCommand::Show { id } => {
                let run = runs::get(&pool, id)
                    .await?
                    .ok_or_else(|| CliError::NotFound(format!("run {id} not found")))?;
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
                    let ctx = ApplyContext {
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
