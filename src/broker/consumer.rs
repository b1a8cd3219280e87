//! The command consumer: deliveries from `N.commands`, gathered into batches.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use tokio_util::sync::CancellationToken;

use super::{BrokerError, Topology};

/// A consumer of the commands queue on its own channel.
pub struct CommandConsumer {
    channel: Channel,
    consumer: Consumer,
    tag: String,
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
        })
    }

    /// Waits for a delivery, then gathers up to `max` that arrive within `window` of the first.
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
        let mut batch = vec![first?];
        let deadline = tokio::time::Instant::now() + window;
        while batch.len() < max {
            match tokio::time::timeout_at(deadline, self.consumer.next()).await {
                Ok(Some(delivery)) => batch.push(delivery?),
                Ok(None) | Err(_) => break,
            }
        }
        Ok(Some(batch))
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
