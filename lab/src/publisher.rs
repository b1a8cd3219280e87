//! The lab's publishing, on the product's confirm channel (`broker::publisher`) and its one
//! [`CONFIRM_TIMEOUT`]:
//!
//! - [`Window`]: up to `window` publishes await their broker confirm at once, instead of one
//!   round trip per message, and each publish returns the instant it was sent, so that the
//!   benchmarks' own publishing is not what they measure and a paced phase can send one
//!   message at a time.
//! - [`Reconnecting`]: the fault-injection run's producer, which outlives a broker restart. It
//!   publishes in rounds of the product's [`publish_round`]; when a publish or a confirm fails,
//!   it reconnects with backoff and publishes again every message not yet confirmed, from the
//!   oldest on (at-least-once: the service's inbox removes the duplicates this may create).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::{BasicProperties, Channel, Connection};
use tokio::sync::Semaphore;

use crate::LabError;
use operation_runs::broker::connection::connect;
use operation_runs::broker::publisher::{
    publish_round, Answer, ConfirmPublisher, Confirmed, Outgoing, CONFIRM_TIMEOUT,
};
use operation_runs::broker::BrokerError;
use operation_runs::retry::backoff;

/// A confirm-mode channel with a bounded window of unconfirmed publishes.
pub struct Window {
    publisher: ConfirmPublisher,
    window: Arc<Semaphore>,
    size: u32,
    nacks: Arc<AtomicU64>,
}

impl Window {
    /// Opens a channel on `connection` in confirm mode, allowing `window` unconfirmed publishes.
    pub async fn open(connection: &Connection, window: u32) -> Result<Self, LabError> {
        Ok(Self {
            publisher: ConfirmPublisher::open(connection).await?,
            window: Arc::new(Semaphore::new(window as usize)),
            size: window,
            nacks: Arc::default(),
        })
    }

    /// The channel (replies to direct reply-to arrive on the channel that published).
    pub fn channel(&self) -> &Channel {
        self.publisher.channel()
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
        let pending = self
            .publisher
            .start(exchange, routing_key, body, properties, false)
            .await?;
        let nacks = self.nacks.clone();
        tokio::spawn(async move {
            let answer = tokio::time::timeout(CONFIRM_TIMEOUT, pending.confirmed()).await;
            if !matches!(answer, Ok(Ok(Confirmed::Delivered))) {
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

    /// Publishes the broker refused (nacked), lost with the channel, or did not confirm within
    /// [`CONFIRM_TIMEOUT`].
    pub fn nacks(&self) -> u64 {
        self.nacks.load(Ordering::Relaxed)
    }

    /// Closes the channel.
    pub async fn close(&self) {
        let _ = self
            .publisher
            .channel()
            .close(200, "bench done".into())
            .await;
    }
}

/// Messages of one [`publish_round`] of a [`Reconnecting`] publisher.
const ROUND: usize = 250;

/// A publisher to one exchange that reconnects by itself.
pub struct Reconnecting {
    amqp_url: String,
    exchange: String,
    label: &'static str,
    link: Option<(Connection, ConfirmPublisher)>,
    /// Connections lost and re-established.
    pub reconnects: u64,
}

/// One message for [`Reconnecting::publish_all`]: persistent JSON with its `message_id`.
pub struct Message<'a> {
    /// The routing key.
    pub routing_key: &'a str,
    /// The body.
    pub body: &'a [u8],
    /// The AMQP `message_id`.
    pub message_id: &'a str,
}

impl Reconnecting {
    /// A publisher to `exchange`; it connects on first use. `label` starts its log lines.
    pub fn new(amqp_url: &str, exchange: String, label: &'static str) -> Self {
        Self {
            amqp_url: amqp_url.to_owned(),
            exchange,
            label,
            link: None,
            reconnects: 0,
        }
    }

    /// Publishes every item of `items` (as `message` words it) until the broker has confirmed
    /// each at least once; fails only when `deadline` passes first.
    pub async fn publish_all<T>(
        &mut self,
        items: &[T],
        message: impl Fn(&T) -> Message<'_>,
        deadline: tokio::time::Instant,
    ) -> Result<(), String> {
        let mut confirmed = 0;
        let mut delays = backoff();
        while confirmed < items.len() {
            let Err(error) = self.publish_from(items, &message, &mut confirmed).await else {
                continue;
            };
            self.close().await;
            self.reconnects += 1;
            let delay = delays.next().unwrap_or(Duration::from_secs(5));
            eprintln!(
                "{}: publisher: {error}; republishing {} unconfirmed message(s) in {} ms",
                self.label,
                items.len() - confirmed,
                delay.as_millis()
            );
            if tokio::time::Instant::now() + delay > deadline {
                return Err(format!(
                    "publishing gave up at its deadline with {} message(s) unconfirmed: {error}",
                    items.len() - confirmed
                ));
            }
            tokio::time::sleep(delay).await;
        }
        Ok(())
    }

    /// Publishes from `*confirmed` on, one round at a time, advancing it over the confirms of
    /// each round's leading messages.
    async fn publish_from<T>(
        &mut self,
        items: &[T],
        message: &impl Fn(&T) -> Message<'_>,
        confirmed: &mut usize,
    ) -> Result<(), BrokerError> {
        let publisher = self.publisher().await?;
        while *confirmed < items.len() {
            let round = &items[*confirmed..items.len().min(*confirmed + ROUND)];
            let answers = publish_round(&publisher, round, |item| {
                let m = message(item);
                Outgoing {
                    exchange: &self.exchange,
                    routing_key: m.routing_key,
                    body: m.body.into(),
                    properties: BasicProperties::default()
                        .with_content_type("application/json".into())
                        .with_delivery_mode(2)
                        .with_message_id(m.message_id.into()),
                    // Mandatory: a command no queue takes is an error here, not a silent loss.
                    mandatory: true,
                }
            })
            .await;
            for (_, answer) in answers.answers {
                match answer {
                    Answer::Confirmed(Confirmed::Delivered) => *confirmed += 1,
                    Answer::Confirmed(Confirmed::Returned) => {
                        return Err(BrokerError::InvalidName(format!(
                            "{:?} returned a command as unroutable",
                            self.exchange
                        )))
                    }
                    Answer::Nacked(e) => return Err(e),
                    Answer::Unanswered => {
                        return Err(answers.channel_error.unwrap_or_else(|| {
                            BrokerError::Stopped("a publish went unanswered".into())
                        }))
                    }
                }
            }
        }
        Ok(())
    }

    async fn publisher(&mut self) -> Result<ConfirmPublisher, BrokerError> {
        if let Some((_, publisher)) = &self.link {
            return Ok(publisher.clone());
        }
        let name = format!("oprun-lab {} publisher", self.label);
        let connection = connect(&self.amqp_url, &name).await?;
        let publisher = ConfirmPublisher::open(&connection).await?;
        self.link = Some((connection, publisher.clone()));
        Ok(publisher)
    }

    /// Closes the connection (a new one opens on the next publish).
    pub async fn close(&mut self) {
        if let Some((connection, _)) = self.link.take() {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                connection.close(200, "publisher done".into()),
            )
            .await;
        }
    }
}
