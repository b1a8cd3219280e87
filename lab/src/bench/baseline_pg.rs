//! The baseline that does the service's Postgres work: the simplest correct pipeline with the
//! same I/O, in the bench's own process, so that `ratio_pg` (service ÷ this) isolates what the
//! service adds to the machine's Postgres and RabbitMQ.
//!
//! The bench publishes the service workload's messages (the same bodies and kinds, dispatches
//! and their duplicates first, each run's start, increments and completion a few runs later, as
//! the service workload publishes progress once a dispatch is answered) with confirms to a quorum
//! queue of its own. One consumer (the service's prefetch, batch size and batch window) takes a
//! batch and, in **one transaction**: looks the command ids up in the inbox
//! (`processed_commands`), inserts the new runs with one `INSERT … ON CONFLICT DO NOTHING` (the
//! same unique indexes dedupe), finds the active run of each duplicate, locks the batch's runs
//! `FOR UPDATE` with their last event sequence, applies the changes in memory, then writes every
//! changed run, event and inbox row with one statement into the service's own tables (every index
//! of the schema). After the commit it publishes the events (CloudEvents JSON of the service's
//! size) to a fanout exchange whose quorum queue a subscriber drains and, while the next batch
//! is applied, waits for the confirms and acks the batch with one multiple-ack. Correct because a redelivered command finds its inbox
//! row (its events would be published again from the stored rows); no outbox, no relay, no
//! lanes, no replies, one consumer. The rate is commands ÷ (first publish → last ack).
//!
//! The tables are emptied afterwards, so the service phase starts on an empty database as before.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ExchangeKind};
use serde_json::{json, Map, Value};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use tokio::sync::Semaphore;

use super::baseline::declare;
use super::driver::consume_no_ack;
use super::prebuilt::RunPlan;
use crate::publisher::Window;
use crate::sandbox::Sandbox;
use crate::LabError;
use operation_runs::broker::connection::connect;
use operation_runs::broker::publisher::{confirm_all, ConfirmPublisher};
use operation_runs::domain::{decode_command, Command, CommandAction, RunStatus};

/// Runs whose progress is published this many runs after their dispatch (the service workload
/// publishes a run's progress once its dispatch is answered, a few hundred commands later).
const PROGRESS_LAG: usize = 64;
/// Longest the whole baseline may take.
const DEADLINE: Duration = Duration::from_secs(240);

/// What the Postgres baseline measured.
#[derive(Debug, Clone, Copy)]
pub struct PgBaselineResult {
    /// Commands consumed.
    pub commands: u64,
    /// First publish → last ack.
    pub elapsed: Duration,
    /// Transactions (one per batch).
    pub batches: u64,
    /// Events published.
    pub events: u64,
    /// Mean size of an event body, bytes.
    pub event_bytes: f64,
    /// Publishes nacked (bench and consumer).
    pub nacks: u64,
}

