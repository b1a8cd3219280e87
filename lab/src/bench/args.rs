//! `oprun-lab bench`'s flags and the order of its phases.

use operation_runs::broker::topology::declare_bound_queue;
use std::time::{Duration, Instant};

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection};

use super::baseline;
use super::baseline_pg::{self, Batching};
use super::driver::{drive, Pace};
use super::instances::{Extra, Instances, ServeTunables};
use super::kinds;
use super::prebuilt;
use super::preload;
use super::report::{Loaded, Phase, Report};
use super::server::{PostgresChoice, Server, Target};
use super::soak;
use super::stages;
use super::usage;
use crate::private::PrivateDatabase;
use crate::sandbox::{Purpose, Sandbox};
use crate::{LabError, OprunBinary};
use operation_runs::broker::connection::connect;
use operation_runs::config::Config;

/// How long clean-up keeps retrying.
const CLEAN_UP_DEADLINE: Duration = Duration::from_secs(60);

/// Arguments of `oprun-lab bench`.
///
/// Defaults: 20,000 commands (about 3,100 runs; the whole bench takes one to two minutes on a
/// 2-core machine), one instance, the steady phase at half the measured rate for at most
/// 30 seconds, the service's own defaults for prefetch, batching and pool size. The targets are
/// judged with `--commands 50000`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Commands of the service workload (and messages of the baseline).
    #[arg(long = "commands", default_value_t = 20_000)]
    pub commands: usize,
    /// Commands per second of the steady phase (default: half the measured service rate).
    #[arg(long)]
    pub rate: Option<f64>,
    /// `oprun serve` instances.
    #[arg(long, default_value_t = 1)]
    pub instances: usize,
    /// Longest the steady phase publishes, in seconds (it sends at most `--commands` commands).
    #[arg(long, default_value_t = 30)]
    pub steady_secs: u64,
    /// Commands published and not yet accounted for (reply or event), at most, in the baseline
    /// and the service phase (default: 4 × prefetch × instances).
    #[arg(long)]
    pub in_flight: Option<u64>,
    /// Keep the database and the topology at the end (for inspection).
    #[arg(long)]
    pub keep: bool,
    /// After the steady phase, preload this many runs (with their events and inbox rows) and
    /// run the service workload again on the loaded database: `loaded_commands_per_s` and
    /// `loaded_ratio` (loaded ÷ empty) in the JSON line. 0: no loaded phase.
    #[arg(long, default_value_t = 0)]
    pub preload_runs: i64,
    /// Of the preloaded runs, how many are active (running).
    #[arg(long, default_value_t = 1000)]
    pub preload_active: i64,
    /// At the end, run the steady rate for this long (`30m`, `90s`), printing RSS, p99 and the
    /// table sizes every minute. Without retention flags, the served `oprun` keeps inbox rows,
    /// events and jobs for 2 minutes and prunes every 30 s, so that the sizes can level off.
    #[arg(long, value_parser = operation_runs::config::parse_duration)]
    pub soak: Option<Duration>,
    /// Runs of the kinds phase (after the steady phase): each command kind on its own, its
    /// writes per command from the WAL, and the HOT ratio of progress updates that arrive one
    /// per run per batch (`progress_hot_ratio`). 0: no kinds phase. More than `--batch-size`,
    /// so that no batch holds two increments of one run.
    #[arg(long, default_value_t = 1000)]
    pub kind_runs: usize,
    /// `increment_summary_counts` per run in the kinds phase's progress step.
    #[arg(long, default_value_t = 5)]
    pub kind_rounds: usize,
    /// Which PostgreSQL to measure: `private` starts a cluster of the bench's own with
    /// PostgreSQL's defaults (autovacuum on), as deployments run; `machine` uses
    /// `--database-url`'s server; `both` runs the whole bench on each, private first, and labels
    /// the machine's figures `machine_…` in the JSON line.
    #[arg(long, value_enum, default_value_t = PostgresChoice::Private)]
    pub postgres: PostgresChoice,
    #[command(flatten)]
    tunables: ServeTunables,
}

