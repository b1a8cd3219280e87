//! The dead-letter queue as the inbox of the `dead_letters` table: `oprun dlq` takes what
//! `N.commands.dlq` holds (one delivery each), the caller stores it and acks it only after the
//! commit; listing and replay then read the table, so looking at a letter never returns it to the
//! queue. (Returning is the only way to read a quorum queue in place over AMQP, and every return
//! counts: RabbitMQ 3.x raises `x-delivery-count`, 4.0–4.2 the acquired count their default
//! delivery limit of 20 is checked against, and the order changes.) A replay republishes a stored
//! letter with confirms; the caller deletes it only after the confirm.

use chrono::{DateTime, SecondsFormat, Utc};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::types::{AMQPValue, LongString, ShortString};
use lapin::{BasicProperties, Connection};
use serde_json::Value;

use super::dead_letter::{
    broker_death_time, dead_letter_reason, original_routing_key, FAILED_AT_HEADER,
    FIRST_FAILED_AT_HEADER, REPLAYS_HEADER,
};
use super::headers::{get_i64, get_str};
use super::publisher::{ConfirmPublisher, Confirmed};
use super::{BrokerError, Topology};
use crate::domain::failure::{is_secret_key, redact_secrets, REDACTED_VALUE};

/// Headers that describe a failed attempt; a replay starts without them.
const ATTEMPT_HEADERS: [&str; 10] = [
    "x-oprun-error-code",
    "x-oprun-error-message",
    "x-oprun-failed-at",
    "x-oprun-routing-key",
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-delivery-count",
    "x-acquired-count",
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
    /// The tenant the body names, when it is a whole number.
    pub tenant_id: Option<i64>,
    /// When this letter was refused (`x-oprun-failed-at`, else the broker's `x-death` time).
    pub failed_at: Option<DateTime<Utc>>,
    /// When its command was first refused (`x-oprun-first-failed-at`, kept across replays),
    /// else `failed_at`.
    pub first_failed_at: Option<DateTime<Utc>>,
    /// The routing key it was first published with.
    pub routing_key: String,
    /// How often it was replayed before.
    pub replays: i64,
    /// How often the broker had delivered it before (`x-delivery-count`, or RabbitMQ 4's
    /// `x-acquired-count`, whichever is higher).
    pub delivery_count: i64,
}

fn rfc3339_header(headers: Option<&lapin::types::FieldTable>, key: &str) -> Option<DateTime<Utc>> {
    get_str(headers, key)
        .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| t.with_timezone(&Utc))
}

impl DeadLetter {
    fn from_delivery(delivery: Delivery) -> Self {
        let headers = delivery.properties.headers().as_ref();
        let (code, message) = dead_letter_reason(headers);
        let body: Option<Value> = serde_json::from_slice(&delivery.data).ok();
        let kind = body
            .as_ref()
            .and_then(|b| b.get("kind")?.as_str().map(str::to_owned));
        let tenant_id = body.as_ref().and_then(|b| b.get("tenant_id")?.as_i64());
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
        let failed_at =
            rfc3339_header(headers, FAILED_AT_HEADER).or_else(|| broker_death_time(headers));
        let first_failed_at = rfc3339_header(headers, FIRST_FAILED_AT_HEADER).or(failed_at);
        let routing_key = original_routing_key(headers, delivery.routing_key.as_str());
        let replays = get_i64(headers, REPLAYS_HEADER).unwrap_or(0);
        let delivery_count = get_i64(headers, "x-delivery-count")
            .unwrap_or(0)
            .max(get_i64(headers, "x-acquired-count").unwrap_or(0));
        Self {
            delivery,
            code,
            message,
            kind,
            command_id,
            tenant_id,
            failed_at,
            first_failed_at,
            routing_key,
            replays,
            delivery_count,
        }
    }

    /// Its properties (headers included) encoded for storage; [`DeadLetterQueue::republish`]
    /// decodes them.
    pub fn encoded_properties(&self) -> Vec<u8> {
        // serde JSON of lapin's own type: every AMQP value round-trips, NULs included.
        serde_json::to_vec(&self.delivery.properties).unwrap_or_default()
    }
}

/// The stored properties of a letter (as [`DeadLetter::encoded_properties`] gave them) as JSON
/// for `oprun dlq show` and the dead-letters page: the AMQP properties that are set, and every
/// header with its value (text as text, numbers as numbers, tables as objects, bytes as hex),
/// secrets redacted (see [`redacted`]). `None` when they do not decode.
pub fn describe_properties(encoded: &[u8]) -> Option<Value> {
    let p: BasicProperties = serde_json::from_slice(encoded).ok()?;
    let mut out = serde_json::Map::new();
    let mut set = |key: &str, value: Option<Value>| {
        if let Some(v) = value {
            out.insert(key.to_owned(), v);
        }
    };
    let text = |s: &Option<ShortString>| s.as_ref().map(|s| Value::from(s.as_str()));
    set("content_type", text(p.content_type()));
    set("content_encoding", text(p.content_encoding()));
    set("delivery_mode", p.delivery_mode().map(Value::from));
    set("priority", p.priority().map(Value::from));
    set("correlation_id", text(p.correlation_id()));
    set("reply_to", text(p.reply_to()));
    set("expiration", text(p.expiration()));
    set("message_id", text(p.message_id()));
    set("timestamp", p.timestamp().map(Value::from));
    set("type", text(p.kind()));
    set("user_id", text(p.user_id()));
    set("app_id", text(p.app_id()));
    let headers = p.headers().as_ref().map(|h| {
        Value::Object(
            h.inner()
                .iter()
                .map(|(k, v)| (k.to_string(), redacted(k.as_str(), amqp_json(v))))
                .collect(),
        )
    });
    set(
        "headers",
        Some(headers.unwrap_or_else(|| Value::Object(Default::default()))),
    );
    Some(Value::Object(out))
}

