//! The test's side of the broker: publishing commands, temporary and reply queues, subscribers,
//! dead letters and queue depths.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Consumer};
use operation_runs::broker::publisher::{
    consume_direct_replies, ConfirmPublisher, DIRECT_REPLY_TO,
};
use serde_json::Value;

use super::{TestApp, DEADLINE};

impl TestApp {
    /// Publishes a command body (routing key = its kind) with confirms.
    pub async fn publish(&self, body: &Value) {
        let kind = body
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_owned();
        let bytes = serde_json::to_vec(body).unwrap();
        self.publish_raw(&kind, &bytes, json_properties()).await;
    }

    /// Publishes raw bytes to the commands exchange with confirms.
    pub async fn publish_raw(&self, routing_key: &str, body: &[u8], properties: BasicProperties) {
        self.publisher
            .publish(
                &self.topology.commands_exchange(),
                routing_key,
                body,
                properties,
                true,
            )
            .await
            .unwrap();
    }

    /// A fresh exclusive, auto-deleted queue with a no-ack consumer on it, bound to `exchange`
    /// when given: a subscriber's queue, or a reply queue.
    pub async fn temporary_queue(&self, exchange: Option<&str>) -> (Channel, String, Consumer) {
        self.consume_new_queue("", exchange.map(|x| (x, ""))).await
    }

    /// Declares queue `name` (`""`: the broker names it), exclusive and auto-deleted, binds it to
    /// `(exchange, routing key)` when given, and consumes it without acks.
    pub async fn consume_new_queue(
        &self,
        name: &str,
        binding: Option<(&str, &str)>,
    ) -> (Channel, String, Consumer) {
        let channel = self.connection.create_channel().await.unwrap();
        let options = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        let queue = channel
            .queue_declare(name.into(), options, FieldTable::default())
            .await
            .unwrap();
        let name = queue.name().as_str().to_owned();
        if let Some((exchange, routing_key)) = binding {
            channel
                .queue_bind(
                    name.as_str().into(),
                    exchange.into(),
                    routing_key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
        }
        let consume = BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        };
        let consumer = channel
            .basic_consume(
                name.as_str().into(),
                "".into(),
                consume,
                FieldTable::default(),
            )
            .await
            .unwrap();
        (channel, name, consumer)
    }

    /// Binds a fresh exclusive queue to the events exchange: a subscriber.
    pub async fn subscribe_events(&self) -> Subscriber {
        let (channel, _, consumer) = self
            .temporary_queue(Some(&self.topology.events_exchange()))
            .await;
        Subscriber {
            _channel: channel,
            consumer,
        }
    }

    /// Waits until the dead-letter queue holds `n` messages and takes them (acked). The queue may
    /// not exist for a while (a test deletes it and the service declares it again): a `get` the
    /// broker refuses closes the channel, so a fresh one is opened and the wait goes on.
    pub async fn take_dead_letters(&self, n: usize) -> Vec<Delivery> {
        let mut channel = self.connection.create_channel().await.unwrap();
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while out.len() < n {
            let got = channel
                .basic_get(
                    self.topology.dead_letter_queue().into(),
                    BasicGetOptions { no_ack: false },
                )
                .await;
            match got {
                Ok(Some(m)) => {
                    m.delivery
                        .acker
                        .ack(BasicAckOptions::default())
                        .await
                        .unwrap();
                    out.push(m.delivery);
                    continue;
                }
                Ok(None) => {}
                Err(_) => channel = self.connection.create_channel().await.unwrap(),
            }
            if tokio::time::Instant::now() > deadline {
                panic!("expected {n} dead letters, got {}", out.len())
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        out
    }

    /// Publishes a dispatch refused `unknown_tenant`, without `reply_to`, with command id
    /// `marker`, waits until it is dead-lettered and returns the command ids of the `expected`
    /// letters before it (taken from the queue). One consumer settles deliveries in order and
    /// the dead letters of a batch in delivery order, so every refusal published before the
    /// marker is settled by then: a letter that should not exist would be among them.
    pub async fn dead_letters_through_marker(&self, expected: usize) -> Vec<String> {
        let mut marker = super::dispatch(
            "policy.sync",
            1,
            Some(99),
            serde_json::json!({"policy_id": 0}),
        );
        marker["command_id"] = serde_json::json!("marker");
        self.publish(&marker).await;
        let letters = self.take_dead_letters(expected + 1).await;
        let ids: Vec<String> = letters
            .iter()
            .map(|l| {
                let body: Value = serde_json::from_slice(&l.data).unwrap();
                body["command_id"].as_str().unwrap_or_default().to_owned()
            })
            .collect();
        assert_eq!(ids.last().map(String::as_str), Some("marker"), "{ids:?}");
        assert_eq!(
            self.queue_depth(&self.topology.dead_letter_queue()).await,
            0,
            "nothing after the marker: {ids:?}"
        );
        ids[..expected].to_vec()
    }

    /// Dead letters held anywhere: still in `N.commands.dlq`, or moved into the `dead_letters`
    /// table by an `oprun dlq` command.
    pub async fn dead_letters_held(&self) -> i64 {
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
            .fetch_one(&self.pool)
            .await
            .unwrap();
        stored + i64::from(self.queue_depth(&self.topology.dead_letter_queue()).await)
    }

    /// Waits until a service has recorded its settings (`oprun dlq replay` reads them).
    pub async fn wait_for_recorded_settings(&self) {
        self.wait_for_count(
            "SELECT count(*) FROM service_settings WHERE name = 'inbox_retention_seconds'",
            1,
        )
        .await;
    }

    /// Messages in a queue now (passive declare).
    pub async fn queue_depth(&self, queue: &str) -> u32 {
        let channel = self.connection.create_channel().await.unwrap();
        let q = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        q.message_count()
    }
}

/// A subscriber queue bound to the events exchange.
pub struct Subscriber {
    _channel: Channel,
    consumer: Consumer,
}

impl Subscriber {
    /// The next `n` events (CloudEvents JSON with their AMQP properties), failing after the deadline.
    pub async fn next_events(&mut self, n: usize) -> Vec<(Value, BasicProperties)> {
        let mut out = Vec::new();
        while out.len() < n {
            let next = tokio::time::timeout(DEADLINE, self.consumer.next())
                .await
                .unwrap_or_else(|_| panic!("expected {n} events, got {}", out.len()));
            let delivery = next.expect("subscriber open").unwrap();
            out.push((
                serde_json::from_slice(&delivery.data).unwrap(),
                delivery.properties,
            ));
        }
        out
    }

    /// Asserts that no event arrives within `quiet`.
    pub async fn assert_quiet(&mut self, quiet: Duration) {
        if let Ok(Some(Ok(d))) = tokio::time::timeout(quiet, self.consumer.next()).await {
            panic!("unexpected event: {}", String::from_utf8_lossy(&d.data));
        }
    }
}

/// JSON, persistent.
pub fn json_properties() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
}

/// JSON, persistent, with W3C trace context headers `traceparent` (and `tracestate`).
pub fn traced_properties(traceparent: &str, tracestate: Option<&str>) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from("traceparent"),
        AMQPValue::LongString(LongString::from(traceparent)),
    );
    if let Some(state) = tracestate {
        headers.insert(
            ShortString::from("tracestate"),
            AMQPValue::LongString(LongString::from(state)),
        );
    }
    json_properties().with_headers(headers)
}