impl BenchArgs {
    /// Runs the bench: prints the table on stdout, then the JSON line as the last line.
    pub async fn run(self, config: &Config, oprun: &OprunBinary) -> Result<(), LabError> {
        if self.commands == 0 || self.instances == 0 {
            return Err(LabError::Invalid(
                "--commands and --instances must be positive".into(),
            ));
        }
        if self.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
            return Err(LabError::Invalid("--rate must be positive".into()));
        }
        if self.preload_runs < 0 || self.preload_active < 0 {
            return Err(LabError::Invalid(
                "--preload-runs and --preload-active must not be negative".into(),
            ));
        }
        let mut reports = Vec::new();
        for &target in self.postgres.targets() {
            // Dropped after the sandbox is removed: stops and deletes the private cluster.
            let private = match target {
                Target::Private => {
                    eprintln!("bench: starting a private PostgreSQL cluster (initdb defaults)");
                    Some(PrivateDatabase::start().await?)
                }
                Target::Machine => None,
            };
            let mut config = config.clone();
            if let Some(db) = &private {
                config.database_url = db.url("postgres").into();
            }
            reports.push(self.run_on(target, &config, oprun).await?);
            drop(private);
        }
        for report in &reports {
            print!("{}", report.table());
        }
        println!("{}", Report::json_lines(&reports));
        Ok(())
    }

    /// The whole bench on the server of `config`, in a sandbox of its own.
    async fn run_on(
        &self,
        target: Target,
        config: &Config,
        oprun: &OprunBinary,
    ) -> Result<Report, LabError> {
        let connection = connect(&config.amqp_url_list(), "oprun-lab bench").await?;
        let admin = connection.create_channel().await?;
        let mut sandbox = Sandbox::create(config, Purpose::Bench, &prebuilt::scopes(), &[]).await?;
        let server = Server::describe(target, &sandbox.pool).await;
        // The new database's creation is written out now, not during the first phase (a
        // superuser's right; elsewhere the checkpoint simply comes later).
        let _ = sqlx::query("CHECKPOINT").execute(&sandbox.pool).await;
        eprint!("bench: {}", server.line());
        eprintln!(
            "bench: database and namespace {} ({} commands, {} instance(s))",
            sandbox.name, self.commands, self.instances
        );
        let measured = self
            .phases(config, oprun, &connection, &admin, &mut sandbox)
            .await;
        let _ = connection.close(200, "bench done".into()).await;
        if self.keep && target == Target::Machine {
            eprintln!("bench: kept database and namespace {}", sandbox.name);
        } else {
            if self.keep {
                eprintln!("bench: --keep keeps nothing on the private cluster (it is removed); use --postgres machine");
            }
            clean_up(&sandbox).await;
        }
        let mut report = measured?;
        report.server = Some(server);
        Ok(report)
    }

    async fn phases(
        &self,
        config: &Config,
        oprun: &OprunBinary,
        connection: &Connection,
        admin: &Channel,
        sandbox: &mut Sandbox,
    ) -> Result<Report, LabError> {
        let in_flight = self
            .in_flight
            .unwrap_or(4 * u64::from(self.tunables.prefetch) * self.instances as u64);
        let plans = prebuilt::plan("service", self.commands);
        let bytes = prebuilt::mean_dispatch_bytes(&plans);

        eprintln!("bench: baseline, {} messages of {bytes} B", self.commands);
        let before = usage::snapshot(&[], &sandbox.pool).await;
        let baseline = baseline::run(
            &config.amqp_url_list(),
            connection,
            sandbox,
            self.commands as u64,
            bytes,
            self.tunables.prefetch,
            in_flight,
        )
        .await?;
        let baseline_usage = usage::between(&before, &usage::snapshot(&[], &sandbox.pool).await);

        let pg_plans = prebuilt::plan("baseline_pg", self.commands);
        eprintln!(
            "bench: Postgres baseline, {} commands",
            prebuilt::total_commands(&pg_plans)
        );
        let pg_pool = operation_runs::store::connect_lazy(&sandbox.database_url, 2)?;
        let before = usage::snapshot(&[], &sandbox.pool).await;
        let pg_baseline = baseline_pg::run(
            &config.amqp_url_list(),
            connection,
            sandbox,
            &pg_pool,
            &pg_plans,
            Batching {
                prefetch: self.tunables.prefetch,
                batch_size: self.tunables.batch_size,
                window: Duration::from_millis(self.tunables.batch_window_ms),
            },
            in_flight,
        )
        .await;
        let after = usage::snapshot(&[], &sandbox.pool).await;
        let pg_baseline = match pg_baseline {
            Ok(result) => {
                let mut pg_usage = usage::between(&before, &after);
                usage::recount_commits(&mut pg_usage, &before, &after, &sandbox.pool).await;
                Ok((result, pg_usage))
            }
            Err(e) => {
                eprintln!("bench: the Postgres baseline failed: {e}");
                Err(e.to_string())
            }
        };
        drop(pg_plans);
        baseline_pg::empty_tables(&pg_pool).await?;
        pg_pool.close().await;

        let events_queue = sandbox.own_queue("events");
        subscribe(admin, &events_queue, &sandbox.topology.events_exchange()).await?;
        let mut tunables = self.tunables.clone();
        if self.soak.is_some() {
            tunables.short_retention_for_soak();
        }
        let instances = Instances::start(
            oprun,
            self.instances,
            config,
            sandbox,
            &tunables,
            admin,
            &Extra::default(),
        )
        .await?;
        let pids = instances.pids();

        eprintln!(
            "bench: service, {} commands in {} runs",
            prebuilt::total_commands(&plans),
            plans.len()
        );
        let before = usage::snapshot(&pids, &sandbox.pool).await;
        let service = drive(
            connection,
            &sandbox.topology,
            &events_queue,
            &plans,
            Pace::Max { in_flight },
        )
        .await?;
        let after = usage::snapshot(&pids, &sandbox.pool).await;
        let mut service_usage = usage::between(&before, &after);
        // Also lets the service settle (relay idle, nothing queued) before the steady phase.
        usage::recount_commits(&mut service_usage, &before, &after, &sandbox.pool).await;
        let service = Phase::new(service, service_usage, None);
        drop(plans);

        let rate = self.rate.unwrap_or(service.drive.rate() / 2.0).max(1.0);
        // A failed steady phase (say, the broker restarted under it) still leaves the baseline
        // and the service phase worth reporting.
        let steady = self
            .steady(
                connection,
                sandbox,
                &events_queue,
                &pids,
                instances.metrics_addrs(),
                rate,
            )
            .await
            .map_err(|e| e.to_string());
        if let Err(e) = &steady {
            eprintln!("bench: the steady phase failed: {e}");
        }

        let kinds = if self.kind_runs > 0 {
            eprintln!(
                "bench: kinds, {} runs, {} increments each",
                self.kind_runs, self.kind_rounds
            );
            let kinds = kinds::run(
                connection,
                sandbox,
                &events_queue,
                self.kind_runs,
                self.kind_rounds,
                in_flight.min(self.kind_runs as u64),
            )
            .await
            .map_err(|e| e.to_string());
            if let Err(e) = &kinds {
                eprintln!("bench: the kinds phase failed: {e}");
            }
            Some(kinds)
        } else {
            None
        };

        let loaded = if self.preload_runs > 0 {
            Some(
                self.loaded(connection, sandbox, &events_queue, &pids)
                    .await?,
            )
        } else {
            None
        };
        if let Some(duration) = self.soak {
            soak::run(
                connection,
                sandbox,
                &events_queue,
                &instances,
                rate,
                duration,
            )
            .await?;
        }

        let peak_rss_mb = instances.peak_rss_mb();
        instances.stop().await;
        let dead_lettered = admin
            .queue_declare(
                sandbox.topology.dead_letter_queue().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_or(0, |q| q.message_count());
        Ok(Report {
            instances: self.instances,
            prefetch: self.tunables.prefetch,
            in_flight,
            baseline,
            baseline_usage,
            pg_baseline,
            service,
            steady,
            peak_rss_mb,
            dead_lettered,
            kinds,
            loaded,
            server: None,
        })
    }
}

