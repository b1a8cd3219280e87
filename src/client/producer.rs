//! The producer library: build, publish and (optionally) await commands.
//!
//! `dispatch` returns once the broker has the command (publisher confirm; `mandatory`, so a
//! missing topology is an error, not a silent drop). `dispatch_and_wait` also waits for the
//! service's reply over RabbitMQ direct reply-to (`amq.rabbitmq.reply-to`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::Connection;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::broker::connection::{AmqpUrls, Connector};
use crate::broker::messages::command_properties;
use crate::broker::publisher::{
    consume_direct_replies, ConfirmPublisher, Confirmed, DIRECT_REPLY_TO,
};
use crate::broker::{BrokerError, Topology};
use crate::domain::{RunOutcome, RunStatus};

/// Why a command could not be sent or answered.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// No queue is bound to the commands exchange (is the topology declared?).
    #[error("the command was unroutable: no queue is bound to {0}")]
    Unroutable(String),
    /// No reply within the timeout.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The service refused the command.
    #[error("refused: {code}: {message}")]
    Rejected {
        /// The reason code.
        code: String,
        /// The reason.
        message: String,
    },
    /// The reply did not have the documented shape.
    #[error("unexpected reply: {0}")]
    InvalidReply(String),
}

impl From<lapin::Error> for ClientError {
    fn from(e: lapin::Error) -> Self {
        Self::Broker(e.into())
    }
}

/// A dispatch to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct DispatchRequest {
    /// The run type (e.g. `inventory.sync`).
    pub run_type: String,
    /// The workspace.
    pub workspace_id: i64,
    /// The tenant; `None` for a workspace-scoped run.
    pub tenant_id: Option<i64>,
    /// Who asked.
    pub user_id: Option<i64>,
    /// Display name of the initiator.
    pub initiator_name: Option<String>,
    /// The context (identity keys included).
    pub context: Value,
}

impl DispatchRequest {
    /// The command body.
    pub fn to_body(&self, command_id: &str) -> Value {
        let mut body = json!({
            "kind": "dispatch", "command_id": command_id, "type": self.run_type,
            "workspace_id": self.workspace_id, "tenant_id": self.tenant_id, "context": self.context,
        });
        if let Some(u) = self.user_id {
            body["user_id"] = json!(u);
        }
        if let Some(n) = &self.initiator_name {
            body["initiator_name"] = json!(n);
        }
        body
    }
}

/// The service's answer to a dispatch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct DispatchReply {
    /// The run (new, or the active one of the identity).
    pub run_id: i64,
    /// Its identity hash.
    pub run_identity_hash: String,
    /// Its status.
    pub status: String,
    /// True when an active run of the identity already existed.
    pub deduplicated: bool,
}

/// Which run a progress command is about, with the scope the service checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunRef {
    /// The run.
    pub run_id: i64,
    /// Its workspace.
    pub workspace_id: i64,
    /// Its tenant (`None` for workspace-scoped runs).
    pub tenant_id: Option<i64>,
}

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>>;

/// Publishes commands to `N.commands`.
pub struct Producer {
    connection: Connection,
    publisher: ConfirmPublisher,
    topology: Topology,
    waiters: Waiters,
}

impl Producer {
    /// Connects to `amqp_url` for namespace `namespace`. `amqp_url` may list the nodes of a
    /// cluster separated by commas: the first that answers is used.
    pub async fn connect(amqp_url: &str, namespace: &str) -> Result<Self, ClientError> {
        Self::connect_named(amqp_url, namespace, "oprun producer").await
    }

    /// Connects to the first of `amqp_urls` (the nodes of one cluster) that answers, moving on
    /// to the next when a connection fails.
    pub async fn connect_any<S: AsRef<str>>(
        amqp_urls: &[S],
        namespace: &str,
    ) -> Result<Self, ClientError> {
        let connector = Connector::new(AmqpUrls::parse(amqp_urls)?);
        Self::connect_via(&connector, namespace, "oprun producer").await
    }

    /// Like [`Producer::connect`], naming the connection `connection_name` (shown by the
    /// management UI and `rabbitmqctl list_connections`), so an operator can tell instances apart.
    pub async fn connect_named(
        amqp_url: &str,
        namespace: &str,
        connection_name: &str,
    ) -> Result<Self, ClientError> {
        let connector = Connector::new(AmqpUrls::parse([amqp_url])?);
        Self::connect_via(&connector, namespace, connection_name).await
    }

