//! `oprun legacy resolve TABLE ID`: the canonical run a legacy history row redirects to, or the
//! legacy row itself when it has no redirect.

use serde_json::json;

use super::{pool, CliError};
use crate::config::Config;
use crate::store::legacy::{self, LegacyTable};
use crate::store::runs;

/// `oprun legacy …`
#[derive(Debug, clap::Subcommand)]
pub enum LegacyCommand {
    /// Print the canonical run of a legacy row, or the legacy row when it has none.
    Resolve {
        /// inventory_sync_runs, entra_group_sync_runs or backup_schedule_runs.
        table: LegacyTable,
        /// The legacy row id.
        id: i64,
    },
}

impl LegacyCommand {
    /// Runs the subcommand.
    pub async fn run(self, config: &Config) -> Result<(), CliError> {
        let LegacyCommand::Resolve { table, id } = self;
        let pool = pool(config)?;
        let record = legacy::find(&pool, table, id)
            .await?
            .ok_or_else(|| CliError::NotFound(format!("{table} {id} not found")))?;
        let out = match record.operation_run_id {
            Some(run_id) => {
                let run = runs::get(&pool, run_id).await?.ok_or_else(|| {
                    CliError::NotFound(format!("run {run_id} (redirect of {table} {id}) not found"))
                })?;
                json!({"resolved": "operation_run", "legacy_table": table.table_name(), "legacy_id": id, "run": run.to_json()})
            }
            None => json!({
                "resolved": "legacy",
                "note": format!("{table} {id} has no canonical run (operation_run_id is null); showing the legacy record"),
                "legacy_table": table.table_name(), "legacy_id": id, "record": record.row
            }),
        };
        println!("{out}");
        Ok(())
    }
}