impl PgBaselineResult {
    /// Commands per second.
    pub fn rate(&self) -> f64 {
        self.commands as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// How the consumer batches: the service's settings.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Prefetch of the consuming channel.
    pub prefetch: u16,
    /// Most commands per batch.
    pub batch_size: usize,
    /// How long a batch waits for more after its first command.
    pub window: Duration,
}

/// Runs the baseline on `plans` (the service workload's shape) on queues and exchanges of
/// `sandbox`, writing into its database through `pool` (the caller's, so that its sessions are
/// still there to be counted when the phase's CPU is read; then [`empty_tables`]), at most
/// `in_flight` commands unacked.
pub async fn run(
    amqp_url: &str,
    connection: &Connection,
    sandbox: &mut Sandbox,
    pool: &PgPool,
    plans: &[RunPlan],
    batching: Batching,
    in_flight: u64,
) -> Result<PgBaselineResult, LabError> {
    let input = sandbox.own_queue("baseline_pg.in");
    let input_exchange = sandbox.own_exchange("baseline_pg.in");
    let output = sandbox.own_queue("baseline_pg.out");
    let output_exchange = sandbox.own_exchange("baseline_pg.out");
    let setup = connection.create_channel().await?;
    declare(&setup, &input_exchange, ExchangeKind::Topic, &input, "#").await?;
    declare(&setup, &output_exchange, ExchangeKind::Fanout, &output, "").await?;
    let _ = setup.close(200, "declared".into()).await;

    let messages = ordered(plans);
    let total = messages.len() as u64;
    let credit = Arc::new(Semaphore::new(in_flight as usize));
    let consumer_connection = connect(amqp_url, "oprun-lab bench pg baseline consumer").await?;
    let consumer = Consumer {
        pool: pool.clone(),
        exchange: output_exchange.clone(),
        batching,
        total,
        credit: credit.clone(),
        nacks: Arc::default(),
        events: Arc::default(),
        event_bytes: Arc::default(),
        batches: Arc::default(),
    };
    let stats = consumer.clone();
    let channel = consumer_connection.create_channel().await?;
    channel
        .basic_qos(batching.prefetch, BasicQosOptions::default())
        .await?;
    let deliveries = channel
        .basic_consume(
            input.as_str().into(),
            "bench-pg-baseline".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let publisher = ConfirmPublisher::open(&consumer_connection).await?;
    let consuming = tokio::spawn(consumer.run(channel, deliveries, publisher));

    let drain_channel = connection.create_channel().await?;
    let mut drained = consume_no_ack(&drain_channel, &output, "").await?;
    let drain = tokio::spawn(async move { while let Some(Ok(_)) = drained.next().await {} });

    let window = Window::open(connection, 1_000).await?;
    let mut first: Option<Instant> = None;
    let publishing = async {
        for m in &messages {
            credit
                .acquire()
                .await
                .expect("the credit semaphore is never closed")
                .forget();
            let mut properties = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2)
                .with_message_id(m.command_id.as_str().into());
            if let Some(run) = m.dispatch_of {
                properties = properties.with_correlation_id(run.to_string().into());
            }
            let at = window
                .publish(&input_exchange, m.routing_key, &m.body, properties)
                .await?;
            first.get_or_insert(at);
        }
        window.drain().await;
        Ok::<(), LabError>(())
    };
    tokio::time::timeout(DEADLINE, publishing)
        .await
        .map_err(|_| LabError::Invalid("the Postgres baseline's publisher timed out".into()))??;
    let last_ack = tokio::time::timeout(DEADLINE, consuming)
        .await
        .map_err(|_| LabError::Invalid("the Postgres baseline's consumer timed out".into()))?
        .map_err(|e| {
            LabError::Invalid(format!("the Postgres baseline's consumer failed: {e}"))
        })??;
    drain.abort();
    let _ = drain_channel.close(200, "done".into()).await;
    window.close().await;
    let _ = consumer_connection.close(200, "done".into()).await;
    let first = first.unwrap_or(last_ack);
    let events = stats.events.load(Ordering::Relaxed);
    Ok(PgBaselineResult {
        commands: total,
        elapsed: last_ack.saturating_duration_since(first),
        batches: stats.batches.load(Ordering::Relaxed),
        events,
        event_bytes: stats.event_bytes.load(Ordering::Relaxed) as f64 / events.max(1) as f64,
        nacks: stats.nacks.load(Ordering::Relaxed) + window.nacks(),
    })
}

/// A message of the baseline's workload.
struct Message {
    routing_key: &'static str,
    command_id: String,
    body: Vec<u8>,
    /// For a dispatch, the plan it belongs to (its progress names the plan, not a run id).
    dispatch_of: Option<usize>,
}

/// The workload in publishing order: run `i`'s dispatches, then the progress of run
/// `i - PROGRESS_LAG`, whose placeholder run id is its plan's number + 1.
fn ordered(plans: &[RunPlan]) -> Vec<Message> {
    let mut out = Vec::new();
    for i in 0..plans.len() + PROGRESS_LAG {
        if let Some(plan) = plans.get(i) {
            out.extend(plan.dispatches.iter().map(|d| Message {
                routing_key: d.routing_key,
                command_id: d.command_id.clone(),
                body: d.body.clone(),
                dispatch_of: Some(i),
            }));
        }
        if let Some(lagging) = i.checked_sub(PROGRESS_LAG) {
            out.extend(plans[lagging].progress.iter().map(|t| Message {
                routing_key: t.routing_key,
                command_id: t.command_id.clone(),
                body: t.body(lagging as i64 + 1),
                dispatch_of: None,
            }));
        }
    }
    out
}

/// The consumer: batches, transactions, event publishes, acks.
#[derive(Clone)]
struct Consumer {
    pool: PgPool,
    exchange: String,
    batching: Batching,
    total: u64,
    credit: Arc<Semaphore>,
    nacks: Arc<AtomicU64>,
    events: Arc<AtomicU64>,
    event_bytes: Arc<AtomicU64>,
    batches: Arc<AtomicU64>,
}

impl Consumer {
    /// Consumes until `total` commands are acked; returns the instant of the last ack.
    async fn run(
        self,
        consuming: lapin::Channel,
        mut deliveries: lapin::Consumer,
        publisher: ConfirmPublisher,
    ) -> Result<Instant, LabError> {
        // The plan number → run id, learnt from the dispatches' inserts (progress names plans).
        let mut runs_of_plans: HashMap<usize, i64> = HashMap::new();
        let mut taken = 0u64;
        let mut settling: Option<tokio::task::JoinHandle<Result<(), LabError>>> = None;
        while taken < self.total {
            let Some(Ok(first)) = deliveries.next().await else {
                return Err(LabError::Invalid(
                    "the Postgres baseline's consumer was cancelled".into(),
                ));
            };
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + self.batching.window;
            while batch.len() < self.batching.batch_size {
                match tokio::time::timeout_at(deadline, deliveries.next()).await {
                    Ok(Some(Ok(d))) => batch.push(d),
                    _ => break,
                }
            }
            let mut decoded = Vec::with_capacity(batch.len());
            for d in &batch {
                let id = d.properties.message_id().as_ref().map(|m| m.as_str());
                let command = decode_command(&d.data, id).map_err(|r| {
                    LabError::Invalid(format!("a baseline command does not decode: {r:?}"))
                })?;
                let plan = d
                    .properties
                    .correlation_id()
                    .as_ref()
                    .and_then(|c| c.as_str().parse::<usize>().ok());
                decoded.push((command, plan));
            }
            let events = self.apply(&decoded, &mut runs_of_plans).await?;
            self.batches.fetch_add(1, Ordering::Relaxed);
            let mut pending = Vec::with_capacity(events.len());
            for body in &events {
                self.event_bytes
                    .fetch_add(body.len() as u64, Ordering::Relaxed);
                let properties = BasicProperties::default()
                    .with_content_type("application/cloudevents+json".into())
                    .with_delivery_mode(2);
                pending.push(
                    publisher
                        .start(&self.exchange, "", body, properties, false)
                        .await?,
                );
            }
            self.events
                .fetch_add(events.len() as u64, Ordering::Relaxed);
            // The confirms and the ack wait in a task of their own while the next batch is
            // applied (acks stay in order: each waits for the one before).
            let last = batch.last().expect("a batch is never empty").delivery_tag;
            let (channel, nacks, credit, n) = (
                consuming.clone(),
                self.nacks.clone(),
                self.credit.clone(),
                batch.len(),
            );
            let before = settling.take();
            settling = Some(tokio::spawn(async move {
                if confirm_all(pending).await.is_err() {
                    nacks.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(before) = before {
                    before
                        .await
                        .map_err(|e| LabError::Invalid(e.to_string()))??;
                }
                channel
                    .basic_ack(last, BasicAckOptions { multiple: true })
                    .await?;
                credit.add_permits(n);
                Ok::<(), LabError>(())
            }));
            taken += batch.len() as u64;
        }
        if let Some(last) = settling {
            last.await.map_err(|e| LabError::Invalid(e.to_string()))??;
        }
        Ok(Instant::now())
    }

    /// One batch in one transaction; returns the events to publish.
    async fn apply(
        &self,
        batch: &[(Command, Option<usize>)],
        runs_of_plans: &mut HashMap<usize, i64>,
    ) -> Result<Vec<Vec<u8>>, LabError> {
        let mut tx = self.pool.begin().await?;
        let ids: Vec<String> = batch
            .iter()
            .filter_map(|(c, _)| c.command_id.clone())
            .collect();
        let done: HashSet<String> = sqlx::query_scalar(
            "SELECT command_id FROM processed_commands WHERE command_id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
        let fresh: Vec<&(Command, Option<usize>)> = batch
            .iter()
            .filter(|(c, _)| c.command_id.as_ref().is_none_or(|id| !done.contains(id)))
            .collect();

        let now = Utc::now();
        let mut state: HashMap<i64, RunState> = HashMap::new();
        let mut outcome_of_dispatch: HashMap<String, (i64, bool)> = HashMap::new();
        insert_dispatches(
            &mut tx,
            &fresh,
            now,
            &mut state,
            &mut outcome_of_dispatch,
            runs_of_plans,
        )
        .await?;
        let locked: Vec<i64> = fresh
            .iter()
            .filter_map(|(c, _)| match &c.action {
                CommandAction::Progress(p) => runs_of_plans.get(&(p.run_id as usize - 1)).copied(),
                CommandAction::Dispatch(_) => None,
            })
            .filter(|id| !state.contains_key(id))
            .collect();
        lock_runs(&mut tx, &locked, &mut state).await?;

        let mut events: Vec<Vec<u8>> = Vec::new();
        let mut writes = Writes::default();
        for (command, _) in &fresh {
            let (run_id, result) = match &command.action {
                CommandAction::Dispatch(_) => {
                    let (run_id, created) = outcome_of_dispatch
                        .get(command.command_id.as_deref().unwrap_or_default())
                        .copied()
                        .ok_or_else(|| LabError::Invalid("a dispatch lost its run".into()))?;
                    if created {
                        let run = state.get_mut(&run_id).expect("a created run has a state");
                        let event = run.event("operation_run.queued", now);
                        events.push(writes.event(run, "operation_run.queued", event));
                    }
                    (run_id, json!({"run_id": run_id, "deduplicated": !created}))
                }
                CommandAction::Progress(p) => {
                    let run_id = runs_of_plans[&(p.run_id as usize - 1)];
                    let run = state.get_mut(&run_id).ok_or_else(|| {
                        LabError::Invalid("a progress command lost its run".into())
                    })?;
                    let kind = run.apply(p, now);
                    let event = run.event(kind, now);
                    events.push(writes.event(run, kind, event));
                    writes.changed.insert(run_id);
                    (run_id, json!({"run_id": run_id, "applied": true}))
                }
            };
            writes.inbox(command, run_id, result);
        }
        writes.flush(&mut tx, &state).await?;
        tx.commit().await?;
        Ok(events)
    }
}

/// What the baseline knows of a run inside a transaction.
#[derive(Debug, Clone)]
struct RunState {
    id: i64,
    workspace_id: i64,
    tenant_id: Option<i64>,
    run_type: String,
    identity: String,
    status: String,
    outcome: String,
    counts: Map<String, Value>,
    context: Value,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    completed_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
    sequence: i64,
}

impl RunState {
    /// Applies a progress command; returns the event type it causes.
    fn apply(
        &mut self,
        p: &operation_runs::domain::ProgressCommand,
        now: DateTime<Utc>,
    ) -> &'static str {
        self.updated_at = now;
        if let Value::Object(add) = p.counts.to_json() {
            for (k, v) in add {
                let sum = self.counts.get(&k).and_then(Value::as_u64).unwrap_or(0)
                    + v.as_u64().unwrap_or(0);
                self.counts.insert(k, sum.into());
            }
        }
        match p.status {
            Some(RunStatus::Running) => {
                self.status = "running".into();
                self.started_at.get_or_insert(now);
                "operation_run.started"
            }
            Some(RunStatus::Completed) => {
                self.status = "completed".into();
                self.outcome = p.outcome.map_or("succeeded", |o| o.as_str()).into();
                self.completed_at = Some(now);
                "operation_run.completed"
            }
            _ => "operation_run.progressed",
        }
    }

    /// The next event of the run: a CloudEvents document carrying the whole run, like the
    /// service's.
    fn event(&mut self, kind: &str, now: DateTime<Utc>) -> Value {
        self.sequence += 1;
        let time = |t: Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339());
        json!({
            "specversion": "1.0",
            "id": uuid::Uuid::new_v4().to_string(),
            "source": "oprun-lab/baseline-pg",
            "type": kind,
            "subject": format!("operation_runs/{}", self.id),
            "time": now.to_rfc3339(),
            "datacontenttype": "application/json",
            "sequence": self.sequence,
            "data": {
                "run": {
                    "id": self.id, "type": self.run_type, "status": self.status,
                    "outcome": self.outcome, "workspace_id": self.workspace_id,
                    "tenant_id": self.tenant_id, "user_id": null, "initiator_name": null,
                    "run_identity_hash": self.identity, "summary_counts": self.counts,
                    "failure_summary": [], "failure_overflow": {}, "context": self.context,
                    "created_at": self.created_at.to_rfc3339(),
                    "started_at": time(self.started_at), "completed_at": time(self.completed_at),
                    "updated_at": self.updated_at.to_rfc3339(),
                },
                "sequence": self.sequence,
            },
        })
    }
}

/// Inserts the batch's dispatches in one statement (the unique indexes refuse a second active
/// run of an identity), then finds the active run of each that conflicted. Records each
/// dispatch's run and whether it created it, and each new run's state.
async fn insert_dispatches(
    tx: &mut PgConnection,
    fresh: &[&(Command, Option<usize>)],
    now: DateTime<Utc>,
    state: &mut HashMap<i64, RunState>,
    outcome: &mut HashMap<String, (i64, bool)>,
    runs_of_plans: &mut HashMap<usize, i64>,
) -> Result<(), LabError> {
    let dispatches: Vec<(
        &Command,
        &operation_runs::domain::DispatchCommand,
        Option<usize>,
    )> = fresh
        .iter()
        .filter_map(|(c, plan)| match &c.action {
            CommandAction::Dispatch(d) => Some((c, d, *plan)),
            CommandAction::Progress(_) => None,
        })
        .collect();
    if dispatches.is_empty() {
        return Ok(());
    }
    let inserted: Vec<(i64, String, DateTime<Utc>)> = sqlx::query_as(
        "INSERT INTO operation_runs (workspace_id, tenant_id, type, run_identity_hash, context,
                                     created_at, updated_at)
         SELECT w, t, ty, h, c, $6, $6
         FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::jsonb[]) AS u(w, t, ty, h, c)
         ON CONFLICT DO NOTHING
         RETURNING id, run_identity_hash, created_at",
    )
    .bind(dispatches.iter().map(|(_, d, _)| d.scope.workspace_id).collect::<Vec<i64>>())
    .bind(dispatches.iter().map(|(_, d, _)| d.scope.tenant_id).collect::<Vec<Option<i64>>>())
    .bind(dispatches.iter().map(|(_, d, _)| d.run_type.as_str()).collect::<Vec<&str>>())
    .bind(dispatches.iter().map(|(_, d, _)| d.identity_hash.as_str()).collect::<Vec<&str>>())
    .bind(dispatches.iter().map(|(_, d, _)| Json(&d.context)).collect::<Vec<_>>())
    .bind(now)
    .fetch_all(&mut *tx)
    .await?;
    let mut new_by_identity: HashMap<String, i64> = HashMap::new();
    for (id, hash, created_at) in inserted {
        new_by_identity.insert(hash, id);
        let _ = created_at;
    }
    let conflicted: Vec<&str> = dispatches
        .iter()
        .map(|(_, d, _)| d.identity_hash.as_str())
        .filter(|h| !new_by_identity.contains_key(*h))
        .collect();
    let existing: HashMap<String, i64> = if conflicted.is_empty() {
        HashMap::new()
    } else {
        sqlx::query_as::<_, (String, i64)>(
            "SELECT run_identity_hash, id FROM operation_runs
             WHERE run_identity_hash = ANY($1) AND status IN ('queued', 'running')",
        )
        .bind(&conflicted)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect()
    };
    for (command, d, plan) in dispatches {
        let hash = d.identity_hash.as_str();
        let command_id = command.command_id.clone().unwrap_or_default();
        // The first dispatch of an identity in the batch created its run; the others are
        // answered with it.
        let (id, created) = match new_by_identity.get(hash) {
            Some(&id) if !state.contains_key(&id) => {
                state.insert(
                    id,
                    RunState {
                        id,
                        workspace_id: d.scope.workspace_id,
                        tenant_id: d.scope.tenant_id,
                        run_type: d.run_type.as_str().into(),
                        identity: hash.into(),
                        status: "queued".into(),
                        outcome: "pending".into(),
                        counts: Map::new(),
                        context: Value::Object(d.context.clone()),
                        created_at: now,
                        started_at: None,
                        completed_at: None,
                        updated_at: now,
                        sequence: 0,
                    },
                );
                (id, true)
            }
            Some(&id) => (id, false),
            None => (
                *existing
                    .get(hash)
                    .ok_or_else(|| LabError::Invalid("a duplicate dispatch found no run".into()))?,
                false,
            ),
        };
        if let Some(plan) = plan {
            runs_of_plans.entry(plan).or_insert(id);
        }
        outcome.insert(command_id, (id, created));
    }
    Ok(())
}

