//! The chaos run, start to end: set up the sandbox, start the service, the subscriber and the
//! faults, drive the workload (see [`super::drive`]), stop everything it started, print the
//! closing line, and clean up (or keep everything for inspection when a check failed or
//! `--keep` asks).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::drive::{Run, Setting};
use crate::chaos::faults::db_probe;
use crate::chaos::faults::executors::EXECUTOR_QUEUE;
use crate::chaos::faults::fleet::{Fleet, Role, ServeOptions};
use crate::chaos::faults::infra::Infra;
use crate::chaos::faults::progress::Progress;
use crate::chaos::faults::schedule::{self, FaultLog, Target};
use crate::chaos::plan::injections::{Injection, Injections};
use crate::chaos::plan::workload::Workload;
use crate::chaos::verification::check::Findings;
use crate::chaos::verification::deliveries;
use crate::chaos::verification::figures::Figures;
use crate::chaos::verification::subscriber::SUBSCRIBER_QUEUE;
use crate::chaos::verification::subscriber::{Received, Subscriber};
use crate::sandbox::{Purpose, Sandbox};
use crate::{LabError, OprunBinary};
use operation_runs::config::Config;

/// Everything, checks included, must be done by then: CI allows ten minutes.
const BUDGET: Duration = Duration::from_secs(540);
/// The fault plan's seed is the workload's, salted, so each can change without moving the other.
const FAULT_SEED_SALT: u64 = 0x0063_6861_6f73;
/// How often a progress line is printed.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Arguments of `oprun-lab chaos`.
#[derive(Debug, clap::Args)]
pub struct ChaosArgs {
    /// Commands in the workload (distinct command ids, the deliberately bad ones included).
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(500..))]
    pub commands: u64,

    /// Seed of the workload and the fault plan (random when absent; printed either way).
    #[arg(long)]
    pub seed: Option<u64>,

    /// Keep the database and the namespace afterwards (they are always kept when a check fails).
    #[arg(long)]
    pub keep: bool,

    /// Injections to leave out, comma-separated (all are on by default).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub without: Vec<Injection>,

    /// Seconds the rejecting executor queue stays bound (`reject-jobs`); runs whose job is
    /// refused longer than the service's retry bound are failed `dispatch.rejected`.
    #[arg(long, default_value_t = 30)]
    pub reject_jobs_secs: u64,

    /// Run on a three-node RabbitMQ cluster (the one `scripts/cluster up` started if it runs,
    /// else one of the run's own): the service gets every node's URL, and the broker fault is
    /// a SIGKILL of the node leading the commands queue (`broker_node_kills=` in the closing
    /// line) instead of an application restart.
    #[arg(long)]
    pub cluster: bool,

    /// Run on a PostgreSQL pair of the run's own under pg_auto_failover (a monitor, a primary
    /// and a synchronous standby): the service gets both hosts (`target_session_attrs=
    /// read-write`), and the database fault is two failovers — the primary SIGKILLed, the
    /// standby promoted, the killed node back as the standby, then the same to the new primary
    /// (`db_failovers=` and `max_unavailable_s=` in the closing line) — instead of a restart.
    #[arg(long, conflicts_with = "cluster")]
    pub db_failover: bool,

    /// With `--db-failover`: replicate asynchronously (both nodes out of the write quorum). The
    /// run may then lose what the primary committed and the standby had not received; it
    /// prints what it lost and exits 0 whatever the figures (the boundary, measured).
    #[arg(long, requires = "db_failover")]
    pub db_async: bool,
}

