//! `oprun token`: prints a viewer token on its first line and the viewer link on its second.
//! With `--run ID` the token reads that one run only, and the link opens its page; the run's
//! workspace and tenant are read from the database (a `--workspace` or `--tenant` that does not
//! hold the run is refused, so a token never names a run outside its own scope). With
//! `--operate` the token may also act on the runs it may read.

use chrono::Utc;

use super::{pool, CliError};
use crate::config::{Config, ViewerSettings};
use crate::http::auth::{Claims, OPERATE_SCOPE};

/// `oprun token --workspace W [--tenant T]… [--ttl 1h] [--operate]`, `oprun token --run ID
/// [--ttl 1h] [--operate]`
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// The workspace the bearer may read (with --run: the run's, read from the database).
    #[arg(long, required_unless_present = "run")]
    workspace: Option<i64>,
    /// Only this run: its detail, events, live stream and page (its workspace and tenant are
    /// looked up).
    #[arg(long)]
    run: Option<i64>,
    /// Only this tenant's runs (repeat for several); none: the whole workspace.
    #[arg(long = "tenant")]
    tenants: Vec<i64>,
    /// Lifetime: a number with s, m, h or d (e.g. 30m, 1h, 7d).
    #[arg(long, default_value = "1h")]
    ttl: String,
    /// Who the bearer is (the `sub` claim, logged by the viewer and recorded as the actor of
    /// the token's actions).
    #[arg(long)]
    sub: Option<String>,
    /// The token may also cancel, retry and fail the runs it may read (claim `"scope":
    /// "operate"`); without it the token only reads.
    #[arg(long)]
    operate: bool,
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
        let secret = self.viewer.api_secret();
        if secret.is_none() {
            // The secret lives in the database: migrate first so a token can be made before
            // `serve` ever ran (both agree on the first secret written).
            crate::store::migrate(config.database_url.expose_secret()).await?;
        }
        let pool = pool(config)?;
        let keys = crate::service::viewer_keys(&pool, secret).await?;
        let (workspace_id, tenant_ids) = match self.run {
            Some(run) => {
                let found = crate::store::viewer::run_scope(&pool, run).await?;
                run_token_scope(run, found, self.workspace, &self.tenants)?
            }
            None => (
                self.workspace
                    .expect("clap requires --workspace without --run"),
                (!self.tenants.is_empty()).then_some(self.tenants),
            ),
        };
        pool.close().await;
        let claims = Claims {
            workspace_id,
            tenant_ids,
            run_id: self.run,
            exp: Utc::now().timestamp().max(0) as u64 + ttl,
            sub: self.sub,
            grants: self.operate.then(|| OPERATE_SCOPE.to_owned()),
        };
        let token = keys.issue(&claims);
        println!("{token}");
        let host = if self.viewer.http_addr == "off" {
            "127.0.0.1:8080"
        } else {
            self.viewer.http_addr.as_str()
        };
        match self.run {
            Some(run) => println!("http://{host}/runs/{run}?token={token}"),
            None => println!("http://{host}/runs?token={token}"),
        }
        Ok(())
    }
}

/// The workspace and tenants of a token for run `run`, whose `(workspace, tenant)` is `found`
/// (`None`: no such run): the run's own, or the given `--workspace` and `--tenant`s when they
/// hold the run.
fn run_token_scope(
    run: i64,
    found: Option<(i64, Option<i64>)>,
    workspace: Option<i64>,
    tenants: &[i64],
) -> Result<(i64, Option<Vec<i64>>), CliError> {
    let (run_workspace, run_tenant) =
        found.ok_or_else(|| CliError::Invalid(format!("--run {run}: there is no such run")))?;
    if workspace.is_some_and(|w| w != run_workspace) {
        return Err(CliError::Invalid(format!(
            "--run {run} is a run of workspace {run_workspace}, not of --workspace {}",
            workspace.unwrap_or_default()
        )));
    }
    if tenants.is_empty() {
        return Ok((run_workspace, run_tenant.map(|t| vec![t])));
    }
    match run_tenant {
        Some(t) if tenants.contains(&t) => Ok((run_workspace, Some(tenants.to_vec()))),
        Some(t) => Err(CliError::Invalid(format!(
            "--run {run} is a run of tenant {t}, which no --tenant names"
        ))),
        None => Err(CliError::Invalid(format!(
            "--run {run} is a workspace-scoped run: a token with --tenant cannot read it"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_token_takes_the_runs_scope_and_refuses_a_scope_that_does_not_hold_the_run() {
        assert_eq!(
            run_token_scope(7, Some((1, Some(10))), None, &[]).unwrap(),
            (1, Some(vec![10]))
        );
        assert_eq!(
            run_token_scope(7, Some((1, None)), Some(1), &[]).unwrap(),
            (1, None)
        );
        assert_eq!(
            run_token_scope(7, Some((1, Some(10))), Some(1), &[10, 11]).unwrap(),
            (1, Some(vec![10, 11]))
        );
        for (found, workspace, tenants) in [
            (None, None, vec![]),
            (Some((1, Some(10))), Some(2), vec![]),
            (Some((1, Some(10))), None, vec![11]),
            (Some((1, None)), None, vec![10]),
        ] {
            assert!(
                run_token_scope(7, found, workspace, &tenants).is_err(),
                "{found:?} {workspace:?} {tenants:?}"
            );
        }
    }

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
