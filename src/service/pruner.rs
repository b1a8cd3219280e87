//! The pruner: deletes inbox rows, published events and jobs, and (with a run retention)
//! completed runs past their retention, in small batches with a pause between them, so that
//! pruning never blocks the pipeline. `serve` runs a pass every `--prune-interval`; `oprun prune`
//! runs one on demand. Each batch is a short transaction holding the prune advisory lock: with
//! several instances, one prunes at a time (see `store::retention`).

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::RetentionSettings;
use crate::store::retention::{self, Deleted, Table};

/// The tables a pass prunes with their retention in seconds, in pruning order (runs only when a
/// run retention is set).
pub fn retentions(settings: &RetentionSettings) -> Vec<(Table, f64)> {
    Table::ALL
        .into_iter()
        .filter_map(|table| {
            let keep = match table {
                Table::Inbox => Some(settings.inbox_retention),
                Table::Events => Some(settings.event_retention),
                Table::Jobs => Some(settings.job_retention),
                Table::Runs => settings.run_retention,
            }?;
            Some((table, keep.as_secs_f64()))
        })
        .collect()
}

/// Rows per table a pass deleted (or, for a dry run, would delete), cascaded rows included: a
/// deleted run's events and job count under events and jobs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// The tables pruned (their passes ran), in pruning order.
    pub pruned: Vec<Table>,
    /// Rows deleted from each table.
    pub deleted: Deleted,
}

impl PruneReport {
    /// Rows of every table together.
    pub fn total(&self) -> u64 {
        self.deleted.total()
    }

    /// Rows of `table` (`None`: the table was not pruned and lost no row to another pass).
    pub fn of(&self, table: Table) -> Option<u64> {
        let n = self.deleted.of(table);
        (self.pruned.contains(&table) || n > 0).then_some(n)
    }
}

