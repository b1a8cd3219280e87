//! One RabbitMQ node of the lab's own: the installed `rabbitmq-server`, with its own node name,
//! AMQP and distribution ports, config file, plugins file, data and log directories, all in one
//! folder. The single private broker ([`super::PrivateBroker`]) and each node of the private
//! cluster ([`super::PrivateCluster`]) are one of these: this is the only place that knows how
//! to start a node.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{running_as_root, tool};
use crate::LabError;

/// The server script run directly (the `/usr/sbin` wrapper insists on the system node's paths).
const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
/// How long a new node may take to boot (a loaded 2-core machine needs about twenty seconds).
const BOOT_DEADLINE: Duration = Duration::from_secs(120);

/// Where a node listens and what it is called.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Its folder (config, plugins, data, logs).
    pub dir: PathBuf,
    /// `name@localhost`.
    pub node: String,
    /// AMQP port on 127.0.0.1.
    pub amqp_port: u16,
    /// Erlang distribution port on 127.0.0.1.
    pub dist_port: u16,
    /// The Erlang cookie, when not the system user's (`HOME`'s `.erlang.cookie`): written to
    /// the node's own home in its folder, and passed to `rabbitmqctl` with `--erlang-cookie`.
    pub cookie: Option<String>,
}

/// A RabbitMQ node (running or not); starting, asking and killing it.
#[derive(Debug)]
pub struct RabbitNode {
    spec: NodeSpec,
    user: Option<&'static str>,
}

impl RabbitNode {
    /// The node of `spec` (nothing is written or started yet).
    pub fn new(spec: NodeSpec) -> Self {
        Self {
            spec,
            user: running_as_root().then_some("rabbitmq"),
        }
    }