/// Locks `ids` (ascending) and reads their state and last event sequence.
async fn lock_runs(
    tx: &mut PgConnection,
    ids: &[i64],
    state: &mut HashMap<i64, RunState>,
) -> Result<(), LabError> {
    if ids.is_empty() {
        return Ok(());
    }
    #[allow(clippy::type_complexity)]
    let rows: Vec<(
        i64,
        i64,
        Option<i64>,
        String,
        String,
        String,
        String,
        Json<Map<String, Value>>,
        Json<Value>,
        DateTime<Utc>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        DateTime<Utc>,
    )> = sqlx::query_as(
        "SELECT id, workspace_id, tenant_id, type, run_identity_hash, status, outcome,
                summary_counts, context, created_at, started_at, completed_at, updated_at
         FROM operation_runs WHERE id = ANY($1) ORDER BY id FOR UPDATE",
    )
    .bind(ids)
    .fetch_all(&mut *tx)
    .await?;
    // After the lock: a sequence read in the locking statement could predate a commit it waited for.
    let sequences: HashMap<i64, i64> = sqlx::query_as(
        "SELECT run_id, max(sequence) FROM operation_run_events WHERE run_id = ANY($1) GROUP BY run_id",
    )
    .bind(ids)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    for (id, w, t, ty, h, status, outcome, counts, context, created, started, completed, updated) in
        rows
    {
        state.insert(
            id,
            RunState {
                id,
                workspace_id: w,
                tenant_id: t,
                run_type: ty,
                identity: h,
                status,
                outcome,
                counts: counts.0,
                context: context.0,
                created_at: created,
                started_at: started,
                completed_at: completed,
                updated_at: updated,
                sequence: sequences.get(&id).copied().unwrap_or(0),
            },
        );
    }
    Ok(())
}

