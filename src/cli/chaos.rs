//! `oprun chaos`: the fault-injection run (issue 5).

use super::CliError;
use crate::config::Config;

/// Arguments of `oprun chaos`.
#[derive(Debug, clap::Args)]
pub struct ChaosArgs {}

impl ChaosArgs {
    /// Runs it.
    pub async fn run(self, _config: &Config) -> Result<(), CliError> {
        Err(CliError::Invalid("oprun chaos is being written".into()))
    }
}
