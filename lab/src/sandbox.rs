//! A lab run's own world: a fresh database (migrated, its scopes seeded), a fresh topology
//! namespace (declared), the run's own queues and exchanges under it, and a folder for the
//! service's logs. Removed at the end; a failure while building removes what was half-built.
//! Every subcommand that starts `oprun serve` (bench, viewer-bench, dedupe-bench, chaos) works
//! in one, so that a lab run never touches real data and two runs never see each other.

use std::path::PathBuf;
use std::str::FromStr;

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

use crate::LabError;
use operation_runs::broker::connection::connect;
use operation_runs::broker::topology::declare_bound_queue;
use operation_runs::broker::Topology;
use operation_runs::config::{redact_url, Config};
use operation_runs::store;

/// Which lab run a sandbox is for: it names the database, the namespace and the run's own
/// queues (`N.<purpose>.<suffix>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The benchmarks: database and namespace `oprun_bench_<id>`.
    Bench,
    /// The fault-injection run: database `oprun_chaos_<id>`, namespace `chaos_<id>`.
    Chaos,
}

impl Purpose {
    fn word(self) -> &'static str {
        match self {
            Self::Bench => "bench",
            Self::Chaos => "chaos",
        }
    }
}

/// The workspaces, tenants (with their workspace) and users a run's commands refer to.
#[derive(Debug, Clone, Default)]
pub struct Scopes {
    /// Workspace ids.
    pub workspaces: Vec<i64>,
    /// `(tenant id, workspace id)`.
    pub tenants: Vec<(i64, i64)>,
    /// User ids.
    pub users: Vec<i64>,
}

/// A queue of the run itself, bound when the sandbox is created (before any command is
/// published, so that it misses nothing).
#[derive(Debug, Clone, Copy)]
pub struct BoundQueue {
    /// `N.<purpose>.<suffix>`.
    pub suffix: &'static str,
    /// Bound to the namespace's `N.events` (else `N.jobs`).
    pub to_events: bool,
    /// The binding keys.
    pub keys: &'static [&'static str],
}

/// The database, namespace, own queues and log folder of one lab run.
pub struct Sandbox {
    /// The database's name.
    pub name: String,
    /// URL of the run's database.
    pub database_url: String,
    /// A small pool on it.
    pub pool: PgPool,
    /// The run's namespace (declared).
    pub topology: Topology,
    /// Where the service instances log.
    pub log_dir: PathBuf,
    purpose: Purpose,
    maintenance_url: String,
    amqp_url: String,
    own_queues: Vec<String>,
    own_exchanges: Vec<String>,
}

impl Sandbox {
    /// Creates, migrates and seeds the database with `scopes`, declares the namespace and the
    /// `bound` queues. What a failure leaves half-built is removed again.
    pub async fn create(
        config: &Config,
        purpose: Purpose,
        scopes: &Scopes,
        bound: &[BoundQueue],
    ) -> Result<Self, LabError> {
        let (id, namespace) = match purpose {
            Purpose::Bench => {
                let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
                (id.clone(), format!("oprun_bench_{id}"))
            }
            Purpose::Chaos => {
                let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
                (id.clone(), format!("chaos_{id}"))
            }
        };
        let name = format!("oprun_{}_{id}", purpose.word());
        let database_url = with_path(config.database_url.expose_secret(), &name)?;
        // Dropping needs a connection to another database of the server: the maintenance one.
        let maintenance_url = with_path(config.database_url.expose_secret(), "postgres")?;
        let topology =
            Topology::new(&namespace)?.with_quorum_group_size(config.quorum_group_size());
        let mut sandbox = Self {
            pool: store::connect_lazy(&database_url, 4)?,
            name,
            database_url,
            log_dir: std::env::temp_dir().join(format!("oprun-{}-{id}", purpose.word())),
            topology,
            purpose,
            maintenance_url,
            amqp_url: config.amqp_url_list(),
            own_queues: Vec::new(),
            own_exchanges: Vec::new(),
        };
        let queues: Vec<String> = bound.iter().map(|q| sandbox.own_queue(q.suffix)).collect();
        match sandbox.set_up(scopes, bound, &queues).await {
            Ok(()) => Ok(sandbox),
            Err(e) => {
                let description = sandbox.describe();
                if let Err(cleanup) = sandbox.remove().await {
                    eprintln!(
                        "{}: could not remove the half-built {description}: {cleanup}",
                        purpose.word()
                    );
                }
                Err(e)
            }
        }
    }

    async fn set_up(
        &self,
        scopes: &Scopes,
        bound: &[BoundQueue],
        queues: &[String],
    ) -> Result<(), LabError> {
        std::fs::create_dir_all(&self.log_dir)?;
        store::migrate(&self.database_url).await?;
        seed(&self.pool, scopes).await?;
        let label = format!("oprun-lab {} setup", self.purpose.word());
        let connection = connect(&self.amqp_url, &label).await?;
        let channel = connection.create_channel().await?;
        self.topology.declare(&channel).await?;
        for (queue, spec) in queues.iter().zip(bound) {
            let exchange = if spec.to_events {
                self.topology.events_exchange()
            } else {
                self.topology.jobs_exchange()
            };
            declare_bound_queue(&channel, queue, &exchange, spec.keys).await?;
        }
        let _ = connection.close(200, "set up".into()).await;
        Ok(())
    }

