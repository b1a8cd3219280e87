//! Waiting until the system has settled: every fault injected, every good command id in the
//! inbox, every bad one dead-lettered, the commands queue drained, the outbox published, and
//! every stored event received by the subscriber, its queue drained too (events pruned since
//! they were published are no longer stored, but must be received all the same). Bounded by a deadline: when it passes, the
//! conditions still open are returned and the checks report what they find.

use std::collections::HashSet;
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::Connection;
use sqlx::PgPool;
use tokio::time::Instant;

use super::subscriber::Received;
use operation_runs::broker::connection::connect;
use operation_runs::broker::dlq::DeadLetterQueue;
use operation_runs::broker::{BrokerError, Topology};

/// How often the conditions are evaluated.
const POLL: Duration = Duration::from_millis(500);
/// How often the open conditions are printed while waiting.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// A dead letter as the checks see it.
#[derive(Debug, Clone)]
pub struct DeadLetterSeen {
    /// The command id (body field, else `message_id`).
    pub command_id: Option<String>,
    /// The reason code.
    pub code: String,
}

/// What a settled system holds.
#[derive(Debug, Clone)]
pub struct Expected {
    /// Command ids the inbox must hold.
    pub inbox: u64,
    /// Command ids the dead-letter queue must hold.
    pub dead_letters: HashSet<String>,
    /// The subscriber's queue, which must be empty.
    pub subscriber_queue: String,
}

/// A broker connection for looking at queues, reopened after a failure.
pub struct BrokerProbe {
    amqp_url: String,
    topology: Topology,
    connection: Option<Connection>,
}

impl BrokerProbe {
    /// A probe of `topology`'s queues; it connects on first use.
    pub fn new(amqp_url: &str, topology: Topology) -> Self {
        Self {
            amqp_url: amqp_url.to_owned(),
            topology,
            connection: None,
        }
    }

    /// Ready messages in `queue` (a passive declare).
    pub async fn depth(&mut self, queue: &str) -> Result<u32, BrokerError> {
        let result = self.try_depth(queue).await;
        if result.is_err() {
            self.connection = None;
        }
        result
    }

    async fn try_depth(&mut self, queue: &str) -> Result<u32, BrokerError> {
        let channel = self.connection().await?.create_channel().await?;
        let options = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let declared = channel
            .queue_declare(queue.into(), options, FieldTable::default())
            .await?;
        let _ = channel.close(200, "probed".into()).await;
        Ok(declared.message_count())
    }

    /// Every dead letter now in `N.commands.dlq`, read without removing any (they return to
    /// the queue when the reading channel closes).
    pub async fn dead_letters(&mut self) -> Result<Vec<DeadLetterSeen>, BrokerError> {
        let topology = self.topology.clone();
        let result = async {
            let dlq = DeadLetterQueue::open(self.connection().await?, topology).await?;
            let mut seen = Vec::new();
            let taken = loop {
                match dlq.take().await {
                    Ok(Some(letter)) => seen.push(DeadLetterSeen {
                        command_id: letter.command_id,
                        code: letter.code,
                    }),
                    Ok(None) => break Ok(seen),
                    Err(e) => break Err(e),
                }
            };
            dlq.release().await;
            taken
        }
        .await;
        if result.is_err() {
            self.connection = None;
        }
        result
    }

    async fn connection(&mut self) -> Result<&Connection, BrokerError> {
        if self.connection.is_none() {
            self.connection = Some(connect(&self.amqp_url, "oprun-lab chaos probe").await?);
        }
        Ok(self.connection.as_ref().expect("just connected"))
    }

    /// Closes the connection.
    pub async fn close(&mut self) {
        if let Some(connection) = self.connection.take() {
            let _ = connection.close(200, "done".into()).await;
        }
    }
}

/// Waits until nothing is left open or `deadline` passes; returns what is still open (empty
/// when settled). `faults_left` tells how many planned faults are still to come.
pub async fn wait(
    pool: &PgPool,
    probe: &mut BrokerProbe,
    expected: &Expected,
    received: &Received,
    faults_left: impl Fn() -> usize,
    deadline: Instant,
) -> Vec<String> {
    let mut last_report = Instant::now();
    loop {
        let open = open_conditions(pool, probe, expected, received, &faults_left).await;
        if open.is_empty() || Instant::now() >= deadline {
            return open;
        }
        if last_report.elapsed() >= REPORT_EVERY {
            eprintln!("chaos: waiting for quiescence: {}", open.join("; "));
            last_report = Instant::now();
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The conditions not met yet, cheapest first (later ones are only looked at when earlier ones
/// hold).
async fn open_conditions(
    pool: &PgPool,
    probe: &mut BrokerProbe,
    expected: &Expected,
    received: &Received,
    faults_left: &impl Fn() -> usize,
) -> Vec<String> {
    let mut open = Vec::new();
    let left = faults_left();
    if left > 0 {
        open.push(format!("{left} fault(s) still to inject"));
    }
    match sqlx::query_scalar::<_, i64>("SELECT count(*) FROM processed_commands")
        .fetch_one(pool)
        .await
    {
        Ok(n) if n as u64 >= expected.inbox => {}
        Ok(n) => open.push(format!("inbox holds {n} of {} command ids", expected.inbox)),
        Err(e) => open.push(format!("cannot count the inbox: {e}")),
    }
    let commands_queue = probe.topology.commands_queue();
    match probe.depth(&commands_queue).await {
        Ok(0) => {}
        Ok(n) => open.push(format!("{n} message(s) wait in {commands_queue}")),
        Err(e) => open.push(format!("cannot look at {commands_queue}: {e}")),
    }
    if !open.is_empty() {
        return open;
    }
    match probe.dead_letters().await {
        Ok(letters) => {
            let ids: HashSet<String> = letters.into_iter().filter_map(|l| l.command_id).collect();
            let missing = expected.dead_letters.difference(&ids).count();
            if missing > 0 {
                open.push(format!(
                    "{missing} of {} bad command(s) not dead-lettered yet",
                    expected.dead_letters.len()
                ));
            }
        }
        Err(e) => open.push(format!("cannot read the dead-letter queue: {e}")),
    }
    match sqlx::query_scalar::<_, i64>("SELECT count(*) FROM operation_run_event_outbox")
        .fetch_one(pool)
        .await
    {
        Ok(0) => {}
        Ok(n) => open.push(format!("{n} event(s) unpublished in the outbox")),
        Err(e) => open.push(format!("cannot count the outbox: {e}")),
    }
    if !open.is_empty() {
        return open;
    }
    match probe.depth(&expected.subscriber_queue).await {
        Ok(0) => {}
        Ok(n) => open.push(format!(
            "{n} event(s) wait in {}",
            expected.subscriber_queue
        )),
        Err(e) => open.push(format!("cannot look at {}: {e}", expected.subscriber_queue)),
    }
    match sqlx::query_scalar::<_, uuid::Uuid>("SELECT id FROM operation_run_events")
        .fetch_all(pool)
        .await
    {
        Ok(stored) => {
            let seen = received.arrivals.lock().expect("not poisoned");
            let unseen = stored
                .iter()
                .filter(|id| !seen.contains_key(&id.to_string()))
                .count();
            if unseen > 0 {
                open.push(format!(
                    "the subscriber has not received {unseen} of {} stored events",
                    stored.len()
                ));
            }
        }
        Err(e) => open.push(format!("cannot read the stored events: {e}")),
    }
    open
}
