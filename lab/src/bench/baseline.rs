//! The baseline: the broker work the service cannot avoid, with no database.
//!
//! The bench publishes `messages` persistent messages the size of a dispatch, with confirms,
//! through a topic exchange to a quorum queue (like `N.commands`). A consumer on its own
//! connection (like `oprun serve`: a consuming channel with the service's prefetch and a confirm
//! channel) publishes one persistent message per delivery to a fanout exchange whose quorum queue
//! a no-ack subscriber drains (like the events and the bench's subscriber), and acks each
//! delivery once that publish is confirmed. Acks are coalesced with `multiple` (what the service
//! does per batch), so the broker gets the cheapest acking a correct consumer can do and the
//! baseline is not handicapped. Published − acked is bounded like the service phase's in-flight
//! bound. The rate is `messages` / (last ack − first publish).

use operation_runs::broker::topology::{declare_bound_queue, declare_exchange};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ExchangeKind, PublisherConfirm};
use tokio::sync::{mpsc, Semaphore};

use crate::publisher::Window;
use crate::sandbox::Sandbox;
use crate::LabError;
use operation_runs::broker::connection::connect;

/// Acks are sent at least every this many confirmed deliveries under load.
const ACK_EVERY: u64 = 100;
/// Longest the whole baseline may take.
const DEADLINE: Duration = Duration::from_secs(240);

/// What the baseline measured.
#[derive(Debug, Clone, Copy)]
pub struct BaselineResult {
    /// Messages.
    pub messages: u64,
    /// Message size in bytes.
    pub bytes: usize,
    /// First publish → last confirm of the bench's publisher (its own rate, queue included).
    pub publish_elapsed: Duration,
    /// First publish → last ack by the consumer.
    pub elapsed: Duration,
    /// Nacked publishes (bench and consumer).
    pub nacks: u64,
}

