//! The broker topology of one namespace `N`, as data: declared by `oprun serve` and
//! `oprun topology apply`, printed in RabbitMQ definitions format by `oprun topology print`
//! (the checked-in `topology/definitions.json` is that output for `operation_runs`).
//!
//! - `N.commands`: topic exchange; producers publish with routing key = command kind.
//! - `N.commands`: quorum queue bound with `#`, dead-lettering at-least-once to `N.dlx`.
//! - `N.dlx`: fanout exchange; `N.commands.dlq`: quorum queue bound to it.
//! - `N.events`: fanout exchange for subscribers (who bind their own queues).
//! - `N.jobs`: topic exchange; executors bind queues by run type.

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};
use serde_json::{json, Map, Value};

use super::BrokerError;

/// How often the broker redelivers a command before dead-lettering it itself (a message that
/// crashes the service every time must not block the queue forever).
pub const DELIVERY_LIMIT: i64 = 20;

/// A queue argument value.
#[derive(Debug, Clone, PartialEq)]
pub enum ArgValue {
    /// A string argument.
    Str(String),
    /// An integer argument.
    Int(i64),
}

/// An exchange of the topology.
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeDef {
    /// Its name.
    pub name: String,
    /// `topic` or `fanout`.
    pub kind: &'static str,
}

/// A queue of the topology (always durable, quorum).
#[derive(Debug, Clone, PartialEq)]
pub struct QueueDef {
    /// Its name.
    pub name: String,
    /// Its arguments, `x-queue-type` included.
    pub arguments: Vec<(&'static str, ArgValue)>,
}

/// A binding of a queue to an exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct BindingDef {
    /// The exchange.
    pub source: String,
    /// The queue.
    pub destination: String,
    /// The binding key.
    pub routing_key: String,
}

/// The names and shape of one namespace's topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    namespace: String,
}

impl Topology {
    /// A topology for `namespace`: 1 to 100 characters of `[A-Za-z0-9_.-]`.
    pub fn new(namespace: &str) -> Result<Self, BrokerError> {
        let valid = !namespace.is_empty()
            && namespace.len() <= 100
            && namespace
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !valid {
            return Err(BrokerError::InvalidName(format!(
                "namespace {namespace:?} must be 1 to 100 characters of A-Z a-z 0-9 _ . -"
            )));
        }
        Ok(Self {
            namespace: namespace.to_owned(),
        })
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// `N.commands`, the exchange producers publish to.
    pub fn commands_exchange(&self) -> String {
        format!("{}.commands", self.namespace)
    }

    /// `N.commands`, the queue the service consumes.
    pub fn commands_queue(&self) -> String {
        format!("{}.commands", self.namespace)
    }

    /// `N.dlx`, the dead-letter exchange.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.namespace)
    }

