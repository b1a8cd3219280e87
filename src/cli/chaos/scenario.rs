//! The chaos run, start to end: set up the sandbox, start the service and the subscriber,
//! publish the dispatches, resolve the runs, publish their progress, while the faults strike;
//! then wait for quiescence, check, print the closing line, and clean up (or keep everything
//! for inspection when a check failed or `--keep` asks).

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::check::{self, Findings};
use super::faults::{self, FaultLog, Infra};
use super::fleet::{Fleet, Role};
use super::progress::Progress;
use super::publisher::ReliablePublisher;
use super::quiescence::{self, BrokerProbe, Expected};
use super::sandbox::Sandbox;
use super::subscriber::{Received, Subscriber};
use super::workload::{Message, Workload};
use crate::cli::CliError;
use crate::config::Config;

/// Everything, checks included, must be done by then: CI allows ten minutes.
const BUDGET: Duration = Duration::from_secs(540);
/// The dispatches get at most this long to be processed before phase 2 starts regardless.
const DISPATCH_WAIT: Duration = Duration::from_secs(240);
/// Reads after the deadline still get this long (the database may be coming back).
const READ_GRACE: Duration = Duration::from_secs(60);
/// Fresh commands published but not yet processed, at most: enough to keep the service busy,
/// few enough that faults strike while commands are still being published.
const AHEAD: u64 = 2000;
/// Messages published between two looks at the service's progress.
const CHUNK: usize = 250;
/// The fault plan's seed is the workload's, salted, so each can change without moving the other.
const FAULT_SEED_SALT: u64 = 0x0063_6861_6f73;
/// How often a progress line is printed.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Arguments of `oprun chaos`.
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
}

/// The figures of the closing line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Figures {
    /// Distinct commands in the workload.
    pub commands: u64,
    /// SIGKILLs sent to service instances.
    pub kills: u32,
    /// RabbitMQ restarts.
    pub broker_restarts: u32,
    /// PostgreSQL restarts.
    pub db_restarts: u32,
    /// See [`Findings`].
    pub lost: u64,
    /// See [`Findings`].
    pub double_applied: u64,
    /// See [`Findings`].
    pub duplicate_runs: u64,
    /// See [`Findings`].
    pub missing_events: u64,
    /// Wall time of the run.
    pub seconds: u64,
}

impl Figures {
    /// True when nothing was lost, applied twice, duplicated or missed.
    pub fn all_zero(&self) -> bool {
        self.lost == 0
            && self.double_applied == 0
            && self.duplicate_runs == 0
            && self.missing_events == 0
    }
}

impl fmt::Display for Figures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "chaos: commands={} kills={} broker_restarts={} db_restarts={} lost={} double_applied={} duplicate_runs={} missing_events={} seconds={}",
            self.commands,
            self.kills,
            self.broker_restarts,
            self.db_restarts,
            self.lost,
            self.double_applied,
            self.duplicate_runs,
            self.missing_events,
            self.seconds
        )
    }
}

