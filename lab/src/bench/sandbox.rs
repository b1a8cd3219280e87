//! The bench's own database and topology namespace, both named `oprun_bench_<random>`, created
//! at the start and removed at the end, so that a bench never touches real data and two benches
//! never see each other.

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::Channel;
use sqlx::{Connection, PgConnection, PgPool};

use super::workload::{TENANTS_PER_WORKSPACE, WORKSPACES};
use crate::LabError;
use operation_runs::broker::Topology;
use operation_runs::config::Config;

/// A database and a namespace of the bench's own.
pub struct Sandbox {
    /// `oprun_bench_<random>`: the database and the namespace.
    pub name: String,
    /// URL of the bench database.
    pub database_url: String,
    /// A small pool on it, for seeding and statistics.
    pub pool: PgPool,
    /// The namespace's topology (declared).
    pub topology: Topology,
    maintenance_url: String,
    extra_queues: Vec<String>,
    extra_exchanges: Vec<String>,
}

impl Sandbox {
    /// Creates, migrates and seeds the database; declares the topology through `channel`.
    pub async fn create(config: &Config, channel: &Channel) -> Result<Self, LabError> {
        let name = format!(
            "oprun_bench_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let database_url = with_path(config.database_url.expose_secret(), &name)?;
        let maintenance_url = with_path(config.database_url.expose_secret(), "postgres")?;
        operation_runs::store::migrate(&database_url).await?;
        let pool = operation_runs::store::connect_lazy(&database_url, 2)?;
        seed(&pool).await?;
        let topology = Topology::new(&name)?.with_quorum_group_size(config.quorum_group_size());
        topology.declare(channel).await?;
        Ok(Self {
            name,
            database_url,
            pool,
            topology,
            maintenance_url,
            extra_queues: Vec::new(),
            extra_exchanges: Vec::new(),
        })
    }

    /// A name under the namespace for a queue or exchange of the bench itself, remembered so
    /// that [`Sandbox::destroy`] deletes it.
    pub fn own_queue(&mut self, suffix: &str) -> String {
        let name = format!("{}.bench.{suffix}", self.name);
        self.extra_queues.push(name.clone());
        name
    }

    /// Like [`Sandbox::own_queue`], for an exchange.
    pub fn own_exchange(&mut self, suffix: &str) -> String {
        let name = format!("{}.bench.{suffix}", self.name);
        self.extra_exchanges.push(name.clone());
        name
    }

    /// Deletes the topology, the bench's own queues and exchanges, and the database. Best
    /// effort: every step is tried, the first failure is returned; repeating it is harmless.
    pub async fn destroy(&self, channel: &Channel) -> Result<(), LabError> {
        let mut first: Option<LabError> = None;
        for q in &self.extra_queues {
            if let Err(e) = channel
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await
            {
                first.get_or_insert(e.into());
            }
        }
        for x in &self.extra_exchanges {
            if let Err(e) = channel
                .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
                .await
            {
                first.get_or_insert(e.into());
            }
        }
        if let Err(e) = self.topology.delete(channel).await {
            first.get_or_insert(e.into());
        }
        self.pool.close().await;
        // FORCE: the service's pool (or a killed instance's) may still hold connections.
        let dropped = async {
            let mut admin = PgConnection::connect(&self.maintenance_url).await?;
            sqlx::query(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .execute(&mut admin)
            .await?;
            admin.close().await
        }
        .await;
        if let Err(e) = dropped {
            first.get_or_insert(e.into());
        }
        first.map_or(Ok(()), Err)
    }
}

/// `base` with its path (the database name) replaced by `database`.
fn with_path(base: &str, database: &str) -> Result<String, LabError> {
    let mut url = url::Url::parse(base)
        .map_err(|e| LabError::Invalid(format!("--database-url is not a URL: {e}")))?;
    url.set_path(database);
    Ok(url.to_string())
}

/// Workspaces `1..=4`, ten tenants each (`101..=140`), and user 1: the scopes the workload uses.
async fn seed(pool: &PgPool) -> Result<(), LabError> {
    sqlx::query(
        "INSERT INTO workspaces (id, name) SELECT w, 'bench ' || w FROM generate_series(1, $1) w",
    )
    .bind(WORKSPACES)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO tenants (id, workspace_id, name)
         SELECT 100 + $2 * (w - 1) + t, w, 'bench ' || w || '.' || t
         FROM generate_series(1, $1) w, generate_series(1, $2) t",
    )
    .bind(WORKSPACES)
    .bind(TENANTS_PER_WORKSPACE)
    .execute(pool)
    .await?;
    sqlx::query("INSERT INTO users (id, name) VALUES (1, 'bench')")
        .execute(pool)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bench_database_replaces_only_the_path() {
        assert_eq!(
            with_path("postgres://u:p@h:5432/app?sslmode=disable", "b").unwrap(),
            "postgres://u:p@h:5432/b?sslmode=disable"
        );
    }
}
