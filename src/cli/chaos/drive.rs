//! Driving the workload: phase 1 publishes the dispatches and waits for them, then resolves
//! each identity's run from the database (replies die with a killed service; the identity
//! hash does not); phase 2 publishes the runs' progress. Publishing is paced by the service's
//! progress. Then quiescence, and the checks.

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use rand::rngs::StdRng;
use tokio::time::Instant;

use super::check::{self, Findings};
use super::progress::Progress;
use super::publisher::ReliablePublisher;
use super::quiescence::{self, BrokerProbe, Expected};
use super::sandbox::Sandbox;
use super::subscriber::Received;
use super::workload::{Message, Workload};
use crate::cli::CliError;
use crate::config::Config;

/// The dispatches get at most this long to be processed before phase 2 starts regardless.
const DISPATCH_WAIT: Duration = Duration::from_secs(240);
/// Reads after the deadline still get this long (the database may be coming back).
const READ_GRACE: Duration = Duration::from_secs(60);
/// Fresh commands published but not yet processed, at most: enough to keep the service busy,
/// few enough that faults strike while commands are still being published.
const AHEAD: u64 = 2000;
/// Messages published between two looks at the service's progress.
const CHUNK: usize = 250;

/// Each identity's run, as found after the dispatches.
#[derive(Debug, Default)]
struct Resolved {
    /// `run_ids[i]`: identity `i`'s run (the oldest, if there are several).
    run_ids: Vec<Option<i64>>,
    /// Identities with more than one run.
    duplicates: HashSet<usize>,
}

/// The state of one run while it drives the workload.
pub struct Run<'a> {
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

impl<'a> Run<'a> {
    /// A run of `workload` in `sandbox`, to be done by `deadline`.
    pub fn new(
        config: &'a Config,
        sandbox: &'a Sandbox,
        workload: &'a Workload,
        progress: &'a Progress,
        received: &'a Received,
        deadline: Instant,
    ) -> Self {
        Self {
            config,
            sandbox,
            workload,
            progress,
            received,
            deadline,
            sent_fresh: 0,
            problems: Vec::new(),
        }
    }

    /// What went wrong without stopping the run (a wait that timed out).
    pub fn take_problems(&mut self) -> Vec<String> {
        std::mem::take(&mut self.problems)
    }

    /// Both phases, quiescence and the checks.
    pub async fn drive(
        &mut self,
        rng: &mut StdRng,
        faults_left: impl Fn() -> usize,
    ) -> Result<Findings, CliError> {
        let mut publisher = ReliablePublisher::new(
            &self.config.amqp_url,
            self.sandbox.topology.commands_exchange(),
        );
        let resolved = self.dispatch_phase(&mut publisher, rng).await?;
        self.progress_phase(&mut publisher, &resolved, rng).await?;
        eprintln!(
            "chaos: all messages published ({} publisher reconnects); waiting for quiescence",
            publisher.reconnects
        );
        publisher.close().await;
        self.settle_and_check(&resolved, faults_left).await
    }

    /// Phase 1: publishes every dispatch, waits until the inbox has them, and finds each
    /// identity's run by its identity hash.
    async fn dispatch_phase(
        &mut self,
        publisher: &mut ReliablePublisher,
        rng: &mut StdRng,
    ) -> Result<Resolved, CliError> {
        let messages = self.workload.dispatch_messages(rng);
        eprintln!("chaos: phase 1: {} dispatch messages", messages.len());
        self.publish(publisher, &messages).await?;
        let wanted = self.workload.dispatches.len() as i64;
        let until = self.deadline.min(Instant::now() + DISPATCH_WAIT);
        if !self.wait_for_dispatches(wanted, until).await {
            self.problems.push(format!(
                "not every dispatch was processed within {DISPATCH_WAIT:?}"
            ));
        }
        let pool = &self.sandbox.pool;
        let by_identity = read_with_retry("reading the runs", self.deadline, || {
            check::runs_by_identity(pool)
        })
        .await?;
        let mut resolved = Resolved::default();
        for (i, identity) in self.workload.identities.iter().enumerate() {
            let key = (
                identity.workspace_id,
                identity.tenant_id,
                identity.hash.as_str().to_owned(),
            );
            let runs = by_identity.get(&key).map(Vec::as_slice).unwrap_or_default();
            if runs.len() > 1 {
                resolved.duplicates.insert(i);
            }
            resolved.run_ids.push(runs.first().copied());
        }
        eprintln!(
            "chaos: phase 1 done: {} runs for {} identities ({} with more than one run)",
            by_identity.values().map(Vec::len).sum::<usize>(),
            self.workload.identities.len(),
            resolved.duplicates.len()
        );
        Ok(resolved)
    }

    /// Phase 2: publishes the progress of every run that has an id.
    async fn progress_phase(
        &mut self,
        publisher: &mut ReliablePublisher,
        resolved: &Resolved,
        rng: &mut StdRng,
    ) -> Result<(), CliError> {
        let messages = self.workload.progress_messages(&resolved.run_ids, rng);
        eprintln!("chaos: phase 2: {} progress messages", messages.len());
        self.publish(publisher, &messages).await
    }

    /// Waits for quiescence (up to the deadline), then reads the dead letters and checks.
    async fn settle_and_check(
        &mut self,
        resolved: &Resolved,
        faults_left: impl Fn() -> usize,
    ) -> Result<Findings, CliError> {
        let pool = &self.sandbox.pool;
        let published_steps: usize = self
            .workload
            .runs
            .iter()
            .zip(&resolved.run_ids)
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
                &resolved.run_ids,
                &resolved.duplicates,
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