/// The rows a batch writes at its end.
#[derive(Default)]
struct Writes {
    changed: HashSet<i64>,
    event_ids: Vec<uuid::Uuid>,
    event_runs: Vec<i64>,
    event_sequences: Vec<i64>,
    event_types: Vec<&'static str>,
    event_workspaces: Vec<i64>,
    event_tenants: Vec<Option<i64>>,
    event_docs: Vec<Value>,
    inbox_ids: Vec<String>,
    inbox_kinds: Vec<&'static str>,
    inbox_hashes: Vec<String>,
    inbox_runs: Vec<i64>,
    inbox_results: Vec<Value>,
}

impl Writes {
    /// Records `doc`, the next event of `run`, and returns its body for publishing.
    fn event(&mut self, run: &RunState, kind: &'static str, doc: Value) -> Vec<u8> {
        let body = serde_json::to_vec(&doc).expect("JSON values serialise");
        self.event_ids.push(uuid::Uuid::new_v4());
        self.event_runs.push(run.id);
        self.event_sequences.push(run.sequence);
        self.event_types.push(kind);
        self.event_workspaces.push(run.workspace_id);
        self.event_tenants.push(run.tenant_id);
        self.event_docs.push(doc);
        body
    }

    fn inbox(&mut self, command: &Command, run_id: i64, result: Value) {
        self.inbox_ids
            .push(command.command_id.clone().unwrap_or_default());
        self.inbox_kinds.push(command.kind.as_str());
        self.inbox_hashes.push(command.body_hash.clone());
        self.inbox_runs.push(run_id);
        self.inbox_results.push(result);
    }

