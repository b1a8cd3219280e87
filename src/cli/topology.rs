//! `oprun topology print|apply|delete`.

use super::CliError;
use crate::broker::connection::connect;
use crate::broker::Topology;
use crate::config::Config;

/// `oprun topology …`
#[derive(Debug, clap::Subcommand)]
pub enum TopologyCommand {
    /// Print the topology in RabbitMQ definitions format (for rabbitmqctl import_definitions).
    Print,
    /// Declare the topology on the broker (idempotent).
    Apply,
    /// Delete every queue and exchange of the namespace, messages included.
    Delete {
        /// Required: this deletes the dead-letter queue too.
        #[arg(long)]
        yes: bool,
    },
}

impl TopologyCommand {
    /// Runs the subcommand.
    pub async fn run(self, config: &Config) -> Result<(), CliError> {
        let topology = Topology::new(&config.namespace)?;
        match self {
            TopologyCommand::Print => {
                let text = serde_json::to_string_pretty(&topology.definitions())
                    .expect("JSON values serialise");
                println!("{text}");
            }
            TopologyCommand::Apply => {
                let connection = connect(&config.amqp_url, "oprun topology").await?;
                topology
                    .declare(&connection.create_channel().await?)
                    .await?;
                let _ = connection.close(200, "done".into()).await;
                println!("topology {} declared", topology.namespace());
            }
            TopologyCommand::Delete { yes } => {
                if !yes {
                    return Err(CliError::Invalid("refusing to delete without --yes".into()));
                }
                let connection = connect(&config.amqp_url, "oprun topology").await?;
                topology.delete(&connection.create_channel().await?).await?;
                let _ = connection.close(200, "done".into()).await;
                println!("topology {} deleted", topology.namespace());
            }
        }
        Ok(())
    }
}
