//! Driving the workload: phase 1 publishes the dispatches (with the `reject-jobs` injection, an
//! executor queue refuses one type's jobs meanwhile, see [`crate::chaos::faults::executors`]) and waits for
//! them and for every job to be handed off, then resolves each identity's run from the database
//! (replies die with a killed service; the identity hash does not) and notes the runs the
//! service already completed itself; phase 2 publishes the progress of the others (late
//! progress [`LATE_DELAY`] after each run's completion, the completions of the runs an operator
//! retries at the end and the retries once they are applied, and with the `viewers` injection
//! readers of a large run meanwhile, see [`crate::chaos::faults::viewers`]). Publishing is paced by the
//! service's progress. Then quiescence, and the checks.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use rand::rngs::StdRng;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::chaos::faults::executors::{self, ClosedByService};
use crate::chaos::faults::operator_api::OperatorApi;
use crate::chaos::faults::progress::Progress;
use crate::chaos::faults::retention::LATE_DELAY;
use crate::chaos::faults::viewers::{self, ViewerReport, ViewerTarget};
use crate::chaos::plan::injections::{Injection, Injections};
use crate::chaos::plan::model::{LateGroup, Message, RetryGroup, HELD_FOREVER_TYPE};
use crate::chaos::plan::workload::Workload;
use crate::chaos::verification::check::{self, AfterDispatch, Findings};
use crate::chaos::verification::quiescence::{self, BrokerProbe, Expected};
use crate::chaos::verification::subscriber::Received;
use crate::publisher::{self, Reconnecting};
use crate::sandbox::Sandbox;
use crate::LabError;
use operation_runs::config::Config;
use operation_runs::domain::idempotency_key;

/// The dispatches get at most this long to be processed before phase 2 starts regardless.
const DISPATCH_WAIT: Duration = Duration::from_secs(240);
/// Reads after the deadline still get this long (the database may be coming back).
const READ_GRACE: Duration = Duration::from_secs(60);
/// Every job gets at most this long, after the rejecting queue is gone, to be handed off (the
/// service retries refused ones with backoff).
const HAND_OFF_WAIT: Duration = Duration::from_secs(120);
/// Fresh commands published but not yet processed, at most: enough to keep the service busy,
/// few enough that faults strike while commands are still being published.
const AHEAD: u64 = 2000;
/// Messages published between two looks at the service's progress.
const CHUNK: usize = 250;
/// Time between two looks for completed runs whose retries wait, once every chunk is out.
const RETRY_LOOK: Duration = Duration::from_millis(200);

/// What the flags set beyond the workload.
#[derive(Debug, Clone, Copy)]
pub struct Setting<'a> {
    /// The injections that are on.
    pub injections: &'a Injections,
    /// How long the rejecting executor queue stays (with `reject-jobs`).
    pub reject_for: Duration,
    /// Everything, checks included, must be done by then.
    pub deadline: Instant,
    /// The service's `--run-retention`, when it deletes completed runs (`retention`).
    pub run_retention: Option<Duration>,
    /// The primary's run viewer and the secret of its tokens (`viewers`, `operator-actions`).
    pub viewer: Option<(SocketAddr, &'a str)>,
}

/// Each identity's run, as found after the dispatches.
#[derive(Debug, Default)]
struct Resolved {
    /// `run_ids[i]`: identity `i`'s run (the oldest, if there are several).
    run_ids: Vec<Option<i64>>,
    /// Identities with more than one run.
    duplicates: HashSet<usize>,
    /// Identities whose run the service completed itself before phase 2.
    closed: HashMap<usize, ClosedByService>,
}

impl Resolved {
    fn after_dispatch(&self) -> AfterDispatch<'_> {
        AfterDispatch {
            run_ids: &self.run_ids,
            duplicates: &self.duplicates,
            closed: &self.closed,
        }
    }
}

