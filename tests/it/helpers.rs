//! The test harness: a real broker and a real database per test. `#[sqlx::test]` gives each
//! test a fresh migrated database; [`TestApp::spawn`] adds a random topology namespace and runs
//! the service in-process on that pool. Waits use deadlines, never bare sleeps.

use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, Consumer};
use operation_runs::broker::connection::connect;
use operation_runs::broker::publisher::ConfirmPublisher;
use operation_runs::broker::Topology;
use operation_runs::config::{Config, ServeSettings};
use operation_runs::domain::OperationRun;
use operation_runs::service::Service;
use operation_runs::store::runs;
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long any wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

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

/// Settings for tests: no probes endpoint, fast relay, job hand-off off unless asked.
pub fn test_settings() -> ServeSettings {
    ServeSettings {
        hand_off_jobs: false,
        relay_idle_ms: 50,
        metrics_poll_ms: 100,
        reaper_interval_secs: 0,
        db_connections: 3,
        lanes: 2,
        shutdown_timeout_secs: 5,
        ..ServeSettings::default()
    }
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

    /// Publishes a `policy.sync` dispatch of workspace 1 / tenant 10.
    pub async fn dispatch_policy(&self, policy_id: i64) {
        self.publish(&dispatch(
            "policy.sync",
            1,
            Some(10),
            json!({ "policy_id": policy_id }),
        ))
        .await;
    }

    /// Dispatches a `policy.sync` run of workspace 1 / tenant 10 and returns its id once created.
    pub async fn create_policy_run(&self, policy_id: i64) -> i64 {
        self.dispatch_policy(policy_id).await;
        wait_for_active_run(self, "policy.sync").await
    }

    /// Publishes each `(routing key, body)` raw, followed by a good command (`total` + 1 on
    /// `run_id`), and returns how many good ones it sent.
    pub async fn publish_interleaved_with_good(
        &self,
        run_id: i64,
        bad: impl IntoIterator<Item = (String, Vec<u8>)>,
    ) -> u64 {
        let mut good = 0;
        for (routing_key, body) in bad {
            self.publish_raw(&routing_key, &body, json_properties())
                .await;
            self.publish(&progress(
                "increment_summary_counts",
                run_id,
                json!({"counts": {"total": 1}}),
            ))
            .await;
            good += 1;
        }
        good
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
            database_url: String::new(),
            amqp_url: amqp_url(),
            namespace,
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

    /// Publishes a command body (routing key = its kind) with confirms.
    pub async fn publish(&self, body: &Value) {
        let kind = body
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_owned();
        let bytes = serde_json::to_vec(body).unwrap();
        self.publish_raw(&kind, &bytes, json_properties()).await;
    }

    /// Publishes raw bytes to the commands exchange with confirms.
    pub async fn publish_raw(&self, routing_key: &str, body: &[u8], properties: BasicProperties) {
        self.publisher
            .publish(
                &self.topology.commands_exchange(),
                routing_key,
                body,
                properties,
                true,
            )
            .await
            .unwrap();
    }

    /// A fresh exclusive, auto-deleted queue with a no-ack consumer on it, bound to `exchange`
    /// when given: a subscriber's queue, or a reply queue.
    pub async fn temporary_queue(&self, exchange: Option<&str>) -> (Channel, String, Consumer) {
        let channel = self.connection.create_channel().await.unwrap();
        let options = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        let queue = channel
            .queue_declare("".into(), options, FieldTable::default())
            .await
            .unwrap();
        let name = queue.name().as_str().to_owned();
        if let Some(exchange) = exchange {
            channel
                .queue_bind(
                    name.as_str().into(),
                    exchange.into(),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
        }
        let consume = BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        };
        let consumer = channel
            .basic_consume(
                name.as_str().into(),
                "".into(),
                consume,
                FieldTable::default(),
            )
            .await
            .unwrap();
        (channel, name, consumer)
    }

    /// Binds a fresh exclusive queue to the events exchange: a subscriber.
    pub async fn subscribe_events(&self) -> Subscriber {
        let (channel, _, consumer) = self
            .temporary_queue(Some(&self.topology.events_exchange()))
            .await;
        Subscriber {
            _channel: channel,
            consumer,
        }
    }

    /// Waits until the dead-letter queue holds `n` messages and takes them (acked).
    pub async fn take_dead_letters(&self, n: usize) -> Vec<Delivery> {
        let channel = self.connection.create_channel().await.unwrap();
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while out.len() < n {
            match channel
                .basic_get(
                    self.topology.dead_letter_queue().into(),
                    BasicGetOptions { no_ack: false },
                )
                .await
                .unwrap()
            {
                Some(m) => {
                    m.delivery
                        .acker
                        .ack(BasicAckOptions::default())
                        .await
                        .unwrap();
                    out.push(m.delivery);
                }
                None if tokio::time::Instant::now() > deadline => {
                    panic!("expected {n} dead letters, got {}", out.len())
                }
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        out
    }

    /// Messages in a queue now (passive declare).
    pub async fn queue_depth(&self, queue: &str) -> u32 {
        let channel = self.connection.create_channel().await.unwrap();
        let q = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        q.message_count()
    }

    /// Waits until run `id` satisfies `check`, and returns it.
    pub async fn wait_for_run(
        &self,
        id: i64,
        what: &str,
        check: impl Fn(&OperationRun) -> bool,
    ) -> OperationRun {
        let pool = self.pool.clone();
        wait_until(what, || {
            let pool = pool.clone();
            let found = async move { runs::get(&pool, id).await.unwrap() };
            let check = &check;
            async move { found.await.filter(|r| check(r)) }
        })
        .await
    }

    /// Waits until `sql` (a scalar count) returns `expected`.
    pub async fn wait_for_count(&self, sql: &str, expected: i64) {
        let pool = self.pool.clone();
        let last = std::sync::Arc::new(std::sync::Mutex::new(None));
        let seen = last.clone();
        let result = tokio::time::timeout(DEADLINE, async {
            loop {
                let n: i64 = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
                *seen.lock().unwrap() = Some(n);
                if n == expected {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
        .await;
        if result.is_err() {
            panic!(
                "{sql}: expected {expected}, last saw {:?}",
                last.lock().unwrap()
            );
        }
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

/// A subscriber queue bound to the events exchange.
pub struct Subscriber {
    _channel: Channel,
    consumer: Consumer,
}

impl Subscriber {
    /// The next `n` events (CloudEvents JSON with their AMQP properties), failing after the deadline.
    pub async fn next_events(&mut self, n: usize) -> Vec<(Value, BasicProperties)> {
        let mut out = Vec::new();
        while out.len() < n {
            let next = tokio::time::timeout(DEADLINE, self.consumer.next())
                .await
                .unwrap_or_else(|_| panic!("expected {n} events, got {}", out.len()));
            let delivery = next.expect("subscriber open").unwrap();
            out.push((
                serde_json::from_slice(&delivery.data).unwrap(),
                delivery.properties,
            ));
        }
        out
    }

    /// Asserts that no event arrives within `quiet`.
    pub async fn assert_quiet(&mut self, quiet: Duration) {
        if let Ok(Some(Ok(d))) = tokio::time::timeout(quiet, self.consumer.next()).await {
            panic!("unexpected event: {}", String::from_utf8_lossy(&d.data));
        }
    }
}

/// JSON, persistent.
pub fn json_properties() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
}

/// Polls `probe` until it yields `Some`, failing after [`DEADLINE`].
pub async fn wait_until<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A dispatch body.
pub fn dispatch(run_type: &str, workspace: i64, tenant: Option<i64>, context: Value) -> Value {
    json!({"kind": "dispatch", "command_id": uuid::Uuid::new_v4().to_string(), "type": run_type,
           "workspace_id": workspace, "tenant_id": tenant, "context": context})
}

/// A progress command body of `kind` for run `run_id` in workspace 1 / tenant 10 with `fields`.
pub fn progress(kind: &str, run_id: i64, fields: Value) -> Value {
    let mut body = json!({"kind": kind, "command_id": uuid::Uuid::new_v4().to_string(), "run_id": run_id,
                          "workspace_id": 1, "tenant_id": 10});
    for (k, v) in fields.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// The id of the active run of `run_type`, waiting for it to appear.
pub async fn wait_for_active_run(app: &TestApp, run_type: &str) -> i64 {
    let pool = app.pool.clone();
    let run_type = run_type.to_owned();
    wait_until("an active run", || {
        let (pool, run_type) = (pool.clone(), run_type.clone());
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT id FROM operation_runs WHERE type = $1 AND status <> 'completed'",
            )
            .bind(run_type)
            .fetch_optional(&pool)
            .await
            .unwrap()
        }
    })
    .await
}

/// Header value as text.
pub fn header(properties: &BasicProperties, key: &str) -> Option<String> {
    operation_runs::broker::headers::get_str(properties.headers().as_ref(), key)
}

/// A fresh exclusive reply queue named `N.reply.<random>` (the service replies only to direct
/// reply-to and to queues matching `--reply-queue-pattern`, default `N.reply.*`), with a no-ack
/// consumer on it.
pub async fn reply_queue(app: &TestApp) -> (Channel, String, Consumer) {
    let channel = app.connection.create_channel().await.unwrap();
    let name = format!(
        "{}.reply.{}",
        app.topology.namespace(),
        uuid::Uuid::new_v4().simple()
    );
    let options = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    channel
        .queue_declare(name.as_str().into(), options, FieldTable::default())
        .await
        .unwrap();
    let consume = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let consumer = channel
        .basic_consume(
            name.as_str().into(),
            "".into(),
            consume,
            FieldTable::default(),
        )
        .await
        .unwrap();
    (channel, name, consumer)
}

/// Publishes the dispatch `body` asking for a reply on a fresh `N.reply.*` queue (the only queues,
/// besides direct reply-to, the service replies to), checks the reply's correlation id and returns
/// the reply body.
pub async fn dispatch_with_reply(app: &TestApp, body: &Value) -> Value {
    let (_channel, queue, mut replies) = reply_queue(app).await;
    let properties: BasicProperties = json_properties()
        .with_reply_to(queue.as_str().into())
        .with_correlation_id("corr-1".into());
    app.publish_raw("dispatch", &serde_json::to_vec(body).unwrap(), properties)
        .await;
    let reply = tokio::time::timeout(DEADLINE, replies.next())
        .await
        .expect("a reply in time")
        .unwrap()
        .unwrap();
    assert_eq!(
        reply
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str()),
        Some("corr-1")
    );
    serde_json::from_slice(&reply.data).unwrap()
}
