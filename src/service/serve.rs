//! The service and its reconnect loop: `oprun serve` prepares the database, connects (and
//! reconnects, with backoff) to the broker, consumes batches and hands each to
//! [`DeliveryHandler`], acks what it settled, runs the outbox relay on the same connection, and
//! keeps the reaper, the pruner, the probes and the polled gauges going; it shuts down cleanly on
//! a token.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::apply::ApplySettings;
use super::deliveries::{BatchSettlement, DeliveryHandler};
use super::error::cause_chain;
use super::health::{self, Health};
use super::metrics::{Metrics, Stage};
use super::pruner;
use super::reaper;
use super::relay::{OutboxRelay, RelaySettings};
use super::reply_guard::ReplyGuard;
use super::viewer_actions::ViewerActions;
use super::viewer_dead_letters::ViewerDeadLetters;
use crate::broker::connection::{AmqpUrls, Connector};
use crate::broker::consumer::CommandConsumer;
use crate::broker::publisher::ConfirmPublisher;
use crate::broker::{BrokerError, Connection, Topology};
use crate::config::{Config, ServeSettings};
use crate::domain::OPERATION_CATALOG;
use crate::retry::{retry_transient, ReconnectBackoff};
use crate::store::{self, StoreError};

/// Why `serve` could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The database could not be prepared.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The configuration is invalid.
    #[error("{0}")]
    Config(String),
    /// The health endpoint could not bind.
    #[error("cannot bind the health endpoint: {0}")]
    Bind(#[from] std::io::Error),
}

/// Everything a running service shares between its tasks.
#[derive(Clone)]
pub struct Service {
    /// The database pool.
    pub pool: PgPool,
    /// The topology names.
    pub topology: Topology,
    /// What applied commands write.
    pub ctx: ApplySettings,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// The probes' state.
    pub health: Arc<Health>,
    /// Where replies may be sent.
    pub reply_guard: ReplyGuard,
    /// The broker's nodes, and which one answered last.
    broker: Arc<Connector>,
    pub(crate) settings: ServeSettings,
}

impl Service {
    /// Migrates the database (retrying while it is unreachable) and builds the service.
    /// `None` if `shutdown` fires first.
    pub async fn prepare(
        config: &Config,
        settings: &ServeSettings,
        shutdown: &CancellationToken,
    ) -> Result<Option<Self>, ServeError> {
        let topology = config
            .topology()
            .map_err(|e| ServeError::Config(e.to_string()))?;
        config
            .amqp_urls()
            .map_err(|e| ServeError::Config(format!("--amqp-url: {e}")))?;
        let migrated = retry_transient(
            shutdown,
            "migrating the database",
            StoreError::is_transient,
            || store::migrate(config.database_url.expose_secret()),
        )
        .await;
        match migrated {
            None => return Ok(None),
            Some(r) => r?,
        }
        let pool =
            store::connect_lazy(config.database_url.expose_secret(), settings.db_connections)?;
        Ok(Some(Self::new(pool, topology, config, settings)))
    }

    /// A service on an existing (migrated) pool: what tests use.
    pub fn new(
        pool: PgPool,
        topology: Topology,
        config: &Config,
        settings: &ServeSettings,
    ) -> Self {
        Self {
            pool,
            ctx: ApplySettings {
                event_source: format!("/operation-runs/{}", topology.namespace()),
                hand_off_jobs: settings.jobs.hand_off_jobs,
                max_active_runs_per_tenant: settings.max_active_runs_per_tenant,
            },
            reply_guard: ReplyGuard::new(&settings.reply_queue_pattern, &topology),
            topology,
            metrics: Arc::new(Metrics::default()),
            health: Arc::new(Health::default()),
            // Checked by `prepare`; connecting reports whatever is wrong with them here.
            broker: Arc::new(Connector::new(AmqpUrls::unchecked(&config.amqp_url))),
            settings: settings.clone(),
        }
    }

