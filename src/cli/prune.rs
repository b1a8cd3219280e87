//! `oprun prune [--dry-run]`: deletes history past its retention now (what `serve` does in the
//! background), and prints the rows per table.

use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use super::CliError;
use crate::config::{Config, RetentionSettings};
use crate::service::pruner::{self, PruneReport};
use crate::store::retention::Table;

/// `oprun prune`
#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// Count what would be deleted; delete nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    retention: RetentionSettings,
}

impl PruneArgs {
    /// Runs one pass (or counts it) and prints one JSON line: `dry_run` and the rows deleted from
    /// each table, whichever pass deleted them (a deleted run's events and job count under
    /// `operation_run_events` and `operation_run_jobs`); `operation_runs` is `null` without
    /// `--run-retention`. A dry run on an unchanged database prints the same numbers.
    pub async fn run(self, config: &Config) -> Result<(), CliError> {
        let pool = super::pool(config)?;
        let report = if self.dry_run {
            pruner::dry_run(&pool, &self.retention).await?
        } else {
            let shutdown = CancellationToken::new();
            tokio::spawn(super::cancel_on_signal(shutdown.clone()));
            pruner::prune_once(&pool, &self.retention, &shutdown).await?
        };
        pool.close().await;
        println!("{}", summary(&report, self.dry_run));
        Ok(())
    }
}

/// The printed line: `{"dry_run": …, "processed_commands": n, "operation_run_events": n, …}`.
fn summary(report: &PruneReport, dry_run: bool) -> Value {
    let mut line = Map::new();
    line.insert("dry_run".into(), dry_run.into());
    for table in Table::ALL {
        line.insert(table.name().into(), report.of(table).into());
    }
    Value::Object(line)
}