/// The state of one run while it drives the workload.
pub struct Run<'a> {
    config: &'a Config,
    sandbox: &'a Sandbox,
    workload: &'a Workload,
    progress: &'a Progress,
    received: &'a Received,
    deadline: Instant,
    injections: &'a Injections,
    /// How long the rejecting executor queue stays.
    reject_for: Duration,
    /// Fresh (first-time) command ids published so far, both phases.
    sent_fresh: u64,
    /// What went wrong without stopping the run.
    problems: Vec<String>,
    run_retention: Option<Duration>,
    viewer: Option<(SocketAddr, &'a str)>,
    /// The viewers' readers while they read, and what ends them.
    viewers: Option<(CancellationToken, JoinHandle<ViewerReport>)>,
    /// What the viewers' readers saw, once they are done.
    viewer_report: Option<ViewerReport>,
    /// The operator's actions over the API (`operator-actions`).
    operator_api: Option<OperatorApi>,
}

impl Drop for Run<'_> {
    fn drop(&mut self) {
        if let Some((stop, _)) = &self.viewers {
            stop.cancel();
        }
    }
}

impl<'a> Run<'a> {
    /// A run of `workload` in `sandbox`, as `setting` says.
    pub fn new(
        config: &'a Config,
        sandbox: &'a Sandbox,
        workload: &'a Workload,
        progress: &'a Progress,
        received: &'a Received,
        setting: Setting<'a>,
    ) -> Self {
        Self {
            config,
            sandbox,
            workload,
            progress,
            received,
            deadline: setting.deadline,
            injections: setting.injections,
            reject_for: setting.reject_for,
            sent_fresh: 0,
            problems: Vec::new(),
            run_retention: setting.run_retention,
            viewer: setting.viewer,
            viewers: None,
            viewer_report: None,
            operator_api: None,
        }
    }

    /// What the viewers' readers saw (with the `viewers` injection, once the run is checked).
    pub fn take_viewer_report(&mut self) -> Option<ViewerReport> {
        self.viewer_report.take()
    }

    /// What went wrong without stopping the run (a wait that timed out, an action the API
    /// answered as no correct service would).
    pub fn take_problems(&mut self) -> Vec<String> {
        if let Some(api) = &mut self.operator_api {
            self.problems.append(&mut api.problems);
        }
        std::mem::take(&mut self.problems)
    }

    /// Both phases, quiescence and the checks.
    pub async fn drive(
        &mut self,
        rng: &mut StdRng,
        faults_left: impl Fn() -> usize,
    ) -> Result<Findings, LabError> {
        let mut publisher = Reconnecting::new(
            &self.config.amqp_url_list(),
            self.sandbox.topology.commands_exchange(),
            "chaos",
        );
        if let (Some((addr, secret)), true) =
            (self.viewer, self.injections.has(Injection::OperatorActions))
        {
            let api = OperatorApi::new(addr, secret)
                .map_err(|e| LabError::Invalid(format!("chaos: no HTTP client: {e}")))?;
            self.operator_api = Some(api);
        }
        let resolved = self.dispatch_phase(&mut publisher, rng).await?;
        self.progress_phase(&mut publisher, &resolved, rng).await?;
        eprintln!(
            "chaos: all messages published ({} publisher reconnects); waiting for quiescence",
            publisher.reconnects
        );
        if let Some(api) = &self.operator_api {
            eprintln!(
                "chaos: operator API: {} actions answered, {} requests sent again after a lost answer",
                api.answered, api.resent
            );
        }
        publisher.close().await;
        self.settle_and_check(&resolved, faults_left).await
    }