/// Header value as text.
pub fn header(properties: &BasicProperties, key: &str) -> Option<String> {
    operation_runs::broker::headers::get_str(properties.headers().as_ref(), key)
}

/// A fresh exclusive reply queue named `N.reply.<random>` (the service replies only to direct
/// reply-to and to queues matching `--reply-queue-pattern`, default `N.reply.*`), with a no-ack
/// consumer on it.
async fn reply_queue(app: &TestApp) -> (Channel, String, Consumer) {
    let name = format!(
        "{}.reply.{}",
        app.topology.namespace(),
        uuid::Uuid::new_v4().simple()
    );
    app.consume_new_queue(&name, None).await
}

/// Publishes the dispatch `body` asking for a reply on a fresh `N.reply.*` queue (the only queues,
/// besides direct reply-to, the service replies to), checks the reply's correlation id and returns
/// the reply body.
pub async fn dispatch_with_reply(app: &TestApp, body: &Value) -> Value {
    command_with_reply(app, body).await
}

/// Like [`dispatch_with_reply`] for a command of any kind (routing key = its `kind`).
pub async fn command_with_reply(app: &TestApp, body: &Value) -> Value {
    let (_channel, queue, mut replies) = reply_queue(app).await;
    let properties: BasicProperties = json_properties()
        .with_reply_to(queue.as_str().into())
        .with_correlation_id("corr-1".into());
    let kind = body["kind"].as_str().unwrap_or("unknown");
    app.publish_raw(kind, &serde_json::to_vec(body).unwrap(), properties)
        .await;
    let reply = tokio::time::timeout(DEADLINE, replies.next())
        .await
        .expect("a reply in time")
        .unwrap()
        .unwrap();
    assert_eq!(
        reply
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str()),
        Some("corr-1")
    );
    serde_json::from_slice(&reply.data).unwrap()
}

/// Publishes `body` (routing key = its `kind`) asking for a reply through RabbitMQ direct
/// reply-to, and returns the reply body.
pub async fn request_direct(app: &TestApp, body: &Value) -> Value {
    let publisher = ConfirmPublisher::open(&app.connection).await.unwrap();
    let mut replies = consume_direct_replies(publisher.channel()).await.unwrap();
    let properties = json_properties()
        .with_reply_to(DIRECT_REPLY_TO.into())
        .with_correlation_id("direct".into());
    publisher
        .publish(
            &app.topology.commands_exchange(),
            body["kind"].as_str().unwrap_or("unknown"),
            &serde_json::to_vec(body).unwrap(),
            properties,
            true,
        )
        .await
        .unwrap();
    let delivery = tokio::time::timeout(DEADLINE, replies.next())
        .await
        .expect("a reply in time")
        .unwrap()
        .unwrap();
    serde_json::from_slice(&delivery.data).unwrap()
}

/// The CloudEvents `type` of each event, in order.
pub fn event_types(events: &[(Value, BasicProperties)]) -> Vec<&str> {
    events
        .iter()
        .map(|(e, _)| e["type"].as_str().expect("an event has a type"))
        .collect()
}
