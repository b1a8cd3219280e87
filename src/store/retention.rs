//! Retention: deleting what has outlived its keep, in small batches, each statement a short
//! transaction of its own, so that pruning never holds locks the pipeline waits for.
//!
//! What may go, per table (cut-offs are `now()` minus the retention, on the database's clock):
//! - `processed_commands`: rows processed before the cut-off.
//! - `operation_run_events`: published events recorded before the cut-off, of a completed run
//!   or followed by a later event of their run (the last event of an active run numbers its
//!   next one, so it stays). An event whose position is in the outbox never goes.
//! - `operation_run_jobs`: published (settled) jobs recorded before the cut-off.
//! - `operation_runs` (only with a run retention): completed runs that completed before the
//!   cut-off, with no event in the outbox and no unpublished job, whose identity is not held
//!   for ever (dedupe window `forever`). Their events and job go with them (`ON DELETE CASCADE`).

use sqlx::{PgConnection, PgExecutor};

/// Key of the advisory lock that makes one instance at a time prune a database.
const PRUNE_LOCK_KEY: i64 = 0x6f70_7275_6e03;

/// A table retention prunes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// The inbox.
    Inbox,
    /// Event history.
    Events,
    /// Job hand-offs.
    Jobs,
    /// Completed runs (only with a run retention).
    Runs,
}

impl Table {
    /// Every table, in pruning order: runs first (their events and jobs go with them).
    pub const ALL: [Table; 4] = [Table::Runs, Table::Events, Table::Jobs, Table::Inbox];

    /// The table's name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Inbox => "processed_commands",
            Table::Events => "operation_run_events",
            Table::Jobs => "operation_run_jobs",
            Table::Runs => "operation_runs",
        }
    }
}

/// The rows of `table` past retention (`$1`: the retention in seconds). Inbox and events are
/// found through their time index; jobs and runs through a window of the primary key after `$3`
/// (`$2` rows), so that a pass reads each row once even where none may go.
fn candidates(table: Table) -> &'static str {
    match table {
        Table::Inbox => {
            "SELECT command_id AS key FROM processed_commands
             WHERE processed_at < now() - make_interval(secs => $1)
             ORDER BY processed_at LIMIT $2"
        }
        Table::Events => {
            "SELECT e.position AS key FROM operation_run_events e
             WHERE e.created_at < now() - make_interval(secs => $1)
               AND NOT EXISTS (SELECT 1 FROM operation_run_event_outbox o WHERE o.position = e.position)
               AND (EXISTS (SELECT 1 FROM operation_runs r WHERE r.id = e.run_id AND r.status = 'completed')
                    OR EXISTS (SELECT 1 FROM operation_run_events n
                               WHERE n.run_id = e.run_id AND n.sequence > e.sequence))
             ORDER BY e.created_at LIMIT $2"
        }
        Table::Jobs => {
            "SELECT j.position AS key FROM window_rows w JOIN operation_run_jobs j ON j.position = w.key
             WHERE j.published_at IS NOT NULL AND j.created_at < now() - make_interval(secs => $1)"
        }
        Table::Runs => {
            "SELECT r.id AS key FROM window_rows w JOIN operation_runs r ON r.id = w.key
             WHERE r.status = 'completed' AND r.dedupe_window <> 'forever'
               AND r.completed_at < now() - make_interval(secs => $1)
               AND NOT EXISTS (SELECT 1 FROM operation_run_events e
                               JOIN operation_run_event_outbox o ON o.position = e.position
                               WHERE e.run_id = r.id)
               AND NOT EXISTS (SELECT 1 FROM operation_run_jobs j
                               WHERE j.run_id = r.id AND j.published_at IS NULL)"
        }
    }
}

/// The primary-key window of a table pruned by window (jobs, runs): the next `$2` keys after
/// `$3`, and whether the window's last row was created before the cut-off (if not, every later
/// row is newer: the pass is over).
fn window(table: Table) -> Option<(&'static str, &'static str)> {
    match table {
        Table::Jobs => Some(("position", "operation_run_jobs")),
        Table::Runs => Some(("id", "operation_runs")),
        Table::Inbox | Table::Events => None,
    }
}

/// What one batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Batch {
    /// Rows deleted.
    pub deleted: u64,
    /// Where the next batch of a windowed table starts; `None` when the pass is over.
    pub next: Option<i64>,
}

