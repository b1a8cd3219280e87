//! The run's own world: a fresh database `oprun_chaos_<id>` (migrated, scopes seeded), a fresh
//! namespace `chaos_<id>` (the service's topology plus the subscriber's queue and an executor
//! queue taking every job), and a directory for the service logs. Removed at the end of a clean
//! run; kept, and shown, otherwise.

use operation_runs::broker::topology::declare_bound_queue;
use std::path::PathBuf;

use lapin::options::QueueDeleteOptions;
use sqlx::PgPool;

use super::workload::{tenant_workspace, FIRST_TENANT, TENANTS, USERS, WORKSPACES};
use crate::LabError;
use operation_runs::broker::connection::connect;
use operation_runs::broker::Topology;
use operation_runs::config::{redact_url, Config};
use operation_runs::store;

/// The database, namespace and log directory of one chaos run.
pub struct Sandbox {
    /// URL of the run's database.
    pub database_url: String,
    /// A pool on it.
    pub pool: PgPool,
    /// The run's namespace.
    pub topology: Topology,
    /// `N.chaos.subscriber`: the subscriber's queue, bound to `N.events`.
    pub subscriber_queue: String,
    /// `N.chaos.executor`: bound to `N.jobs` with `#` for the whole run, so every job is
    /// routable (nobody consumes it; it is deleted with the namespace).
    pub executor_queue: String,
    /// `N.chaos.rejecting`: the executor queue that refuses publishes for a while.
    pub rejecting_queue: String,
    /// Where the service instances log.
    pub log_dir: PathBuf,
    database_name: String,
    admin_url: String,
    amqp_url: String,
}

impl Sandbox {
    /// Creates the database, seeds it, declares the namespace and binds the subscriber queue
    /// (before any command is published, so it misses no event). What a failure leaves
    /// half-built is removed again.
    pub async fn create(config: &Config) -> Result<Self, LabError> {
        let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let database_name = format!("oprun_chaos_{id}");
        let mut url = url::Url::parse(config.database_url.expose_secret())
            .map_err(|e| LabError::Invalid(format!("--database-url: {e}")))?;
        url.set_path(&database_name);
        let database_url = url.to_string();
        // Dropping needs a connection to another database of the server: the maintenance one.
        url.set_path("postgres");
        let admin_url = url.to_string();
        let topology = Topology::new(&format!("chaos_{id}"))?
            .with_quorum_group_size(config.quorum_group_size());
        let sandbox = Self {
            pool: store::connect_lazy(&database_url, 4)?,
            database_url,
            subscriber_queue: format!("{}.chaos.subscriber", topology.namespace()),
            executor_queue: format!("{}.chaos.executor", topology.namespace()),
            rejecting_queue: format!("{}.chaos.rejecting", topology.namespace()),
            topology,
            log_dir: std::env::temp_dir().join(format!("oprun-chaos-{id}")),
            database_name,
            admin_url,
            amqp_url: config.amqp_url_list(),
        };
        match sandbox.set_up().await {
            Ok(()) => Ok(sandbox),
            Err(e) => {
                let description = sandbox.describe();
                if let Err(cleanup) = sandbox.remove().await {
                    eprintln!("chaos: could not remove the half-built {description}: {cleanup}");
                }
                Err(e)
            }
        }
    }

    async fn set_up(&self) -> Result<(), LabError> {
        std::fs::create_dir_all(&self.log_dir)?;
        store::migrate(&self.database_url).await?;
        seed_scopes(&self.pool).await?;
        let connection = connect(&self.amqp_url, "oprun-lab chaos setup").await?;
        let channel = connection.create_channel().await?;
        self.topology.declare(&channel).await?;
        declare_bound_queue(
            &channel,
            &self.subscriber_queue,
            &self.topology.events_exchange(),
            &[""],
        )
        .await?;
        declare_bound_queue(
            &channel,
            &self.executor_queue,
            &self.topology.jobs_exchange(),
            &["#"],
        )
        .await?;
        let _ = connection.close(200, "set up".into()).await;
        Ok(())
    }

    /// Where everything is, for a human.
    pub fn describe(&self) -> String {
        format!(
            "database {} namespace {} (queues {}, {}, {}, {}) logs {}",
            redact_url(&self.database_url),
            self.topology.namespace(),
            self.topology.commands_queue(),
            self.topology.dead_letter_queue(),
            self.subscriber_queue,
            self.executor_queue,
            self.log_dir.display()
        )
    }

    /// Deletes the namespace's queues and exchanges, drops the database (closing whatever is
    /// still connected to it) and removes the logs; whatever does not exist is skipped.
    pub async fn remove(self) -> Result<(), LabError> {
        // Each part is tried even when another fails; the first failure is returned.
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
        let connection = connect(&self.amqp_url, "oprun-lab chaos teardown").await?;
        let channel = connection.create_channel().await?;
        // Deleting a queue that does not exist (the rejecting one, usually) succeeds.
        for queue in [
            &self.subscriber_queue,
            &self.executor_queue,
            &self.rejecting_queue,
        ] {
            channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await?;
        }
        self.topology.delete(&channel).await?;
        let _ = connection.close(200, "torn down".into()).await;
        Ok(())
    }

    async fn drop_database(&self) -> Result<(), LabError> {
        let admin = store::connect_lazy(&self.admin_url, 1)?;
        let dropped = sqlx::query(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.database_name
        ))
        .execute(&admin)
        .await;
        admin.close().await;
        dropped?;
        Ok(())
    }
}

/// The workspaces, tenants (each in its workspace) and users the workload refers to.
async fn seed_scopes(pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    for id in 1..=WORKSPACES {
        sqlx::query("INSERT INTO workspaces (id, name) VALUES ($1, $2)")
            .bind(id)
            .bind(format!("chaos workspace {id}"))
            .execute(&mut *tx)
            .await?;
    }
    for id in FIRST_TENANT..FIRST_TENANT + TENANTS {
        sqlx::query("INSERT INTO tenants (id, workspace_id, name) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(tenant_workspace(id))
            .bind(format!("chaos tenant {id}"))
            .execute(&mut *tx)
            .await?;
    }
    for id in 1..=USERS {
        sqlx::query("INSERT INTO users (id, name) VALUES ($1, $2)")
            .bind(id)
            .bind(format!("chaos user {id}"))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}
