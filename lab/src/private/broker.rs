//! A private RabbitMQ node: the installed `rabbitmq-server`, with its own node name, AMQP and
//! distribution ports, config file, plugins file, data and log directories.

use std::path::PathBuf;
use std::time::Duration;

use super::{free_port, running_as_root, temp_folder, tool};
use crate::LabError;

/// The server script run directly (the `/usr/sbin` wrapper insists on the system node's paths).
const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
/// How long a new node may take to boot (a loaded 2-core machine needs about twenty seconds).
const BOOT_DEADLINE: Duration = Duration::from_secs(120);

/// A RabbitMQ node of the lab's own; stopped and removed when dropped.
#[derive(Debug)]
pub struct PrivateBroker {
    dir: PathBuf,
    node: String,
    amqp_port: u16,
    dist_port: u16,
    user: Option<&'static str>,
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
            node: format!("oprunlab{suffix}@localhost"),
            dir,
            amqp_port,
            dist_port,
            user: running_as_root().then_some("rabbitmq"),
        };
        std::fs::write(
            broker.dir.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.1 = 127.0.0.1:{amqp_port}\nloopback_users = none\n{}\n",
                settings
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("listeners."))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        )?;
        std::fs::write(broker.dir.join("enabled_plugins"), "[].\n")?;
        std::fs::write(broker.dir.join("rabbitmq-env.conf"), "")?;
        if let Some(user) = broker.user {
            tool::run(None, &[], "chown", &["-R", user, &broker.path("")])
                .await
                .map_err(LabError::Failed)?;
        }
        tool::run(broker.user, &broker.env(), SERVER, &["-detached"])
            .await
            .map_err(LabError::Failed)?;
        // `-detached` returns before the node has registered with epmd, and `await_startup`
        // gives up at once on a node it cannot see: ask again until it answers.
        let deadline = tokio::time::Instant::now() + BOOT_DEADLINE;
        loop {
            match broker.await_startup().await {
                Ok(()) => return Ok(broker),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    /// `rabbitmqctl -n NODE args…`.
    pub async fn ctl(&self, args: &[&str]) -> Result<String, LabError> {
        let mut all = vec!["-n", self.node.as_str()];
        all.extend_from_slice(args);
        tool::run(None, &[], "rabbitmqctl", &all)
            .await
            .map_err(LabError::Failed)
    }

    /// Stops the RabbitMQ application (connections are cut, the Erlang node stays), waits
    /// `down_for`, starts it again and waits until it accepts connections.
    pub async fn restart_app(&self, down_for: Duration) -> Result<(), LabError> {
        self.ctl(&["stop_app"]).await?;
        tokio::time::sleep(down_for).await;
        self.ctl(&["start_app"]).await?;
        self.await_startup().await
    }

    /// Waits until the node runs the RabbitMQ application.
    pub async fn await_startup(&self) -> Result<(), LabError> {
        self.ctl(&["await_startup", "--timeout", "120"])
            .await
            .map(drop)
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("RABBITMQ_NODENAME", self.node.clone()),
            ("RABBITMQ_NODE_PORT", self.amqp_port.to_string()),
            ("RABBITMQ_DIST_PORT", self.dist_port.to_string()),
            ("RABBITMQ_CONFIG_FILE", self.path("rabbitmq.conf")),
            ("RABBITMQ_CONF_ENV_FILE", self.path("rabbitmq-env.conf")),
            (
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                self.path("enabled_plugins"),
            ),
            ("RABBITMQ_MNESIA_BASE", self.path("mnesia")),
            ("RABBITMQ_LOG_BASE", self.path("log")),
            ("ERL_EPMD_ADDRESS", "127.0.0.1".to_owned()),
        ];
        if self.user.is_some() {
            // The system user's home holds the Erlang cookie `rabbitmqctl` uses too.
            env.push(("HOME", "/var/lib/rabbitmq".to_owned()));
        }
        env
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        tool::run_blocking(None, "rabbitmqctl", &["-n", &self.node, "shutdown"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
