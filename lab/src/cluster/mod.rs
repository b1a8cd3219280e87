//! `oprun-lab cluster up|down|status` (behind `scripts/cluster`): a local RabbitMQ cluster of
//! three nodes from the installed server ([`crate::private::PrivateCluster`]), beside the
//! machine's own broker, which it never touches.

use std::path::PathBuf;

use crate::private::cluster::{default_dir, DEFAULT_AMQP_PORT};
use crate::private::PrivateCluster;
use crate::LabError;

/// The broker settings the product ships (`topology/rabbitmq.conf`): every node runs with them.
pub const SHIPPED_BROKER_SETTINGS: &str = include_str!("../../../topology/rabbitmq.conf");

/// Arguments of `oprun-lab cluster`.
#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    action: ClusterAction,
    /// The cluster's folder (node data, logs, cookie); default `$TMPDIR/oprun-cluster`.
    #[arg(long, env = "OPRUN_CLUSTER_DIR", global = true)]
    dir: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum ClusterAction {
    /// Start three nodes (or whichever are not running) and join them; prints the AMQP URLs,
    /// one per line, then `AMQP_URL=` with all of them comma-separated.
    Up {
        /// AMQP port of the first node; the others take the next two. Distribution ports are
        /// these plus 20000. Only read when the cluster is created.
        #[arg(long, default_value_t = DEFAULT_AMQP_PORT)]
        base_port: u16,
    },
    /// Stop every node and remove the folder.
    Down,
    /// Each node's name, URL and state, and the cluster's members.
    Status,
}

impl ClusterArgs {
    /// Runs the action.
    pub async fn run(self) -> Result<(), LabError> {
        let dir = self.dir.unwrap_or_else(default_dir);
        match self.action {
            ClusterAction::Up { base_port } => {
                let cluster = PrivateCluster::up(&dir, base_port, SHIPPED_BROKER_SETTINGS).await?;
                let urls = cluster.amqp_urls();
                for url in &urls {
                    println!("{url}");
                }
                println!("AMQP_URL={}", urls.join(","));
            }
            ClusterAction::Down => match PrivateCluster::open(&dir)? {
                Some(cluster) => {
                    cluster.down();
                    eprintln!("cluster: stopped and removed {}", dir.display());
                }
                None => eprintln!("cluster: none in {}", dir.display()),
            },
            ClusterAction::Status => match PrivateCluster::open(&dir)? {
                Some(cluster) => println!("{}", cluster.status().await),
                None => {
                    return Err(LabError::Failed(format!(
                        "no cluster in {} (scripts/cluster up)",
                        dir.display()
                    )))
                }
            },
        }
        Ok(())
    }
}