    /// Connects through `connector` (which remembers the node that answered).
    pub async fn connect_via(
        connector: &Connector,
        namespace: &str,
        connection_name: &str,
    ) -> Result<Self, ClientError> {
        let topology = Topology::new(namespace)?;
        let connection = connector.connect(connection_name).await?;
        let publisher = ConfirmPublisher::open(&connection).await?;
        // Direct reply-to: consume the pseudo-queue (no-ack) on the channel we publish from.
        let mut replies = consume_direct_replies(publisher.channel()).await?;
        let waiters: Waiters = Arc::default();
        let routing = waiters.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = replies.next().await {
                let Some(id) = delivery
                    .properties
                    .correlation_id()
                    .as_ref()
                    .map(|c| c.to_string())
                else {
                    continue;
                };
                let waiter = routing.lock().unwrap().remove(&id);
                if let (Some(tx), Ok(body)) = (waiter, serde_json::from_slice(&delivery.data)) {
                    let _ = tx.send(body);
                }
            }
        });
        Ok(Self {
            connection,
            publisher,
            topology,
            waiters,
        })
    }

    /// Publishes a raw command body (routing key = its `kind`) and waits for the broker's confirm.
    pub async fn send(&self, body: &Value) -> Result<(), ClientError> {
        self.publish(body, None).await
    }

    /// Publishes `body` with confirms and `mandatory`; `reply` is `(reply_to, correlation_id)`.
    async fn publish(&self, body: &Value, reply: Option<(&str, &str)>) -> Result<(), ClientError> {
        let kind = body
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("unknown");
        let command_id = body.get("command_id").and_then(Value::as_str);
        let properties = command_properties(command_id, reply);
        let bytes = serde_json::to_vec(body).expect("JSON values serialise");
        let exchange = self.topology.commands_exchange();
        match self
            .publisher
            .publish(&exchange, kind, &bytes, properties, true)
            .await?
        {
            Confirmed::Delivered => Ok(()),
            Confirmed::Returned => Err(ClientError::Unroutable(exchange)),
        }
    }

    /// Publishes a dispatch; returns its command id once the broker has it.
    pub async fn dispatch(&self, request: &DispatchRequest) -> Result<String, ClientError> {
        let command_id = new_command_id();
        self.send(&request.to_body(&command_id)).await?;
        Ok(command_id)
    }

    /// Publishes a dispatch and waits up to `timeout` for the service's reply.
    pub async fn dispatch_and_wait(
        &self,
        request: &DispatchRequest,
        timeout: Duration,
    ) -> Result<DispatchReply, ClientError> {
        let reply = self
            .send_and_wait(&request.to_body(&new_command_id()), timeout)
            .await?;
        serde_json::from_value(reply.clone())
            .map_err(|_| ClientError::InvalidReply(reply.to_string()))
    }

    /// Publishes any command with `reply_to` and waits up to `timeout` for the reply body.
    /// A refusal (`{"error": …}`) is [`ClientError::Rejected`].
    pub async fn send_and_wait(
        &self,
        body: &Value,
        timeout: Duration,
    ) -> Result<Value, ClientError> {
        let correlation_id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .unwrap()
            .insert(correlation_id.clone(), tx);
        let sent = self
            .publish(body, Some((DIRECT_REPLY_TO, correlation_id.as_str())))
            .await;
        let answer = match sent {
            Ok(()) => tokio::time::timeout(timeout, rx).await,
            Err(e) => {
                self.waiters.lock().unwrap().remove(&correlation_id);
                return Err(e);
            }
        };
        self.waiters.lock().unwrap().remove(&correlation_id);
        let reply = match answer {
            Ok(Ok(reply)) => reply,
            _ => return Err(ClientError::Timeout(timeout)),
        };
        if let Some(error) = reply.get("error") {
            return Err(ClientError::Rejected {
                code: error["code"].as_str().unwrap_or_default().to_owned(),
                message: error["message"].as_str().unwrap_or_default().to_owned(),
            });
        }
        Ok(reply)
    }

    /// `update_run`: a state change, with optional counts and failures. Returns the command id.
    pub async fn update_run(
        &self,
        run: RunRef,
        status: Option<RunStatus>,
        outcome: Option<RunOutcome>,
        summary_counts: Option<Value>,
        failures: Option<Value>,
    ) -> Result<String, ClientError> {
        let body = update_run_body(run, status, outcome, summary_counts, failures);
        self.send(&body).await?;
        Ok(body["command_id"].as_str().unwrap_or_default().to_owned())
    }

    /// True while the connection is open (the broker did not close it, nor did we).
    pub fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }

    /// `increment_summary_counts`. Returns the command id.
    pub async fn increment_summary_counts(
        &self,
        run: RunRef,
        counts: Value,
    ) -> Result<String, ClientError> {
        let mut body = progress_body("increment_summary_counts", run);
        body["counts"] = counts;
        self.send(&body).await?;
        Ok(body["command_id"].as_str().unwrap_or_default().to_owned())
    }

    /// `append_failures`. Returns the command id.
    pub async fn append_failures(
        &self,
        run: RunRef,
        failures: Value,
    ) -> Result<String, ClientError> {
        let mut body = progress_body("append_failures", run);
        body["failures"] = failures;
        self.send(&body).await?;
        Ok(body["command_id"].as_str().unwrap_or_default().to_owned())
    }

    /// Closes the connection.
    pub async fn close(&self) {
        let _ = self.connection.close(200, "bye".into()).await;
    }
}

/// The body of an `update_run` command with a fresh command id. Send it with
/// [`Producer::send`] or [`Producer::send_and_wait`]; sending the same body again (same command
/// id) is applied once, and a waiting sender gets the first result again.
pub fn update_run_body(
    run: RunRef,
    status: Option<RunStatus>,
    outcome: Option<RunOutcome>,
    summary_counts: Option<Value>,
    failures: Option<Value>,
) -> Value {
    let mut body = progress_body("update_run", run);
    if let Some(s) = status {
        body["status"] = json!(s.as_str());
    }
    if let Some(o) = outcome {
        body["outcome"] = json!(o.as_str());
    }
    if let Some(c) = summary_counts {
        body["summary_counts"] = c;
    }
    if let Some(f) = failures {
        body["failures"] = f;
    }
    body
}

fn progress_body(kind: &str, run: RunRef) -> Value {
    json!({
        "kind": kind, "command_id": new_command_id(), "run_id": run.run_id,
        "workspace_id": run.workspace_id, "tenant_id": run.tenant_id,
    })
}

/// A fresh command id (UUID v7: unique, and sortable by time for people reading logs).
pub fn new_command_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
