//! Retention: deleting what has outlived its keep, in small batches, each a short transaction of
//! its own, so that pruning never holds locks the pipeline waits for.
//!
//! What may go, per table (cut-offs are `now()` minus the retention, on the database's clock):
//! - `processed_commands`: rows processed before the cut-off.
//! - `operation_run_events`: published events recorded before the cut-off and followed by a
//!   later event of their run, walked in windows of positions (positions follow recording). A run's last event always stays, completed run or not: the next
//!   sequence is its sequence + 1 (a late count on a completed run is applied), so sequences
//!   never repeat whatever was pruned. An event whose position is in the outbox never goes (the
//!   database refuses it: see the migration `event_outbox_follows_its_event`).
//! - `operation_run_jobs`: published (settled) jobs recorded before the cut-off.
//! - `operation_runs` (only with a run retention): completed runs that completed before the
//!   cut-off, with no event in the outbox and no unpublished job, whose identity is not held
//!   for ever (dedupe window `forever`). Their events and job go with them, counted under their
//!   own tables. A run is never deleted while a command on it commits: the candidates are locked
//!   first (`FOR UPDATE SKIP LOCKED`: a run a command holds is left for the next pass), then the
//!   condition is checked again by the deleting statement, whose snapshot is taken after the
//!   locks, so an event committed meanwhile is seen and its run kept. (One statement could not do
//!   both: a row lock re-reads the locked row, but not the subqueries about its events.)

use sqlx::{PgConnection, PgExecutor};

/// Key of the advisory lock that makes one instance at a time prune a database.
const PRUNE_LOCK_KEY: i64 = 0x6f70_7275_6e03;

/// A table retention prunes (each has a pass of its own).
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

/// Rows deleted (or, counted by [`count`], that a pass would delete) from each table, whichever
/// pass deleted them: a deleted run's events and job count under events and jobs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deleted {
    /// From `processed_commands`.
    pub inbox: u64,
    /// From `operation_run_events` (their own pass and their runs').
    pub events: u64,
    /// From `operation_run_jobs` (their own pass and their runs').
    pub jobs: u64,
    /// From `operation_runs`.
    pub runs: u64,
}

impl Deleted {
    /// Rows deleted from `table`.
    pub fn of(&self, table: Table) -> u64 {
        match table {
            Table::Inbox => self.inbox,
            Table::Events => self.events,
            Table::Jobs => self.jobs,
            Table::Runs => self.runs,
        }
    }

    /// Rows of every table together.
    pub fn total(&self) -> u64 {
        self.inbox + self.events + self.jobs + self.runs
    }

    /// Adds `other`'s rows.
    pub fn add(&mut self, other: Deleted) {
        self.inbox += other.inbox;
        self.events += other.events;
        self.jobs += other.jobs;
        self.runs += other.runs;
    }
}

/// The cut-off of a retention bound as `keep` (seconds).
fn past(column: &str, keep: &str) -> String {
    format!("{column} < now() - make_interval(secs => {keep})")
}

/// Whether inbox row `c` may go, `keep` being the retention's parameter.
fn inbox_may_go(keep: &str) -> String {
    past("c.processed_at", keep)
}

/// Whether event `e` may go: published, old, and not its run's last event.
fn event_may_go(keep: &str) -> String {
    format!(
        "{} AND NOT EXISTS (SELECT 1 FROM operation_run_event_outbox o WHERE o.position = e.position)
         AND EXISTS (SELECT 1 FROM operation_run_events n
                     WHERE n.run_id = e.run_id AND n.sequence > e.sequence)",
        past("e.created_at", keep)
    )
}

/// Whether job `j` may go: settled and old.
fn job_may_go(keep: &str) -> String {
    format!(
        "j.published_at IS NOT NULL AND {}",
        past("j.created_at", keep)
    )
}

/// Whether run `r` may go (with its events and job).
fn run_may_go(keep: &str) -> String {
    format!(
        "r.status = 'completed' AND r.dedupe_window <> 'forever' AND {}
         AND NOT EXISTS (SELECT 1 FROM operation_run_events e
                         JOIN operation_run_event_outbox o ON o.position = e.position
                         WHERE e.run_id = r.id)
         AND NOT EXISTS (SELECT 1 FROM operation_run_jobs j
                         WHERE j.run_id = r.id AND j.published_at IS NULL)",
        past("r.completed_at", keep)
    )
}

/// The key window of a table pruned by window (jobs, runs): the next `$2` keys after `$3`, with
/// their creation time.
fn window_rows(key: &str, table: &str) -> String {
    format!("SELECT {key} AS key, created_at FROM {table} WHERE {key} > $3 ORDER BY {key} LIMIT $2")
}