impl ChaosArgs {
    /// Runs the whole scenario; `Err` when any figure is not 0 or the run itself failed.
    pub async fn run(self, config: &Config) -> Result<(), CliError> {
        let started = Instant::now();
        let deadline = started + BUDGET;
        let seed = self.seed.unwrap_or_else(rand::random);
        let mut rng = StdRng::seed_from_u64(seed);
        let workload = Workload::generate(self.commands, &mut rng);
        let plan = faults::plan(&mut StdRng::seed_from_u64(seed ^ FAULT_SEED_SALT));
        eprintln!(
            "chaos: seed {seed} (rerun with --seed {seed}); {} commands: {} dispatches of {} identities, {} progress, {} bad",
            workload.command_count(),
            workload.dispatches.len(),
            workload.identities.len(),
            workload.runs.iter().map(|r| r.steps.len()).sum::<usize>(),
            workload.bad.len()
        );

        // Dropped last: whatever happens below, the broker and the database end up running.
        let infra = Arc::new(Infra::detect());
        let sandbox = Sandbox::create(config).await?;
        eprintln!("chaos: sandbox: {}", sandbox.describe());
        let outcome = execute(
            config, &sandbox, &workload, plan, &infra, &mut rng, deadline,
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
            lost: outcome.findings.lost,
            double_applied: outcome.findings.double_applied,
            duplicate_runs: outcome.findings.duplicate_runs,
            missing_events: outcome.findings.missing_events,
            seconds: 0,
        };
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
        if clean {
            Ok(())
        } else {
            Err(CliError::Invalid(format!(
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
    /// Failures outside the figures: faults not injected, instances that died on their own,
    /// a quiescence that never came, the broker or the database not back.
    problems: Vec<String>,
    kills: u32,
    broker_restarts: u32,
    db_restarts: u32,
}

/// Starts the service, the subscriber and the faults, drives the workload and checks; stops
/// everything it started and brings the broker and the database back, whatever happened.
async fn execute(
    config: &Config,
    sandbox: &Sandbox,
    workload: &Workload,
    plan: Vec<faults::PlannedFault>,
    infra: &Arc<Infra>,
    rng: &mut StdRng,
    deadline: Instant,
) -> Result<Outcome, CliError> {
    let fleet = Arc::new(tokio::sync::Mutex::new(Fleet::new(
        std::env::current_exe()?,
        &sandbox.database_url,
        &config.amqp_url,
        sandbox.topology.namespace(),
        &sandbox.log_dir,
    )));
    let subscriber = Subscriber::spawn(&config.amqp_url, &sandbox.subscriber_queue);
    let stop = CancellationToken::new();
    let progress = Progress::new(workload.good_count());
    let poller = progress.spawn_poller(sandbox.pool.clone(), stop.clone());
    let fault_log = Arc::new(Mutex::new(FaultLog::default()));
    let planned_kills = plan.iter().filter(|p| p.fault.is_kill()).count() as u32;
    let plan_len = plan.len();
    // From here on SIGINT and SIGTERM end the run through the clean-up below.
    let interrupted = CancellationToken::new();
    tokio::spawn(crate::cli::cancel_on_signal(interrupted.clone()));

    let started_primary = fleet.lock().await.start(Role::Primary);
    let result = match started_primary {
        Err(e) => Err(CliError::Io(e)),
        Ok(_) => {
            let injector = tokio::spawn(faults::inject(
                plan,
                fleet.clone(),
                infra.clone(),
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
            let mut run = Run {
                config,
                sandbox,
                workload,
                progress: &progress,
                received: &subscriber.received,
                deadline,
                sent_fresh: 0,
                problems: Vec::new(),
            };
            let faults_left = || plan_len - fault_log.lock().expect("not poisoned").injected;
            let result = tokio::select! {
                r = run.drive(rng, faults_left) => r,
                _ = interrupted.cancelled() => Err(CliError::Invalid("chaos: interrupted".into())),
            };
            let result = result.map(|f| (f, std::mem::take(&mut run.problems)));
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
    subscriber.stop().await;
    let restored = infra.ensure_up().await;

    let (findings, mut problems) = result?;
    let log = std::mem::take(&mut *fault_log.lock().expect("not poisoned"));
    problems.extend(log.problems);
    problems.extend(fleet.unexpected_exits.iter().cloned());
    problems.extend(findings.problems.iter().cloned());
    if let Err(e) = restored {
        problems.push(format!("the broker or the database is not back up: {e}"));
    }
    if fleet.kills < planned_kills || log.broker_restarts < 1 || log.db_restarts < 1 {
        problems.push(format!(
            "fewer faults than planned: {} of {planned_kills} kills, {} broker and {} database restarts",
            fleet.kills, log.broker_restarts, log.db_restarts
        ));
    }
    Ok(Outcome {
        findings,
        problems,
        kills: fleet.kills,
        broker_restarts: log.broker_restarts,
        db_restarts: log.db_restarts,
    })
}

/// The state of one run while it drives the workload.
struct Run<'a> {
    config: &'a Config,
    sandbox: &'a Sandbox,
    workload: &'a Workload,
    progress: &'a Progress,
    received: &'a Received,
    deadline: Instant,
    /// Fresh (first-time) command ids published so far, both phases.
    sent_fresh: u64,
    /// What went wrong without stopping the run.
    problems: Vec<String>,
}

impl Run<'_> {
    /// Both phases, quiescence and the checks.
    async fn drive(
        &mut self,
        rng: &mut StdRng,
        faults_left: impl Fn() -> usize,
    ) -> Result<Findings, CliError> {
        let pool = &self.sandbox.pool;
        let mut publisher = ReliablePublisher::new(
            &self.config.amqp_url,
            self.sandbox.topology.commands_exchange(),
        );

        let dispatches = self.workload.dispatch_messages(rng);
        eprintln!("chaos: phase 1: {} dispatch messages", dispatches.len());
        self.publish(&mut publisher, &dispatches).await?;
        let wanted = self.workload.dispatches.len() as i64;
        let until = self.deadline.min(Instant::now() + DISPATCH_WAIT);
        if !self.wait_for_dispatches(wanted, until).await {
            self.problems.push(format!(
                "not every dispatch was processed within {DISPATCH_WAIT:?}"
            ));
        }
        let by_identity = read_with_retry("reading the runs", self.deadline, || {
            check::runs_by_identity(pool)
        })
        .await?;
        let mut duplicates_after_dispatch = std::collections::HashSet::new();
        let run_ids: Vec<Option<i64>> = self
            .workload
            .identities
            .iter()
            .enumerate()
            .map(|(i, identity)| {
                let key = (
                    identity.workspace_id,
                    identity.tenant_id,
                    identity.hash.as_str().to_owned(),
                );
                let runs = by_identity.get(&key).map(Vec::as_slice).unwrap_or_default();
                if runs.len() > 1 {
                    duplicates_after_dispatch.insert(i);
                }
                runs.first().copied()
            })
            .collect();
        eprintln!(
            "chaos: phase 1 done: {} runs for {} identities ({} with more than one run)",
            by_identity.values().map(Vec::len).sum::<usize>(),
            self.workload.identities.len(),
            duplicates_after_dispatch.len()
        );

        let progress_messages = self.workload.progress_messages(&run_ids, rng);
        eprintln!(
            "chaos: phase 2: {} progress messages",
            progress_messages.len()
        );
        self.publish(&mut publisher, &progress_messages).await?;
        publisher.close().await;
        eprintln!(
            "chaos: all {} messages published ({} publisher reconnects); waiting for quiescence",
            dispatches.len() + progress_messages.len(),
            publisher.reconnects
        );

        let published_steps: usize = self
            .workload
            .runs
            .iter()
            .zip(&run_ids)
            .filter(|(_, id)| id.is_some())
            .map(|(r, _)| r.steps.len())
            .sum();
        let expected = Expected {
            inbox: (self.workload.dispatches.len() + published_steps) as u64,
            dead_letters: self
                .workload
                .bad
                .iter()
                .map(|b| b.command_id.clone())
                .collect(),
        };
        let mut probe = BrokerProbe::new(&self.config.amqp_url, self.sandbox.topology.clone());
        let open = quiescence::wait(
            pool,
            &mut probe,
            &expected,
            self.received,
            faults_left,
            self.deadline,
        )
        .await;
        if !open.is_empty() {
            self.problems.push(format!(
                "no quiescence by the deadline: {}",
                open.join("; ")
            ));
        }
        eprintln!("chaos: checking");
        let read_until = self.deadline.max(Instant::now() + READ_GRACE);
        let dead_letters = loop {
            match probe.dead_letters().await {
                Ok(letters) => break letters,
                Err(e) if Instant::now() < read_until => {
                    eprintln!("chaos: reading the dead letters: {e}; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        probe.close().await;
        read_with_retry("checking", read_until, || {
            check::evaluate(
                pool,
                self.workload,
                &run_ids,
                &duplicates_after_dispatch,
                &dead_letters,
                self.received,
            )
        })
        .await
    }

    /// Publishes `messages` in chunks, never more than [`AHEAD`] fresh commands ahead of the
    /// service.
    async fn publish(
        &mut self,
        publisher: &mut ReliablePublisher,
        messages: &[Message],
    ) -> Result<(), CliError> {
        for chunk in messages.chunks(CHUNK) {
            if !self
                .progress
                .wait_for_room(self.sent_fresh, AHEAD, self.deadline)
                .await
            {
                return Err(CliError::Invalid(format!(
                    "chaos: the service stopped making progress ({} of {} fresh commands processed at the deadline)",
                    self.progress.processed(),
                    self.sent_fresh
                )));
            }
            publisher
                .publish_all(chunk, self.deadline)
                .await
                .map_err(CliError::Invalid)?;
            self.sent_fresh += chunk.iter().filter(|m| m.fresh).count() as u64;
        }
        Ok(())
    }

    /// Waits until the inbox holds `wanted` dispatch ids; false at `until`.
    async fn wait_for_dispatches(&self, wanted: i64, until: Instant) -> bool {
        loop {
            let done: Result<i64, _> = sqlx::query_scalar(
                "SELECT count(*) FROM processed_commands WHERE kind = 'dispatch'",
            )
            .fetch_one(&self.sandbox.pool)
            .await;
            if done.is_ok_and(|n| n >= wanted) {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Retries a database read (the database may be restarting) until `until`.
async fn read_with_retry<T, F, Fut>(what: &str, until: Instant, mut read: F) -> Result<T, CliError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    loop {
        match read().await {
            Ok(value) => return Ok(value),
            Err(e) if Instant::now() < until => {
                eprintln!("chaos: {what}: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
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
