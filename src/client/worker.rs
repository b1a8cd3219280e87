//! The worker library for executors: receive the jobs of chosen types from a durable queue of
//! your own, run a handler, and report start, counts, failures and completion as commands.
//!
//! What it promises, and why:
//! - **A job is acked only after the service applied its completion.** The start and the
//!   completion are sent with direct reply-to, and the worker waits for the service's reply (the
//!   command committed), not only for the broker's confirm. So a crash or a broker fault before
//!   that redelivers the job; and a redelivered job whose run is already completed (the start's
//!   reply says so) is acked without running the handler again.
//! - **A refused completion never strands its run.** When the service refuses the completion
//!   (say the handler's failures do not fit the schema), the worker completes the run `failed`
//!   with one failure it can always send, `worker.completion_refused`, whose `reason_code` is the
//!   refusal's code and whose message is `"<code>: <message>"` (sanitised, cut to the message
//!   limit). A refused start gets the same treatment (`worker.start_refused`), and so does a job
//!   that does not decode but names its run (`worker.invalid_job`). Only if that completion is
//!   refused too (the run is unknown in that scope, or already completed with another outcome)
//!   is the job acked with an error log: a refusal is deterministic, so requeueing would loop.
//! - **No reply is not an answer.** When the service does not reply within the reply timeout
//!   (down, or backlogged), the same command (same command id, so the service applies it once
//!   and replies its first result again) is sent again with backoff until a reply arrives or the
//!   worker shuts down; the job stays unacked meanwhile.
//! - **A cancel reaches the run's handler.** Beside its job queue, each instance consumes a queue
//!   of its own bound to `cancel.<type>` for its types (`client/cancels.rs`); a cancel of the
//!   run in hand sets [`JobContext::cancel_requested`] and resolves [`JobContext::cancelled`],
//!   and a handler that stops returns `Ok(RunOutcome::Cancelled)` ([`JobContext::or_cancelled`]
//!   does both). A job whose cancel was heard before its handler starts is completed
//!   `cancelled` without running it. A handler that finishes first completes with its real
//!   outcome: the service never overwrites a completion, nor applies one after the run was
//!   cancelled (that one is refused and the job acked, as above).
//! - **Broker faults are survived.** When the broker closes the connection or cancels the
//!   consumer, the worker reconnects with backoff (100 ms doubling to 10 s, with jitter; reset
//!   after a healthy minute), re-declares its queue and consumes again; the job in hand is
//!   redelivered by the broker.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ExchangeKind};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::cancels::{self, Cancels};
use super::producer::{update_run_body, ClientError, Producer, RunRef};
use crate::broker::connection::{AmqpUrls, Connector};
use crate::broker::topology::{declare_bound_queue, declare_exchange};
use crate::broker::{BrokerError, Topology};
use crate::domain::failure::{is_valid_code, sanitise_message};
use crate::domain::{RunOutcome, RunStatus};
use crate::retry::backoff;

/// How long the worker waits for the service's reply to a start or completion before sending
/// it again, unless [`Worker::with_reply_timeout`] says otherwise.
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection that lasted this long was healthy: the reconnect backoff starts over after it.
const HEALTHY_SESSION: Duration = Duration::from_secs(60);

/// The failure code of a run whose completion the service refused.
pub const COMPLETION_REFUSED: &str = "worker.completion_refused";
/// The failure code of a run whose start the service refused.
pub const START_REFUSED: &str = "worker.start_refused";
/// The failure code of a run whose job did not decode.
pub const INVALID_JOB: &str = "worker.invalid_job";

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

/// The run of a job that does not decode as a [`Job`], when it can still be told.
#[derive(serde::Deserialize)]
struct JobRun {
    run_id: i64,
    workspace_id: i64,
    tenant_id: Option<i64>,
}

/// What a handler may report while it works, and whether it is asked to stop.
#[derive(Clone)]
pub struct JobContext {
    producer: Arc<Producer>,
    run: RunRef,
    cancel: CancellationToken,
}