/// The window's last key if that row was created before the cut-off `$1` (else every later row
/// is newer: keys follow creation, and the pass is over). Reads the CTE `window_rows`.
const NEXT_WINDOW: &str = "(SELECT w.key FROM (SELECT key, created_at FROM window_rows
                                                ORDER BY key DESC LIMIT 1) w
                            WHERE w.created_at < now() - make_interval(secs => $1))";

/// What one batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Batch {
    /// Rows deleted, per table.
    pub deleted: Deleted,
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
    let batch = match table {
        Table::Inbox => {
            let sql = format!(
                "WITH doomed AS (SELECT c.command_id FROM processed_commands c WHERE {}
                                 ORDER BY c.processed_at LIMIT $2),
                      gone AS (DELETE FROM processed_commands
                               WHERE command_id IN (SELECT command_id FROM doomed) RETURNING 1)
                 SELECT count(*) FROM gone",
                inbox_may_go("$1")
            );
            let n: i64 = sqlx::query_scalar(&sql)
                .bind(retention_secs)
                .bind(limit)
                .fetch_one(&mut *tx)
                .await?;
            Batch {
                deleted: Deleted {
                    inbox: count_of(n),
                    ..Deleted::default()
                },
                next: None,
            }
        }
        // By windows of positions: positions follow recording, so no index on the recording
        // time is kept for these passes alone (every event would write one).
        Table::Events => {
            let (events, next) = prune_window(
                &mut tx,
                table,
                "e",
                &event_may_go("$1"),
                (retention_secs, limit, after),
            )
            .await?;
            Batch {
                deleted: Deleted {
                    events,
                    ..Deleted::default()
                },
                next,
            }
        }
        Table::Jobs => {
            let (jobs, next) = prune_window(
                &mut tx,
                table,
                "j",
                &job_may_go("$1"),
                (retention_secs, limit, after),
            )
            .await?;
            Batch {
                deleted: Deleted {
                    jobs,
                    ..Deleted::default()
                },
                next,
            }
        }
        Table::Runs => prune_runs(&mut tx, retention_secs, limit, after).await?,
    };
    tx.commit().await?;
    Ok(batch)
}

/// One batch of a table pruned by windows of `position` (events, jobs), in the caller's
/// transaction: of the next `limit` positions after `after` (`bounds` = retention seconds, limit,
/// after), those whose row `alias` satisfies `may_go` are deleted. Returns how many, and where the
/// next window starts (`None`: the window reached rows newer than the cut-off).
async fn prune_window(
    tx: &mut PgConnection,
    table: Table,
    alias: &str,
    may_go: &str,
    (retention_secs, limit, after): (f64, i64, i64),
) -> Result<(u64, Option<i64>), sqlx::Error> {
    let name = table.name();
    let sql = format!(
        "WITH window_rows AS ({}),
              doomed AS (SELECT {alias}.position FROM window_rows w
                         JOIN {name} {alias} ON {alias}.position = w.key WHERE {may_go}),
              gone AS (DELETE FROM {name}
                       WHERE position IN (SELECT position FROM doomed) RETURNING 1)
         SELECT (SELECT count(*) FROM gone), {NEXT_WINDOW}",
        window_rows("position", name),
    );
    let (n, next): (i64, Option<i64>) = sqlx::query_as(&sql)
        .bind(retention_secs)
        .bind(limit)
        .bind(after)
        .fetch_one(&mut *tx)
        .await?;
    Ok((count_of(n), next))
}

/// One batch of runs, in the caller's transaction: lock the window's candidates (skipping any a
/// command holds), then delete those that still may go, with their events and job, in a second
/// statement (its snapshot follows the locks).
async fn prune_runs(
    tx: &mut PgConnection,
    retention_secs: f64,
    limit: i64,
    after: i64,
) -> Result<Batch, sqlx::Error> {
    let lock = format!(
        "WITH window_rows AS ({})
         SELECT r.id FROM operation_runs r
         WHERE r.id IN (SELECT key FROM window_rows) AND {}
         ORDER BY r.id
         FOR UPDATE OF r SKIP LOCKED",
        window_rows("id", "operation_runs"),
        run_may_go("$1")
    );
    let locked: Vec<i64> = sqlx::query_scalar(&lock)
        .bind(retention_secs)
        .bind(limit)
        .bind(after)
        .fetch_all(&mut *tx)
        .await?;
    // The events and the job are deleted here rather than by the cascade, to be counted; the
    // cascade then finds nothing left.
    let delete = format!(
        "WITH window_rows AS ({}),
              doomed AS (SELECT r.id FROM operation_runs r WHERE r.id = ANY($4) AND {}),
              gone_events AS (DELETE FROM operation_run_events e USING doomed d
                              WHERE e.run_id = d.id RETURNING 1),
              gone_jobs AS (DELETE FROM operation_run_jobs j USING doomed d
                            WHERE j.run_id = d.id RETURNING 1),
              gone_runs AS (DELETE FROM operation_runs r USING doomed d
                            WHERE r.id = d.id RETURNING 1)
         SELECT (SELECT count(*) FROM gone_runs), (SELECT count(*) FROM gone_events),
                (SELECT count(*) FROM gone_jobs), {NEXT_WINDOW}",
        window_rows("id", "operation_runs"),
        run_may_go("$1")
    );
    let (runs, events, jobs, next): (i64, i64, i64, Option<i64>) = sqlx::query_as(&delete)
        .bind(retention_secs)
        .bind(limit)
        .bind(after)
        .bind(&locked)
        .fetch_one(&mut *tx)
        .await?;
    Ok(Batch {
        deleted: Deleted {
            runs: count_of(runs),
            events: count_of(events),
            jobs: count_of(jobs),
            inbox: 0,
        },
        next,
    })
}