/// One pass over every table: batches of `--prune-batch` rows, `--prune-pause` apart, until
/// nothing past retention is left (or `shutdown`, between two batches).
pub async fn prune_once(
    pool: &PgPool,
    settings: &RetentionSettings,
    shutdown: &CancellationToken,
) -> Result<PruneReport, sqlx::Error> {
    let mut report = PruneReport::default();
    for (table, keep_secs) in retentions(settings) {
        report.pruned.push(table);
        let mut after = 0;
        loop {
            let batch = {
                let mut conn = pool.acquire().await?;
                retention::prune_batch(&mut conn, table, keep_secs, settings.prune_batch, after)
                    .await?
            };
            report.deleted.add(batch.deleted);
            let more = match batch.next {
                Some(next) => {
                    after = next;
                    true
                }
                None => {
                    table_by_time(table) && batch.deleted.of(table) >= settings.prune_batch as u64
                }
            };
            if !more {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(settings.prune_pause) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        if shutdown.is_cancelled() {
            break;
        }
    }
    Ok(report)
}

/// Whether `table` is pruned through its time index (batches until one comes back short) rather
/// than by key windows (batches until the window passes the cut-off).
fn table_by_time(table: Table) -> bool {
    table == Table::Inbox
}

/// What a pass would delete now, per table (cascaded rows included), changing nothing: on an
/// unchanged database, exactly what [`prune_once`] then reports.
pub async fn dry_run(
    pool: &PgPool,
    settings: &RetentionSettings,
) -> Result<PruneReport, sqlx::Error> {
    let retentions = retentions(settings);
    Ok(PruneReport {
        pruned: retentions.iter().map(|(t, _)| *t).collect(),
        deleted: retention::count(pool, &retentions).await?,
    })
}

/// Vacuums what a pass deleted from and the event outbox (a queue table: every published event
/// leaves a dead row), so that their space is reused even where autovacuum is off or slow to
/// visit; with autovacuum on, this is cheap (pages already clean are skipped). Where autovacuum
/// is off (`autovacuum_on` false), also the runs and jobs: they are updated in place (every
/// progress command and every published job leaves a dead row version), and nothing else would
/// reclaim them. Without that, a 30-minute soak on such a server piled up more dead run versions
/// than live ones, and the tenant quota's count of active runs slowed the pipeline from minute 9.
/// Where autovacuum runs, it paces those two tables itself.
/// Only the tables in `may_vacuum` (see [`vacuumable_tables`]).
async fn vacuum_after(
    pool: &PgPool,
    report: &PruneReport,
    autovacuum_on: bool,
    may_vacuum: &[&'static str],
) -> Result<(), sqlx::Error> {
    let mut tables: Vec<&'static str> = Table::ALL
        .into_iter()
        .filter(|t| report.deleted.of(*t) > 0)
        .map(Table::name)
        .collect();
    let updated_in_place = [Table::Runs.name(), Table::Jobs.name()];
    let extra: &[&'static str] = if autovacuum_on {
        &[]
    } else {
        &updated_in_place
    };
    for &always in extra.iter().chain(&[retention::EVENT_OUTBOX]) {
        if !tables.contains(&always) {
            tables.push(always);
        }
    }
    tables.retain(|t| may_vacuum.contains(t));
    if tables.is_empty() {
        return Ok(());
    }
    let mut conn = pool.acquire().await?;
    retention::vacuum(&mut conn, &tables).await
}

/// The tables the pruner may vacuum: those this database role owns. A role that owns none
/// (`oprun_service` of `ops/postgres/roles.sql`) leaves them to autovacuum, said once in a
/// warning, rather than sending a `VACUUM` PostgreSQL skips with a warning of its own on every
/// pass. Unknown (the check failed) counts as all: a `VACUUM` that may not run does nothing.
async fn vacuumable_tables(pool: &PgPool, autovacuum_on: bool) -> Vec<&'static str> {
    let all: Vec<&'static str> = Table::ALL
        .into_iter()
        .map(Table::name)
        .chain([retention::EVENT_OUTBOX])
        .collect();
    let may = retention::vacuumable(pool, &all)
        .await
        .unwrap_or_else(|_| all.clone());
    let skipped: Vec<&str> = all.iter().copied().filter(|t| !may.contains(t)).collect();
    if !skipped.is_empty() {
        let reclaimed_by = if autovacuum_on {
            "autovacuum reclaims their dead rows"
        } else {
            "autovacuum is off: run VACUUM on them as their owner, or nothing reclaims their dead rows"
        };
        tracing::warn!(
            tables = %skipped.join(" "),
            "the pruner does not VACUUM these tables: this database role does not own them \
             (PostgreSQL lets only a table's owner vacuum it); {reclaimed_by}"
        );
    }
    may
}

/// `serve`'s pruner: a pass every `--prune-interval` until `shutdown` (never, when it is 0).
/// A failed pass is logged and retried at the next interval.
pub async fn prune_forever(pool: PgPool, settings: RetentionSettings, shutdown: CancellationToken) {
    if settings.prune_interval == Duration::ZERO {
        return;
    }
    // Read once: a server's autovacuum setting needs a reload to change. Unknown counts as off
    // (vacuuming a clean table costs little).
    let autovacuum_on = retention::autovacuum_on(&pool).await.unwrap_or(false);
    let may_vacuum = vacuumable_tables(&pool, autovacuum_on).await;
    loop {
        match prune_once(&pool, &settings, &shutdown).await {
            Ok(report) => {
                if report.total() > 0 {
                    let rows: Vec<String> = Table::ALL
                        .into_iter()
                        .filter_map(|t| Some(format!("{}={}", t.name(), report.of(t)?)))
                        .collect();
                    tracing::info!(rows = %rows.join(" "), "pruned history past retention");
                }
                if let Err(e) = vacuum_after(&pool, &report, autovacuum_on, &may_vacuum).await {
                    tracing::warn!(error = %e, "vacuuming after pruning failed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "pruning failed; retrying at the next interval"),
        }
        tokio::select! {
            _ = tokio::time::sleep(settings.prune_interval) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