    /// Runs until `shutdown`: connects (and reconnects, with backoff) to the broker, consumes,
    /// relays and reaps. Returns after in-flight work is settled and the outbox flushed.
    ///
    /// The reconnect backoff starts again after a healthy period: a connection that consumed for
    /// at least [`crate::retry::HEALTHY_AFTER`] before it failed is retried after 100–200 ms,
    /// whatever outages came before it.
    pub async fn run(&self, shutdown: CancellationToken) {
        let reaper = tokio::spawn(self.clone().reap_forever(shutdown.clone()));
        let probe = tokio::spawn(self.clone().probe_database(shutdown.clone()));
        let recorder = tokio::spawn(self.clone().record_settings(shutdown.clone()));
        let pruner = tokio::spawn(pruner::prune_forever(
            self.pool.clone(),
            self.settings.retention.clone(),
            shutdown.clone(),
        ));
        let mut reconnect = ReconnectBackoff::new();
        loop {
            let attempt_started = Instant::now();
            match self.run_connected(&shutdown).await {
                Ok(()) => break,
                Err(e) => {
                    // Healthy means it got as far as consuming (the flag is still up: nothing
                    // lowers it on the error path before this line) and stayed up long enough.
                    let consumed = self.health.consumer_running.load(Ordering::Relaxed);
                    let healthy_for = if consumed {
                        attempt_started.elapsed()
                    } else {
                        Duration::ZERO
                    };
                    self.set_consumer_running(false);
                    self.metrics.reconnected();
                    // The node may be the one that went away: start with the next one.
                    self.broker.rotate();
                    let delay = reconnect.on_failure(healthy_for);
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "broker connection lost, reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => break,
                    }
                }
            }
        }
        self.set_consumer_running(false);
        let _ = tokio::join!(reaper, probe, pruner, recorder);
    }

    fn set_consumer_running(&self, running: bool) {
        self.health
            .consumer_running
            .store(running, Ordering::Relaxed);
        self.metrics.consumer_running(running);
    }

    /// One connection's life. `Ok` means shutdown was requested and honoured. On any error the
    /// connection is closed before returning, so no channel of it keeps unacked deliveries.
    async fn run_connected(&self, shutdown: &CancellationToken) -> Result<(), BrokerError> {
        let connection = self.broker.connect("oprun serve").await?;
        let result = self.use_connection(&connection, shutdown).await;
        if result.is_err() {
            let _ = connection.close(320, "oprun reconnecting".into()).await;
        }
        result
    }

    async fn use_connection(
        &self,
        connection: &Connection,
        shutdown: &CancellationToken,
    ) -> Result<(), BrokerError> {
        self.topology.declare_on(connection).await?;
        let mut publisher = ConfirmPublisher::open(connection).await?;
        let relay = OutboxRelay::new(
            self.pool.clone(),
            ConfirmPublisher::open(connection).await?,
            self.topology.clone(),
            self.ctx.clone(),
            self.relay_settings(),
            self.metrics.clone(),
        );
        let tag = format!("oprun-{}", uuid::Uuid::new_v4());
        let mut consumer = CommandConsumer::start(
            connection,
            &self.topology,
            self.settings.batch.prefetch,
            &tag,
        )
        .await?;
        self.set_consumer_running(true);
        tracing::info!(namespace = self.topology.namespace(), "consuming commands");

        let wake = Arc::new(Notify::new());
        let stop_relay = CancellationToken::new();
        let idle = self.settings.outbox.relay_idle;
        let consuming = self.consume(connection, &mut consumer, &mut publisher, &wake, shutdown);
        // The relay handles its own broker faults (nacks, a closed channel); it ends only when
        // the connection is lost, which stops the consumer anyway.
        let relaying = relay.run(connection, wake.clone(), idle, stop_relay.clone());
        tokio::pin!(relaying);
        // Never completes: it only polls, and stops when this connection's work does.
        let polling = self.poll_gauges(connection);
        tokio::pin!(polling);
        let mut relay_ended = false;
        let consumed = tokio::select! {
            r = consuming => r,
            r = &mut relaying => {
                relay_ended = true;
                match r {
                    Ok(()) => Ok(()),
                    Err(e) => Err(BrokerError::Stopped(format!("outbox relay stopped: {e}"))),
                }
            }
            never = &mut polling => match never {},
        };
        consumed?;

        // Shutdown: no new deliveries, the in-flight batch is done (consume returned), so flush
        // what it recorded, then close politely.
        self.set_consumer_running(false);
        let _ = consumer.cancel().await;
        stop_relay.cancel();
        let grace = self.settings.shutdown_timeout;
        // The relay loop finishes its round first: a round holds the relay's session (its
        // leadership locks), which the flush needs; a suspended round would hold it for ever.
        let settled = async {
            if !relay_ended {
                let _ = (&mut relaying).await;
            }
            relay.flush().await
        };
        match tokio::time::timeout(grace, settled).await {
            Ok(Ok(())) => tracing::info!("outbox flushed"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "outbox flush failed; the next start publishes the rest")
            }
            Err(_) => tracing::warn!("outbox flush timed out; the next start publishes the rest"),
        }
        consumer.close().await;
        let _ = connection.close(200, "shutdown".into()).await;
        Ok(())
    }

    /// Every `--metrics-poll`, sets the gauges read from outside the process: the DLQ's
    /// depth (a passive declare on this connection), and the active runs and the longest-idle
    /// running run over its expected duration per catalog type (one `GROUP BY` query). A failed read keeps the last value and is logged at debug level: the
    /// gauges are for dashboards, and the broker and database have their own health signals.
    async fn poll_gauges(&self, connection: &Connection) -> std::convert::Infallible {
        let every = self.settings.metrics.metrics_poll;
        if every.is_zero() {
            return std::future::pending().await;
        }
        let dlq = self.topology.dead_letter_queue();
        loop {
            match crate::broker::queue_depth::message_count(connection, &dlq).await {
                // Letters `oprun dlq` moved into the table are still dead letters.
                Ok(n) => match crate::store::dead_letters::count(&self.pool).await {
                    Ok(stored) => self.metrics.dlq_depth(i64::from(n) + stored),
                    Err(e) => tracing::debug!(error = %e, "counting stored dead letters failed"),
                },
                Err(e) => tracing::debug!(error = %e, "reading the DLQ depth failed"),
            }
            match crate::store::runs::active_by_type(&self.pool).await {
                Ok(active) => {
                    let of = |name: &str| active.iter().find(|a| a.run_type == name);
                    self.metrics.active_runs(
                        OPERATION_CATALOG
                            .iter()
                            .map(|e| (e.name, of(e.name).map_or(0, |a| a.active))),
                    );
                    self.metrics.idle_ratios(OPERATION_CATALOG.iter().map(|e| {
                        let idle = of(e.name).map_or(0.0, |a| a.longest_idle_seconds);
                        (e.name, idle / e.expected_duration.as_secs_f64())
                    }));
                }
                Err(e) => tracing::debug!(error = %e, "counting active runs failed"),
            }
            tokio::time::sleep(every).await;
        }
    }

    /// The part of the service a batch of deliveries needs.
    fn delivery_handler(&self) -> DeliveryHandler<'_> {
        DeliveryHandler {
            pool: &self.pool,
            ctx: &self.ctx,
            lanes: self.settings.batch.lanes,
            topology: &self.topology,
            reply_guard: &self.reply_guard,
            metrics: &self.metrics,
            health: &self.health,
            dead_letter_answered_refusals: self.settings.dead_letter_answered_refusals,
        }
    }

    /// What the outbox relay is told by the settings.
    fn relay_settings(&self) -> RelaySettings {
        RelaySettings::new(&self.settings.outbox, &self.settings.jobs)
    }

    /// The consume loop: batch, handle (which wakes the relay once the batch is committed),
    /// ack.
    async fn consume(
        &self,
        connection: &Connection,
        consumer: &mut CommandConsumer,
        publisher: &mut ConfirmPublisher,
        wake: &Notify,
        shutdown: &CancellationToken,
    ) -> Result<(), BrokerError> {
        let window = self.settings.batch.batch_window;
        let handler = self.delivery_handler();
        while let Some(batch) = consumer
            .next_batch(self.settings.batch.batch_size, window, shutdown)
            .await?
        {
            let closed = Instant::now();
            for taken in consumer.taken() {
                self.metrics.stage(
                    Stage::BatchWindow,
                    closed.saturating_duration_since(*taken),
                    1,
                );
            }
            match handler
                .handle(connection, publisher, &batch, wake, shutdown)
                .await?
            {
                BatchSettlement::AckThrough(tag) => consumer.ack_through(tag).await?,
                BatchSettlement::Interrupted => return Ok(()),
            }
        }
        if shutdown.is_cancelled() {
            Ok(())
        } else {
            Err(BrokerError::Stopped(
                "the broker cancelled the consumer".into(),
            ))
        }
    }

    async fn reap_forever(self, shutdown: CancellationToken) {
        let every = self.settings.reaper.reaper_interval;
        if every.is_zero() {
            return;
        }
        loop {
            match reaper::reap_once(
                &self.pool,
                &self.ctx,
                self.settings.reaper.stale_factor,
                chrono::Utc::now(),
            )
            .await
            {
                Ok(reaped) if !reaped.is_empty() => {
                    self.metrics.reaped(reaped.len() as u64);
                    continue;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %cause_chain(&e), "reaper round failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Records the settings operator tools must agree with (`--inbox-retention`, read by `oprun
    /// dlq replay`), retrying while the database is unreachable.
    async fn record_settings(self, shutdown: CancellationToken) {
        let retention = self.settings.retention.inbox_retention;
        let recorded = retry_transient(
            &shutdown,
            "recording the inbox retention",
            |e: &StoreError| e.is_transient(),
            || async {
                crate::store::settings::record_inbox_retention(&self.pool, retention)
                    .await
                    .map_err(StoreError::from)
            },
        )
        .await;
        if let Some(Err(e)) = recorded {
            tracing::error!(error = %e, "recording the inbox retention failed");
        }
    }

    async fn probe_database(self, shutdown: CancellationToken) {
        loop {
            let ok = crate::store::locks::ping(&self.pool).await;
            self.health.database_ok.store(ok, Ordering::Relaxed);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

/// `oprun serve`: prepares the service, starts the probes endpoint, and runs until `shutdown`.
pub async fn serve(
    config: &Config,
    settings: &ServeSettings,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let Some(service) = Service::prepare(config, settings, &shutdown).await? else {
        return Ok(());
    };
    if let Some(addr) = settings.metrics.socket().map_err(ServeError::Config)? {
        let bound = health::spawn_with(
            addr,
            service.health.clone(),
            service.metrics.clone(),
            settings.http.limits(),
            shutdown.clone(),
        )
        .await?
        .addr;
        tracing::info!(%bound, "health and metrics endpoint listening");
    }
    if let Some(addr) = settings.viewer.socket().map_err(ServeError::Config)? {
        let live = settings.live_limits().map_err(ServeError::Config)?;
        let keys = viewer_keys(&service.pool, settings.viewer.api_secret()).await?;
        let viewer_pool = store::viewer::connect_viewer_pool(
            config.database_url.expose_secret(),
            settings.viewer_db_connections,
        )?;
        // Operator actions from the viewer write through its own pool too: acting never takes
        // a connection the command pipeline needs.
        let actions = ViewerActions::new(viewer_pool.clone(), service.ctx.clone());
        // The dead-letters page replays within the inbox retention this service prunes by.
        let dead_letters = ViewerDeadLetters::new(
            viewer_pool.clone(),
            Arc::new(Connector::new(AmqpUrls::unchecked(&config.amqp_url))),
            service.topology.clone(),
            settings.retention.inbox_retention,
        );
        let bound = crate::http::viewer::spawn(
            addr,
            viewer_pool,
            keys,
            settings.http.limits(),
            live,
            settings.live.allowed_origins(),
            Arc::new(actions),
            Arc::new(dead_letters),
            shutdown.clone(),
        )
        .await?
        .addr;
        tracing::info!(%bound, "run viewer listening: `oprun token --workspace ID` prints a link");
    }
    service.run(shutdown).await;
    service.pool.close().await;
    Ok(())
}

/// The viewer's signing keys: from the configured secret, or the one kept in the database
/// (created now if this is the first start).
pub async fn viewer_keys(
    pool: &PgPool,
    configured: Option<&str>,
) -> Result<crate::http::auth::TokenKeys, ServeError> {
    let secret = match configured {
        Some(s) => s.to_owned(),
        None => match store::viewer::api_secret(pool, &crate::http::auth::random_secret()).await {
            Ok(secret) => secret,
            // A role that may only read the secret (ops/postgres/roles.sql) on a database
            // where none was made yet.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42501") => {
                return Err(ServeError::Config(
                    "no viewer secret is stored and this database role may not store one: \
                     run `oprun migrate` once as the owner's role, or set --api-secret"
                        .into(),
                ))
            }
            Err(e) => return Err(StoreError::from(e).into()),
        },
    };
    crate::http::auth::TokenKeys::new(&secret).map_err(|e| ServeError::Config(e.to_string()))
}