impl ChaosArgs {
    /// Runs the whole scenario; `Err` when any figure is not 0 or the run itself failed.
    pub async fn run(self, config: &Config, oprun: &OprunBinary) -> Result<(), LabError> {
        let started = Instant::now();
        let seed = self.seed.unwrap_or_else(rand::random);
        // The run breaks its own broker and database, never the machine's: dropped last, so
        // they are stopped and removed whatever happens below.
        let infra = if self.db_failover {
            eprintln!(
                "chaos: starting a private RabbitMQ node and a PostgreSQL pair under pg_auto_failover ({} replication)",
                if self.db_async { "asynchronous" } else { "synchronous" }
            );
            Arc::new(Infra::start_with_pair(self.db_async).await?)
        } else if self.cluster {
            eprintln!("chaos: a RabbitMQ cluster of three nodes and a private PostgreSQL cluster");
            Arc::new(Infra::start_cluster().await?)
        } else {
            eprintln!("chaos: starting a private RabbitMQ node and PostgreSQL cluster");
            Arc::new(Infra::start().await?)
        };
        let mut config = config.clone();
        config.amqp_url = infra.amqp_urls().into_iter().map(Into::into).collect();
        eprintln!(
            "chaos: broker {}",
            operation_runs::broker::connection::AmqpUrls::unchecked(&config.amqp_url)
        );
        config.database_url = infra.database_url("postgres").into();
        let config = &config;
        // The budget counts from here: starting the private services is not the run.
        let deadline = Instant::now() + BUDGET;
        let mut without = self.without.clone();
        if let Some(limit) = infra.max_message_size().await {
            if limit <= crate::chaos::plan::bad_messages::OVERSIZED_BYTES as u64
                && !without.contains(&Injection::Oversized)
            {
                eprintln!(
                    "chaos: the broker refuses messages over {limit} bytes: the oversized burst ({} bytes each) is left out",
                    crate::chaos::plan::bad_messages::OVERSIZED_BYTES
                );
                without.push(Injection::Oversized);
            }
        }
        let injections = Injections::without(&without);
        let mut rng = StdRng::seed_from_u64(seed);
        let workload = Workload::generate(self.commands, &injections, &mut rng);
        let plan = schedule::plan(
            &mut StdRng::seed_from_u64(seed ^ FAULT_SEED_SALT),
            &injections,
            infra.is_cluster(),
            infra.is_pair(),
        );
        eprintln!(
            "chaos: seed {seed} (rerun with --seed {seed}); {} commands: {} dispatches of {} identities, {} progress, {} bad; injections: {injections}",
            workload.command_count(),
            workload.dispatches.len(),
            workload.identities.len(),
            workload.runs.iter().map(|r| r.steps.len()).sum::<usize>(),
            workload.bad.len()
        );

        if let Some(Err(e)) = infra.heal_broker().await {
            return Err(LabError::Invalid(format!(
                "chaos: cannot repair RabbitMQ: {e}"
            )));
        }
        let mut sandbox = Sandbox::create(
            config,
            Purpose::Chaos,
            &crate::chaos::plan::model::scopes(),
            &[SUBSCRIBER_QUEUE, EXECUTOR_QUEUE],
        )
        .await?;
        sandbox.own_queue(crate::chaos::faults::executors::REJECTING_QUEUE);
        eprintln!("chaos: sandbox: {}", sandbox.describe());
        let run_retention = injections
            .has(Injection::Retention)
            .then_some(crate::chaos::faults::retention::RUN_RETENTION);
        let serve = ServeOptions {
            extra_args: if injections.has(Injection::Retention) {
                crate::chaos::faults::retention::serve_args()
            } else {
                Vec::new()
            },
            // The viewers read through the viewer; the operator acts through its API.
            api_secret: (injections.has(Injection::Viewers)
                || injections.has(Injection::OperatorActions))
            .then(operation_runs::http::auth::random_secret),
        };
        let setting = Setting {
            injections: &injections,
            reject_for: Duration::from_secs(self.reject_jobs_secs),
            deadline,
            run_retention,
            viewer: None,
        };
        let outcome = execute(
            config, oprun, &sandbox, &workload, plan, &infra, &mut rng, setting, serve,
        )
        .await;
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(e) => {
                eprintln!("chaos: kept for inspection: {}", sandbox.describe());
                return Err(e);
            }
        };
        let mut figures = Figures {
            commands: workload.command_count(),
            kills: outcome.kills,
            broker_restarts: outcome.broker_restarts,
            db_restarts: outcome.db_restarts,
            broker_node_kills: infra.is_cluster().then_some(outcome.broker_node_kills),
            cancelled: outcome.findings.actions.cancelled,
            retried: outcome.findings.actions.retried,
            failed_by_operator: outcome.findings.actions.failed_by_operator,
            lost: outcome.findings.lost,
            double_applied: outcome.findings.double_applied,
            duplicate_runs: outcome.findings.duplicate_runs,
            missing_events: outcome.findings.missing_events,
            duplicate_deliveries: outcome.duplicates.unexcused,
            viewer_gaps: outcome.viewers.as_ref().map_or(0, |r| r.figure()),
            seconds: 0,
            db_failovers: outcome
                .db_failovers
                .map(|(k, unavailable)| (k, unavailable.as_secs_f64())),
        };
        if run_retention.is_some() {
            eprintln!(
                "chaos: retention: {} run(s) deleted (checked on their latest event), {} event(s) pruned after they were received",
                outcome.findings.deleted_runs, outcome.findings.pruned_events
            );
        }
        if injections.has(Injection::OperatorActions) {
            let a = outcome.findings.actions;
            eprintln!(
                "chaos: operator: asked {} cancel(s), {} fail(s), {} retry(ies) ({} asked twice); {} run(s) cancelled, {} failed by the operator, {} retried into one run each",
                a.asked_cancel,
                a.asked_fail,
                a.asked_retry,
                a.asked_retry_twice,
                a.cancelled,
                a.failed_by_operator,
                a.retried
            );
        }
        eprintln!(
            "chaos: {} event id(s) received more than once, {} not explained by a SIGKILL or a restart; largest event {} bytes",
            outcome.duplicates.received_more_than_once,
            outcome.duplicates.unexcused,
            outcome.largest_event
        );
        if !outcome.duplicates.examples.is_empty() {
            eprintln!(
                "chaos: finding: {} event id(s) delivered more than once without a disruption to explain it, e.g. {}",
                outcome.duplicates.unexcused,
                outcome.duplicates.examples.join("; ")
            );
        }
        for line in &outcome.findings.notes {
            eprintln!("chaos: finding: {line}");
        }
        for line in &outcome.problems {
            eprintln!("chaos: problem: {line}");
        }
        let clean = figures.all_zero() && outcome.problems.is_empty();
        if clean && !self.keep {
            let description = sandbox.describe();
            if let Err(e) = sandbox.remove().await {
                eprintln!("chaos: could not remove {description}: {e}");
            }
        } else {
            eprintln!("chaos: kept for inspection: {}", sandbox.describe());
        }
        figures.seconds = started.elapsed().as_secs();
        println!("{figures}");
        if self.db_async {
            // The boundary run: what asynchronous replication lost is the measurement.
            eprintln!(
                "chaos: asynchronous replication: lost={} double_applied={} duplicate_runs={} missing_events={} duplicate_deliveries={} across {} failover(s) (allowed: the run measures the boundary)",
                figures.lost,
                figures.double_applied,
                figures.duplicate_runs,
                figures.missing_events,
                figures.duplicate_deliveries,
                figures.db_failovers.map_or(0, |(k, _)| k)
            );
            return Ok(());
        }
        if clean {
            Ok(())
        } else {
            Err(LabError::Invalid(format!(
                "chaos: the run failed ({} finding(s), {} problem(s)); see the lines above",
                outcome.findings.notes.len(),
                outcome.problems.len()
            )))
        }
    }
}