/// A header's value as it may be shown: the whole of it redacted under a secret-looking name
/// (`authorization`, `x-api-key`), else every text in it with its secrets redacted (a bearer
/// token, a URL's password), as in failure messages.
fn redacted(name: &str, value: Value) -> Value {
    if is_secret_key(name) {
        return Value::from(REDACTED_VALUE);
    }
    match value {
        Value::String(s) => Value::String(redact_secrets(&s)),
        Value::Array(items) => Value::Array(items.into_iter().map(|v| redacted("", v)).collect()),
        Value::Object(members) => Value::Object(
            members
                .into_iter()
                .map(|(k, v)| {
                    let v = redacted(&k, v);
                    (k, v)
                })
                .collect(),
        ),
        other => other,
    }
}

/// An AMQP value as JSON.
fn amqp_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => Value::from(*b),
        AMQPValue::ShortShortInt(n) => Value::from(*n),
        AMQPValue::ShortShortUInt(n) => Value::from(*n),
        AMQPValue::ShortInt(n) => Value::from(*n),
        AMQPValue::ShortUInt(n) => Value::from(*n),
        AMQPValue::LongInt(n) => Value::from(*n),
        AMQPValue::LongUInt(n) => Value::from(*n),
        AMQPValue::LongLongInt(n) => Value::from(*n),
        AMQPValue::Float(f) => Value::from(*f),
        AMQPValue::Double(f) => Value::from(*f),
        AMQPValue::DecimalValue(d) => Value::from(format!("{d:?}")),
        AMQPValue::ShortString(s) => Value::from(s.as_str()),
        AMQPValue::LongString(s) => Value::from(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(amqp_json).collect()),
        AMQPValue::Timestamp(t) => Value::from(*t),
        AMQPValue::FieldTable(t) => Value::Object(
            t.inner()
                .iter()
                .map(|(k, v)| (k.to_string(), amqp_json(v)))
                .collect(),
        ),
        AMQPValue::ByteArray(b) => Value::from(hex::encode(b.as_slice())),
        AMQPValue::Void => Value::Null,
    }
}

/// A stored letter to republish.
pub struct Republish<'a> {
    /// The routing key it was first published with.
    pub routing_key: &'a str,
    /// The body.
    pub body: &'a [u8],
    /// Its properties as [`DeadLetter::encoded_properties`] gave them.
    pub properties: &'a [u8],
    /// How often it was replayed before.
    pub replays: i64,
    /// When its command was first refused.
    pub first_failed_at: Option<DateTime<Utc>>,
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

    /// Takes up to `max` letters, in queue order (held until [`DeadLetterQueue::ack_all`]).
    pub async fn take_batch(&self, max: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        let mut letters = Vec::new();
        while letters.len() < max {
            match self.take().await? {
                Some(letter) => letters.push(letter),
                None => break,
            }
        }
        Ok(letters)
    }

    /// Acks `letters` (all taken on this reader, none acked yet) with one multiple-ack.
    pub async fn ack_all(&self, letters: &[DeadLetter]) -> Result<(), BrokerError> {
        if let Some(last) = letters.iter().max_by_key(|l| l.delivery.delivery_tag) {
            last.delivery
                .acker
                .ack(BasicAckOptions { multiple: true })
                .await?;
        }
        Ok(())
    }

    /// Republishes a stored letter to `N.commands` with its original routing key, body and
    /// properties (minus the failure headers, plus `x-oprun-replays` + 1 and
    /// `x-oprun-first-failed-at`, so a letter it becomes again keeps its age), and waits for the
    /// confirm. `false` when the broker returned it (unroutable): the caller keeps the letter.
    pub async fn republish(&self, letter: &Republish<'_>) -> Result<bool, BrokerError> {
        let properties: BasicProperties = serde_json::from_slice(letter.properties)
            .map_err(|e| BrokerError::Stopped(format!("a stored dead letter's properties: {e}")))?;
        let mut headers = properties.headers().clone().unwrap_or_default();
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
        if let Some(first) = letter.first_failed_at {
            headers.insert(
                FIRST_FAILED_AT_HEADER.into(),
                AMQPValue::LongString(LongString::from(
                    first.to_rfc3339_opts(SecondsFormat::Millis, true),
                )),
            );
        }
        let confirmed = self
            .publisher
            .publish(
                &self.topology.commands_exchange(),
                letter.routing_key,
                letter.body,
                properties.with_headers(headers),
                true,
            )
            .await?;
        Ok(confirmed != Confirmed::Returned)
    }

    /// Returns every held letter to the queue.
    pub async fn release(self) {
        let _ = self.publisher.channel().close(200, "released".into()).await;
    }
}