impl JobContext {
    /// Whether the run's cancel was requested (an operator, the platform or the API asked).
    /// A handler that stops for it returns `Ok(RunOutcome::Cancelled)`.
    pub fn cancel_requested(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Resolves once the run's cancel is requested (at once if it already was).
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// Runs `work` until it ends or the run's cancel is requested, whichever comes first: then
    /// `work` is dropped at its next await and the answer is `Ok(RunOutcome::Cancelled)`. For
    /// work whose every await point is a safe place to stop; otherwise check
    /// [`JobContext::cancel_requested`] where it is.
    pub async fn or_cancelled<W>(&self, work: W) -> Result<RunOutcome, Value>
    where
        W: Future<Output = Result<RunOutcome, Value>>,
    {
        tokio::select! {
            // Work that is done wins over a cancel that came at the same time.
            biased;
            done = work => done,
            _ = self.cancel.cancelled() => Ok(RunOutcome::Cancelled),
        }
    }

    /// Adds to the run's summary counts (confirmed by the broker; no reply awaited).
    pub async fn increment(&self, counts: Value) -> Result<(), ClientError> {
        self.producer
            .increment_summary_counts(self.run, counts)
            .await
            .map(drop)
    }

    /// Appends failures (`[{code, message, reason_code?, item?}]`; confirmed by the broker, no
    /// reply awaited).
    pub async fn fail_items(&self, failures: Value) -> Result<(), ClientError> {
        self.producer
            .append_failures(self.run, failures)
            .await
            .map(drop)
    }
}

/// One connection's worth of worker: the consuming channel and the producer it reports with.
#[derive(Clone)]
struct Session {
    connection: Arc<Connection>,
    channel: Channel,
    producer: Arc<Producer>,
    /// Cancelled when the cancel consumer ended: the session no longer hears cancels.
    deaf: CancellationToken,
}

impl Session {
    async fn close(&self) {
        self.producer.close().await;
        let _ = self.connection.close(200, "bye".into()).await;
    }
}

/// What the service said to a start or completion.
enum Answer {
    /// Applied (or applied before): the reply body.
    Applied(Value),
    /// Refused, with the refusal's code and message.
    Refused { code: String, message: String },
    /// Shutdown came first.
    Interrupted,
}

/// What becomes of a delivered job.
enum Settle {
    /// Done with it: ack.
    Ack,
    /// Not a job at all: drop it (reject without requeue).
    Reject,
    /// Shutdown interrupted it: leave it unacked, the broker redelivers it.
    Leave,
}

/// A consumer of jobs.
pub struct Worker {
    /// The broker's nodes; after a lost session the next node is tried first.
    broker: Connector,
    topology: Topology,
    queue: String,
    types: Vec<String>,
    prefetch: u16,
    connection_name: String,
    reply_timeout: Duration,
    session: Mutex<Option<Session>>,
    cancels: Cancels,
}

impl Worker {
    /// Connects, declares durable quorum queue `N.worker.<name>` bound to `N.jobs` for each of
    /// `types`, and this instance's cancel queue `N.worker.<name>.cancel.<uuid>` (exclusive,
    /// new per connection) bound with `cancel.<type>` for each. The namespace prefix keeps two
    /// namespaces on one broker from sharing a queue.
    /// Fails if the broker cannot be reached now; once started, [`Worker::run`] reconnects.
    /// `amqp_url` may list the nodes of a cluster separated by commas: the first that answers
    /// is used, and after a lost connection the next one is tried first.
    pub async fn start(
        amqp_url: &str,
        namespace: &str,
        name: &str,
        types: &[&str],
        prefetch: u16,
    ) -> Result<Self, ClientError> {
        let topology = Topology::new(namespace)?;
        let queue = Self::queue_name(namespace, name);
        let worker = Self {
            broker: Connector::new(AmqpUrls::parse([amqp_url])?),
            topology,
            connection_name: format!("oprun worker {queue} {}", uuid::Uuid::new_v4()),
            queue,
            types: types.iter().map(|t| (*t).to_owned()).collect(),
            prefetch,
            reply_timeout: DEFAULT_REPLY_TIMEOUT,
            session: Mutex::new(None),
            cancels: Cancels::default(),
        };
        worker.session().await?;
        Ok(worker)
    }