impl BenchArgs {
    async fn steady(
        &self,
        connection: &Connection,
        sandbox: &Sandbox,
        events_queue: &str,
        pids: &[u32],
        metrics: &[std::net::SocketAddr],
        rate: f64,
    ) -> Result<Phase, LabError> {
        let budget = (rate * self.steady_secs as f64) as usize;
        let plans = prebuilt::plan("steady", self.commands.min(budget).max(1));
        eprintln!(
            "bench: steady, {} commands at {rate:.0}/s",
            prebuilt::total_commands(&plans)
        );
        let stages_before = stages::Reading::scrape(metrics).await;
        let before = usage::snapshot(pids, &sandbox.pool).await;
        let steady = drive(
            connection,
            &sandbox.topology,
            events_queue,
            &plans,
            Pace::Rate(rate),
        )
        .await?;
        let after = usage::snapshot(pids, &sandbox.pool).await;
        let mut steady_usage = usage::between(&before, &after);
        // Also gives the relay time to record its last confirms.
        usage::recount_commits(&mut steady_usage, &before, &after, &sandbox.pool).await;
        let mut phase = Phase::new(steady, steady_usage, Some(rate));
        match (stages_before, stages::Reading::scrape(metrics).await) {
            (Ok(before), Ok(after)) => phase.stages = after.since(&before),
            (Err(e), _) | (_, Err(e)) => eprintln!("bench: no stage breakdown: {e}"),
        }
        Ok(phase)
    }
}

