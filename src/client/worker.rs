//! The worker library for executors: receive the jobs of chosen types from a durable queue of
//! your own, run a handler, and report start, counts, failures and completion as commands.
//!
//! A job is acked only after the completion command is confirmed by the broker, so a crash
//! mid-job redelivers it (the tracker dedupes the repeated commands by id, and a repeated
//! start on a running run is a no-op).

use std::future::Future;
use std::sync::Arc;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ExchangeKind};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::producer::{ClientError, Producer, RunRef};
use crate::broker::connection::connect;
use crate::broker::topology::{declare_bound_queue, declare_exchange};
use crate::broker::Topology;
use crate::domain::{RunOutcome, RunStatus};

/// The work of one queued run, as handed off on `N.jobs`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct Job {
    /// The run.
    pub run_id: i64,
    /// Its type.
    #[serde(rename = "type")]
    pub run_type: String,
    /// Its workspace.
    pub workspace_id: i64,
    /// Its tenant.
    pub tenant_id: Option<i64>,
    /// Its context.
    pub context: Value,
}

impl Job {
    /// The run reference for progress commands.
    pub fn run_ref(&self) -> RunRef {
        RunRef {
            run_id: self.run_id,
            workspace_id: self.workspace_id,
            tenant_id: self.tenant_id,
        }
    }
}

/// What a handler may report while it works.
#[derive(Clone)]
pub struct JobContext {
    producer: Arc<Producer>,
    run: RunRef,
}

impl JobContext {
    /// Adds to the run's summary counts.
    pub async fn increment(&self, counts: Value) -> Result<(), ClientError> {
        self.producer
            .increment_summary_counts(self.run, counts)
            .await
            .map(drop)
    }

    /// Appends failures (`[{code, message, reason_code?, item?}]`).
    pub async fn fail_items(&self, failures: Value) -> Result<(), ClientError> {
        self.producer
            .append_failures(self.run, failures)
            .await
            .map(drop)
    }
}

/// A consumer of jobs.
pub struct Worker {
    connection: Connection,
    channel: Channel,
    producer: Arc<Producer>,
    queue: String,
}

impl Worker {
    /// Connects, declares durable quorum queue `N.worker.<name>` bound to `N.jobs` for each of
    /// `types`. The namespace prefix keeps two namespaces on one broker from sharing a queue.
    pub async fn start(
        amqp_url: &str,
        namespace: &str,
        name: &str,
        types: &[&str],
        prefetch: u16,
    ) -> Result<Self, ClientError> {
        let topology = Topology::new(namespace)?;
        let queue = &Self::queue_name(namespace, name);
        let connection = connect(amqp_url, "oprun worker").await?;
        let channel = connection.create_channel().await?;
        declare_exchange(&channel, &topology.jobs_exchange(), ExchangeKind::Topic).await?;
        declare_bound_queue(&channel, queue, &topology.jobs_exchange(), types).await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let producer = Arc::new(Producer::connect(amqp_url, namespace).await?);
        Ok(Self {
            connection,
            channel,
            producer,
            queue: queue.to_owned(),
        })
    }

    /// The queue a worker named `name` consumes: `N.worker.<name>`.
    pub fn queue_name(namespace: &str, name: &str) -> String {
        format!("{namespace}.worker.{name}")
    }

    /// Handles jobs until `shutdown`: reports `running`, runs `handler`, reports completion with
    /// the outcome it returns (`Err(failures)` completes as `failed` with those failures), then
    /// acks the job.
    pub async fn run<F, Fut>(
        &self,
        handler: F,
        shutdown: CancellationToken,
    ) -> Result<(), ClientError>
    where
        F: Fn(Job, JobContext) -> Fut,
        Fut: Future<Output = Result<RunOutcome, Value>>,
    {
        let mut jobs = self
            .channel
            .basic_consume(
                self.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        loop {
            let next = tokio::select! {
                n = jobs.next() => n,
                _ = shutdown.cancelled() => break,
            };
            let Some(delivery) = next else { break };
            let delivery = delivery?;
            let Ok(job) = serde_json::from_slice::<Job>(&delivery.data) else {
                tracing::error!("undecodable job, rejecting it");
                delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: false,
                        ..Default::default()
                    })
                    .await?;
                continue;
            };
            let run = job.run_ref();
            self.producer
                .update_run(run, Some(RunStatus::Running), None, None, None)
                .await?;
            let ctx = JobContext {
                producer: self.producer.clone(),
                run,
            };
            let (outcome, failures) = match handler(job, ctx).await {
                Ok(outcome) => (outcome, None),
                Err(failures) => (RunOutcome::Failed, Some(failures)),
            };
            self.producer
                .update_run(
                    run,
                    Some(RunStatus::Completed),
                    Some(outcome),
                    None,
                    failures,
                )
                .await?;
            delivery.acker.ack(BasicAckOptions::default()).await?;
        }
        Ok(())
    }

    /// Closes the connections.
    pub async fn close(&self) {
        self.producer.close().await;
        let _ = self.connection.close(200, "bye".into()).await;
    }
}
