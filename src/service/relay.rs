//! The outbox relay: publishes recorded events to `N.events` and jobs to `N.jobs` with publisher
//! confirms, then stamps them published.
//!
//! Events and jobs are relayed independently, each led by a session-level advisory lock (one key
//! for events, one for jobs) that the relay's own database session takes and keeps: with several
//! instances one relay publishes events, so the per-run order of events survives (a second
//! instance never publishes event n+1 while the first is still publishing n), and one publishes
//! jobs, so a job is not handed off twice. The lock goes with the session (a crash, a lost
//! connection, the relay's end), and another instance takes over at its next round. A job
//! failure never holds events back, nor the reverse.
//!
//! No transaction is open while the broker confirms: a round reads its batch (one statement),
//! publishes and waits for the confirms, then marks what was confirmed in a short statement or
//! transaction of its own. Marking an event deletes its position from the narrow outbox table;
//! the event row itself is never rewritten.
//!
//! Every publish is settled on its own: what the broker confirmed is stamped published even
//! when a later publish of the round is nacked or the channel fails, so it is never published
//! again. A nacked event stays in the outbox and is retried after a backoff. A nacked job (an
//! executor queue refusing it, e.g. `x-overflow: reject-publish`) is retried with a per-job
//! backoff and, after `--job-publish-attempts`, its run is failed with `dispatch.rejected`.
//! A crash between confirm and commit republishes: delivery is at least once, and the event id
//! lets subscribers dedupe.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::apply::{complete_as_failed, ApplyError, ApplySettings};
use super::metrics::{Metrics, Stage};
use super::tx_buffer::TxBuffer;
use crate::broker::publisher::{
    confirm_all, publish_round, Answer, ConfirmPublisher, Confirmed, Outgoing,
};
use crate::broker::{messages, BasicProperties, BrokerError, Connection, Topology};
use crate::domain::trace_context::{TRACEPARENT, TRACESTATE};
use crate::domain::{Failure, OperationRunType, RunEventType};
use crate::store::events::{self, StoredEvent};
use crate::store::{jobs, runs};

/// Key of the advisory lock that elects the active event relay of a database.
const EVENT_RELAY_LOCK_KEY: i64 = 0x6f70_7275_6e01;
/// Key of the advisory lock that elects the active job relay of a database.
const JOB_RELAY_LOCK_KEY: i64 = 0x6f70_7275_6e02;
/// Longest wait between two publishes of a nacked job.
pub const MAX_JOB_RETRY_DELAY: Duration = Duration::from_secs(60);
/// The failure code of a run whose job the broker kept refusing.
pub const DISPATCH_REJECTED: &str = "dispatch.rejected";
/// The failure code of a run whose job no executor queue is bound for.
pub const DISPATCH_UNROUTABLE: &str = "dispatch.unroutable";

/// Why a relay round failed (it is retried on the next round).
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] sqlx::Error),
    /// The broker failed or nacked.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// Failing an unroutable run failed.
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayReport {
    /// Events published.
    pub events: usize,
    /// Events the broker nacked (left in the outbox, retried after a backoff).
    pub events_nacked: usize,
    /// Outbox positions without an event, skipped (deleted from the outbox: nothing to publish).
    pub orphans: usize,
    /// Jobs published.
    pub jobs: usize,
    /// Jobs no executor queue was bound for (their runs were failed).
    pub unroutable: usize,
    /// Jobs the broker nacked that will be tried again later.
    pub jobs_retried: usize,
    /// Jobs nacked `--job-publish-attempts` times (their runs were failed).
    pub rejected: usize,
}

impl RelayReport {
    /// Whether the round settled anything (published, or failed a run): if so, more may wait.
    pub fn progressed(&self) -> bool {
        self.events + self.orphans + self.jobs + self.unroutable + self.rejected > 0
    }
}