    /// Every changed run, event and inbox row in one statement.
    async fn flush(
        &self,
        tx: &mut PgConnection,
        state: &HashMap<i64, RunState>,
    ) -> Result<(), LabError> {
        let runs: Vec<&RunState> = self.changed.iter().map(|id| &state[id]).collect();
        sqlx::query(
            "WITH changed_runs AS (
                 UPDATE operation_runs r SET status = u.status, outcome = u.outcome,
                        summary_counts = u.counts, started_at = u.started_at,
                        completed_at = u.completed_at, updated_at = u.updated_at
                 FROM unnest($1::bigint[], $2::text[], $3::text[], $4::jsonb[],
                             $5::timestamptz[], $6::timestamptz[], $7::timestamptz[])
                      AS u(id, status, outcome, counts, started_at, completed_at, updated_at)
                 WHERE r.id = u.id
                 RETURNING 1
             ), new_events AS (
                 INSERT INTO operation_run_events (id, run_id, sequence, type, workspace_id, tenant_id, cloud_event)
                 SELECT * FROM unnest($8::uuid[], $9::bigint[], $10::bigint[], $11::text[],
                                      $12::bigint[], $13::bigint[], $14::jsonb[])
                 RETURNING 1
             )
             INSERT INTO processed_commands (command_id, kind, body_hash, run_id, result)
             SELECT * FROM unnest($15::text[], $16::text[], $17::text[], $18::bigint[], $19::jsonb[])",
        )
        .bind(runs.iter().map(|r| r.id).collect::<Vec<i64>>())
        .bind(runs.iter().map(|r| r.status.as_str()).collect::<Vec<&str>>())
        .bind(runs.iter().map(|r| r.outcome.as_str()).collect::<Vec<&str>>())
        .bind(runs.iter().map(|r| Json(&r.counts)).collect::<Vec<_>>())
        .bind(runs.iter().map(|r| r.started_at).collect::<Vec<_>>())
        .bind(runs.iter().map(|r| r.completed_at).collect::<Vec<_>>())
        .bind(runs.iter().map(|r| r.updated_at).collect::<Vec<_>>())
        .bind(&self.event_ids)
        .bind(&self.event_runs)
        .bind(&self.event_sequences)
        .bind(&self.event_types)
        .bind(&self.event_workspaces)
        .bind(&self.event_tenants)
        .bind(self.event_docs.iter().map(Json).collect::<Vec<_>>())
        .bind(&self.inbox_ids)
        .bind(&self.inbox_kinds)
        .bind(&self.inbox_hashes)
        .bind(&self.inbox_runs)
        .bind(self.inbox_results.iter().map(Json).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

/// Empties what the baseline wrote into `pool`'s database (`DELETE`: the legacy tables' triggers refuse `TRUNCATE`),
/// then vacuums, so the service phase starts on tables as clean as before, autovacuum or not.
pub async fn empty_tables(pool: &PgPool) -> Result<(), LabError> {
    let mut tx = pool.begin().await?;
    for table in [
        "processed_commands",
        "operation_run_event_outbox",
        "operation_run_events",
        "operation_runs",
    ] {
        sqlx::query(&format!("DELETE FROM {table}"))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    let mut conn = pool.acquire().await?;
    sqlx::Executor::execute(
        &mut *conn,
        "VACUUM (ANALYZE) processed_commands, operation_run_event_outbox, operation_run_events, operation_runs",
    )
    .await?;
    Ok(())
}