    /// Sets how long to wait for the service's reply before sending a start or completion again.
    pub fn with_reply_timeout(mut self, timeout: Duration) -> Self {
        self.reply_timeout = timeout;
        self
    }

    /// The queue a worker named `name` consumes: `N.worker.<name>`.
    pub fn queue_name(namespace: &str, name: &str) -> String {
        format!("{namespace}.worker.{name}")
    }

    /// The prefix of this worker's cancel queues (`N.worker.<name>.cancel.`; each connection's
    /// ends in a UUID of its own).
    pub fn cancel_queue_prefix(&self) -> String {
        format!("{}.cancel.", self.queue)
    }

    /// The name of this worker's consuming connection, unique per instance (the management UI
    /// and `rabbitmqctl list_connections` show it); its producer connection is this plus
    /// `" producer"`.
    pub fn connection_name(&self) -> &str {
        &self.connection_name
    }

    /// Handles jobs until `shutdown`: reports `running` and waits for the reply, runs `handler`
    /// (unless the run's cancel was heard already: then it completes `cancelled`), reports
    /// completion with the outcome it returns (`Err(failures)` completes as `failed` with those
    /// failures) and waits for the reply, then acks the job. Broker faults are
    /// retried (reconnect with backoff), so this returns only at shutdown, leaving a job whose
    /// completion was not yet applied unacked (the broker redelivers it).
    pub async fn run<F, Fut>(
        &self,
        handler: F,
        shutdown: CancellationToken,
    ) -> Result<(), ClientError>
    where
        F: Fn(Job, JobContext) -> Fut,
        Fut: Future<Output = Result<RunOutcome, Value>>,
    {
        let mut delays = backoff();
        loop {
            let began = Instant::now();
            let error = match self.run_session(&handler, &shutdown).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            // Closing the connection hands any unacked job back to the queue.
            self.drop_session().await;
            if began.elapsed() >= HEALTHY_SESSION {
                delays = backoff();
            }
            let delay = delays.next().unwrap_or(Duration::from_secs(10));
            tracing::warn!(error = %error, queue = %self.queue, retry_in_ms = delay.as_millis() as u64, "worker lost the broker, reconnecting");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => return Ok(()),
            }
        }
    }

