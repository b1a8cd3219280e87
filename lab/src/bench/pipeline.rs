//! A pipelined confirm publisher: up to `window` publishes await their broker confirm at once,
//! instead of one round trip per message, so that the bench's own publishing is not what it
//! measures.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection};
use tokio::sync::Semaphore;

use crate::LabError;

/// A confirm-mode channel with a bounded window of unconfirmed publishes.
pub struct Pipeline {
    channel: Channel,
    window: Arc<Semaphore>,
    size: u32,
    nacks: Arc<AtomicU64>,
}

impl Pipeline {
    /// Opens a channel on `connection` in confirm mode, allowing `window` unconfirmed publishes.
    pub async fn open(connection: &Connection, window: u32) -> Result<Self, LabError> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            channel,
            window: Arc::new(Semaphore::new(window as usize)),
            size: window,
            nacks: Arc::default(),
        })
    }

    /// The channel (replies to direct reply-to arrive on the channel that published).
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publishes once the window has room; returns when the frame is handed to the connection
    /// (not confirmed), with the instant it was sent: the command's publish time.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<Instant, LabError> {
        let permit = self
            .window
            .clone()
            .acquire_owned()
            .await
            .expect("the window semaphore is never closed");
        let sent = Instant::now();
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await?;
        let nacks = self.nacks.clone();
        tokio::spawn(async move {
            if !matches!(confirm.await, Ok(c) if c.is_ack()) {
                nacks.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
        });
        Ok(sent)
    }

    /// Waits until every publish so far is confirmed; returns when that happened.
    pub async fn drain(&self) -> Instant {
        let all = self
            .window
            .acquire_many(self.size)
            .await
            .expect("the window semaphore is never closed");
        drop(all);
        Instant::now()
    }

    /// Publishes the broker refused (nacked) or lost with the channel.
    pub fn nacks(&self) -> u64 {
        self.nacks.load(Ordering::Relaxed)
    }

    /// Closes the channel.
    pub async fn close(&self) {
        let _ = self.channel.close(200, "bench done".into()).await;
    }
}
