//! The event subscriber: consumes `N.chaos.subscriber` (a durable quorum queue bound to
//! `N.events` before the first command, so it survives the broker restart and misses nothing)
//! and remembers every event id it received, with the time of each delivery (for
//! `duplicate_deliveries`, see [`super::deliveries`]), the run and sequence its headers name,
//! and each run's latest event (the whole run as of its last change: what the checks read of
//! a run retention has deleted, see [`super::check`]). Manual acks after recording: a delivery
//! cut off by the restart comes back. On any error it reconnects with backoff and resumes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::sandbox::BoundQueue;
use operation_runs::broker::connection::connect;
use operation_runs::broker::headers::get_i64;
use operation_runs::broker::BrokerError;
use operation_runs::retry::backoff;

/// `N.chaos.subscriber`: the event subscriber's queue, bound to `N.events`.
pub const SUBSCRIBER_QUEUE: BoundQueue = BoundQueue {
    suffix: "subscriber",
    to_events: true,
    keys: &[""],
};
/// Deliveries the broker may send ahead of our acks.
pub const PREFETCH: u16 = 1000;
/// How long the consumer may wait for a delivery before its connection is looked at, and the
/// longest an ack may take.
const LIVENESS: Duration = Duration::from_secs(5);

/// What the subscriber has received so far.
#[derive(Debug, Default)]
pub struct Received {
    /// Every event id (AMQP `message_id`) received, with the time of each delivery in order.
    pub arrivals: Mutex<HashMap<String, Vec<Instant>>>,
    /// The largest event body received, in bytes.
    pub largest_body: AtomicU64,
    /// Deliveries, redeliveries and duplicates included.
    pub deliveries: AtomicU64,
    /// Deliveries without a `message_id`.
    pub without_id: AtomicU64,
    /// Connections lost and re-established.
    pub reconnects: AtomicU64,
    /// When each connection started consuming.
    pub consuming_since: Mutex<Vec<Instant>>,
    /// Every event id received, with the `run_id` and `sequence` of its headers.
    pub sequences: Mutex<HashMap<String, (i64, i64)>>,
    /// Per run, the highest sequence received and that event's body.
    pub latest: Mutex<HashMap<i64, (i64, Vec<u8>)>>,
}

impl Received {
    /// How many distinct events arrived.
    pub fn distinct(&self) -> usize {
        self.arrivals.lock().expect("not poisoned").len()
    }

    /// Records event `id` of `run_id` numbered `sequence`, with its `body`.
    pub fn record_event(&self, id: &str, run_id: i64, sequence: i64, body: &[u8]) {
        self.sequences
            .lock()
            .expect("not poisoned")
            .insert(id.to_owned(), (run_id, sequence));
        let mut latest = self.latest.lock().expect("not poisoned");
        match latest.get(&run_id) {
            Some((highest, _)) if *highest >= sequence => {}
            _ => {
                latest.insert(run_id, (sequence, body.to_vec()));
            }
        }
    }
}

/// A running subscriber task.
pub struct Subscriber {
    /// What it received.
    pub received: Arc<Received>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Subscriber {
    /// Starts consuming `queue`.
    pub fn spawn(amqp_url: &str, queue: &str) -> Self {
        let received = Arc::new(Received::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(consume_forever(
            amqp_url.to_owned(),
            queue.to_owned(),
            received.clone(),
            stop.clone(),
        ));
        Self {
            received,
            stop,
            task,
        }
    }

    /// Stops consuming (unacked deliveries return to the queue).
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn consume_forever(
    amqp_url: String,
    queue: String,
    received: Arc<Received>,
    stop: CancellationToken,
) {
    let mut delays = backoff();
    loop {
        let mut connected = false;
        let result = tokio::select! {
            r = consume(&amqp_url, &queue, &received, &mut connected) => r,
            _ = stop.cancelled() => return,
        };
        if connected {
            // The next failure starts its backoff from the beginning again.
            delays = backoff();
        }
        let error = match result {
            Ok(()) => "the broker cancelled the consumer".to_owned(),
            Err(e) => e,
        };
        received.reconnects.fetch_add(1, Ordering::Relaxed);
        let delay = delays.next().unwrap_or(Duration::from_secs(5));
        eprintln!(
            "chaos: subscriber: {error}; reconnecting in {} ms",
            delay.as_millis()
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// One connection's life: `Ok` when the consumer ends without an error. Sets `connected` once
/// consuming.
async fn consume(
    amqp_url: &str,
    queue: &str,
    received: &Received,
    connected: &mut bool,
) -> Result<(), String> {
    let text = |e: BrokerError| e.to_string();
    let connection = connect(amqp_url, "oprun-lab chaos subscriber")
        .await
        .map_err(text)?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "oprun-lab-chaos-subscriber".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    *connected = true;
    received
        .consuming_since
        .lock()
        .expect("not poisoned")
        .push(Instant::now());
    loop {
        // A connection lost during a broker restart does not always end the consumer's
        // stream: its state is looked at while no delivery comes.
        let next = tokio::select! {
            next = consumer.next() => next,
            _ = tokio::time::sleep(LIVENESS) => {
                if connection.status().connected() && channel.status().connected() {
                    continue;
                }
                return Err("the connection was lost without a word from the consumer".into());
            }
        };
        let Some(delivery) = next else {
            return Ok(());
        };
        let delivery = delivery.map_err(|e| e.to_string())?;
        received.deliveries.fetch_add(1, Ordering::Relaxed);
        received
            .largest_body
            .fetch_max(delivery.data.len() as u64, Ordering::Relaxed);
        match delivery.properties.message_id() {
            Some(id) => {
                let id = id.to_string();
                let headers = delivery.properties.headers().as_ref();
                if let (Some(run_id), Some(sequence)) =
                    (get_i64(headers, "run_id"), get_i64(headers, "sequence"))
                {
                    received.record_event(&id, run_id, sequence, &delivery.data);
                }
                received
                    .arrivals
                    .lock()
                    .expect("not poisoned")
                    .entry(id)
                    .or_default()
                    .push(Instant::now());
            }
            None => {
                received.without_id.fetch_add(1, Ordering::Relaxed);
            }
        }
        match tokio::time::timeout(LIVENESS, delivery.acker.ack(BasicAckOptions::default())).await {
            Ok(acked) => {
                acked.map_err(|e| e.to_string())?;
            }
            Err(_) => return Err(format!("an ack took over {LIVENESS:?}")),
        }
    }
}