/// Deletes one batch of `table`'s rows past `retention_secs`, at most `limit`, in its own
/// transaction; `after` is where a windowed table's batch starts (0 for a new pass). Returns
/// zero deletions and no `next` when another instance is pruning (the lock is taken per batch).
pub async fn prune_batch(
    conn: &mut PgConnection,
    table: Table,
    retention_secs: f64,
    limit: i64,
    after: i64,
) -> Result<Batch, sqlx::Error> {
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    if !super::locks::try_lock_key(&mut tx, PRUNE_LOCK_KEY).await? {
        return Ok(Batch::default());
    }
    let (deleted, next): (i64, Option<i64>) = match window(table) {
        None => {
            let key = match table {
                Table::Inbox => "command_id",
                _ => "position",
            };
            let sql = format!(
                "WITH doomed AS ({}), gone AS (
                     DELETE FROM {} WHERE {key} IN (SELECT key FROM doomed) RETURNING 1)
                 SELECT count(*), NULL::bigint FROM gone",
                candidates(table),
                table.name()
            );
            sqlx::query_as(&sql)
                .bind(retention_secs)
                .bind(limit)
                .fetch_one(&mut *tx)
                .await?
        }
        Some((key, name)) => {
            let sql = format!(
                "WITH window_rows AS (
                     SELECT {key} AS key, created_at FROM {name} WHERE {key} > $3 ORDER BY {key} LIMIT $2),
                 doomed AS ({}),
                 gone AS (DELETE FROM {name} WHERE {key} IN (SELECT key FROM doomed) RETURNING 1)
                 SELECT (SELECT count(*) FROM gone),
                        (SELECT w.key FROM (SELECT key, created_at FROM window_rows
                                            ORDER BY key DESC LIMIT 1) w
                         WHERE w.created_at < now() - make_interval(secs => $1))",
                candidates(table)
            );
            let (deleted, last_old): (i64, Option<i64>) = sqlx::query_as(&sql)
                .bind(retention_secs)
                .bind(limit)
                .bind(after)
                .fetch_one(&mut *tx)
                .await?;
            // The pass goes on while the window's last row is older than the cut-off: keys
            // follow creation, so past a newer row every row is newer.
            (deleted, last_old)
        }
    };
    tx.commit().await?;
    Ok(Batch {
        deleted: deleted.max(0) as u64,
        next: next.filter(|_| window(table).is_some()),
    })
}

/// The narrow event outbox: every published event leaves a dead row in it.
pub const EVENT_OUTBOX: &str = "operation_run_event_outbox";

/// `VACUUM`s `tables` (names from [`Table::name`] or [`EVENT_OUTBOX`]), one statement each (VACUUM
/// cannot run in a transaction). It takes no lock that writers wait for.
pub async fn vacuum(conn: &mut PgConnection, tables: &[&'static str]) -> Result<(), sqlx::Error> {
    for table in tables {
        // A plain string is sent as a simple query, outside any transaction block.
        let sql = format!("VACUUM {table}");
        sqlx::Executor::execute(&mut *conn, sql.as_str()).await?;
    }
    Ok(())
}

/// Whether the server's autovacuum launcher runs (`SHOW autovacuum`).
pub async fn autovacuum_on(executor: impl PgExecutor<'_>) -> Result<bool, sqlx::Error> {
    let setting: String = sqlx::query_scalar("SHOW autovacuum")
        .fetch_one(executor)
        .await?;
    Ok(setting == "on")
}

/// How many rows of `table` are past `retention_secs` (what a prune would delete now).
pub async fn count(
    executor: impl PgExecutor<'_>,
    table: Table,
    retention_secs: f64,
) -> Result<i64, sqlx::Error> {
    let sql = match window(table) {
        None => format!(
            "SELECT count(*) FROM ({}) doomed",
            candidates(table).replace("LIMIT $2", "")
        ),
        Some((key, name)) => format!(
            "WITH window_rows AS (SELECT {key} AS key FROM {name})
             SELECT count(*) FROM ({}) doomed",
            candidates(table)
        ),
    };
    sqlx::query_scalar(&sql)
        .bind(retention_secs)
        .fetch_one(executor)
        .await
}