/// How the relay works: its batch and the bound on nacked job publishes.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Most events, and most jobs, per round.
    pub batch_size: i64,
    /// Publishes of one job the broker may nack before its run fails `dispatch.rejected`.
    pub job_publish_attempts: u32,
    /// Delay after the first nack of a job; doubles per attempt, at most [`MAX_JOB_RETRY_DELAY`].
    pub job_retry_base: Duration,
}

impl RelaySettings {
    /// What `--relay-batch`, `--job-publish-attempts` and `--job-retry-base` say.
    pub fn new(outbox: &crate::config::OutboxSettings, jobs: &crate::config::JobSettings) -> Self {
        Self {
            batch_size: outbox.relay_batch,
            job_publish_attempts: jobs.job_publish_attempts,
            job_retry_base: jobs.job_retry_base,
        }
    }

    /// The delay before attempt `attempts + 1` of a job nacked `attempts` times.
    pub fn job_retry_delay(&self, attempts: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempts.saturating_sub(1));
        self.job_retry_base
            .saturating_mul(factor)
            .min(MAX_JOB_RETRY_DELAY)
    }
}

/// The relay's own database session, and the leadership locks it holds.
#[derive(Default)]
struct Session {
    conn: Option<sqlx::PgConnection>,
    /// Whether `conn` holds the event relay lock.
    events: bool,
    /// Whether `conn` holds the job relay lock.
    jobs: bool,
}

/// Publishes the outboxes of one database.
pub struct OutboxRelay {
    pool: PgPool,
    session: tokio::sync::Mutex<Session>,
    publisher: std::sync::Mutex<ConfirmPublisher>,
    topology: Topology,
    ctx: ApplySettings,
    settings: RelaySettings,
    metrics: Arc<Metrics>,
}

/// The AMQP properties of a stored event (its shape is `broker::messages`'s).
pub fn event_properties(event: &StoredEvent) -> BasicProperties {
    messages::event_properties(&messages::EventMessage {
        id: &event.id.to_string(),
        event_type: &event.event_type,
        run_id: event.run_id,
        workspace_id: event.workspace_id,
        tenant_id: event.tenant_id,
        sequence: event.sequence,
        timestamp: event.created_at.timestamp().max(0) as u64,
    })
}

/// Publishes `events` (in order, pipelined) to `exchange` and waits for every confirm.
pub async fn publish_events(
    publisher: &ConfirmPublisher,
    exchange: &str,
    routing_key: &str,
    events: &[StoredEvent],
) -> Result<(), BrokerError> {
    let mut pending = Vec::with_capacity(events.len());
    for event in events {
        let body = event.cloud_event.as_bytes();
        pending.push(
            publisher
                .start(exchange, routing_key, body, event_properties(event), false)
                .await?,
        );
    }
    confirm_all(pending).await?;
    Ok(())
}

/// The AMQP properties of a job: headers `run_id` and the run's trace context (`traceparent`,
/// `tracestate`), so the executor's work joins the dispatcher's trace.
fn job_properties(job: &jobs::StoredJob) -> BasicProperties {
    messages::job_properties(
        job.run_id,
        jobs::is_cancel(job),
        &[
            (TRACEPARENT, job.traceparent.as_deref()),
            (TRACESTATE, job.tracestate.as_deref()),
        ],
    )
}

/// Which relay lock a round needs.
#[derive(Clone, Copy)]
enum Lead {
    Events,
    Jobs,
}

impl Session {
    /// The session, if it holds (or now takes) the lock of `lead`; `None` when another
    /// instance leads. A new session is opened when there is none.
    async fn lead(
        &mut self,
        pool: &PgPool,
        lead: Lead,
    ) -> Result<Option<&mut sqlx::PgConnection>, sqlx::Error> {
        if self.conn.is_none() {
            self.conn = Some(pool.acquire().await?.detach());
            (self.events, self.jobs) = (false, false);
        }
        let (held, key) = match lead {
            Lead::Events => (&mut self.events, EVENT_RELAY_LOCK_KEY),
            Lead::Jobs => (&mut self.jobs, JOB_RELAY_LOCK_KEY),
        };
        let conn = self.conn.as_mut().expect("opened above");
        if !*held {
            *held = crate::store::locks::try_session_lock_key(conn, key).await?;
        }
        Ok(held.then_some(conn))
    }

