//! The command consumer: deliveries from `N.commands`, gathered into batches.
//!
//! Memory: lapin receives every message whole and its consumer buffers up to `prefetch`
//! deliveries, so what the service holds of producers' bytes is bounded by prefetch × the broker's
//! `max_message_size` (`topology/rabbitmq.conf`), plus what a batch copies while it is settled
//! (dead letters re-publish their body), which [`BATCH_BYTE_BUDGET`] bounds.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use tokio_util::sync::CancellationToken;

use super::{BrokerError, Topology};

/// The broker's `max_message_size` the memory bound assumes: what `topology/rabbitmq.conf`
/// ships (384 KiB; a unit test keeps the two equal). A larger delivery means the broker is not
/// configured as shipped, and the service says so.
pub const BROKER_MAX_MESSAGE_SIZE: usize = 384 * 1024;

/// A batch stops gathering once its bodies add up to this many bytes (8 MiB). Ordinary commands
/// are a few hundred bytes, so only floods of large messages ever reach it; it bounds what one
/// batch holds and copies (dead letters, replies) while it is settled, to about this much plus
/// one message.
pub const BATCH_BYTE_BUDGET: usize = 8 * 1024 * 1024;

/// A consumer of the commands queue on its own channel.
pub struct CommandConsumer {
    channel: Channel,
    consumer: Consumer,
    tag: String,
    warned_oversized: bool,
    taken: Vec<Instant>,
}

impl CommandConsumer {
    /// Starts consuming `N.commands` with `prefetch` unacked deliveries at most.
    pub async fn start(
        connection: &Connection,
        topology: &Topology,
        prefetch: u16,
        tag: &str,
    ) -> Result<Self, BrokerError> {
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                topology.commands_queue().into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Self {
            channel,
            consumer,
            tag: tag.to_owned(),
            warned_oversized: false,
            taken: Vec::new(),
        })
    }

    /// Waits for a delivery, then gathers up to `max` that arrive within `window` of the first,
    /// stopping early once the batch's bodies reach [`BATCH_BYTE_BUDGET`] bytes.
    /// `Ok(None)` when `shutdown` fires first or the broker cancels the consumer.
    pub async fn next_batch(
        &mut self,
        max: usize,
        window: Duration,
        shutdown: &CancellationToken,
    ) -> Result<Option<Vec<Delivery>>, BrokerError> {
        let first = tokio::select! {
            next = self.consumer.next() => next,
            _ = shutdown.cancelled() => return Ok(None),
        };
        let Some(first) = first else { return Ok(None) };
        let first = first?;
        self.taken.clear();
        self.taken.push(Instant::now());
        self.check_size(&first);
        let mut bytes = first.data.len();
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + window;
        while batch.len() < max && bytes < BATCH_BYTE_BUDGET {
            match tokio::time::timeout_at(deadline, self.consumer.next()).await {
                Ok(Some(delivery)) => {
                    let delivery = delivery?;
                    self.taken.push(Instant::now());
                    self.check_size(&delivery);
                    bytes += delivery.data.len();
                    batch.push(delivery);
                }
                Ok(None) | Err(_) => break,
            }
        }
        Ok(Some(batch))
    }

    /// When each delivery of the last batch was taken from the consumer, in order (the batch
    /// window's start, for the stage metrics).
    pub fn taken(&self) -> &[Instant] {
        &self.taken
    }

    /// Warns (once per consumer) when the broker delivered more than it should accept: its
    /// `max_message_size` is not the shipped one, so the documented memory bound does not hold.
    /// The delivery itself is still handled (refused as `message_too_large`).
    fn check_size(&mut self, delivery: &Delivery) {
        if delivery.data.len() > BROKER_MAX_MESSAGE_SIZE && !self.warned_oversized {
            self.warned_oversized = true;
            tracing::warn!(
                bytes = delivery.data.len(),
                expected_max = BROKER_MAX_MESSAGE_SIZE,
                "the broker delivered a message larger than the max_message_size of \
                 topology/rabbitmq.conf; apply that configuration, or memory is not bounded"
            );
        }
    }

    /// Acks every delivery up to and including `delivery_tag` (one frame for a whole batch).
    pub async fn ack_through(&self, delivery_tag: u64) -> Result<(), BrokerError> {
        self.channel
            .basic_ack(delivery_tag, BasicAckOptions { multiple: true })
            .await?;
        Ok(())
    }

    /// Stops the flow of new deliveries; the unacked ones go back to the queue when the channel
    /// closes.
    pub async fn cancel(&self) -> Result<(), BrokerError> {
        self.channel
            .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default())
            .await?;
        Ok(())
    }

    /// Closes the channel.
    pub async fn close(&self) {
        let _ = self.channel.close(200, "shutdown".into()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_assumed_broker_limit_is_the_shipped_one() {
        let conf = include_str!("../../topology/rabbitmq.conf");
        let shipped: usize = conf
            .lines()
            .filter_map(|line| line.split_once('='))
            .find(|(key, _)| key.trim() == "max_message_size")
            .and_then(|(_, value)| value.trim().parse().ok())
            .expect("topology/rabbitmq.conf sets max_message_size");
        assert_eq!(shipped, BROKER_MAX_MESSAGE_SIZE);
        assert!(shipped > crate::domain::command::MAX_COMMAND_BYTES);
    }
}
