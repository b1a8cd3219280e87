//! `oprun identity-hash`: the identity hash of a dispatch command read on stdin, so producers in
//! other languages can check their own implementation.

use std::io::Read;

use serde_json::json;

use super::CliError;
use crate::domain::identity::canonical_identity_json;
use crate::domain::{decode_command, CommandAction};

/// Arguments of `oprun identity-hash`.
#[derive(Debug, clap::Args)]
pub struct IdentityHashArgs {
    /// Also print the canonical JSON that was hashed (as a JSON object with both).
    #[arg(long)]
    pub explain: bool,
}

impl IdentityHashArgs {
    /// Reads stdin, prints the hash (or `{canonical, run_identity_hash}` with `--explain`).
    pub fn run(self) -> Result<(), CliError> {
        let mut body = Vec::new();
        std::io::stdin().read_to_end(&mut body)?;
        let command = decode_command(&body, None).map_err(|r| CliError::Invalid(r.to_string()))?;
        let CommandAction::Dispatch(d) = command.action else {
            return Err(CliError::Invalid(
                "identity-hash needs a dispatch command".into(),
            ));
        };
        if self.explain {
            let canonical = canonical_identity_json(
                d.run_type,
                d.scope.workspace_id,
                d.scope.tenant_id,
                &d.context,
            )
            .map_err(|r| CliError::Invalid(r.to_string()))?;
            println!(
                "{}",
                json!({"canonical": canonical, "run_identity_hash": d.identity_hash.as_str()})
            );
        } else {
            println!("{}", d.identity_hash);
        }
        Ok(())
    }
}
