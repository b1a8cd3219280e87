//! The dead-letter queue, read and replayed safely: messages are taken with manual acks, a
//! replayed one is acked only after the broker confirms its republish, and everything not
//! acked returns to the queue when the channel closes (also on a crash).

use chrono::{DateTime, Utc};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::types::{AMQPValue, ShortString};
use lapin::Connection;
use serde_json::{json, Value};

use super::dead_letter::{
    broker_death_time, dead_letter_reason, original_routing_key, FAILED_AT_HEADER, REPLAYS_HEADER,
};
use super::headers::{get_i64, get_str};
use super::publisher::{ConfirmPublisher, Confirmed};
use super::{BrokerError, Topology};

/// Headers that describe a failed attempt; a replay starts without them.
const ATTEMPT_HEADERS: [&str; 9] = [
    "x-oprun-error-code",
    "x-oprun-error-message",
    "x-oprun-failed-at",
    "x-oprun-routing-key",
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-delivery-count",
];

/// One dead letter, held (unacked) by this reader.
pub struct DeadLetter {
    /// The message as the broker delivered it.
    pub delivery: Delivery,
    /// The reason code.
    pub code: String,
    /// The reason message.
    pub message: String,
    /// The command kind, when the body says.
    pub kind: Option<String>,
    /// The command id (body field or message_id).
    pub command_id: Option<String>,
    /// When it was refused (`x-oprun-failed-at`, else the broker's `x-death` time).
    pub failed_at: Option<DateTime<Utc>>,
    /// The routing key it was first published with.
    pub routing_key: String,
    /// How often it was replayed before.
    pub replays: i64,
}

impl DeadLetter {
    fn from_delivery(delivery: Delivery) -> Self {
        let headers = delivery.properties.headers().as_ref();
        let (code, message) = dead_letter_reason(headers);
        let body: Option<Value> = serde_json::from_slice(&delivery.data).ok();
        let kind = body
            .as_ref()
            .and_then(|b| b.get("kind")?.as_str().map(str::to_owned));
        let command_id = body
            .as_ref()
            .and_then(|b| b.get("command_id")?.as_str().map(str::to_owned))
            .or_else(|| {
                delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|m| m.to_string())
            });
        let failed_at = get_str(headers, FAILED_AT_HEADER)
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&Utc))
            .or_else(|| broker_death_time(headers));
        let routing_key = original_routing_key(headers, delivery.routing_key.as_str());
        let replays = get_i64(headers, REPLAYS_HEADER).unwrap_or(0);
        Self {
            delivery,
            code,
            message,
            kind,
            command_id,
            failed_at,
            routing_key,
            replays,
        }
    }

    /// The listing form: code, message, kind, age, command id.
    pub fn summary(&self, now: DateTime<Utc>) -> Value {
        json!({
            "code": self.code,
            "message": self.message,
            "kind": self.kind,
            "command_id": self.command_id,
            "failed_at": self.failed_at,
            "age_seconds": self.failed_at.map(|t| (now - t).num_seconds()),
            "routing_key": self.routing_key,
            "replays": self.replays,
            "bytes": self.delivery.data.len(),
        })
    }
}

/// A reader of `N.commands.dlq`.
pub struct DeadLetterQueue {
    publisher: ConfirmPublisher,
    topology: Topology,
}

impl DeadLetterQueue {
    /// Opens a confirm-mode channel for reading and republishing.
    pub async fn open(connection: &Connection, topology: Topology) -> Result<Self, BrokerError> {
        Ok(Self {
            publisher: ConfirmPublisher::open(connection).await?,
            topology,
        })
    }

    /// Takes the next dead letter (held until acked or the channel closes); `None` when the
    /// queue has no more.
    pub async fn take(&self) -> Result<Option<DeadLetter>, BrokerError> {
        let got = self
            .publisher
            .channel()
            .basic_get(
                self.topology.dead_letter_queue().into(),
                BasicGetOptions { no_ack: false },
            )
            .await?;
        Ok(got.map(|m| DeadLetter::from_delivery(m.delivery)))
    }

    /// Republishes `letter` to `N.commands` with its original routing key, body and properties
    /// (minus the failure headers, plus `x-oprun-replays`), waits for the confirm, then acks it
    /// from the DLQ. An unroutable republish is not acked (it stays in the DLQ).
    pub async fn replay(&self, letter: &DeadLetter) -> Result<bool, BrokerError> {
        let mut headers = letter
            .delivery
            .properties
            .headers()
            .clone()
            .unwrap_or_default();
        let kept = headers
            .inner()
            .iter()
            .filter(|(k, _)| !ATTEMPT_HEADERS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<std::collections::BTreeMap<ShortString, AMQPValue>>();
        headers = kept.into();
        headers.insert(
            REPLAYS_HEADER.into(),
            AMQPValue::LongLongInt(letter.replays + 1),
        );
        let properties = letter.delivery.properties.clone().with_headers(headers);
        let confirmed = self
            .publisher
            .publish(
                &self.topology.commands_exchange(),
                &letter.routing_key,
                &letter.delivery.data,
                properties,
                true,
            )
            .await?;
        if confirmed == Confirmed::Returned {
            return Ok(false);
        }
        letter
            .delivery
            .acker
            .ack(BasicAckOptions::default())
            .await?;
        Ok(true)
    }

    /// Returns every held letter to the queue.
    pub async fn release(self) {
        let _ = self.publisher.channel().close(200, "released".into()).await;
    }
}
