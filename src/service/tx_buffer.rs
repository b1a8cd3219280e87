//! What one transaction has done so far, and the rows it writes at its end.
//!
//! A batch applies many commands in one transaction. Instead of one round trip per inbox row and
//! per event, the buffer looks the whole batch's command ids up at once, remembers what earlier
//! commands of the same transaction did (an id applied twice in one batch, a scope already
//! checked, a run's last event sequence), and writes the inbox rows, events and jobs with one
//! multi-row statement each, just before commit.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::domain::{OperationRun, Rejection, RunEvent, RunScope};
use crate::store::batch_write::{self, BatchWrite};
use crate::store::inbox::{self, InboxRow, ProcessedCommand};
use crate::store::{events, runs};

/// Per-transaction state; create one per transaction attempt and [`TxBuffer::flush`] it before
/// commit.
#[derive(Debug, Default)]
pub struct TxBuffer {
    inbox: HashMap<String, Option<ProcessedCommand>>,
    scopes: HashMap<(RunScope, Option<i64>), Result<(), Rejection>>,
    sequences: HashMap<i64, i64>,
    inbox_rows: Vec<InboxRow>,
    events: Vec<(RunEvent, i64, Option<i64>)>,
    jobs: Vec<OperationRun>,
    runs: HashMap<i64, OperationRun>,
    dirty: Vec<i64>,
    summary_dirty: HashSet<i64>,
    tenant_active: HashMap<i64, i64>,
    now: Option<DateTime<Utc>>,
}

impl TxBuffer {
    /// Looks up every id of a batch in the inbox in one round trip.
    pub async fn prefetch_inbox(
        &mut self,
        conn: &mut PgConnection,
        command_ids: Vec<String>,
    ) -> Result<(), sqlx::Error> {
        let found = inbox::find_many(conn, &command_ids).await?;
        for id in command_ids {
            let record = found.get(&id).cloned();
            self.inbox.insert(id, record);
        }
        Ok(())
    }

    /// The inbox record of `command_id`: applied earlier in this transaction, or before it.
    pub async fn processed(
        &mut self,
        conn: &mut PgConnection,
        command_id: &str,
    ) -> Result<Option<ProcessedCommand>, sqlx::Error> {
        if let Some(known) = self.inbox.get(command_id) {
            return Ok(known.clone());
        }
        let found = inbox::find_many(conn, &[command_id.to_owned()])
            .await?
            .remove(command_id);
        self.inbox.insert(command_id.to_owned(), found.clone());
        Ok(found)
    }

    /// Records an applied command (written at flush, visible to later commands now).
    pub fn record_processed(&mut self, row: InboxRow) {
        self.inbox.insert(
            row.command_id.clone(),
            Some(ProcessedCommand {
                body_hash: row.body_hash.clone(),
                result: row.result.clone(),
            }),
        );
        self.inbox_rows.push(row);
    }

    /// A scope check already made in this transaction.
    pub fn checked_scope(
        &self,
        scope: RunScope,
        user_id: Option<i64>,
    ) -> Option<Result<(), Rejection>> {
        self.scopes.get(&(scope, user_id)).cloned()
    }

    /// Remembers a scope check.
    pub fn remember_scope(
        &mut self,
        scope: RunScope,
        user_id: Option<i64>,
        result: Result<(), Rejection>,
    ) {
        self.scopes.insert((scope, user_id), result);
    }

    /// Tells the buffer the last stored sequence of a run it has locked.
    pub fn know_sequence(&mut self, run_id: i64, last: i64) {
        self.sequences.entry(run_id).or_insert(last);
    }

    /// The next sequence of `run_id`, asking the database only on the first event of the run in
    /// this transaction. The caller holds the run's row lock (or created the run).
    pub async fn next_sequence(
        &mut self,
        conn: &mut PgConnection,
        run_id: i64,
    ) -> Result<i64, sqlx::Error> {
        let last = match self.sequences.get(&run_id) {
            Some(last) => *last,
            None => events::last_sequence(conn, run_id).await?,
        };
        self.sequences.insert(run_id, last + 1);
        Ok(last + 1)
    }

    /// Queues an event about `run` (written at flush, in this order).
    pub fn push_event(&mut self, event: RunEvent, run: &OperationRun) {
        self.events.push((event, run.workspace_id, run.tenant_id));
    }

    /// Queues the job of a new run.
    pub fn push_job(&mut self, run: OperationRun) {
        self.jobs.push(run);
    }

