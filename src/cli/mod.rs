//! The `oprun` commands, one file per group. Each returns a [`CliError`] that `main` prints as one
//! line before exiting non-zero.

pub mod catalog;
pub mod dispatch;
pub mod dlq;
pub mod events;
pub mod identity;
pub mod legacy;
pub mod output;
pub mod prune;
pub mod runs;
pub mod settings;
pub mod token;
pub mod topology;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::broker::BrokerError;
use crate::config::{Config, LogSettings, ServeSettings, WithOldNames};
use crate::store::StoreError;

/// A failed command: one line for the operator.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The thing asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The arguments or input are not valid.
    #[error("{0}")]
    Invalid(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// Reading input or writing output failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The service could not start.
    #[error(transparent)]
    Serve(#[from] crate::service::ServeError),
}

impl From<crate::service::dead_letters::DeadLetterError> for CliError {
    fn from(e: crate::service::dead_letters::DeadLetterError) -> Self {
        use crate::service::dead_letters::DeadLetterError;
        match e {
            DeadLetterError::Database(e) => e.into(),
            DeadLetterError::Broker(e) => Self::Broker(e),
        }
    }
}

impl From<sqlx::Error> for CliError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}

/// `oprun`: the operation-runs service and its operator tools.
#[derive(Debug, Parser)]
#[command(name = "oprun", version, about)]
pub struct Cli {
    #[command(flatten)]
    config: Config,
    #[command(flatten)]
    log: LogSettings,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the database if needed and apply pending migrations.
    Migrate,
    /// Run the service: consume commands, persist runs, publish events.
    Serve(Box<WithOldNames<ServeSettings>>),
    /// Inspect runs.
    #[command(subcommand)]
    Runs(runs::RunsCommand),
    /// Resolve legacy history rows to their canonical runs.
    #[command(subcommand)]
    Legacy(legacy::LegacyCommand),
    /// Print the operation type catalog (json, php or markdown).
    Catalog(catalog::CatalogArgs),
    /// Read a dispatch command (JSON) on stdin and print its run identity hash.
    IdentityHash(identity::IdentityHashArgs),
    /// Print, apply or remove the broker topology.
    #[command(subcommand)]
    Topology(topology::TopologyCommand),
    /// Publish a dispatch command.
    Dispatch(WithOldNames<dispatch::DispatchArgs>),
    /// Inspect, summarise, replay and discard dead-lettered commands.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Re-send stored events.
    #[command(subcommand)]
    Events(events::EventsCommand),
    /// Print a run viewer token and its link.
    Token(token::TokenArgs),
    /// Delete history past its retention now (`serve` does it in the background).
    Prune(prune::PruneArgs),
    /// Print every setting: flag, environment variable, default and meaning (markdown).
    Config(settings::ConfigArgs),
}

impl Cli {
    /// How to log.
    pub fn log_settings(&self) -> &LogSettings {
        &self.log
    }

    /// Runs the parsed command.
    pub async fn run(self) -> Result<(), CliError> {
        let config = &self.config;
        match self.command {
            Command::Migrate => {
                crate::store::migrate(config.database_url.expose_secret()).await?;
                // The viewer's secret, made here by the owner's role, so that `serve` running
                // as a role that may only read it (ops/postgres/roles.sql) finds one.
                let pool = pool(config)?;
                crate::service::viewer_keys(&pool, None).await?;
                pool.close().await;
                println!("migrations applied");
                Ok(())
            }
            Command::Serve(settings) => {
                let shutdown = CancellationToken::new();
                tokio::spawn(cancel_on_signal(shutdown.clone()));
                crate::service::serve(config, &settings.0, shutdown).await?;
                Ok(())
            }
            Command::Runs(c) => c.run(config).await,
            Command::Legacy(c) => c.run(config).await,
            Command::IdentityHash(a) => a.run(),
            Command::Catalog(a) => a.run(),
            Command::Topology(c) => c.run(config).await,
            Command::Dispatch(a) => a.0.run(config).await,
            Command::Dlq(c) => c.run(config).await,
            Command::Events(c) => c.run(config).await,
            Command::Token(a) => a.run(config).await,
            Command::Prune(a) => a.run(config).await,
            Command::Config(a) => a.run(),
        }
    }
}

/// Cancels `token` on SIGTERM or SIGINT.
pub async fn cancel_on_signal(token: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    token.cancel();
}

/// A pool for a one-shot command (no migration, few connections).
pub(crate) fn pool(config: &Config) -> Result<sqlx::PgPool, CliError> {
    Ok(crate::store::connect_lazy(
        config.database_url.expose_secret(),
        2,
    )?)
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::Cli;

    #[test]
    fn global_log_flags_do_not_shadow_the_subcommands_own_flags() {
        Cli::command().debug_assert();
        for args in [
            &[
                "oprun",
                "--log-format",
                "json",
                "runs",
                "list",
                "--format",
                "table",
            ][..],
            &["oprun", "catalog", "--format", "php"],
            &["oprun", "dlq", "list", "--format", "json", "--log", "debug"],
            &[
                "oprun",
                "--otlp-endpoint",
                "http://collector:4318",
                "runs",
                "list",
                "--format",
                "table",
            ],
            &["oprun", "serve", "--otlp-endpoint", "http://collector:4318"],
        ] {
            let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert!(["text", "json"].contains(&cli.log_settings().format.as_str()));
            let otlp = cli.log_settings().otlp_endpoint();
            assert!(otlp.is_none() || otlp == Some("http://collector:4318"));
        }
    }
}