fn count_of(n: i64) -> u64 {
    n.max(0) as u64
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

/// Which of `tables` this session's role may `VACUUM`: PostgreSQL lets only a table's owner
/// (or a member of its role, a superuser, the database's owner) vacuum it; anyone else's
/// `VACUUM` skips the table with a warning and does nothing.
pub async fn vacuumable(
    executor: impl PgExecutor<'_>,
    tables: &[&'static str],
) -> Result<Vec<&'static str>, sqlx::Error> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT t FROM unnest($1::text[]) t
         WHERE pg_has_role((SELECT relowner FROM pg_class WHERE oid = to_regclass(t)), 'USAGE')
            OR pg_has_role((SELECT datdba FROM pg_database WHERE datname = current_database()),
                           'USAGE')",
    )
    .bind(tables)
    .fetch_all(executor)
    .await?;
    Ok(tables
        .iter()
        .copied()
        .filter(|t| names.iter().any(|n| n == t))
        .collect())
}

/// Whether the server's autovacuum launcher runs (`SHOW autovacuum`).
pub async fn autovacuum_on(executor: impl PgExecutor<'_>) -> Result<bool, sqlx::Error> {
    let setting: String = sqlx::query_scalar("SHOW autovacuum")
        .fetch_one(executor)
        .await?;
    Ok(setting == "on")
}

/// What a pass with `retentions` (`(table, seconds)`, as [`prune_batch`] takes them; a table
/// not listed is not pruned) would delete now, per table, in one snapshot and in the pass's
/// order: the runs first, with their events and jobs, then what the other passes find left.
pub async fn count(
    executor: impl PgExecutor<'_>,
    retentions: &[(Table, f64)],
) -> Result<Deleted, sqlx::Error> {
    let keep = |table: Table| {
        retentions
            .iter()
            .find(|(t, _)| *t == table)
            .map(|(_, s)| *s)
    };
    // A NULL retention makes every cut-off comparison NULL: nothing of that table is counted.
    let sql = format!(
        "WITH doomed_runs AS MATERIALIZED (SELECT r.id FROM operation_runs r WHERE {runs})
         SELECT (SELECT count(*) FROM processed_commands c WHERE {inbox}),
                (SELECT count(*) FROM operation_run_events e
                 WHERE e.run_id IN (SELECT id FROM doomed_runs))
                + (SELECT count(*) FROM operation_run_events e
                   WHERE {events}
                     AND NOT EXISTS (SELECT 1 FROM doomed_runs d WHERE d.id = e.run_id)),
                (SELECT count(*) FROM operation_run_jobs j
                 WHERE j.run_id IN (SELECT id FROM doomed_runs))
                + (SELECT count(*) FROM operation_run_jobs j
                   WHERE {jobs}
                     AND NOT EXISTS (SELECT 1 FROM doomed_runs d WHERE d.id = j.run_id)),
                (SELECT count(*) FROM doomed_runs)",
        inbox = inbox_may_go("$1"),
        events = event_may_go("$2"),
        jobs = job_may_go("$3"),
        runs = run_may_go("$4"),
    );
    let (inbox, events, jobs, runs): (i64, i64, i64, i64) = sqlx::query_as(&sql)
        .bind(keep(Table::Inbox))
        .bind(keep(Table::Events))
        .bind(keep(Table::Jobs))
        .bind(keep(Table::Runs))
        .fetch_one(executor)
        .await?;
    Ok(Deleted {
        inbox: count_of(inbox),
        events: count_of(events),
        jobs: count_of(jobs),
        runs: count_of(runs),
    })
}