    /// `N.commands.dlq`, the dead-letter queue.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.commands.dlq", self.namespace)
    }

    /// `N.events`, the fanout exchange of run events.
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.namespace)
    }

    /// `N.jobs`, the topic exchange of job hand-offs (routing key = run type).
    pub fn jobs_exchange(&self) -> String {
        format!("{}.jobs", self.namespace)
    }

    /// The exchanges.
    pub fn exchanges(&self) -> Vec<ExchangeDef> {
        vec![
            ExchangeDef {
                name: self.commands_exchange(),
                kind: "topic",
            },
            ExchangeDef {
                name: self.dead_letter_exchange(),
                kind: "fanout",
            },
            ExchangeDef {
                name: self.events_exchange(),
                kind: "fanout",
            },
            ExchangeDef {
                name: self.jobs_exchange(),
                kind: "topic",
            },
        ]
    }

    /// The queues.
    pub fn queues(&self) -> Vec<QueueDef> {
        vec![
            QueueDef {
                name: self.commands_queue(),
                arguments: vec![
                    ("x-queue-type", ArgValue::Str("quorum".into())),
                    (
                        "x-dead-letter-exchange",
                        ArgValue::Str(self.dead_letter_exchange()),
                    ),
                    (
                        "x-dead-letter-strategy",
                        ArgValue::Str("at-least-once".into()),
                    ),
                    ("x-overflow", ArgValue::Str("reject-publish".into())),
                    ("x-delivery-limit", ArgValue::Int(DELIVERY_LIMIT)),
                ],
            },
            QueueDef {
                name: self.dead_letter_queue(),
                arguments: vec![("x-queue-type", ArgValue::Str("quorum".into()))],
            },
        ]
    }

    /// The bindings.
    pub fn bindings(&self) -> Vec<BindingDef> {
        vec![
            BindingDef {
                source: self.commands_exchange(),
                destination: self.commands_queue(),
                routing_key: "#".into(),
            },
            BindingDef {
                source: self.dead_letter_exchange(),
                destination: self.dead_letter_queue(),
                routing_key: String::new(),
            },
        ]
    }

    /// The topology in RabbitMQ definitions format (`rabbitmqctl import_definitions`).
    pub fn definitions(&self) -> Value {
        let arguments = |args: &[(&str, ArgValue)]| {
            Value::Object(
                args.iter()
                    .map(|(k, v)| {
                        let v = match v {
                            ArgValue::Str(s) => json!(s),
                            ArgValue::Int(n) => json!(n),
                        };
                        ((*k).to_owned(), v)
                    })
                    .collect::<Map<_, _>>(),
            )
        };
        json!({
            "exchanges": self.exchanges().iter().map(|e| json!({
                "name": e.name, "vhost": "/", "type": e.kind, "durable": true,
                "auto_delete": false, "internal": false, "arguments": {}
            })).collect::<Vec<_>>(),
            "queues": self.queues().iter().map(|q| json!({
                "name": q.name, "vhost": "/", "durable": true, "auto_delete": false,
                "arguments": arguments(&q.arguments)
            })).collect::<Vec<_>>(),
            "bindings": self.bindings().iter().map(|b| json!({
                "source": b.source, "vhost": "/", "destination": b.destination,
                "destination_type": "queue", "routing_key": b.routing_key, "arguments": {}
            })).collect::<Vec<_>>(),
        })
    }

    /// Declares everything (idempotent: redeclaring with the same arguments is a no-op).
    pub async fn declare(&self, channel: &Channel) -> Result<(), BrokerError> {
        for e in self.exchanges() {
            let kind = if e.kind == "fanout" {
                ExchangeKind::Fanout
            } else {
                ExchangeKind::Topic
            };
            let options = ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            };
            channel
                .exchange_declare(e.name.into(), kind, options, FieldTable::default())
                .await?;
        }
        for q in self.queues() {
            let mut args = FieldTable::default();
            for (k, v) in &q.arguments {
                let v = match v {
                    ArgValue::Str(s) => AMQPValue::LongString(LongString::from(s.as_str())),
                    ArgValue::Int(n) => AMQPValue::LongLongInt(*n),
                };
                args.insert((*k).into(), v);
            }
            let options = QueueDeclareOptions {
                durable: true,
                ..Default::default()
            };
            channel.queue_declare(q.name.into(), options, args).await?;
        }
        for b in self.bindings() {
            channel
                .queue_bind(
                    b.destination.into(),
                    b.source.into(),
                    b.routing_key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }

    /// Deletes every queue and exchange of the namespace (tests and `oprun topology delete`).
    pub async fn delete(&self, channel: &Channel) -> Result<(), BrokerError> {
        for q in self.queues() {
            channel
                .queue_delete(q.name.into(), QueueDeleteOptions::default())
                .await?;
        }
        for e in self.exchanges() {
            channel
                .exchange_delete(e.name.into(), ExchangeDeleteOptions::default())
                .await?;
        }
        Ok(())
    }
}

/// Declares a durable quorum queue `queue` and binds it to `exchange` with each of `keys`: a
/// subscriber's or an executor's own queue (the exchange must exist).
pub async fn declare_bound_queue(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    keys: &[&str],
) -> Result<(), BrokerError> {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel.queue_declare(queue.into(), options, args).await?;
    for key in keys {
        channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                (*key).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Declares a durable exchange of `kind` (idempotent).
pub async fn declare_exchange(
    channel: &Channel,
    exchange: &str,
    kind: ExchangeKind,
) -> Result<(), BrokerError> {
    let options = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(exchange.into(), kind, options, FieldTable::default())
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checked_in_definitions_are_what_the_code_declares() {
        let file = include_str!("../../topology/definitions.json");
        let on_disk: Value = serde_json::from_str(file).unwrap();
        assert_eq!(
            on_disk,
            Topology::new("operation_runs").unwrap().definitions()
        );
    }

    #[test]
    fn names_follow_the_namespace() {
        let t = Topology::new("acme").unwrap();
        assert_eq!(t.commands_exchange(), "acme.commands");
        assert_eq!(t.dead_letter_queue(), "acme.commands.dlq");
        assert_eq!(t.events_exchange(), "acme.events");
        assert!(Topology::new("bad name").is_err());
        assert!(Topology::new("").is_err());
    }
}