    /// One connection's life: consume until shutdown (`Ok`) or a broker fault (`Err`).
    async fn run_session<F, Fut>(
        &self,
        handler: &F,
        shutdown: &CancellationToken,
    ) -> Result<(), ClientError>
    where
        F: Fn(Job, JobContext) -> Fut,
        Fut: Future<Output = Result<RunOutcome, Value>>,
    {
        let session = self.session().await?;
        let mut jobs = session
            .channel
            .basic_consume(
                self.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        tracing::info!(queue = %self.queue, "consuming jobs");
        loop {
            let next = tokio::select! {
                n = jobs.next() => n,
                _ = shutdown.cancelled() => return Ok(()),
                _ = session.deaf.cancelled() => {
                    return Err(BrokerError::Stopped("the cancel consumer ended".into()).into())
                }
            };
            let delivery = match next {
                Some(delivery) => delivery?,
                None => {
                    return Err(BrokerError::Stopped(
                        "the broker cancelled the job consumer".into(),
                    )
                    .into())
                }
            };
            if !session.producer.is_connected() {
                return Err(BrokerError::Stopped("the producer connection closed".into()).into());
            }
            match self.handle(&session, &delivery, handler, shutdown).await? {
                Settle::Ack => {
                    delivery.acker.ack(BasicAckOptions::default()).await?;
                }
                Settle::Reject => {
                    let options = BasicNackOptions {
                        requeue: false,
                        ..Default::default()
                    };
                    delivery.acker.nack(options).await?;
                }
                Settle::Leave => return Ok(()),
            }
        }
    }

    /// One job: start, handler, completion, each answered by the service.
    async fn handle<F, Fut>(
        &self,
        session: &Session,
        delivery: &Delivery,
        handler: &F,
        shutdown: &CancellationToken,
    ) -> Result<Settle, ClientError>
    where
        F: Fn(Job, JobContext) -> Fut,
        Fut: Future<Output = Result<RunOutcome, Value>>,
    {
        let producer = &session.producer;
        let job = match serde_json::from_slice::<Job>(&delivery.data) {
            Ok(job) => job,
            Err(e) => {
                let Ok(run) = serde_json::from_slice::<JobRun>(&delivery.data) else {
                    tracing::error!(error = %e, queue = %self.queue, "undecodable job without a run, rejecting it");
                    return Ok(Settle::Reject);
                };
                let run = RunRef {
                    run_id: run.run_id,
                    workspace_id: run.workspace_id,
                    tenant_id: run.tenant_id,
                };
                tracing::error!(error = %e, run_id = run.run_id, "undecodable job, failing its run");
                let why = format!("the job does not decode: {e}");
                return self
                    .fail_run(producer, run, INVALID_JOB, None, &why, shutdown)
                    .await;
            }
        };
        let run = job.run_ref();
        // Held before the start is sent: a cancel that comes meanwhile is not missed.
        let held = self.cancels.hold(run.run_id);
        let start = update_run_body(run, Some(RunStatus::Running), None, None, None);
        match self.request(producer, &start, shutdown).await? {
            Answer::Interrupted => return Ok(Settle::Leave),
            Answer::Applied(reply) if reply["status"] == "completed" => {
                // A redelivered job whose completion was applied before the ack got lost.
                tracing::info!(
                    run_id = run.run_id,
                    "the run is already completed; acking its job"
                );
                return Ok(Settle::Ack);
            }
            Answer::Applied(_) => {}
            Answer::Refused { code, message } if code == "run_not_found" => {
                tracing::error!(run_id = run.run_id, %message, "the job's run does not exist in its scope; acking it");
                return Ok(Settle::Ack);
            }
            Answer::Refused { code, message } => {
                return self
                    .fail_run(
                        producer,
                        run,
                        START_REFUSED,
                        Some(&code),
                        &message,
                        shutdown,
                    )
                    .await;
            }
        }
        let ctx = JobContext {
            producer: producer.clone(),
            run,
            cancel: held.token(),
        };
        let (outcome, failures) = if ctx.cancel_requested() {
            tracing::info!(
                run_id = run.run_id,
                "the run's cancel came before its handler started; completing it cancelled"
            );
            (RunOutcome::Cancelled, None)
        } else {
            match handler(job, ctx).await {
                Ok(outcome) => (outcome, None),
                Err(failures) => (RunOutcome::Failed, Some(failures)),
            }
        };
        let completion = update_run_body(
            run,
            Some(RunStatus::Completed),
            Some(outcome),
            None,
            failures,
        );
        match self.request(producer, &completion, shutdown).await? {
            Answer::Interrupted => Ok(Settle::Leave),
            Answer::Applied(_) => Ok(Settle::Ack),
            Answer::Refused { code, message } => {
                self.fail_run(
                    producer,
                    run,
                    COMPLETION_REFUSED,
                    Some(&code),
                    &message,
                    shutdown,
                )
                .await
            }
        }
    }

    /// Completes `run` as `failed` with one failure the service accepts: `failure_code`, the
    /// refusal's code as `reason_code`, and `"<refusal code>: <message>"` cleaned of control
    /// characters, sanitised and cut to the message limit.
    async fn fail_run(
        &self,
        producer: &Producer,
        run: RunRef,
        failure_code: &str,
        refusal_code: Option<&str>,
        message: &str,
        shutdown: &CancellationToken,
    ) -> Result<Settle, ClientError> {
        let text = match refusal_code {
            Some(code) => format!("{code}: {message}"),
            None => message.to_owned(),
        };
        let printable: String = text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let mut failure = json!({"code": failure_code, "message": sanitise_message(&printable)});
        if let Some(code) = refusal_code.filter(|c| is_valid_code(c)) {
            failure["reason_code"] = json!(code);
        }
        tracing::warn!(run_id = run.run_id, code = failure_code, message = %printable, "completing the run as failed");
        let body = update_run_body(
            run,
            Some(RunStatus::Completed),
            Some(RunOutcome::Failed),
            None,
            Some(json!([failure])),
        );
        match self.request(producer, &body, shutdown).await? {
            Answer::Interrupted => Ok(Settle::Leave),
            Answer::Applied(_) => Ok(Settle::Ack),
            Answer::Refused { code, message } => {
                // Deterministic: the run is unknown in that scope, or completed with another
                // outcome. Requeueing would refuse again forever; the service dead-lettered it.
                tracing::error!(run_id = run.run_id, %code, %message, "failing the run was refused too; acking its job");
                Ok(Settle::Ack)
            }
        }
    }

    /// Sends `body` and waits for the service's answer; on no reply, sends it again (same
    /// command id) with backoff until one comes or `shutdown`. A broker error is returned.
    async fn request(
        &self,
        producer: &Producer,
        body: &Value,
        shutdown: &CancellationToken,
    ) -> Result<Answer, ClientError> {
        let mut delays = backoff();
        loop {
            let sent = tokio::select! {
                r = producer.send_and_wait(body, self.reply_timeout) => r,
                _ = shutdown.cancelled() => return Ok(Answer::Interrupted),
            };
            match sent {
                Ok(reply) => return Ok(Answer::Applied(reply)),
                Err(ClientError::Rejected { code, message }) => {
                    return Ok(Answer::Refused { code, message })
                }
                Err(ClientError::Timeout(_)) => {
                    let delay = delays.next().unwrap_or(Duration::from_secs(10));
                    tracing::warn!(
                        command_id = body["command_id"].as_str().unwrap_or_default(),
                        retry_in_ms = delay.as_millis() as u64,
                        "no reply from the service, sending the command again"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => return Ok(Answer::Interrupted),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The current session, opening one (connect, declare, qos) if there is none.
    async fn session(&self) -> Result<Session, ClientError> {
        if let Some(session) = self.session.lock().unwrap().clone() {
            return Ok(session);
        }
        let connection = self.broker.connect(&self.connection_name).await?;
        let opened = self.open_on(&connection).await;
        if opened.is_err() {
            let _ = connection.close(320, "setup failed".into()).await;
        }
        let (channel, producer, deaf) = opened?;
        let session = Session {
            connection: Arc::new(connection),
            channel,
            producer: Arc::new(producer),
            deaf,
        };
        *self.session.lock().unwrap() = Some(session.clone());
        Ok(session)
    }

    /// Declares the job queue on a new channel of `connection`, the cancel queue on another
    /// (heard from now on), and connects the producer.
    async fn open_on(
        &self,
        connection: &Connection,
    ) -> Result<(Channel, Producer, CancellationToken), ClientError> {
        let channel = connection.create_channel().await?;
        let jobs = self.topology.jobs_exchange();
        let types: Vec<&str> = self.types.iter().map(String::as_str).collect();
        declare_exchange(&channel, &jobs, ExchangeKind::Topic).await?;
        declare_bound_queue(&channel, &self.queue, &jobs, &types).await?;
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await?;
        // A queue per connection: an exclusive queue of a closed connection may linger a moment.
        let cancel_queue = format!(
            "{}{}",
            self.cancel_queue_prefix(),
            uuid::Uuid::new_v4().simple()
        );
        let deaf = cancels::listen(
            &connection.create_channel().await?,
            &cancel_queue,
            &jobs,
            &self.types,
            self.cancels.clone(),
        )
        .await?;
        let producer_name = format!("{} producer", self.connection_name);
        let producer =
            Producer::connect_via(&self.broker, self.topology.namespace(), &producer_name).await?;
        Ok((channel, producer, deaf))
    }

    async fn drop_session(&self) {
        let session = self.session.lock().unwrap().take();
        if let Some(session) = session {
            session.close().await;
            // Its node may be the one that went away: the next session starts with another.
            self.broker.rotate();
        }
    }

    /// Closes the connections.
    pub async fn close(&self) {
        self.drop_session().await;
    }
}