    /// Drops the session after a database error: its locks go with it, and the next round
    /// opens a new one.
    fn reset(&mut self) {
        *self = Session::default();
    }
}

impl OutboxRelay {
    /// A relay publishing through `publisher`.
    pub fn new(
        pool: PgPool,
        publisher: ConfirmPublisher,
        topology: Topology,
        ctx: ApplySettings,
        settings: RelaySettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            pool,
            session: tokio::sync::Mutex::default(),
            publisher: std::sync::Mutex::new(publisher),
            topology,
            ctx,
            settings,
            metrics,
        }
    }

    fn publisher(&self) -> ConfirmPublisher {
        self.publisher.lock().expect("not poisoned").clone()
    }

    /// One round: a batch of events, then, independently, a batch of due jobs. Returns what it
    /// did (an empty report when another instance holds the relay locks or nothing waits).
    /// What was confirmed is recorded even when the round then fails.
    pub async fn relay_once(&self) -> Result<RelayReport, RelayError> {
        let mut report = RelayReport::default();
        let events = self.relay_events(&mut report).await;
        let jobs = self.relay_jobs(&mut report).await;
        self.record(report);
        events?;
        jobs?;
        Ok(report)
    }

    /// Publishes a batch of events; stamps each confirmed one.
    #[tracing::instrument(level = "debug", skip_all)]
    async fn relay_events(&self, report: &mut RelayReport) -> Result<(), RelayError> {
        let mut session = self.session.lock().await;
        let result = self.relay_events_on(&mut session, report).await;
        if matches!(result, Err(RelayError::Store(_))) {
            session.reset();
        }
        result
    }

    async fn relay_events_on(
        &self,
        session: &mut Session,
        report: &mut RelayReport,
    ) -> Result<(), RelayError> {
        let Some(conn) = session.lead(&self.pool, Lead::Events).await? else {
            return Ok(());
        };
        let batch = events::unpublished(&mut *conn, self.settings.batch_size).await?;
        let read_at = Instant::now();
        for event in &batch.events {
            self.metrics.picked_up(event.created_at, read_at);
        }
        if !batch.orphans.is_empty() {
            // A position whose event is gone (deleted before the database refused deleting an
            // unpublished event) has nothing to publish: skipped, never waited on, or it would
            // hold back every event after it.
            tracing::warn!(
                positions = batch.orphans.len(),
                first = batch.orphans[0],
                "outbox positions without an event: skipped (their events were deleted unpublished)"
            );
            events::mark_published(&mut *conn, &batch.orphans).await?;
            report.orphans += batch.orphans.len();
        }
        let pending = batch.events;
        if pending.is_empty() {
            return Ok(());
        }
        let publisher = self.publisher();
        let exchange = self.topology.events_exchange();
        let round = publish_round(&publisher, &pending, |event: &StoredEvent| Outgoing {
            exchange: &exchange,
            routing_key: "",
            body: event.cloud_event.as_bytes().into(),
            properties: event_properties(event),
            mandatory: false,
        })
        .await;
        self.metrics
            .stage(Stage::RelayPublish, read_at.elapsed(), round.answers.len());
        let mut confirmed = Vec::with_capacity(round.answers.len());
        for (event, answer) in &round.answers {
            match answer {
                Answer::Confirmed(_) => confirmed.push(event.position),
                Answer::Nacked(e) => {
                    report.events_nacked += 1;
                    tracing::warn!(event_id = %event.id, run_id = event.run_id, error = %e, "the broker nacked an event; it stays in the outbox");
                }
                // Stays in the outbox; the channel is replaced after the round.
                Answer::Unanswered => {}
            }
        }
        events::mark_published(&mut *conn, &confirmed).await?;
        report.events += confirmed.len();
        self.observe_starts_and_completions(&round.answers);
        match round.channel_error {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Publishes a batch of due jobs: a confirmed one is stamped, an unroutable one fails its
    /// run (`dispatch.unroutable`), a nacked one waits for its next attempt or, past the bound,
    /// fails its run (`dispatch.rejected`).
    #[tracing::instrument(level = "debug", skip_all)]
    async fn relay_jobs(&self, report: &mut RelayReport) -> Result<(), RelayError> {
        let mut session = self.session.lock().await;
        let result = self.relay_jobs_on(&mut session, report).await;
        if matches!(result, Err(RelayError::Store(_) | RelayError::Apply(_))) {
            session.reset();
        }
        result
    }

    async fn relay_jobs_on(
        &self,
        session: &mut Session,
        report: &mut RelayReport,
    ) -> Result<(), RelayError> {
        let Some(conn) = session.lead(&self.pool, Lead::Jobs).await? else {
            return Ok(());
        };
        let pending = jobs::unpublished(&mut *conn, self.settings.batch_size).await?;
        if pending.is_empty() {
            return Ok(());
        }
        let publisher = self.publisher();
        let exchange = self.topology.jobs_exchange();
        let round = publish_round(&publisher, &pending, |job: &jobs::StoredJob| Outgoing {
            exchange: &exchange,
            routing_key: &job.run_type,
            body: serde_json::to_vec(&job.body)
                .expect("JSON values serialise")
                .into(),
            properties: job_properties(job),
            mandatory: true,
        })
        .await;
        // The confirms are in: settle them in one short transaction.
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let mut buf = TxBuffer::default();
        let mut handed_off = Vec::with_capacity(round.answers.len());
        let mut retries = Vec::new();
        for (job, answer) in &round.answers {
            match answer {
                Answer::Confirmed(Confirmed::Delivered) => report.jobs += 1,
                // A cancel no executor receives is answered by the reaper (run.cancel_timeout).
                Answer::Confirmed(Confirmed::Returned) if jobs::is_cancel(job) => {
                    tracing::warn!(run_id = job.run_id, routing_key = %job.run_type, "no executor queue is bound for this cancel");
                    report.unroutable += 1;
                }
                Answer::Confirmed(Confirmed::Returned) => {
                    self.fail_unroutable(&mut tx, &mut buf, job).await?;
                    report.unroutable += 1;
                }
                // Stays unpublished; the channel is replaced after the round.
                Answer::Unanswered => continue,
                Answer::Nacked(e) => {
                    let attempts = job.attempts.max(0) as u32 + 1;
                    if attempts >= self.settings.job_publish_attempts && jobs::is_cancel(job) {
                        tracing::warn!(
                            run_id = job.run_id,
                            attempts,
                            "the broker kept refusing this cancel; the reaper answers it"
                        );
                        report.rejected += 1;
                    } else if attempts >= self.settings.job_publish_attempts {
                        self.fail_rejected(&mut tx, &mut buf, job, attempts).await?;
                        report.rejected += 1;
                    } else {
                        let delay = self.settings.job_retry_delay(attempts);
                        tracing::warn!(run_id = job.run_id, r#type = %job.run_type, attempts, retry_in_ms = delay.as_millis() as u64, "the broker refused a job; retrying later");
                        retries.push(jobs::JobRetry {
                            position: job.position,
                            attempts: attempts as i32,
                            delay_ms: delay.as_millis() as i64,
                            error: e.to_string(),
                        });
                        report.jobs_retried += 1;
                        continue;
                    }
                }
            }
            handed_off.push(job.position);
        }
        buf.flush(&mut tx).await?;
        jobs::mark_published(&mut tx, &handed_off).await?;
        jobs::schedule_retries(&mut tx, &retries).await?;
        tx.commit().await?;
        match round.channel_error {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// dispatchOrFail: a run whose job no executor can receive is failed at once instead of
    /// staying queued forever.
    async fn fail_unroutable(
        &self,
        conn: &mut sqlx::PgConnection,
        buf: &mut TxBuffer,
        job: &jobs::StoredJob,
    ) -> Result<(), RelayError> {
        tracing::warn!(run_id = job.run_id, r#type = %job.run_type, "no executor queue is bound for this type: failing the run");
        let message = format!(
            "no executor queue is bound to {} for type {}",
            self.topology.jobs_exchange(),
            job.run_type
        );
        self.fail_run(conn, buf, job, Failure::new(DISPATCH_UNROUTABLE, &message))
            .await
    }

    /// dispatchOrFail: a run whose job the broker kept refusing (an executor queue full with
    /// `reject-publish`, …) is failed after the bound instead of staying queued forever.
    async fn fail_rejected(
        &self,
        conn: &mut sqlx::PgConnection,
        buf: &mut TxBuffer,
        job: &jobs::StoredJob,
        attempts: u32,
    ) -> Result<(), RelayError> {
        tracing::warn!(run_id = job.run_id, r#type = %job.run_type, attempts, "the broker kept refusing this job: failing the run");
        let message = format!(
            "the broker refused the job on {} for type {} {attempts} times",
            self.topology.jobs_exchange(),
            job.run_type
        );
        self.fail_run(conn, buf, job, Failure::new(DISPATCH_REJECTED, &message))
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(run_id = job.run_id))]
    async fn fail_run(
        &self,
        conn: &mut sqlx::PgConnection,
        buf: &mut TxBuffer,
        job: &jobs::StoredJob,
        failure: Failure,
    ) -> Result<(), RelayError> {
        let Some(run) = runs::lock_by_id(&mut *conn, job.run_id).await? else {
            return Ok(());
        };
        complete_as_failed(conn, buf, run, failure, &self.ctx).await?;
        Ok(())
    }

    fn record(&self, report: RelayReport) {
        for (kind, n) in [
            ("event", report.events),
            ("job", report.jobs),
            ("unroutable", report.unroutable),
            ("rejected", report.rejected),
        ] {
            if n > 0 {
                self.metrics.relay_published(kind, n as u64);
            }
        }
        if report.orphans > 0 {
            self.metrics.relay_orphans(report.orphans as u64);
        }
        for (kind, n) in [
            ("event", report.events_nacked),
            ("job", report.jobs_retried + report.rejected),
        ] {
            if n > 0 {
                self.metrics.relay_nacked(kind, n as u64);
            }
        }
    }

    /// Counts the runs whose `completed` event the broker confirmed (`oprun_runs_completed_total`
    /// by type and outcome, `oprun_run_duration_seconds` by type) and times those whose `started`
    /// event it confirmed (`oprun_run_dispatch_to_start_seconds`): one place that sees every
    /// start and completion, whether a command, an operator action (in this process or in the
    /// CLI's), the reaper or the relay itself made it, and only once it is committed. The times
    /// are the run's own timestamps (the transaction clock), carried by the event.
    fn observe_starts_and_completions(&self, answers: &[(&StoredEvent, Answer)]) {
        #[derive(serde::Deserialize)]
        struct Changed {
            data: ChangedData,
        }
        #[derive(serde::Deserialize)]
        struct ChangedData {
            run: ChangedRun,
        }
        #[derive(serde::Deserialize)]
        struct ChangedRun {
            r#type: String,
            outcome: String,
            created_at: DateTime<Utc>,
            started_at: Option<DateTime<Utc>>,
            completed_at: Option<DateTime<Utc>>,
        }
        let between = |from: DateTime<Utc>, to: DateTime<Utc>| (to - from).to_std().ok();
        for (event, answer) in answers {
            if !matches!(answer, Answer::Confirmed(_)) {
                continue;
            }
            let started = event.event_type == RunEventType::Started.as_str();
            let completed = event.event_type == RunEventType::Completed.as_str();
            if !started && !completed {
                continue;
            }
            let Ok(c) = serde_json::from_str::<Changed>(&event.cloud_event) else {
                continue;
            };
            let run = c.data.run;
            // Only catalog types become labels, so the series stay bounded by the catalog.
            let Ok(run_type) = OperationRunType::parse(&run.r#type) else {
                continue;
            };
            let run_type = run_type.as_str();
            if started {
                if let Some(waited) = run.started_at.and_then(|at| between(run.created_at, at)) {
                    self.metrics.observe_dispatch_to_start(run_type, waited);
                }
                continue;
            }
            self.metrics.run_completed(run_type, &run.outcome);
            if let Some(took) = run
                .started_at
                .zip(run.completed_at)
                .and_then(|(from, to)| between(from, to))
            {
                self.metrics.observe_run_duration(run_type, took);
            }
        }
    }

    /// Publishes until a round settles nothing (used at shutdown). Errors end the flush; jobs
    /// waiting for a retry delay are left to the next start.
    pub async fn flush(&self) -> Result<(), RelayError> {
        while self.relay_once().await?.progressed() {}
        Ok(())
    }

    /// Runs rounds until `shutdown`: immediately again while rounds make progress, else after
    /// `wake` is notified (a commit wrote events) or every `idle`. A failed round, or one whose
    /// events were nacked, is retried with backoff. A broker failure replaces the relay's
    /// channel (and re-declares the topology) on `connection`: it never stops the command
    /// consumer. Only the loss of the connection itself ends the loop, so that the service
    /// reconnects.
    pub async fn run(
        &self,
        connection: &Connection,
        wake: Arc<Notify>,
        idle: Duration,
        shutdown: CancellationToken,
    ) -> Result<(), RelayError> {
        let mut delays = crate::retry::backoff();
        loop {
            let round = self.relay_once().await;
            let delay = match &round {
                Ok(report) if report.events_nacked == 0 => {
                    delays = crate::retry::backoff();
                    if !report.progressed() {
                        self.update_backlog().await;
                        tokio::select! {
                            _ = wake.notified() => {}
                            _ = tokio::time::sleep(idle) => {}
                            _ = shutdown.cancelled() => return Ok(()),
                        }
                    }
                    continue;
                }
                Ok(_) => delays.next().unwrap_or(Duration::from_secs(10)),
                Err(e) => {
                    let delay = delays.next().unwrap_or(Duration::from_secs(10));
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "outbox relay round failed");
                    delay
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => return Ok(()),
            }
            if let Err(RelayError::Broker(e)) = round {
                if !connection.status().connected() {
                    return Err(RelayError::Broker(e));
                }
                self.reopen(connection).await;
            }
        }
    }

    /// Replaces the relay's channel (the broker closed it, or it stopped confirming) and
    /// re-declares the topology, in case an exchange was deleted. Failures are logged; the next
    /// round tries again.
    async fn reopen(&self, connection: &Connection) {
        let old = self.publisher();
        if old.channel().status().connected() {
            let _ = old.channel().close(200, "replaced".into()).await;
        }
        if let Err(e) = self.topology.declare_on(connection).await {
            tracing::warn!(error = %e, "re-declaring the topology failed");
        }
        match ConfirmPublisher::open(connection).await {
            Ok(publisher) => {
                *self.publisher.lock().expect("not poisoned") = publisher;
                tracing::info!("outbox relay channel reopened");
            }
            Err(e) => tracing::warn!(error = %e, "reopening the outbox relay channel failed"),
        }
    }

    async fn update_backlog(&self) {
        if let Ok((count, age)) = events::backlog(&self.pool).await {
            self.metrics.outbox(count.max(0) as u64, age);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nacked_job_waits_the_base_delay_doubling_up_to_the_cap() {
        let defaults = crate::config::ServeSettings::defaults();
        let settings = RelaySettings::new(&defaults.outbox, &defaults.jobs);
        assert_eq!(settings.job_publish_attempts, 8);
        let delays: Vec<u64> = (1..=8)
            .map(|a| settings.job_retry_delay(a).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60]);
        // Seven waits before the eighth (last) attempt: the documented "about two minutes".
        assert_eq!(delays[..7].iter().sum::<u64>(), 123);
        assert_eq!(settings.job_retry_delay(1000), MAX_JOB_RETRY_DELAY);
    }
}
