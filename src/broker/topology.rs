//! The broker topology of one namespace `N`, as data: declared by `oprun serve` and
//! `oprun topology apply`, printed in RabbitMQ definitions format by `oprun topology print`
//! (the checked-in `topology/definitions.json` is that output for `operation_runs`).
//!
//! - `N.commands`: topic exchange; producers publish with routing key = command kind.
//! - `N.commands`: quorum queue bound with `#`, dead-lettering at-least-once to `N.dlx`.
//! - `N.dlx`: fanout exchange; `N.commands.dlq`: quorum queue bound to it, with a delivery
//!   limit no letter reaches (RabbitMQ 4.0+ would otherwise drop a letter after 20).
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
///
/// Never a drop: the queue dead-letters `at-least-once` (which needs `x-overflow:
/// reject-publish`), so the broker keeps such a message in `N.commands` until `N.dlx` has
/// routed it to a queue that confirmed it, however long the DLQ is missing.
pub const DELIVERY_LIMIT: i64 = 20;

/// `x-delivery-limit` of `N.commands.dlq`: a letter is never dropped for being delivered
/// often. The queue has no dead-letter target, so reaching a limit would drop the letter, and
/// RabbitMQ 4.0+ gives every quorum queue declared without one a limit of 20. `-1`, unlimited
/// on 4.0+, is no option: RabbitMQ 3.10 accepts it and drops a message on its first return
/// (seen on this project's broker). So the declaration is the largest 32-bit integer, the same
/// on every version: reaching it takes 2^31 returns of one letter. (`oprun dlq` takes each
/// letter once and acks it once stored, so its count stays at 0 or 1 in practice.)
pub const DEAD_LETTER_DELIVERY_LIMIT: i64 = i32::MAX as i64;

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
    /// `x-quorum-initial-group-size` of its queues; `None` leaves it to RabbitMQ (a replica
    /// on every cluster node).
    quorum_group_size: Option<u16>,
    /// `x-delivery-limit` of `N.commands.dlq`: [`DEAD_LETTER_DELIVERY_LIMIT`], or what an
    /// existing queue was created with (`None`: without one).
    dead_letter_delivery_limit: Option<i64>,
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
            quorum_group_size: None,
            dead_letter_delivery_limit: Some(DEAD_LETTER_DELIVERY_LIMIT),
        })
    }

    /// The same topology whose quorum queues are declared with `x-quorum-initial-group-size`
    /// = `size` (`None`: the argument is left out).
    pub fn with_quorum_group_size(mut self, size: Option<u16>) -> Self {
        self.quorum_group_size = size;
        self
    }

    /// The `x-quorum-initial-group-size` its queues are declared with.
    pub fn quorum_group_size(&self) -> Option<u16> {
        self.quorum_group_size
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
        let group_size = self
            .quorum_group_size
            .map(|n| ("x-quorum-initial-group-size", ArgValue::Int(i64::from(n))));
        let mut queues = vec![
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
                arguments: std::iter::once(("x-queue-type", ArgValue::Str("quorum".into())))
                    .chain(
                        self.dead_letter_delivery_limit
                            .map(|n| ("x-delivery-limit", ArgValue::Int(n))),
                    )
                    .collect(),
            },
        ];
        for queue in &mut queues {
            queue.arguments.extend(group_size.clone());
        }
        queues
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

    /// Declares everything on channels of `connection`, like [`Topology::declare`], except that
    /// an existing queue is accepted as it is where RabbitMQ refuses a redeclaration with other
    /// arguments (`PRECONDITION_FAILED`) that only matter when a queue is created or that an
    /// operator sets by policy for an existing one:
    ///
    /// - another `x-quorum-initial-group-size` (it only places replicas at creation): without
    ///   this, upgrading from a version that did not set it, or adding a node URL, would stop the
    ///   service from starting;
    /// - a `N.commands.dlq` created without [`DEAD_LETTER_DELIVERY_LIMIT`] (before it was
    ///   declared): kept, with a warning pointing to the re-creation step in docs/contract.md (Topology).
    ///   On RabbitMQ 3.x such a queue has no limit; on 4.0+ it has the default 20.
    pub async fn declare_on(&self, connection: &lapin::Connection) -> Result<(), BrokerError> {
        let mut topology = self.clone();
        // Each queue can force one adoption per argument; one more round declares everything.
        for _ in 0..=2 * self.queues().len() {
            let channel = connection.create_channel().await?;
            let declared = topology.declare(&channel).await;
            if channel.status().connected() {
                let _ = channel.close(200, "declared".into()).await;
            }
            let Err(e) = declared else {
                return Ok(());
            };
            let text = e.to_string();
            match (
                existing_group_size(&text),
                existing_delivery_limit(&text, &self.dead_letter_queue()),
            ) {
                (Some(existing), _) if existing != topology.quorum_group_size => {
                    tracing::warn!(
                        namespace = %self.namespace,
                        configured = ?self.quorum_group_size,
                        existing = ?existing,
                        "a queue exists with another x-quorum-initial-group-size; keeping its size"
                    );
                    topology.quorum_group_size = existing;
                }
                (_, Some(existing)) if existing != topology.dead_letter_delivery_limit => {
                    tracing::warn!(
                        queue = %self.dead_letter_queue(),
                        existing = ?existing,
                        wanted = DEAD_LETTER_DELIVERY_LIMIT,
                        "the dead-letter queue exists with another x-delivery-limit; keeping it. \
                         On RabbitMQ 4.0+ a queue without one drops a letter delivered 20 times: \
                         re-create it as docs/contract.md says (Topology, upgrading)"
                    );
                    topology.dead_letter_delivery_limit = existing;
                }
                _ => return Err(e),
            }
        }
        Err(BrokerError::Stopped(
            "the namespace's queues disagree on x-quorum-initial-group-size or x-delivery-limit"
                .into(),
        ))
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
    bind_queue(channel, queue, exchange, keys).await
}

