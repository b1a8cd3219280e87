//! The outbox relay: publishes recorded events to `N.events` and jobs to `N.jobs` with publisher
//! confirms, then stamps them published.
//!
//! One relay at a time holds a transaction-scoped advisory lock, so with several instances the
//! per-run order of events survives (a second instance never publishes event n+1 while the
//! first is still publishing n). A crash between confirm and commit republishes: delivery is at
//! least once, and the event id lets subscribers dedupe.

use std::sync::Arc;
use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::apply::{complete_as_failed, ApplyContext, ApplyError};
use super::metrics::Metrics;
use super::tx_buffer::TxBuffer;
use crate::broker::headers::opt_i64;
use crate::broker::publisher::{confirm_all, ConfirmPublisher, Confirmed};
use crate::broker::{BrokerError, Topology};
use crate::domain::event::CLOUDEVENTS_CONTENT_TYPE;
use crate::domain::Failure;
use crate::store::events::{self, StoredEvent};
use crate::store::{jobs, runs};

/// Key of the advisory lock that elects the active relay of a database.
const RELAY_LOCK_KEY: i64 = 0x6f70_7275_6e01;

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

/// What one round published.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayReport {
    /// Events published.
    pub events: usize,
    /// Jobs published.
    pub jobs: usize,
    /// Jobs no executor queue was bound for (their runs were failed).
    pub unroutable: usize,
}

impl RelayReport {
    fn is_empty(&self) -> bool {
        self.events == 0 && self.jobs == 0
    }
}

/// Publishes the outboxes of one database.
pub struct OutboxRelay {
    pool: PgPool,
    publisher: ConfirmPublisher,
    topology: Topology,
    ctx: ApplyContext,
    batch_size: i64,
    metrics: Arc<Metrics>,
}

/// The AMQP properties of an event.
pub fn event_properties(event: &StoredEvent) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        "event_type".into(),
        AMQPValue::LongString(event.event_type.as_str().into()),
    );
    headers.insert("run_id".into(), AMQPValue::LongLongInt(event.run_id));
    headers.insert(
        "workspace_id".into(),
        AMQPValue::LongLongInt(event.workspace_id),
    );
    headers.insert("tenant_id".into(), opt_i64(event.tenant_id));
    headers.insert("sequence".into(), AMQPValue::LongLongInt(event.sequence));
    BasicProperties::default()
        .with_content_type(CLOUDEVENTS_CONTENT_TYPE.into())
        .with_message_id(event.id.to_string().into())
        .with_type(event.event_type.as_str().into())
        .with_delivery_mode(2)
        .with_timestamp(event.created_at.timestamp().max(0) as u64)
        .with_headers(headers)
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

