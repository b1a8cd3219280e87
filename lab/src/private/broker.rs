//! A private RabbitMQ node, alone: a [`RabbitNode`] in a temporary folder on free ports.

use std::time::Duration;

use super::node::{NodeSpec, RabbitNode};
use super::{free_port, temp_folder};
use crate::LabError;

/// A RabbitMQ node of the lab's own; stopped and removed when dropped.
#[derive(Debug)]
pub struct PrivateBroker {
    node: RabbitNode,
}

impl PrivateBroker {
    /// Starts a node with `settings` (rabbitmq.conf lines; listeners are its own) and waits
    /// until it accepts connections.
    pub async fn start(settings: &str) -> Result<Self, LabError> {
        let dir = temp_folder("oprun-lab-rabbitmq-")?;
        let amqp_port = free_port()?;
        let dist_port = loop {
            let p = free_port()?;
            if p != amqp_port {
                break p;
            }
        };
        let suffix = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.rsplit('-').next())
            .unwrap_or("node")
            .to_owned();
        let broker = Self {
            node: RabbitNode::new(NodeSpec {
                dir,
                node: format!("oprunlab{suffix}@localhost"),
                amqp_port,
                dist_port,
                cookie: None,
            }),
        };
        broker.node.prepare(settings).await?;
        broker.node.launch().await?;
        Ok(broker)
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`.
    pub fn amqp_url(&self) -> String {
        self.node.amqp_url()
    }

    /// `rabbitmqctl -n NODE args…`.
    pub async fn ctl(&self, args: &[&str]) -> Result<String, LabError> {
        self.node.ctl(args).await
    }

    /// Stops the RabbitMQ application (connections are cut, the Erlang node stays), waits
    /// `down_for`, starts it again and waits until it accepts connections.
    pub async fn restart_app(&self, down_for: Duration) -> Result<(), LabError> {
        self.node.restart_app(down_for).await
    }

    /// Waits until the node runs the RabbitMQ application.
    pub async fn await_startup(&self) -> Result<(), LabError> {
        self.node.await_startup().await
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.node.shutdown_blocking();
        let _ = std::fs::remove_dir_all(self.node.dir());
    }
}
