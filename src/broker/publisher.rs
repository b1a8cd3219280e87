//! Publishing with publisher confirms on a dedicated channel: a message counts as sent only when
//! the broker has acked it.

use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, Consumer};
use lapin::{Confirmation, PublisherConfirm};

use super::BrokerError;

/// A channel in confirm mode.
#[derive(Clone)]
pub struct ConfirmPublisher {
    channel: Channel,
}

/// A publish in flight: await it with [`Pending::confirmed`].
pub struct Pending {
    exchange: String,
    confirm: PublisherConfirm,
}

/// What the broker said about a confirmed publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmed {
    /// Routed and stored.
    Delivered,
    /// Mandatory and unroutable: returned (and acked) by the broker.
    Returned,
}

impl ConfirmPublisher {
    /// Opens a new channel on `connection` and puts it in confirm mode.
    pub async fn open(connection: &Connection) -> Result<Self, BrokerError> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self { channel })
    }

    /// Starts publishing `body` to `exchange` with `routing_key`; `mandatory` asks the broker to
    /// return the message when no queue is bound for it.
    pub async fn start(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<Pending, BrokerError> {
        let options = BasicPublishOptions {
            mandatory,
            ..Default::default()
        };
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                options,
                body,
                properties,
            )
            .await?;
        Ok(Pending {
            exchange: exchange.to_owned(),
            confirm,
        })
    }

    /// Publishes and waits for the broker's confirm.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<Confirmed, BrokerError> {
        self.start(exchange, routing_key, body, properties, mandatory)
            .await?
            .confirmed()
            .await
    }

    /// The underlying channel.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }
}

impl Pending {
    /// Waits for the broker's confirm; a nack is an error.
    pub async fn confirmed(self) -> Result<Confirmed, BrokerError> {
        match self.confirm.await? {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(Confirmed::Delivered),
            Confirmation::Ack(Some(_)) => Ok(Confirmed::Returned),
            Confirmation::Nack(_) => Err(BrokerError::Nacked {
                exchange: self.exchange,
            }),
        }
    }
}

/// RabbitMQ's direct reply-to pseudo-queue: set it as `reply_to` on a channel that consumes it.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Starts consuming direct replies (no-ack, as RabbitMQ requires) on `channel`; publish requests
/// with `reply_to = DIRECT_REPLY_TO` from the same channel.
pub async fn consume_direct_replies(channel: &Channel) -> Result<Consumer, BrokerError> {
    let options = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    Ok(channel
        .basic_consume(
            DIRECT_REPLY_TO.into(),
            "".into(),
            options,
            FieldTable::default(),
        )
        .await?)
}

/// Waits for every `pending` confirm, in order, and reports each one on its own: a nack
/// ([`BrokerError::Nacked`]) or a failed channel does not hide the confirms that did arrive, so a
/// caller can record what the broker took and retry only the rest. A confirm that has not
/// arrived by `deadline` is reported as [`BrokerError::Stopped`] (the channel should be
/// replaced: its fate is unknown).
pub async fn confirm_each(
    pending: Vec<Pending>,
    deadline: tokio::time::Instant,
) -> Vec<Result<Confirmed, BrokerError>> {
    let mut out = Vec::with_capacity(pending.len());
    for p in pending {
        out.push(
            match tokio::time::timeout_at(deadline, p.confirmed()).await {
                Ok(result) => result,
                Err(_) => Err(BrokerError::Stopped(
                    "the broker did not confirm a publish in time".into(),
                )),
            },
        );
    }
    out
}

/// Waits for all `pending` confirms, in order.
pub async fn confirm_all(pending: Vec<Pending>) -> Result<Vec<Confirmed>, BrokerError> {
    let mut out = Vec::with_capacity(pending.len());
    for p in pending {
        out.push(p.confirmed().await?);
    }
    Ok(out)
}