impl OutboxRelay {
    /// A relay publishing through `publisher`, `batch_size` rows per round at most.
    pub fn new(
        pool: PgPool,
        publisher: ConfirmPublisher,
        topology: Topology,
        ctx: ApplyContext,
        batch_size: i64,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            pool,
            publisher,
            topology,
            ctx,
            batch_size,
            metrics,
        }
    }

    /// One round: publish up to a batch of events and a batch of jobs. Returns what it did; an
    /// empty report when another instance holds the relay lock or nothing waits.
    pub async fn relay_once(&self) -> Result<RelayReport, RelayError> {
        let mut tx = self.pool.begin().await?;
        let leader: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(RELAY_LOCK_KEY)
            .fetch_one(&mut *tx)
            .await?;
        if !leader {
            return Ok(RelayReport::default());
        }
        let mut report = RelayReport::default();

        let pending_events = events::unpublished(&mut tx, self.batch_size).await?;
        if !pending_events.is_empty() {
            publish_events(
                &self.publisher,
                &self.topology.events_exchange(),
                "",
                &pending_events,
            )
            .await?;
            let positions: Vec<i64> = pending_events.iter().map(|e| e.position).collect();
            events::mark_published(&mut tx, &positions).await?;
            report.events = pending_events.len();
        }

        let pending_jobs = jobs::unpublished(&mut tx, self.batch_size).await?;
        if !pending_jobs.is_empty() {
            let mut pending = Vec::with_capacity(pending_jobs.len());
            for job in &pending_jobs {
                let body = serde_json::to_vec(&job.body).expect("JSON values serialise");
                let mut headers = FieldTable::default();
                headers.insert("run_id".into(), AMQPValue::LongLongInt(job.run_id));
                let properties = BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_message_id(format!("job-{}", job.run_id).into())
                    .with_delivery_mode(2)
                    .with_headers(headers);
                pending.push(
                    self.publisher
                        .start(
                            &self.topology.jobs_exchange(),
                            &job.run_type,
                            &body,
                            properties,
                            true,
                        )
                        .await?,
                );
            }
            let confirmations = confirm_all(pending).await?;
            let mut buf = TxBuffer::default();
            for (job, confirmed) in pending_jobs.iter().zip(confirmations) {
                if confirmed == Confirmed::Returned {
                    self.fail_unroutable(&mut tx, &mut buf, job).await?;
                    report.unroutable += 1;
                } else {
                    report.jobs += 1;
                }
            }
            buf.flush(&mut tx).await?;
            let positions: Vec<i64> = pending_jobs.iter().map(|j| j.position).collect();
            jobs::mark_published(&mut tx, &positions).await?;
        }
        tx.commit().await?;
        self.record(report);
        Ok(report)
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
        let Some(run) = runs::lock_by_id(&mut *conn, job.run_id).await? else {
            return Ok(());
        };
        let failure = Failure::new(
            "dispatch.unroutable",
            &format!(
                "no executor queue is bound to {} for type {}",
                self.topology.jobs_exchange(),
                job.run_type
            ),
        );
        complete_as_failed(conn, buf, run, failure, &self.ctx).await?;
        Ok(())
    }

    fn record(&self, report: RelayReport) {
        for (kind, n) in [
            ("event", report.events),
            ("job", report.jobs),
            ("unroutable", report.unroutable),
        ] {
            if n > 0 {
                self.metrics.add(
                    "oprun_relay_published_total",
                    format!("kind=\"{kind}\""),
                    n as u64,
                );
            }
        }
    }

    /// Publishes until the outboxes are empty (used at shutdown). Errors end the flush.
    pub async fn flush(&self) -> Result<(), RelayError> {
        while !self.relay_once().await?.is_empty() {}
        Ok(())
    }

    /// Runs rounds until `shutdown`: immediately after `wake` is notified (a commit wrote events),
    /// else every `idle`. A failed round is logged and retried with backoff; a broker failure
    /// ends the loop so that the service reconnects.
    pub async fn run(
        &self,
        wake: Arc<Notify>,
        idle: Duration,
        shutdown: CancellationToken,
    ) -> Result<(), RelayError> {
        let mut delays = crate::retry::backoff();
        loop {
            match self.relay_once().await {
                Ok(report) => {
                    delays = crate::retry::backoff();
                    if report.is_empty() {
                        self.update_backlog().await;
                        tokio::select! {
                            _ = wake.notified() => {}
                            _ = tokio::time::sleep(idle) => {}
                            _ = shutdown.cancelled() => return Ok(()),
                        }
                    }
                }
                Err(RelayError::Broker(e)) => return Err(RelayError::Broker(e)),
                Err(e) => {
                    let delay = delays.next().unwrap_or(Duration::from_secs(10));
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "outbox relay round failed");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => return Ok(()),
                    }
                }
            }
        }
    }

    async fn update_backlog(&self) {
        if let Ok((count, age)) = events::backlog(&self.pool).await {
            self.metrics.set("oprun_outbox_backlog", count as f64);
            self.metrics.set("oprun_outbox_oldest_age_seconds", age);
        }
    }
}
