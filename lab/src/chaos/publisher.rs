//! The chaos producer: publishes with confirms, pipelined within a window, and outlives a broker
//! restart. When a publish or a confirm fails, it reconnects with backoff and republishes every
//! message not yet confirmed, from the oldest on (at-least-once: the service's inbox removes the
//! duplicates this may create).

use std::collections::VecDeque;
use std::time::Duration;

use lapin::{BasicProperties, Connection};
use tokio::time::Instant;

use super::workload::Message;
use operation_runs::broker::connection::connect;
use operation_runs::broker::publisher::{ConfirmPublisher, Confirmed, Pending};
use operation_runs::broker::BrokerError;
use operation_runs::retry::backoff;

/// Unconfirmed publishes allowed in flight.
const WINDOW: usize = 200;
/// A confirm that takes longer than this counts as lost with its connection.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// A publisher to one exchange that reconnects by itself.
pub struct ReliablePublisher {
    amqp_url: String,
    exchange: String,
    link: Option<(Connection, ConfirmPublisher)>,
    /// Connections lost and re-established.
    pub reconnects: u64,
}

impl ReliablePublisher {
    /// A publisher to `exchange`; it connects on first use.
    pub fn new(amqp_url: &str, exchange: String) -> Self {
        Self {
            amqp_url: amqp_url.to_owned(),
            exchange,
            link: None,
            reconnects: 0,
        }
    }

    /// Publishes every message of `messages` until the broker has confirmed each at least
    /// once; fails only when `deadline` passes first.
    pub async fn publish_all(
        &mut self,
        messages: &[Message],
        deadline: Instant,
    ) -> Result<(), String> {
        let mut confirmed = 0;
        let mut delays = backoff();
        while confirmed < messages.len() {
            let Err(error) = self.publish_from(messages, &mut confirmed).await else {
                continue;
            };
            self.close().await;
            self.reconnects += 1;
            let delay = delays.next().unwrap_or(Duration::from_secs(5));
            eprintln!(
                "chaos: publisher: {error}; republishing {} unconfirmed message(s) in {} ms",
                messages.len() - confirmed,
                delay.as_millis()
            );
            if Instant::now() + delay > deadline {
                return Err(format!(
                    "publishing gave up at its deadline with {} message(s) unconfirmed: {error}",
                    messages.len() - confirmed
                ));
            }
            tokio::time::sleep(delay).await;
        }
        Ok(())
    }

    /// Publishes from `*confirmed` on, advancing it as confirms arrive (in order).
    async fn publish_from(
        &mut self,
        messages: &[Message],
        confirmed: &mut usize,
    ) -> Result<(), BrokerError> {
        let publisher = self.publisher().await?;
        let mut in_flight: VecDeque<Pending> = VecDeque::with_capacity(WINDOW);
        let mut next = *confirmed;
        while *confirmed < messages.len() {
            while next < messages.len() && in_flight.len() < WINDOW {
                in_flight.push_back(self.start(&publisher, &messages[next]).await?);
                next += 1;
            }
            let oldest = in_flight.pop_front().expect("the window is not empty");
            match tokio::time::timeout(CONFIRM_TIMEOUT, oldest.confirmed()).await {
                Ok(Ok(Confirmed::Delivered)) => *confirmed += 1,
                Ok(Ok(Confirmed::Returned)) => {
                    return Err(BrokerError::InvalidName(format!(
                        "{:?} returned a command as unroutable",
                        self.exchange
                    )))
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(BrokerError::InvalidName(
                        "no confirm within 30 s".to_owned(),
                    ))
                }
            }
        }
        Ok(())
    }

    async fn start(
        &self,
        publisher: &ConfirmPublisher,
        message: &Message,
    ) -> Result<Pending, BrokerError> {
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(message.message_id.as_str().into());
        // Mandatory: a command no queue takes is an error here, not a silent loss.
        publisher
            .start(
                &self.exchange,
                message.routing_key,
                &message.body,
                properties,
                true,
            )
            .await
    }

    async fn publisher(&mut self) -> Result<ConfirmPublisher, BrokerError> {
        if let Some((_, publisher)) = &self.link {
            return Ok(publisher.clone());
        }
        let connection = connect(&self.amqp_url, "oprun-lab chaos publisher").await?;
        let publisher = ConfirmPublisher::open(&connection).await?;
        self.link = Some((connection, publisher.clone()));
        Ok(publisher)
    }

    /// Closes the connection (a new one opens on the next publish).
    pub async fn close(&mut self) {
        if let Some((connection, _)) = self.link.take() {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                connection.close(200, "chaos publisher done".into()),
            )
            .await;
        }
    }
}
