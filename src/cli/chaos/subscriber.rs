//! The event subscriber: consumes `N.chaos.subscriber` (a durable quorum queue bound to
//! `N.events` before the first command, so it survives the broker restart and misses nothing)
//! and remembers every event id it received. Manual acks after recording: a delivery cut off
//! by the restart comes back. On any error it reconnects with backoff and resumes.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::broker::connection::connect;
use crate::broker::BrokerError;
use crate::retry::backoff;

/// Deliveries the broker may send ahead of our acks.
const PREFETCH: u16 = 1000;

/// What the subscriber has received so far.
#[derive(Debug, Default)]
pub struct Received {
    /// Distinct event ids (AMQP `message_id`).
    pub ids: Mutex<HashSet<String>>,
    /// Deliveries, redeliveries and duplicates included.
    pub deliveries: AtomicU64,
    /// Deliveries without a `message_id`.
    pub without_id: AtomicU64,
    /// Connections lost and re-established.
    pub reconnects: AtomicU64,
}

impl Received {
    /// How many distinct events arrived.
    pub fn distinct(&self) -> usize {
        self.ids.lock().expect("not poisoned").len()
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
            Err(e) => e.to_string(),
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
) -> Result<(), BrokerError> {
    let connection = connect(amqp_url, "oprun chaos subscriber").await?;
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "oprun-chaos-subscriber".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    *connected = true;
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        received.deliveries.fetch_add(1, Ordering::Relaxed);
        match delivery.properties.message_id() {
            Some(id) => {
                received
                    .ids
                    .lock()
                    .expect("not poisoned")
                    .insert(id.to_string());
            }
            None => {
                received.without_id.fetch_add(1, Ordering::Relaxed);
            }
        }
        delivery.acker.ack(BasicAckOptions::default()).await?;
    }
    Ok(())
}
