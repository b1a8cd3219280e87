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

/// Why a legacy backup schedule run was not linked to a new run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRefusal {
    /// No such row in the run's tenant (a row of another tenant reads the same, so a producer
    /// learns nothing about other tenants' history).
    NotInTenant,
    /// The row belongs to another schedule than the run's `backup_schedule_id`.
    OtherSchedule {
        /// The row's schedule.
        backup_schedule_id: i64,
    },
    /// The row already redirects to a run (the first link wins).
    AlreadyLinked {
        /// The run it redirects to.
        operation_run_id: i64,
    },
}

/// Links backup schedule run `legacy_id` to `run_id` when it belongs to `tenant_id` and to
/// schedule `backup_schedule_id` and is not linked yet; otherwise says why not.
pub async fn link_backup_schedule_run(
    conn: &mut PgConnection,
    legacy_id: i64,
    tenant_id: i64,
    backup_schedule_id: i64,
    run_id: i64,
) -> Result<Result<(), LinkRefusal>, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE backup_schedule_runs SET operation_run_id = $4
         WHERE id = $1 AND tenant_id = $2 AND backup_schedule_id = $3 AND operation_run_id IS NULL",
    )
    .bind(legacy_id)
    .bind(tenant_id)
    .bind(backup_schedule_id)
    .bind(run_id)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 1 {
        return Ok(Ok(()));
    }
    // Refused: a second statement (rare path) reads why, after any concurrent link committed.
    let row: Option<(i64, Option<i64>)> = sqlx::query_as(
        "SELECT backup_schedule_id, operation_run_id FROM backup_schedule_runs
         WHERE id = $1 AND tenant_id = $2",
    )
    .bind(legacy_id)
    .bind(tenant_id)
    .fetch_optional(conn)
    .await?;
    Ok(Err(match row {
        None => LinkRefusal::NotInTenant,
        Some((schedule, _)) if schedule != backup_schedule_id => LinkRefusal::OtherSchedule {
            backup_schedule_id: schedule,
        },
        Some((_, linked)) => LinkRefusal::AlreadyLinked {
            operation_run_id: linked.unwrap_or_default(),
        },
    }))
}