impl BenchArgs {
    /// Preloads the database, then drives the service workload again, as fast as it goes.
    async fn loaded(
        &self,
        connection: &Connection,
        sandbox: &Sandbox,
        events_queue: &str,
        pids: &[u32],
    ) -> Result<Loaded, LabError> {
        eprintln!(
            "bench: preloading {} runs ({} active)",
            self.preload_runs, self.preload_active
        );
        let preloaded = preload::preload(
            &sandbox.database_url,
            self.preload_runs,
            self.preload_active,
        )
        .await?;
        let plans = prebuilt::plan("loaded", self.commands);
        let in_flight = self
            .in_flight
            .unwrap_or(4 * u64::from(self.tunables.prefetch) * self.instances as u64);
        eprintln!(
            "bench: loaded, {} commands in {} runs",
            prebuilt::total_commands(&plans),
            plans.len()
        );
        let before = usage::snapshot(pids, &sandbox.pool).await;
        let drive = drive(
            connection,
            &sandbox.topology,
            events_queue,
            &plans,
            Pace::Max { in_flight },
        )
        .await?;
        let after = usage::snapshot(pids, &sandbox.pool).await;
        let mut loaded_usage = usage::between(&before, &after);
        usage::recount_commits(&mut loaded_usage, &before, &after, &sandbox.pool).await;
        Ok(Loaded {
            preloaded,
            phase: Phase::new(drive, loaded_usage, None),
        })
    }
}

/// Removes the sandbox on a fresh connection (the bench's own may have died with the broker),
/// retrying for a while so that a broker or database restart during the bench leaves nothing
/// behind.
async fn clean_up(sandbox: &Sandbox) {
    let deadline = Instant::now() + CLEAN_UP_DEADLINE;
    loop {
        match sandbox.remove().await {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => {
                eprintln!(
                    "bench: cleaning up {} failed: {e} (remove it with `oprun topology delete --yes` \
                     and DROP DATABASE)",
                    sandbox.name
                );
                return;
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(2)).await,
        }
    }
}

/// Declares the bench's subscriber queue (quorum, like a durable subscriber's) on `N.events`.
async fn subscribe(channel: &Channel, queue: &str, exchange: &str) -> Result<(), LabError> {
    declare_bound_queue(channel, queue, exchange, &[""]).await?;
    Ok(())
}
