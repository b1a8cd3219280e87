//! `oprun token`: prints a viewer token on its first line and the viewer link on its second.

use chrono::Utc;

use super::{pool, CliError};
use crate::config::{Config, ViewerSettings};
use crate::http::auth::Claims;

/// `oprun token --workspace W [--tenant T]… [--ttl 1h]`
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// The workspace the bearer may read.
    #[arg(long)]
    workspace: i64,
    /// Only this tenant's runs (repeat for several); none: the whole workspace.
    #[arg(long = "tenant")]
    tenants: Vec<i64>,
    /// Lifetime: a number with s, m, h or d (e.g. 30m, 1h, 7d).
    #[arg(long, default_value = "1h")]
    ttl: String,
    /// Who the bearer is (the `sub` claim, logged by the viewer).
    #[arg(long)]
    sub: Option<String>,
    #[command(flatten)]
    viewer: ViewerSettings,
}

/// Seconds of a `30m`/`1h`/`7d`/`90s` lifetime.
pub fn parse_ttl(ttl: &str) -> Result<u64, CliError> {
    let invalid = || {
        CliError::Invalid(format!(
            "--ttl {ttl:?}: expected a number with s, m, h or d, e.g. 1h"
        ))
    };
    let split = ttl.len().checked_sub(1).ok_or_else(invalid)?;
    let (n, unit) = ttl.split_at(split);
    let n: u64 = n.parse().map_err(|_| invalid())?;
    let factor = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(invalid()),
    };
    n.checked_mul(factor).filter(|s| *s > 0).ok_or_else(invalid)
}

impl TokenArgs {
    /// Prints the token and the link.
    pub async fn run(self, config: &Config) -> Result<(), CliError> {
        let ttl = parse_ttl(&self.ttl)?;
        let keys = match self.viewer.api_secret() {
            Some(secret) => crate::service::viewer_keys(&pool(config)?, Some(secret)).await?,
            None => {
                // The secret lives in the database: migrate first so a token can be made before
                // `serve` ever ran (both agree on the first secret written).
                crate::store::migrate(config.database_url.expose_secret()).await?;
                let pool = pool(config)?;
                let keys = crate::service::viewer_keys(&pool, None).await?;
                pool.close().await;
                keys
            }
        };
        let claims = Claims {
            workspace_id: self.workspace,
            tenant_ids: (!self.tenants.is_empty()).then_some(self.tenants),
            exp: Utc::now().timestamp().max(0) as u64 + ttl,
            sub: self.sub,
        };
        let token = keys.issue(&claims);
        println!("{token}");
        let host = if self.viewer.http_addr == "off" {
            "127.0.0.1:8080"
        } else {
            self.viewer.http_addr.as_str()
        };
        println!("http://{host}/runs?token={token}");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_parse_with_their_unit() {
        assert_eq!(parse_ttl("90s").unwrap(), 90);
        assert_eq!(parse_ttl("1h").unwrap(), 3600);
        assert_eq!(parse_ttl("7d").unwrap(), 604_800);
        for bad in ["", "h", "1", "0h", "1w", "-1h"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