    /// Phase 1: publishes every dispatch, waits until the inbox has them, and finds each
    /// identity's run by its identity hash.
    async fn dispatch_phase(
        &mut self,
        publisher: &mut Reconnecting,
        rng: &mut StdRng,
    ) -> Result<Resolved, LabError> {
        let messages = self.workload.dispatch_messages(rng);
        eprintln!("chaos: phase 1: {} dispatch messages", messages.len());
        let rejecting = self.injections.has(Injection::RejectJobs);
        let amqp_url = &self.config.amqp_url_list();
        let rejecting_queue = &self
            .sandbox
            .queue(crate::chaos::faults::executors::REJECTING_QUEUE);
        let reject_until = Instant::now() + self.reject_for;
        if rejecting {
            executors::bind_rejecting_queue(amqp_url, &self.sandbox.topology, rejecting_queue)
                .await?;
            eprintln!(
                "chaos: {rejecting_queue} refuses {} jobs for {} s",
                crate::chaos::plan::model::REJECTED_TYPE,
                self.reject_for.as_secs()
            );
        }
        self.publish(publisher, &messages).await?;
        let wanted = self.workload.dispatches.len() as i64;
        let until = self.deadline.min(Instant::now() + DISPATCH_WAIT);
        if !self.wait_for_dispatches(wanted, until).await {
            self.problems.push(format!(
                "not every dispatch was processed within {DISPATCH_WAIT:?}"
            ));
        }
        if rejecting {
            tokio::time::sleep_until(reject_until.min(self.deadline)).await;
            executors::delete_rejecting_queue(amqp_url, rejecting_queue, self.deadline).await?;
            eprintln!("chaos: {rejecting_queue} deleted");
        }
        let pool = &self.sandbox.pool;
        let until = self.deadline.min(Instant::now() + HAND_OFF_WAIT);
        if !executors::wait_for_hand_offs(pool, until).await {
            self.problems.push(format!(
                "jobs were still waiting to be handed off {HAND_OFF_WAIT:?} after the dispatches (and the rejecting queue) were done"
            ));
        }
        let mut by_identity = read_with_retry("reading the runs", self.deadline, || {
            check::runs_by_identity(pool)
        })
        .await?;
        // A run the service completed itself may be deleted by run retention already: its
        // latest event still tells its identity and how it ended.
        let rows: HashSet<i64> = by_identity.values().flatten().copied().collect();
        let deleted = check::deleted_runs(self.received, &rows);
        for (run_id, key, _) in &deleted {
            let runs = by_identity.entry(key.clone()).or_default();
            runs.push(*run_id);
            runs.sort_unstable();
        }
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
        let mut completed = read_with_retry("reading the completed runs", self.deadline, || {
            executors::completed_runs(pool)
        })
        .await?;
        completed.extend(
            deleted
                .into_iter()
                .filter_map(|(run_id, _, closed)| Some((run_id, closed?))),
        );
        for (i, run_id) in resolved.run_ids.iter().enumerate() {
            if let Some(closed) = run_id.and_then(|id| completed.get(&id)) {
                resolved.closed.insert(i, closed.clone());
            }
        }
        if !resolved.closed.is_empty() || rejecting {
            let mut codes: HashMap<String, usize> = HashMap::new();
            for closed in resolved.closed.values() {
                *codes.entry(closed.codes.join("+")).or_default() += 1;
            }
            let of_type = self
                .workload
                .identities
                .iter()
                .filter(|i| i.run_type == crate::chaos::plan::model::REJECTED_TYPE)
                .count();
            eprintln!(
                "chaos: {} runs completed by the service before any progress ({codes:?}); {of_type} runs of {} in all; they get no progress",
                resolved.closed.len(),
                crate::chaos::plan::model::REJECTED_TYPE
            );
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
        publisher: &mut Reconnecting,
        resolved: &Resolved,
        rng: &mut StdRng,
    ) -> Result<(), LabError> {
        let open: Vec<Option<i64>> = resolved
            .run_ids
            .iter()
            .enumerate()
            .map(|(i, id)| id.filter(|_| !resolved.closed.contains_key(&i)))
            .collect();
        let messages = self.workload.progress_messages(&open, rng);
        let late = self.workload.late_messages(&open, rng);
        let retried = self.workload.retry_groups(&open, rng);
        eprintln!(
            "chaos: phase 2: {} progress messages, {} late ones for {} completed runs, and {} retries of {} runs once they completed at the end",
            messages.len(),
            late.iter().map(|g| g.messages.len()).sum::<usize>(),
            late.len(),
            retried.iter().map(|g| g.retries.len()).sum::<usize>(),
            retried.len()
        );
        self.start_viewers(&open);
        self.publish_with_late(publisher, &messages, late, retried)
            .await
    }

    /// With the `viewers` injection, starts the readers of the large run (the flooded one, else
    /// the one held for ever with the most steps: run retention never deletes it) if it has an
    /// id.
    fn start_viewers(&mut self, open: &[Option<i64>]) {
        let Some((addr, secret)) = self
            .viewer
            .filter(|_| self.injections.has(Injection::Viewers))
        else {
            return;
        };
        let runs = &self.workload.runs;
        let identities = &self.workload.identities;
        let large = runs.iter().position(|r| r.flood).or_else(|| {
            (0..runs.len())
                .filter(|i| open[*i].is_some() && identities[*i].run_type == HELD_FOREVER_TYPE)
                .max_by_key(|i| runs[*i].steps.len())
        });
        let Some((i, run_id)) = large.and_then(|i| open[i].map(|id| (i, id))) else {
            self.problems
                .push("viewers: the large run has no id; nothing was read".into());
            return;
        };
        let identity = &self.workload.identities[i];
        let target = match ViewerTarget::new(
            format!("http://{addr}"),
            secret,
            run_id,
            identity.workspace_id,
            identity.tenant_id,
        ) {
            Ok(target) => target,
            Err(e) => {
                self.problems
                    .push(format!("viewers: cannot mint a token: {e}"));
                return;
            }
        };
        eprintln!(
            "chaos: viewers: {} pagers and {} live streams on run {run_id} ({} steps)",
            viewers::PAGERS,
            viewers::STREAMS,
            runs[i].steps.len()
        );
        let stop = CancellationToken::new();
        let task = tokio::spawn(viewers::read(
            target,
            self.sandbox.pool.clone(),
            stop.clone(),
        ));
        self.viewers = Some((stop, task));
    }

    /// Stops the viewers' readers, if they read, and keeps their report.
    async fn stop_viewers(&mut self) {
        let Some((stop, task)) = self.viewers.take() else {
            return;
        };
        stop.cancel();
        match task.await {
            Ok(report) => {
                eprintln!("chaos: {report}");
                if !report.examples.is_empty() {
                    eprintln!("chaos: viewers: e.g. {}", report.examples.join("; "));
                }
                self.problems.extend(report.problems());
                self.viewer_report = Some(report);
            }
            Err(e) => self
                .problems
                .push(format!("viewers: the readers failed: {e}")),
        }
    }

    /// Publishes `messages` as [`Self::publish`] does, each late group [`LATE_DELAY`] after
    /// the chunk with its run's completion was published (the rest at the end, when due), the
    /// retried runs' tails after the last chunk, and each run's retries once its completion is
    /// in the inbox (looked at until all are out or the deadline).
    async fn publish_with_late(
        &mut self,
        publisher: &mut Reconnecting,
        messages: &[Message],
        late: Vec<LateGroup>,
        retried: Vec<RetryGroup>,
    ) -> Result<(), LabError> {
        let mut waiting: HashMap<String, Vec<Message>> =
            late.into_iter().map(|g| (g.after, g.messages)).collect();
        let mut armed: HashMap<String, Vec<Message>> = HashMap::new();
        let mut due: VecDeque<(Instant, Vec<Message>)> = VecDeque::new();
        for chunk in messages.chunks(CHUNK) {
            self.publish_ready(publisher, &mut due, &mut armed).await?;
            self.publish(publisher, chunk).await?;
            let at = Instant::now() + LATE_DELAY;
            for message in chunk.iter().filter(|m| m.fresh) {
                if let Some(group) = waiting.remove(&message.message_id) {
                    due.push_back((at, group));
                }
            }
        }
        // A completion never published (none should be) lets its late group go last.
        let at = Instant::now() + LATE_DELAY;
        due.extend(waiting.into_values().map(|group| (at, group)));
        let tails: Vec<Message> = retried.iter().flat_map(|g| g.tail.clone()).collect();
        self.publish(publisher, &tails).await?;
        armed.extend(retried.into_iter().map(|g| (g.after, g.retries)));
        while !due.is_empty() || !armed.is_empty() {
            let now = Instant::now();
            if now >= self.deadline {
                self.problems.push(format!(
                    "{} run(s) not seen completed by the deadline; their retries were not sent",
                    armed.len()
                ));
                break;
            }
            self.publish_ready(publisher, &mut due, &mut armed).await?;
            let next = due
                .front()
                .map_or(now + RETRY_LOOK, |(at, _)| (*at).min(now + RETRY_LOOK));
            tokio::time::sleep_until(next.min(self.deadline)).await;
        }
        Ok(())
    }

    /// Publishes the late groups that are `due` by now and the `armed` groups whose
    /// completion is applied.
    async fn publish_ready(
        &mut self,
        publisher: &mut Reconnecting,
        due: &mut VecDeque<(Instant, Vec<Message>)>,
        armed: &mut HashMap<String, Vec<Message>>,
    ) -> Result<(), LabError> {
        let now = Instant::now();
        let mut ready = Vec::new();
        while due.front().is_some_and(|(at, _)| *at <= now) {
            ready.extend(due.pop_front().expect("just looked").1);
        }
        ready.extend(self.take_applied(armed).await);
        if ready.is_empty() {
            return Ok(());
        }
        self.publish(publisher, &ready).await
    }

    /// Removes from `armed` the groups whose key (a completion's command id) is in the inbox,
    /// and returns their messages; none while the database does not answer. A completion sent
    /// over the API (an operator's fail) is kept under its key in the workspace's namespace.
    async fn take_applied(&self, armed: &mut HashMap<String, Vec<Message>>) -> Vec<Message> {
        if armed.is_empty() {
            return Vec::new();
        }
        let keys: Vec<String> = armed.keys().cloned().collect();
        let applied: Vec<String> = sqlx::query_scalar(
            "SELECT command_id FROM processed_commands
             WHERE command_id = ANY($1)
                OR (command_id LIKE 'api:%' AND substring(command_id FROM '^api:[0-9]+:(.*)$') = ANY($1))",
        )
        .bind(&keys)
        .fetch_all(&self.sandbox.pool)
        .await
        .unwrap_or_default();
        applied
            .iter()
            .map(|id| idempotency_key::key_of(id).unwrap_or(id))
            .filter_map(|id| armed.remove(id))
            .flatten()
            .collect()
    }

    /// Waits for quiescence (up to the deadline), then reads the dead letters and checks.
    async fn settle_and_check(
        &mut self,
        resolved: &Resolved,
        faults_left: impl Fn() -> usize,
    ) -> Result<Findings, LabError> {
        let pool = &self.sandbox.pool;
        let after = resolved.after_dispatch();
        let published_steps: usize = self
            .workload
            .runs
            .iter()
            .enumerate()
            .filter(|(i, _)| after.progress_sent(*i))
            .map(|(_, r)| r.steps.len())
            .sum();
        let expected = Expected {
            inbox: (self.workload.dispatches.len() + published_steps) as u64,
            dead_letters: self
                .workload
                .bad
                .iter()
                .map(|b| b.command_id.clone())
                .collect(),
            subscriber_queue: self
                .sandbox
                .queue(crate::chaos::verification::subscriber::SUBSCRIBER_QUEUE.suffix),
        };
        let mut probe =
            BrokerProbe::new(&self.config.amqp_url_list(), self.sandbox.topology.clone());
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
        self.stop_viewers().await;
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
        let run_retention = self.run_retention;
        read_with_retry("checking", read_until, || {
            check::evaluate(
                pool,
                self.workload,
                after,
                &dead_letters,
                self.received,
                run_retention,
            )
        })
        .await
    }

    /// Publishes `messages` in chunks, never more than [`AHEAD`] fresh commands ahead of the
    /// service.
    async fn publish(
        &mut self,
        publisher: &mut Reconnecting,
        messages: &[Message],
    ) -> Result<(), LabError> {
        for chunk in messages.chunks(CHUNK) {
            if !self
                .progress
                .wait_for_room(self.sent_fresh, AHEAD, self.deadline)
                .await
            {
                return Err(LabError::Invalid(format!(
                    "chaos: the service stopped making progress ({} of {} fresh commands processed at the deadline)",
                    self.progress.processed(),
                    self.sent_fresh
                )));
            }
            let (api, broker): (Vec<&Message>, Vec<&Message>) =
                chunk.iter().partition(|m| m.api.is_some());
            publisher
                .publish_all(
                    &broker,
                    |m| publisher::Message {
                        routing_key: m.routing_key,
                        body: &m.body,
                        message_id: &m.message_id,
                    },
                    self.deadline,
                )
                .await
                .map_err(LabError::Invalid)?;
            for message in api {
                let (Some(client), Some(action)) = (&mut self.operator_api, &message.api) else {
                    return Err(LabError::Invalid(
                        "chaos: an action planned over the API, and no API to send it to".into(),
                    ));
                };
                client.send(message, action, self.deadline).await;
            }
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
async fn read_with_retry<T, F, Fut>(what: &str, until: Instant, mut read: F) -> Result<T, LabError>
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
