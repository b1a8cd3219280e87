//! `oprun dispatch`: publish a dispatch command from the shell.

use std::time::Duration;

use serde_json::{json, Value};

use super::CliError;
use crate::client::{ClientError, DispatchRequest, Producer};
use crate::config::{Config, OldName, OldNames, Unit};

/// Arguments of `oprun dispatch`.
#[derive(Debug, clap::Args)]
pub struct DispatchArgs {
    /// The run type, e.g. inventory.sync.
    #[arg(long = "type")]
    pub run_type: String,
    /// The workspace id.
    #[arg(long)]
    pub workspace: i64,
    /// The tenant id (omit for a workspace-scoped run).
    #[arg(long)]
    pub tenant: Option<i64>,
    /// The user id of the initiator.
    #[arg(long)]
    pub user: Option<i64>,
    /// Display name of the initiator.
    #[arg(long)]
    pub initiator: Option<String>,
    /// The context as a JSON object (must hold the type's identity keys).
    #[arg(long)]
    pub context: String,
    /// Wait for the service's reply and print the run.
    #[arg(long)]
    pub wait: bool,
    /// How long to wait with --wait.
    #[arg(long, default_value = "30s", value_parser = crate::config::parse_duration)]
    pub timeout: Duration,
}

impl OldNames for DispatchArgs {
    const OLD_NAMES: &'static [OldName<Self>] = &[OldName {
        flag: "timeout-secs",
        env: None,
        new: "timeout",
        unit: Unit::Seconds,
        set: |a, d| a.timeout = d,
    }];
}

impl DispatchArgs {
    /// Publishes, and with `--wait` waits for the run id.
    pub async fn run(self, config: &Config) -> Result<(), CliError> {
        let context: Value = serde_json::from_str(&self.context)
            .map_err(|e| CliError::Invalid(format!("--context is not JSON: {e}")))?;
        if !context.is_object() {
            return Err(CliError::Invalid("--context must be a JSON object".into()));
        }
        let request = DispatchRequest {
            run_type: self.run_type,
            workspace_id: self.workspace,
            tenant_id: self.tenant,
            user_id: self.user,
            initiator_name: self.initiator,
            context,
        };
        let producer = Producer::connect(&config.amqp_url_list(), &config.namespace)
            .await
            .map_err(client_error)?;
        let result = if self.wait {
            let reply = producer
                .dispatch_and_wait(&request, self.timeout)
                .await
                .map_err(client_error)?;
            serde_json::to_value(reply).expect("replies serialise")
        } else {
            let command_id = producer.dispatch(&request).await.map_err(client_error)?;
            json!({"published": true, "command_id": command_id})
        };
        producer.close().await;
        println!("{result}");
        Ok(())
    }
}

/// Maps a client error to a one-line CLI error.
pub fn client_error(e: ClientError) -> CliError {
    match e {
        ClientError::Broker(b) => CliError::Broker(b),
        other => CliError::Invalid(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WithOldNames;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Dispatch {
        #[command(flatten)]
        args: WithOldNames<DispatchArgs>,
    }

    fn parse(extra: &[&str]) -> Result<DispatchArgs, clap::Error> {
        let mut all = vec![
            "dispatch",
            "--type",
            "t",
            "--workspace",
            "1",
            "--context",
            "{}",
        ];
        all.extend_from_slice(extra);
        Dispatch::try_parse_from(all).map(|d| d.args.0)
    }

    #[test]
    fn the_wait_takes_a_unit_and_the_old_seconds_flag_still_parses() {
        assert_eq!(parse(&[]).unwrap().timeout, Duration::from_secs(30));
        assert_eq!(
            parse(&["--timeout", "90s"]).unwrap().timeout,
            Duration::from_secs(90)
        );
        assert_eq!(
            parse(&["--timeout-secs", "90"]).unwrap().timeout,
            Duration::from_secs(90)
        );
        let both = parse(&["--timeout", "90s", "--timeout-secs", "90"]).unwrap_err();
        assert_eq!(both.kind(), clap::error::ErrorKind::ArgumentConflict);
    }
}
