//! The app under test: a fresh namespace on the test's database, service instances run
//! in-process, and their shutdown.

use lapin::Connection;
use operation_runs::broker::connection::connect;
use operation_runs::broker::publisher::ConfirmPublisher;
use operation_runs::broker::Topology;
use operation_runs::config::{Config, ServeSettings};
use operation_runs::service::Service;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{wait_until, DEADLINE};

/// The broker URL of the tests.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A database URL for database `name` on the test server.
pub fn database_url_for(name: &str) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL is set by .cargo/config.toml");
    let mut url = url::Url::parse(&base).expect("DATABASE_URL is a URL");
    url.set_path(name);
    url.to_string()
}

/// A fresh namespace, unique per test.
pub fn unique_namespace() -> String {
    format!(
        "oprun_test_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// The real `oprun serve` binary against database `database` and topology `namespace`: no
/// probes, no viewer, no job hand-off, a fast relay, warnings and errors on stderr (piped),
/// killed when dropped. Add arguments and spawn.
pub fn serve_command(database: &str, namespace: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_oprun"));
    command
        .args([
            "serve",
            "--metrics-addr",
            "off",
            "--http-addr",
            "off",
            "--relay-idle",
            "50ms",
            "--hand-off-jobs",
            "false",
        ])
        .env("DATABASE_URL", database_url_for(database))
        .env("OPRUN_NAMESPACE", namespace)
        .env("OPRUN_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Workspaces 1 and 2; tenants 10 and 11 in workspace 1, 20 in workspace 2; user 5.
pub async fn seed_scopes(pool: &PgPool) {
    sqlx::raw_sql(
        "INSERT INTO workspaces (id, name) VALUES (1, 'one'), (2, 'two');
         INSERT INTO tenants (id, workspace_id, name) VALUES (10, 1, 'ten'), (11, 1, 'eleven'), (20, 2, 'twenty');
         INSERT INTO users (id, name) VALUES (5, 'ada');",
    )
    .execute(pool)
    .await
    .unwrap();
}

/// The flags of [`test_settings`]: no probes endpoint and no viewer, fast relay and gauges, no
/// reaper, job hand-off off unless asked.
const TEST_FLAGS: &[&str] = &[
    "--metrics-addr",
    "off",
    "--http-addr",
    "off",
    "--hand-off-jobs",
    "false",
    "--relay-idle",
    "50ms",
    "--metrics-poll",
    "100ms",
    "--reaper-interval",
    "0s",
    "--db-connections",
    "3",
    "--lanes",
    "2",
    "--shutdown-timeout",
    "5s",
];

/// Settings for tests: `oprun serve`'s defaults under [`TEST_FLAGS`].
pub fn test_settings() -> ServeSettings {
    test_settings_with(&[])
}

/// [`test_settings`] with `flags` (the flags of `oprun serve`, each with its value) in place of
/// the test's own.
pub fn test_settings_with(flags: &[&str]) -> ServeSettings {
    let own = TEST_FLAGS
        .chunks(2)
        .filter(|pair| !flags.contains(&pair[0]))
        .flatten();
    let all: Vec<&str> = own.chain(flags).copied().collect();
    ServeSettings::from_flags(&all).unwrap_or_else(|e| panic!("{all:?}: {e}"))
}

/// A service running in-process against a test database, plus a broker connection for the test.
pub struct TestApp {
    /// The test database.
    pub pool: PgPool,
    /// The namespace's names.
    pub topology: Topology,
    /// Config of the service (URLs, namespace).
    pub config: Config,
    /// The test's own broker connection.
    pub connection: Connection,
    /// A confirm-mode channel for the test's publishes.
    pub publisher: ConfirmPublisher,
    instances: Vec<(Service, CancellationToken, JoinHandle<()>)>,
}

impl TestApp {
    /// Like [`TestApp::spawn`] on a fresh pool of `connect` (for tests that also need the
    /// database name, to run the binary against it).
    pub async fn spawn_on(connect: &PgConnectOptions) -> Self {
        Self::spawn(
            PgPoolOptions::new()
                .max_connections(5)
                .connect_lazy_with(connect.clone()),
        )
        .await
    }

    /// Seeds scopes, declares a fresh namespace and starts one service instance.
    pub async fn spawn(pool: PgPool) -> Self {
        Self::spawn_with(pool, test_settings()).await
    }

    /// Like [`TestApp::spawn`] with explicit settings.
    pub async fn spawn_with(pool: PgPool, settings: ServeSettings) -> Self {
        let mut app = Self::without_service(pool).await;
        app.start_instance(app.pool.clone(), settings).await;
        app
    }

    /// Seeds scopes and declares a fresh namespace, without starting the service.
    pub async fn without_service(pool: PgPool) -> Self {
        seed_scopes(&pool).await;
        let namespace = unique_namespace();
        let topology = Topology::new(&namespace).unwrap();
        let connection = connect(&amqp_url(), "oprun tests").await.unwrap();
        topology
            .declare(&connection.create_channel().await.unwrap())
            .await
            .unwrap();
        let publisher = ConfirmPublisher::open(&connection).await.unwrap();
        let config = Config {
            database_url: String::new().into(),
            amqp_url: vec![amqp_url().into()],
            namespace,
            quorum_initial_group_size: None,
        };
        Self {
            pool,
            topology,
            config,
            connection,
            publisher,
            instances: Vec::new(),
        }
    }

    /// Starts one more service instance on `pool` (the same queue, the same database).
    pub async fn start_instance(&mut self, pool: PgPool, settings: ServeSettings) -> Service {
        let service = Service::new(pool, self.topology.clone(), &self.config, &settings);
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn({
            let (service, shutdown) = (service.clone(), shutdown.clone());
            async move { service.run(shutdown).await }
        });
        let health = service.health.clone();
        wait_until("the consumer to start", || {
            let health = health.clone();
            async move {
                health
                    .consumer_running
                    .load(std::sync::atomic::Ordering::Relaxed)
                    .then_some(())
            }
        })
        .await;
        self.instances.push((service.clone(), shutdown, handle));
        service
    }

    /// The metrics of every running instance.
    pub fn instances_metrics(
        &self,
    ) -> Vec<std::sync::Arc<operation_runs::service::metrics::Metrics>> {
        self.instances
            .iter()
            .map(|(s, _, _)| s.metrics.clone())
            .collect()
    }

    /// The first instance.
    pub fn service(&self) -> &Service {
        &self.instances[0].0
    }

    /// Stops instance `i` gracefully (as SIGTERM would) and waits for it.
    pub async fn stop_instance(&mut self, i: usize) {
        let (_, shutdown, handle) = self.instances.remove(i);
        shutdown.cancel();
        tokio::time::timeout(DEADLINE, handle)
            .await
            .expect("service stops in time")
            .unwrap();
    }

    /// Stops every instance started through this app.
    pub async fn stop_all(&mut self) {
        while !self.instances.is_empty() {
            self.stop_instance(0).await;
        }
    }

    /// Stops every instance and deletes the namespace's queues and exchanges.
    pub async fn shutdown(mut self) {
        self.stop_all().await;
        self.topology
            .delete(&self.connection.create_channel().await.unwrap())
            .await
            .unwrap();
        let _ = self.connection.close(200, "done".into()).await;
    }
}