/// What a run found and did.
struct Outcome {
    findings: Findings,
    /// Duplicate deliveries and how many no disruption explains.
    duplicates: deliveries::Duplicates,
    /// The largest event body the subscriber received.
    largest_event: u64,
    /// Failures outside the figures: faults not injected, instances that died on their own,
    /// a quiescence that never came, the broker or the database not back.
    problems: Vec<String>,
    kills: u32,
    broker_restarts: u32,
    db_restarts: u32,
    broker_node_kills: u32,
    /// `--db-failover`: the failovers that completed, and the longest time without a writable
    /// server.
    db_failovers: Option<(u32, Duration)>,
    /// What the viewers' readers saw (`viewers`).
    viewers: Option<crate::chaos::faults::viewers::ViewerReport>,
}

/// Starts the service, the subscriber and the faults, drives the workload and checks; stops
/// everything it started and brings the broker and the database back, whatever happened.
#[allow(clippy::too_many_arguments)]
async fn execute(
    config: &Config,
    oprun: &OprunBinary,
    sandbox: &Sandbox,
    workload: &Workload,
    plan: Vec<schedule::PlannedFault>,
    infra: &Arc<Infra>,
    rng: &mut StdRng,
    mut setting: Setting<'_>,
    serve: ServeOptions,
) -> Result<Outcome, LabError> {
    let secret = serve.api_secret.clone();
    let fleet = Fleet::new(
        oprun.path().to_path_buf(),
        &sandbox.database_url,
        &config.amqp_url_list(),
        sandbox.topology.namespace(),
        &sandbox.log_dir,
        serve,
    )?;
    setting.viewer = fleet.viewer_addr().zip(secret.as_deref());
    let fleet = Arc::new(tokio::sync::Mutex::new(fleet));
    let subscriber = Subscriber::spawn(
        &config.amqp_url_list(),
        &sandbox.queue(SUBSCRIBER_QUEUE.suffix),
    );
    let stop = CancellationToken::new();
    let progress = Progress::new(workload.good_count());
    let poller = progress.spawn_poller(sandbox.pool.clone(), stop.clone());
    let unavailable = infra
        .is_pair()
        .then(|| db_probe::spawn(sandbox.database_url.clone(), stop.clone()));
    let fault_log = Arc::new(Mutex::new(FaultLog::default()));
    let planned_kills = plan.iter().filter(|p| p.fault.is_kill()).count() as u32;
    let plan_len = plan.len();
    // From here on SIGINT and SIGTERM end the run through the clean-up below.
    let interrupted = CancellationToken::new();
    tokio::spawn(operation_runs::cli::cancel_on_signal(interrupted.clone()));

    let started_primary = fleet.lock().await.start(Role::Primary);
    let result = match started_primary {
        Err(e) => Err(LabError::Io(e)),
        Ok(_) => {
            let target = Target {
                amqp_url: config.amqp_url_list(),
                topology: sandbox.topology.clone(),
            };
            let injector = tokio::spawn(schedule::inject(
                plan,
                fleet.clone(),
                infra.clone(),
                target,
                progress.clone(),
                fault_log.clone(),
                stop.clone(),
            ));
            let reporter = tokio::spawn(report(
                progress.clone(),
                subscriber.received.clone(),
                fleet.clone(),
                stop.clone(),
            ));
            let mut run = Run::new(
                config,
                sandbox,
                workload,
                &progress,
                &subscriber.received,
                setting,
            );
            // Background injections (idle connections held) count as faults still to come.
            let faults_left = || {
                let log = fault_log.lock().expect("not poisoned");
                plan_len - log.injected + log.background
            };
            let result = tokio::select! {
                r = run.drive(rng, faults_left) => r,
                _ = interrupted.cancelled() => Err(LabError::Invalid("chaos: interrupted".into())),
            };
            let result = result.map(|f| (f, run.take_problems(), run.take_viewer_report()));
            // The injector finishes the fault in hand (a restart is completed, not abandoned).
            stop.cancel();
            let _ = injector.await;
            let _ = reporter.await;
            result
        }
    };
    stop.cancel();
    let _ = poller.await;
    let mut fleet = fleet.lock().await;
    fleet.stop_all().await;
    let subscriber_arrivals = subscriber.received.clone();
    subscriber.stop().await;
    let restored = infra.ensure_up().await;
    // Leave the broker able to declare the service's queues, for whoever comes next.
    match infra.heal_broker().await {
        Some(Ok(true)) => eprintln!("chaos: RabbitMQ had lost rabbit_fifo_dlx_sup; restarted"),
        Some(Err(e)) => eprintln!(
            "chaos: RabbitMQ has lost rabbit_fifo_dlx_sup and could not be restarted: {e}"
        ),
        _ => {}
    }

    let (findings, mut problems, viewers) = result?;
    let log = std::mem::take(&mut *fault_log.lock().expect("not poisoned"));
    let duplicates = {
        let mut disruptions = log.disruptions.clone();
        let since = subscriber_arrivals
            .consuming_since
            .lock()
            .expect("not poisoned");
        deliveries::until_resubscribed(&mut disruptions, &since);
        let arrivals = subscriber_arrivals.arrivals.lock().expect("not poisoned");
        deliveries::attribute(&arrivals, &disruptions)
    };
    let largest_event = subscriber_arrivals
        .largest_body
        .load(std::sync::atomic::Ordering::Relaxed);
    problems.extend(log.problems);
    problems.extend(fleet.unexpected_exits.iter().cloned());
    problems.extend(findings.problems.iter().cloned());
    if let Err(e) = restored {
        problems.push(format!("the broker or the database is not back up: {e}"));
    }
    let broker_faults = if infra.is_cluster() {
        log.broker_node_kills
    } else {
        log.broker_restarts
    };
    let db_faults = if infra.is_pair() {
        (log.failovers.len() >= 2) as u32
    } else {
        log.db_restarts
    };
    if fleet.kills < planned_kills || broker_faults < 1 || db_faults < 1 {
        problems.push(format!(
            "fewer faults than planned: {} of {planned_kills} kills, {} broker restarts, {} broker node kills, {} database restarts, {} failovers",
            fleet.kills, log.broker_restarts, log.broker_node_kills, log.db_restarts, log.failovers.len()
        ));
    }
    for f in &log.failovers {
        eprintln!(
            "chaos: failover: {} SIGKILLed, {} promoted after {:.1} s, {} the standby again after {:.1} s",
            f.killed,
            f.promoted,
            f.to_new_primary.as_secs_f64(),
            f.killed,
            f.to_paired.as_secs_f64()
        );
    }
    let db_failovers = match unavailable {
        Some(probe) => {
            let longest = probe.await.unwrap_or_default();
            Some((log.failovers.len() as u32, longest))
        }
        None => None,
    };
    Ok(Outcome {
        findings,
        duplicates,
        largest_event,
        problems,
        kills: fleet.kills,
        broker_restarts: log.broker_restarts,
        db_restarts: log.db_restarts,
        broker_node_kills: log.broker_node_kills,
        db_failovers,
        viewers,
    })
}

/// Prints a progress line every [`REPORT_EVERY`] until `stop`.
async fn report(
    progress: Progress,
    received: Arc<Received>,
    fleet: Arc<tokio::sync::Mutex<Fleet>>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(REPORT_EVERY) => {}
            _ = stop.cancelled() => return,
        }
        let kills = fleet.lock().await.kills;
        eprintln!(
            "chaos: processed {} ({:.0}%), events received {}, kills {kills}",
            progress.processed(),
            progress.fraction() * 100.0,
            received.distinct()
        );
    }
}
