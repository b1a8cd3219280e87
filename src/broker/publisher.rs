//! Publishing with publisher confirms on a dedicated channel: a message counts as sent only when
//! the broker has acked it. [`publish_round`] is the one publish-and-settle round of the service
//! (dead letters and replies of a batch, the relay's events and jobs), with the one
//! [`CONFIRM_TIMEOUT`].

use std::borrow::Cow;
use std::time::Duration;

use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, Consumer};
use lapin::{Confirmation, PublisherConfirm};

use super::BrokerError;

/// How long a round waits for the broker's confirms before it gives the channel up: the
/// unconfirmed publishes count as unanswered and the caller replaces the channel.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

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

/// One message of a [`publish_round`].
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    /// The exchange (`""`: the default exchange, which routes by queue name).
    pub exchange: &'a str,
    /// The routing key.
    pub routing_key: &'a str,
    /// The body.
    pub body: Cow<'a, [u8]>,
    /// The properties (shaped by `broker::messages` or `broker::dead_letter`).
    pub properties: BasicProperties,
    /// Ask the broker to return the message when no queue is bound for it.
    pub mandatory: bool,
}

impl Outgoing<'_> {
    /// The same message, borrowing its body: what a round publishes when the caller keeps the
    /// message for another attempt.
    pub fn reborrow(&self) -> Outgoing<'_> {
        Outgoing {
            exchange: self.exchange,
            routing_key: self.routing_key,
            body: Cow::Borrowed(&self.body),
            properties: self.properties.clone(),
            mandatory: self.mandatory,
        }
    }
}

/// What the broker answered to one publish of a round.
#[derive(Debug)]
pub enum Answer {
    /// Confirmed: routed and stored, or (mandatory and unroutable) returned.
    Confirmed(Confirmed),
    /// Nacked ([`BrokerError::Nacked`]): the broker refused it.
    Nacked(BrokerError),
    /// No answer: never started (the channel failed first) or its confirm did not arrive (a
    /// closed channel, [`CONFIRM_TIMEOUT`]); its fate is unknown. The round's `channel_error`
    /// says why.
    Unanswered,
}

/// How one round ended: every item with its answer, and the first channel failure.
#[derive(Debug)]
pub struct Round<'i, T> {
    /// Every item, in input order, with the broker's answer.
    pub answers: Vec<(&'i T, Answer)>,
    /// The first failure that is not a nack (a publish that could not start, a closed channel,
    /// a confirm timeout): the channel should be replaced.
    pub channel_error: Option<BrokerError>,
}

/// Publishes one message per item (pipelined, in order) and waits for every confirm until
/// [`CONFIRM_TIMEOUT`], reporting each on its own: a nack or a failed channel does not hide the
/// confirms that did arrive, so a caller can record what the broker took and publish only the
/// rest again. Once a publish cannot start, the items after it are not started.
pub async fn publish_round<'i, T>(
    publisher: &ConfirmPublisher,
    items: &'i [T],
    message: impl Fn(&'i T) -> Outgoing<'i>,
) -> Round<'i, T> {
    let mut started = Vec::with_capacity(items.len());
    let mut channel_error = None;
    for item in items {
        let m = message(item);
        match publisher
            .start(
                m.exchange,
                m.routing_key,
                &m.body,
                m.properties,
                m.mandatory,
            )
            .await
        {
            Ok(pending) => started.push(pending),
            Err(e) => {
                channel_error = Some(e);
                break;
            }
        }
    }
    let deadline = tokio::time::Instant::now() + CONFIRM_TIMEOUT;
    let mut confirms = confirm_each(started, deadline).await.into_iter();
    let answers = items
        .iter()
        .map(|item| {
            let answer = match confirms.next() {
                Some(Ok(confirmed)) => Answer::Confirmed(confirmed),
                Some(Err(e @ BrokerError::Nacked { .. })) => Answer::Nacked(e),
                Some(Err(e)) => {
                    channel_error.get_or_insert(e);
                    Answer::Unanswered
                }
                None => Answer::Unanswered,
            };
            (item, answer)
        })
        .collect();
    Round {
        answers,
        channel_error,
    }
}