    /// The name of the run's own queue or exchange `suffix`: `N.<purpose>.<suffix>`.
    pub fn queue(&self, suffix: &str) -> String {
        format!(
            "{}.{}.{suffix}",
            self.topology.namespace(),
            self.purpose.word()
        )
    }

    /// [`Sandbox::queue`], remembered so that [`Sandbox::remove`] deletes it (deleting a queue
    /// that was never declared is harmless).
    pub fn own_queue(&mut self, suffix: &str) -> String {
        let name = self.queue(suffix);
        self.own_queues.push(name.clone());
        name
    }

    /// Like [`Sandbox::own_queue`], for an exchange.
    pub fn own_exchange(&mut self, suffix: &str) -> String {
        let name = self.queue(suffix);
        self.own_exchanges.push(name.clone());
        name
    }

    /// Where everything is, for a human.
    pub fn describe(&self) -> String {
        let mut queues = vec![
            self.topology.commands_queue(),
            self.topology.dead_letter_queue(),
        ];
        queues.extend(self.own_queues.iter().cloned());
        format!(
            "database {} namespace {} (queues {}) logs {}",
            redact_url(&self.database_url),
            self.topology.namespace(),
            queues.join(", "),
            self.log_dir.display()
        )
    }

    /// Deletes the run's own queues and exchanges and the namespace, drops the database
    /// (closing whatever is still connected to it) and removes the logs, on connections of its
    /// own. Best effort: every part is tried, the first failure is returned; repeating it is
    /// harmless.
    pub async fn remove(&self) -> Result<(), LabError> {
        let broker = self.remove_namespace().await;
        self.pool.close().await;
        let database = self.drop_database().await;
        let logs = match std::fs::remove_dir_all(&self.log_dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        };
        broker.and(database).and(logs)
    }

    async fn remove_namespace(&self) -> Result<(), LabError> {
        let label = format!("oprun-lab {} teardown", self.purpose.word());
        let connection = connect(&self.amqp_url, &label).await?;
        let channel = connection.create_channel().await?;
        let mut first: Option<LabError> = None;
        for q in &self.own_queues {
            if let Err(e) = channel
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await
            {
                first.get_or_insert(e.into());
            }
        }
        for x in &self.own_exchanges {
            if let Err(e) = channel
                .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
                .await
            {
                first.get_or_insert(e.into());
            }
        }
        if let Err(e) = self.topology.delete(&channel).await {
            first.get_or_insert(e.into());
        }
        let _ = connection.close(200, "torn down".into()).await;
        first.map_or(Ok(()), Err)
    }

    async fn drop_database(&self) -> Result<(), LabError> {
        // FORCE: the service's pool (or a killed instance's) may still hold connections.
        // Dropping a database takes a while by design: no slow-statement warning.
        // On several hosts, the one that takes writes.
        let primary = store::hosts::parse(&self.maintenance_url)?
            .primary_url()
            .await?;
        let options = PgConnectOptions::from_str(&primary)?.disable_statement_logging();
        let mut admin = PgConnection::connect_with(&options).await?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        ))
        .execute(&mut admin)
        .await?;
        admin.close().await?;
        Ok(())
    }
}

/// `base` with its path (the database name) replaced by `database`, its query kept; `base` may
/// name several hosts (libpq's `h1:p1,h2:p2`), which a URL parser refuses.
fn with_path(base: &str, database: &str) -> Result<String, LabError> {
    let (scheme, rest) = base
        .split_once("://")
        .ok_or_else(|| LabError::Invalid("--database-url is not a URL".into()))?;
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(authority_end);
    let query = after.find('?').map_or("", |at| &after[at..]);
    Ok(format!("{scheme}://{authority}/{database}{query}"))
}

/// The workspaces, tenants and users of `scopes`, one statement each.
async fn seed(pool: &PgPool, scopes: &Scopes) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO workspaces (id, name) SELECT w, 'oprun-lab workspace ' || w FROM unnest($1::bigint[]) w",
    )
    .bind(&scopes.workspaces)
    .execute(&mut *tx)
    .await?;
    let (tenants, workspaces): (Vec<i64>, Vec<i64>) = scopes.tenants.iter().copied().unzip();
    sqlx::query(
        "INSERT INTO tenants (id, workspace_id, name)
         SELECT t, w, 'oprun-lab tenant ' || t FROM unnest($1::bigint[], $2::bigint[]) AS s(t, w)",
    )
    .bind(&tenants)
    .bind(&workspaces)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO users (id, name) SELECT u, 'oprun-lab user ' || u FROM unnest($1::bigint[]) u",
    )
    .bind(&scopes.users)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_database_replaces_only_the_path() {
        assert_eq!(
            with_path("postgres://u:p@h:5432/app?sslmode=disable", "b").unwrap(),
            "postgres://u:p@h:5432/b?sslmode=disable"
        );
        assert_eq!(
            with_path(
                "postgres://u@h1:5882,h2:5883/postgres?target_session_attrs=read-write",
                "b"
            )
            .unwrap(),
            "postgres://u@h1:5882,h2:5883/b?target_session_attrs=read-write"
        );
        assert_eq!(with_path("postgres://h", "b").unwrap(), "postgres://h/b");
    }
}
