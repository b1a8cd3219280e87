//! The read-only legacy history tables and their redirect to canonical runs.

use std::fmt;
use std::str::FromStr;

use serde_json::Value;
use sqlx::{PgConnection, PgExecutor};

/// A legacy history table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegacyTable {
    /// `inventory_sync_runs`
    InventorySyncRuns,
    /// `entra_group_sync_runs`
    EntraGroupSyncRuns,
    /// `backup_schedule_runs`
    BackupScheduleRuns,
}

impl LegacyTable {
    /// Every legacy table.
    pub const ALL: [LegacyTable; 3] = [
        Self::InventorySyncRuns,
        Self::EntraGroupSyncRuns,
        Self::BackupScheduleRuns,
    ];

    /// The table name (a fixed identifier, never user input, so it may be formatted into SQL).
    pub fn table_name(self) -> &'static str {
        match self {
            Self::InventorySyncRuns => "inventory_sync_runs",
            Self::EntraGroupSyncRuns => "entra_group_sync_runs",
            Self::BackupScheduleRuns => "backup_schedule_runs",
        }
    }
}

impl FromStr for LegacyTable {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|t| t.table_name() == s).ok_or_else(|| {
            format!(
                "unknown legacy table {s:?}; expected one of inventory_sync_runs, entra_group_sync_runs, backup_schedule_runs"
            )
        })
    }
}

impl fmt::Display for LegacyTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.table_name())
    }
}

/// A legacy row as JSON, with its redirect if set.
#[derive(Debug, Clone, PartialEq)]
pub struct LegacyRecord {
    /// The canonical run it redirects to.
    pub operation_run_id: Option<i64>,
    /// The whole row.
    pub row: Value,
}

/// Reads legacy row `id` of `table`.
pub async fn find(
    executor: impl PgExecutor<'_>,
    table: LegacyTable,
    id: i64,
) -> Result<Option<LegacyRecord>, sqlx::Error> {
    let sql = format!(
        "SELECT operation_run_id, to_jsonb(t) FROM {} t WHERE id = $1",
        table.table_name()
    );
    let row: Option<(Option<i64>, Value)> = sqlx::query_as(&sql)
        .bind(id)
        .fetch_optional(executor)
        .await?;
    Ok(row.map(|(operation_run_id, row)| LegacyRecord {
        operation_run_id,
        row,
    }))
}

/// Links backup schedule run `legacy_id` to `run_id` when it belongs to `tenant_id` and is not
/// linked yet. Returns whether a row was linked.
pub async fn link_backup_schedule_run(
    conn: &mut PgConnection,
    legacy_id: i64,
    tenant_id: i64,
    run_id: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE backup_schedule_runs SET operation_run_id = $3
         WHERE id = $1 AND tenant_id = $2 AND operation_run_id IS NULL",
    )
    .bind(legacy_id)
    .bind(tenant_id)
    .bind(run_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}