/// Declares a queue `queue` exclusive to the channel's connection (deleted with it), holding at
/// most `max_length` messages (the newest kept), and binds it to `exchange` with each of `keys`:
/// a worker instance's cancel queue (the exchange must exist).
pub async fn declare_exclusive_queue(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    keys: &[String],
    max_length: i64,
) -> Result<(), BrokerError> {
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(max_length));
    let options = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    channel.queue_declare(queue.into(), options, args).await?;
    bind_queue(channel, queue, exchange, keys).await
}

/// Binds `queue` to `exchange` with each of `keys`.
async fn bind_queue<K: AsRef<str>>(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    keys: &[K],
) -> Result<(), BrokerError> {
    for key in keys {
        channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                key.as_ref().into(),
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

/// The group size an existing queue has, read from RabbitMQ's refusal of a redeclaration
/// (`inequivalent arg 'x-quorum-initial-group-size' for queue 'q' in vhost '/': received the
/// value '3' of type 'signedint' but current is none`, or `received '3' but current is '2'`):
/// `Some(None)` for "none", `Some(Some(n))` for a value, `None` when the error is about
/// something else.
fn existing_group_size(error: &str) -> Option<Option<u16>> {
    if !error.contains("inequivalent arg 'x-quorum-initial-group-size'") {
        return None;
    }
    let current = error.split("but current is ").nth(1)?;
    if current.starts_with("none") {
        return Some(None);
    }
    // "the value '2' of type 'long'" when only one side has it, "'2'" when both do.
    let quoted = current.strip_prefix("the value ").unwrap_or(current);
    let value = quoted.strip_prefix('\'')?.split('\'').next()?;
    value.parse().ok().map(Some)
}

/// The `x-delivery-limit` an existing `queue` has, read from RabbitMQ's refusal of a
/// redeclaration (`inequivalent arg 'x-delivery-limit' for queue 'q' in vhost '/': received the
/// value '2147483647' of type 'long' but current is none`): `Some(None)` for "none",
/// `Some(Some(n))` for a value, `None` when the error is about something else or another queue.
fn existing_delivery_limit(error: &str, queue: &str) -> Option<Option<i64>> {
    let about = format!("inequivalent arg 'x-delivery-limit' for queue '{queue}'");
    if !error.contains(&about) {
        return None;
    }
    let current = error.split("but current is ").nth(1)?;
    if current.starts_with("none") {
        return Some(None);
    }
    let quoted = current.strip_prefix("the value ").unwrap_or(current);
    let value = quoted.strip_prefix('\'')?.split('\'').next()?;
    value.parse().ok().map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_group_size_goes_on_both_quorum_queues_only_when_set() {
        let plain = Topology::new("n").unwrap();
        assert!(plain.queues().iter().all(|q| q
            .arguments
            .iter()
            .all(|(k, _)| *k != "x-quorum-initial-group-size")));
        let sized = plain.with_quorum_group_size(Some(3));
        for q in sized.queues() {
            assert!(
                q.arguments
                    .contains(&("x-quorum-initial-group-size", ArgValue::Int(3))),
                "{q:?}"
            );
        }
        assert_eq!(
            sized.definitions()["queues"][0]["arguments"]["x-quorum-initial-group-size"],
            3
        );
    }

    #[test]
    fn the_existing_group_size_is_read_from_the_brokers_refusal() {
        let none = "AMQP error: PRECONDITION_FAILED - inequivalent arg 'x-quorum-initial-group-size' for queue 'n.commands' in vhost '/': received the value '3' of type 'signedint' but current is none";
        assert_eq!(existing_group_size(none), Some(None));
        let two = "PRECONDITION_FAILED - inequivalent arg 'x-quorum-initial-group-size' for queue 'n.commands' in vhost '/': received none but current is the value '2' of type 'long'";
        assert_eq!(existing_group_size(two), Some(Some(2)));
        let both = "PRECONDITION_FAILED - inequivalent arg 'x-quorum-initial-group-size' for queue 'n.commands' in vhost '/': received '3' but current is '2'";
        assert_eq!(existing_group_size(both), Some(Some(2)));
        let other = "PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue 'n.commands' in vhost '/': received the value '20' of type 'long' but current is none";
        assert_eq!(existing_group_size(other), None);
    }

    #[test]
    fn the_existing_dead_letter_delivery_limit_is_read_from_the_brokers_refusal() {
        let none = "PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue 'n.commands.dlq' in vhost '/': received the value '2147483647' of type 'long' but current is none";
        assert_eq!(existing_delivery_limit(none, "n.commands.dlq"), Some(None));
        let twenty = "PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue 'n.commands.dlq' in vhost '/': received '2147483647' but current is '20'";
        assert_eq!(
            existing_delivery_limit(twenty, "n.commands.dlq"),
            Some(Some(20))
        );
        let commands = "PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue 'n.commands' in vhost '/': received the value '20' of type 'long' but current is none";
        assert_eq!(existing_delivery_limit(commands, "n.commands.dlq"), None);
    }

    #[test]
    fn no_delivery_limit_can_drop_a_command_or_a_dead_letter() {
        let t = Topology::new("n").unwrap();
        let queues = t.queues();
        let args = |name: &str| {
            queues
                .iter()
                .find(|q| q.name == name)
                .unwrap()
                .arguments
                .clone()
        };
        // The commands queue: its limit dead-letters, at least once (kept until stored).
        let commands = args(&t.commands_queue());
        for arg in [
            (
                "x-dead-letter-exchange",
                ArgValue::Str(t.dead_letter_exchange()),
            ),
            (
                "x-dead-letter-strategy",
                ArgValue::Str("at-least-once".into()),
            ),
            ("x-overflow", ArgValue::Str("reject-publish".into())),
            ("x-delivery-limit", ArgValue::Int(DELIVERY_LIMIT)),
        ] {
            assert!(commands.contains(&arg), "{arg:?} in {commands:?}");
        }
        // The DLQ: an explicit limit (overriding 4.0's default of 20) that no letter reaches.
        let dlq = args(&t.dead_letter_queue());
        assert!(
            dlq.contains(&("x-delivery-limit", ArgValue::Int(i64::from(i32::MAX)))),
            "{dlq:?}"
        );
    }

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