impl BaselineResult {
    /// Messages per second, first publish to last ack.
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Messages per second the bench's publisher got confirmed.
    pub fn publish_rate(&self) -> f64 {
        self.messages as f64 / self.publish_elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs the baseline on queues and exchanges of `sandbox` (deleted with it).
pub async fn run(
    amqp_url: &str,
    connection: &Connection,
    sandbox: &mut Sandbox,
    messages: u64,
    bytes: usize,
    prefetch: u16,
    in_flight: u64,
) -> Result<BaselineResult, LabError> {
    let input = sandbox.own_queue("baseline.in");
    let input_exchange = sandbox.own_exchange("baseline.in");
    let output = sandbox.own_queue("baseline.out");
    let output_exchange = sandbox.own_exchange("baseline.out");
    let setup = connection.create_channel().await?;
    declare(&setup, &input_exchange, ExchangeKind::Topic, &input, "#").await?;
    declare(&setup, &output_exchange, ExchangeKind::Fanout, &output, "").await?;
    let _ = setup.close(200, "declared".into()).await;

    // The consumer side: its own connection, like a service instance.
    let consumer_connection = connect(amqp_url, "oprun-lab bench baseline consumer").await?;
    let credit = Arc::new(Semaphore::new(in_flight as usize));
    let nacks = Arc::new(AtomicU64::new(0));
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let consumer = spawn_consumer(
        &consumer_connection,
        &input,
        &output_exchange,
        prefetch,
        messages,
        credit.clone(),
        nacks.clone(),
        done_tx,
    )
    .await?;
    let drain_channel = connection.create_channel().await?;
    let mut drained = super::driver::consume_no_ack(&drain_channel, &output, "").await?;
    let drain = tokio::spawn(async move {
        let mut n = 0u64;
        while n < messages {
            match drained.next().await {
                Some(Ok(_)) => n += 1,
                _ => break,
            }
        }
        n
    });

    let body = vec![b'x'; bytes];
    let window = Window::open(connection, 1_000).await?;
    let mut first: Option<Instant> = None;
    let publishing = async {
        for i in 0..messages {
            credit
                .acquire()
                .await
                .expect("the credit semaphore is never closed")
                .forget();
            let properties = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2)
                .with_message_id(format!("baseline-{i}").into());
            let at = window
                .publish(&input_exchange, "dispatch", &body, properties)
                .await?;
            first.get_or_insert(at);
        }
        Ok::<Instant, LabError>(window.drain().await)
    };
    let confirmed_all = tokio::time::timeout(DEADLINE, publishing)
        .await
        .map_err(|_| LabError::Invalid("the baseline publisher timed out".into()))??;
    let last_ack = tokio::time::timeout(DEADLINE, done_rx)
        .await
        .map_err(|_| LabError::Invalid("the baseline consumer timed out".into()))?
        .map_err(|_| LabError::Invalid("the baseline consumer failed".into()))?;
    let _ = tokio::time::timeout(Duration::from_secs(10), drain).await;
    consumer.abort();
    let _ = drain_channel.close(200, "done".into()).await;
    window.close().await;
    let _ = consumer_connection.close(200, "done".into()).await;
    let first = first.unwrap_or(last_ack);
    Ok(BaselineResult {
        messages,
        bytes,
        publish_elapsed: confirmed_all.saturating_duration_since(first),
        elapsed: last_ack.saturating_duration_since(first),
        nacks: nacks.load(Ordering::Relaxed) + window.nacks(),
    })
}

pub(super) async fn declare(
    channel: &Channel,
    exchange: &str,
    kind: ExchangeKind,
    queue: &str,
    key: &str,
) -> Result<(), LabError> {
    declare_exchange(channel, exchange, kind).await?;
    declare_bound_queue(channel, queue, exchange, &[key]).await?;
    Ok(())
}

/// Starts the consumer: per delivery, one confirmed publish to `output_exchange`; an acker task
/// acks in delivery order once confirms arrive, and reports the instant of the ack that
/// completes `messages`.
#[allow(clippy::too_many_arguments)]
async fn spawn_consumer(
    connection: &Connection,
    input: &str,
    output_exchange: &str,
    prefetch: u16,
    messages: u64,
    credit: Arc<Semaphore>,
    nacks: Arc<AtomicU64>,
    done: tokio::sync::oneshot::Sender<Instant>,
) -> Result<tokio::task::JoinHandle<()>, LabError> {
    let consuming = connection.create_channel().await?;
    consuming
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let mut deliveries = consuming
        .basic_consume(
            input.into(),
            "bench-baseline".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let publishing = connection.create_channel().await?;
    publishing
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let (tx, rx) = mpsc::unbounded_channel::<(u64, PublisherConfirm)>();
    let acker = tokio::spawn(ack_in_order(
        consuming.clone(),
        rx,
        messages,
        credit,
        nacks,
        done,
    ));
    let output_exchange = output_exchange.to_owned();
    Ok(tokio::spawn(async move {
        while let Some(Ok(delivery)) = deliveries.next().await {
            let properties = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2);
            let Ok(confirm) = publishing
                .basic_publish(
                    output_exchange.as_str().into(),
                    "".into(),
                    BasicPublishOptions::default(),
                    &delivery.data,
                    properties,
                )
                .await
            else {
                break;
            };
            if tx.send((delivery.delivery_tag, confirm)).is_err() {
                break;
            }
        }
        let _ = acker.await;
    }))
}

async fn ack_in_order(
    channel: Channel,
    mut rx: mpsc::UnboundedReceiver<(u64, PublisherConfirm)>,
    messages: u64,
    credit: Arc<Semaphore>,
    nacks: Arc<AtomicU64>,
    done: tokio::sync::oneshot::Sender<Instant>,
) {
    let mut done = Some(done);
    let mut finish = move || {
        if let Some(d) = done.take() {
            let _ = d.send(Instant::now());
        }
    };
    let mut acked = 0u64;
    let mut confirmed_tag: Option<u64> = None;
    let mut pending_acks = 0u64;
    let ack = |tag: u64| {
        let channel = channel.clone();
        async move {
            channel
                .basic_ack(tag, BasicAckOptions { multiple: true })
                .await
        }
    };
    loop {
        let next = match rx.try_recv() {
            Ok(item) => Some(item),
            Err(mpsc::error::TryRecvError::Disconnected) => None,
            Err(mpsc::error::TryRecvError::Empty) => {
                // Nothing more confirmed-and-waiting: ack what we have before blocking.
                if let Some(tag) = confirmed_tag.take() {
                    if ack(tag).await.is_err() {
                        return;
                    }
                    acked += pending_acks;
                    credit.add_permits(pending_acks as usize);
                    pending_acks = 0;
                    if acked >= messages {
                        finish();
                        return;
                    }
                }
                rx.recv().await
            }
        };
        let Some((tag, confirm)) = next else { return };
        if !matches!(confirm.await, Ok(c) if c.is_ack()) {
            nacks.fetch_add(1, Ordering::Relaxed);
        }
        confirmed_tag = Some(tag);
        pending_acks += 1;
        if pending_acks >= ACK_EVERY || acked + pending_acks >= messages {
            if ack(tag).await.is_err() {
                return;
            }
            confirmed_tag = None;
            acked += pending_acks;
            credit.add_permits(pending_acks as usize);
            pending_acks = 0;
            if acked >= messages {
                finish();
                return;
            }
        }
    }
}