    /// Locks runs `ids` (ascending id order, the global lock order) and caches them with the
    /// last sequence of their events, so progress commands on them need no round trip.
    pub async fn lock_runs(
        &mut self,
        conn: &mut PgConnection,
        ids: &[i64],
    ) -> Result<(), sqlx::Error> {
        let (locked, now) = runs::lock_many(conn, ids).await?;
        self.know_now(now);
        for (run, last_sequence) in locked {
            self.adopt(run, last_sequence);
        }
        Ok(())
    }

    /// Caches a run the transaction has locked, with the last sequence of its events.
    pub fn adopt(&mut self, run: OperationRun, last_sequence: i64) {
        self.know_sequence(run.id, last_sequence);
        self.runs.entry(run.id).or_insert(run);
    }

    /// A cached run, as changed so far by this transaction.
    pub fn run(&self, id: i64) -> Option<&OperationRun> {
        self.runs.get(&id)
    }

    /// Replaces a cached run with its new values (written at flush); `summary_changed` says
    /// whether its `failure_summary` entries changed (only then is the array written).
    pub fn store_run(&mut self, run: OperationRun, summary_changed: bool) {
        if !self.dirty.contains(&run.id) {
            self.dirty.push(run.id);
        }
        if summary_changed {
            self.summary_dirty.insert(run.id);
        }
        self.runs.insert(run.id, run);
    }

    /// Takes the per-tenant quota locks of `tenants` (ascending, after the identity locks: the
    /// global lock order) and counts their active runs. While the lock is held no other
    /// transaction creates a run of the tenant, so the count stays exact (completions elsewhere
    /// only lower it).
    pub async fn lock_tenants(
        &mut self,
        conn: &mut PgConnection,
        tenants: &[i64],
    ) -> Result<(), sqlx::Error> {
        let tenants: Vec<i64> = tenants
            .iter()
            .copied()
            .filter(|t| !self.tenant_active.contains_key(t))
            .collect();
        if tenants.is_empty() {
            return Ok(());
        }
        runs::lock_tenant_quotas(conn, &tenants).await?;
        // A statement of its own, after the locks: a count in the locking statement would use the
        // snapshot taken before a wait, and miss the runs the previous holder just committed.
        let counts = runs::count_active_by_tenant(conn, &tenants).await?;
        for tenant in tenants {
            self.tenant_active
                .insert(tenant, counts.get(&tenant).copied().unwrap_or(0));
        }
        Ok(())
    }

    /// Active runs of a tenant locked with [`TxBuffer::lock_tenants`], counting this
    /// transaction's own changes.
    pub fn tenant_active(&self, tenant_id: i64) -> Option<i64> {
        self.tenant_active.get(&tenant_id).copied()
    }

    /// Records that this transaction made a run of `tenant_id` active (+1) or completed one (−1).
    pub fn count_tenant_active(&mut self, tenant_id: i64, delta: i64) {
        if let Some(n) = self.tenant_active.get_mut(&tenant_id) {
            *n += delta;
        }
    }

    /// Tells the buffer the transaction's `now()`, read by a statement that returned it anyway
    /// (row locks, a new run's `created_at`), so [`TxBuffer::now`] needs no round trip.
    pub fn know_now(&mut self, now: DateTime<Utc>) {
        self.now.get_or_insert(now);
    }

    /// The transaction's `now()`, if it was read (always, when the transaction wrote an event).
    pub fn known_now(&self) -> Option<DateTime<Utc>> {
        self.now
    }

    /// The transaction's timestamp (Postgres `now()`), read once: the one clock of every run
    /// change and event of the transaction.
    pub async fn now(&mut self, conn: &mut PgConnection) -> Result<DateTime<Utc>, sqlx::Error> {
        if let Some(now) = self.now {
            return Ok(now);
        }
        let now = crate::store::locks::transaction_now(conn).await?;
        self.now = Some(now);
        Ok(now)
    }

    /// Writes the changed runs, buffered events, jobs and inbox rows, in one statement.
    #[tracing::instrument(
        level = "debug",
        skip_all,
        fields(runs = self.dirty.len(), events = self.events.len(), commands = self.inbox_rows.len())
    )]
    pub async fn flush(&mut self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        let write = BatchWrite {
            runs: self
                .dirty
                .iter()
                .filter_map(|id| {
                    let run = self.runs.get(id)?;
                    Some((run, self.summary_dirty.contains(id)))
                })
                .collect(),
            events: &self.events,
            jobs: &self.jobs,
            inbox: &self.inbox_rows,
        };
        batch_write::write(conn, &write).await?;
        self.dirty.clear();
        self.summary_dirty.clear();
        self.events.clear();
        self.jobs.clear();
        self.inbox_rows.clear();
        Ok(())
    }
}