    /// Writes the node's files into its folder: `rabbitmq.conf` with its own listener and
    /// `settings` (rabbitmq.conf lines; any listener among them is dropped), an empty plugins
    /// file, an empty env file, the cookie; hands the folder to the server's user.
    pub async fn prepare(&self, settings: &str) -> Result<(), LabError> {
        std::fs::create_dir_all(&self.spec.dir)?;
        std::fs::write(
            self.path("rabbitmq.conf"),
            format!(
                "listeners.tcp.1 = 127.0.0.1:{}\nloopback_users = none\n{}\n",
                self.spec.amqp_port,
                settings
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("listeners."))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        )?;
        std::fs::write(self.path("enabled_plugins"), "[].\n")?;
        std::fs::write(self.path("rabbitmq-env.conf"), "")?;
        if let Some(cookie) = &self.spec.cookie {
            let home = self.path("home");
            std::fs::create_dir_all(&home)?;
            let file = Path::new(&home).join(".erlang.cookie");
            std::fs::write(&file, cookie)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o400))?;
        }
        if let Some(user) = self.user {
            tool::run(None, &[], "chown", &["-R", user, &self.path("")])
                .await
                .map_err(LabError::Failed)?;
        }
        Ok(())
    }

    /// Starts the node (`rabbitmq-server -detached`) and waits until it runs the RabbitMQ
    /// application. A node whose data folder exists comes back with its data and cluster
    /// membership.
    pub async fn launch(&self) -> Result<(), LabError> {
        tool::run(self.user, &self.env(), SERVER, &["-detached"])
            .await
            .map_err(LabError::Failed)?;
        // `-detached` returns before the node has registered with epmd, and `await_startup`
        // gives up at once on a node it cannot see: ask again until it answers.
        let deadline = tokio::time::Instant::now() + BOOT_DEADLINE;
        loop {
            match self.await_startup().await {
                Ok(()) => return Ok(()),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    }

    /// The node's name, `name@localhost`.
    pub fn name(&self) -> &str {
        &self.spec.node
    }

    /// Its folder.
    pub fn dir(&self) -> &Path {
        &self.spec.dir
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.spec.amqp_port)
    }

    /// `rabbitmqctl -n NODE args…` (with the node's cookie).
    pub async fn ctl(&self, args: &[&str]) -> Result<String, LabError> {
        self.cli("rabbitmqctl", args).await
    }

    /// `tool -n NODE args…` for a RabbitMQ CLI tool (`rabbitmqctl`, `rabbitmq-queues`).
    pub async fn cli(&self, tool_name: &str, args: &[&str]) -> Result<String, LabError> {
        let all = self.cli_args(args);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        tool::run(None, &[], tool_name, &all)
            .await
            .map_err(LabError::Failed)
    }

    /// True when the node answers and runs the RabbitMQ application (asked once, briefly).
    pub async fn is_running(&self) -> bool {
        self.ctl(&["await_startup", "--timeout", "5"]).await.is_ok()
    }

    /// Waits until the node runs the RabbitMQ application.
    pub async fn await_startup(&self) -> Result<(), LabError> {
        self.ctl(&["await_startup", "--timeout", "120"])
            .await
            .map(drop)
    }

    /// Stops the RabbitMQ application (connections are cut, the Erlang node stays), waits
    /// `down_for`, starts it again and waits until it accepts connections.
    pub async fn restart_app(&self, down_for: Duration) -> Result<(), LabError> {
        self.ctl(&["stop_app"]).await?;
        tokio::time::sleep(down_for).await;
        self.ctl(&["start_app"]).await?;
        self.await_startup().await
    }

    /// SIGKILLs the node's Erlang VM (no goodbye to the cluster, like a crashed machine) and
    /// waits until the process is gone.
    pub async fn kill(&self) -> Result<(), LabError> {
        let answer = self.ctl(&["eval", "os:getpid()."]).await?;
        let pid = answer.trim().trim_matches('"').to_owned();
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
            return Err(LabError::Failed(format!(
                "{}: unexpected OS pid {answer:?}",
                self.spec.node
            )));
        }
        tool::run(None, &[], "kill", &["-KILL", &pid])
            .await
            .map_err(LabError::Failed)?;
        let proc = PathBuf::from(format!("/proc/{pid}"));
        for _ in 0..100 {
            if !proc.exists() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(LabError::Failed(format!(
            "{}: process {pid} still there 10 s after SIGKILL",
            self.spec.node
        )))
    }

    /// Stops the node (best effort, blocking: for `Drop` and `down`).
    pub fn shutdown_blocking(&self) {
        let args = self.cli_args(&["shutdown"]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        tool::run_blocking(None, "rabbitmqctl", &args);
    }

    fn cli_args(&self, args: &[&str]) -> Vec<String> {
        let mut all = vec!["-n".to_owned(), self.spec.node.clone()];
        if let Some(cookie) = &self.spec.cookie {
            all.extend(["--erlang-cookie".to_owned(), cookie.clone()]);
        }
        all.extend(args.iter().map(|a| (*a).to_owned()));
        all
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("RABBITMQ_NODENAME", self.spec.node.clone()),
            ("RABBITMQ_NODE_PORT", self.spec.amqp_port.to_string()),
            ("RABBITMQ_DIST_PORT", self.spec.dist_port.to_string()),
            ("RABBITMQ_CONFIG_FILE", self.path("rabbitmq.conf")),
            ("RABBITMQ_CONF_ENV_FILE", self.path("rabbitmq-env.conf")),
            (
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                self.path("enabled_plugins"),
            ),
            ("RABBITMQ_MNESIA_BASE", self.path("mnesia")),
            ("RABBITMQ_LOG_BASE", self.path("log")),
            ("ERL_EPMD_ADDRESS", "127.0.0.1".to_owned()),
            // The distribution port listens on loopback only, like the AMQP port.
            (
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}".to_owned(),
            ),
        ];
        if self.spec.cookie.is_some() {
            // Erlang reads the cookie from `$HOME/.erlang.cookie`.
            env.push(("HOME", self.path("home")));
        } else if self.user.is_some() {
            // The system user's home holds the Erlang cookie `rabbitmqctl` uses too.
            env.push(("HOME", "/var/lib/rabbitmq".to_owned()));
        }
        env
    }

    fn path(&self, name: &str) -> String {
        self.spec.dir.join(name).to_string_lossy().into_owned()
    }
}
