//! `oprun bench`: the benchmark (issue 6).

use super::CliError;
use crate::config::Config;

/// Arguments of `oprun bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {}

impl BenchArgs {
    /// Runs it.
    pub async fn run(self, _config: &Config) -> Result<(), CliError> {
        Err(CliError::Invalid("oprun bench is being written".into()))
    }
}
