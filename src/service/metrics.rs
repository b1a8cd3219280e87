//! Service metrics on the maintained `prometheus-client` crate (OpenMetrics text exposition):
//! commands by kind and result, runs by type and outcome, how long runs wait to start and take
//! to complete by type, relay and broker health, and gauges polled from the broker and the
//! database (DLQ depth, active runs and the longest-idle running run per type).
//!
//! Counters are registered without their `_total` suffix; the encoder adds it, so the samples
//! keep the names docs/operations.md, the dashboards and the alerts use (`oprun_commands_total{…}`).
//! Every label's values come from closed sets (kinds, results, reason codes, catalog types,
//! outcomes, relay kinds), so the number of series is bounded.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds (seconds) of the processing latency histogram.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
];

/// Upper bounds (seconds) of the dispatch-to-start histogram: from an executor that picks a job
/// up at once to one an hour behind.
const DISPATCH_TO_START_BUCKETS: [f64; 14] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0,
];

/// Upper bounds (seconds) of the run duration histogram: the catalog's expected durations are 5
/// to 60 minutes; the reaper fails a run idle for 3 × that.
const RUN_DURATION_BUCKETS: [f64; 14] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0,
    28800.0,
];

/// The label set of a sample without labels: a [`Family`] keyed on it has no series until its
/// one value is first set, so a gauge read from outside the process is absent, not 0, until the
/// first read succeeds.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Unlabelled;

impl EncodeLabelSet for Unlabelled {
    fn encode(&self, _encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        Ok(())
    }
}

/// A histogram family's constructor.
type HistogramOf = fn() -> Histogram;
/// Upper bounds (seconds) of the stage histograms: finer than the processing latency's, from a
/// quarter of a millisecond, so that the median of a stage of a few milliseconds reads.
const STAGE_BUCKETS: [f64; 22] = [
    0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
    0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0,
];

/// Commit times remembered for the relay's pick-up stage: more than the transactions of the
/// relay's longest wait.
const COMMIT_CLOCK_CAPACITY: usize = 4096;

/// Where a command's time goes in the service, stage by stage (`oprun_stage_seconds{stage}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Per command: from the consumer taking its delivery to its batch closing.
    BatchWindow,
    /// Per command: from its lane's start (decoded) to its `COMMIT` being sent: locks, reads,
    /// the effect and the writes.
    Transaction,
    /// Per command: its lane's `COMMIT`.
    Commit,
    /// Per command: from its batch applied to its replies and dead letters confirmed (the ack
    /// follows at once).
    Settle,
    /// Per event: from its transaction's commit to the relay reading it (events committed by
    /// this process only).
    RelayPickup,
    /// Per event: from the relay reading it to the broker confirming its round.
    RelayPublish,
}

impl Stage {
    /// Every stage, in the order of a command's path.
    pub const ALL: [Stage; 6] = [
        Stage::BatchWindow,
        Stage::Transaction,
        Stage::Commit,
        Stage::Settle,
        Stage::RelayPickup,
        Stage::RelayPublish,
    ];

    /// The `stage` label.
    pub fn name(self) -> &'static str {
        match self {
            Stage::BatchWindow => "batch_window",
            Stage::Transaction => "transaction",
            Stage::Commit => "commit",
            Stage::Settle => "settle",
            Stage::RelayPickup => "relay_pickup",
            Stage::RelayPublish => "relay_publish",
        }
    }
}

/// A `stage` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    stage: String,
}

fn stage_histogram() -> Histogram {
    Histogram::new(STAGE_BUCKETS)
}

/// When this process's recent transactions committed, keyed by their clock (`now()`, which
/// their events carry as `created_at`), so that the relay can time its pick-up of each event.
#[derive(Debug, Default)]
struct CommitClock {
    order: VecDeque<i64>,
    at: HashMap<i64, Instant>,
}

impl CommitClock {
    fn insert(&mut self, clock: DateTime<Utc>, at: Instant) {
        let key = clock.timestamp_micros();
        if self.at.insert(key, at).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > COMMIT_CLOCK_CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.at.remove(&old);
            }
        }
    }

    fn get(&self, clock: DateTime<Utc>) -> Option<Instant> {
        self.at.get(&clock.timestamp_micros()).copied()
    }
}

/// Labels of `oprun_commands_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    kind: String,
    result: String,
}

/// A `kind` label (relay settlements and nacks).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

/// A run `type` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabel {
    r#type: String,
}

/// Labels of `oprun_runs_completed_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CompletedLabels {
    r#type: String,
    outcome: String,
}

/// Labels of `oprun_commands_refused_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    kind: String,
    code: String,
}

/// The metrics of one service process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    commands: Family<CommandLabels, Counter>,
    runs_created: Family<TypeLabel, Counter>,
    runs_deduplicated: Family<TypeLabel, Counter>,
    runs_completed: Family<CompletedLabels, Counter>,
    commands_refused: Family<RefusedLabels, Counter>,
    refusals_answered: Family<RefusedLabels, Counter>,
    relay_published: Family<KindLabel, Counter>,
    relay_nacked: Family<KindLabel, Counter>,
    relay_orphans: Counter,
    replies_refused: Counter,
    dead_letter_retries: Counter,
    reaped_runs: Counter,
    reconnects: Counter,
    outbox_backlog: Gauge<f64, AtomicU64>,
    outbox_oldest_age: Gauge<f64, AtomicU64>,
    consumer_running: Gauge,
    dlq_depth: Family<Unlabelled, Gauge>,
    active_runs: Family<TypeLabel, Gauge>,
    idle_ratio: Family<TypeLabel, Gauge<f64, AtomicU64>>,
    processing: Histogram,
    dispatch_to_start: Family<TypeLabel, Histogram, HistogramOf>,
    run_duration: Family<TypeLabel, Histogram, HistogramOf>,
    stages: Vec<Histogram>,
    commits: Mutex<CommitClock>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let commands = Family::<CommandLabels, Counter>::default();
        let runs_created = Family::<TypeLabel, Counter>::default();
        let runs_deduplicated = Family::<TypeLabel, Counter>::default();
        let runs_completed = Family::<CompletedLabels, Counter>::default();
        let commands_refused = Family::<RefusedLabels, Counter>::default();
        let refusals_answered = Family::<RefusedLabels, Counter>::default();
        let relay_published = Family::<KindLabel, Counter>::default();
        let relay_nacked = Family::<KindLabel, Counter>::default();
        let relay_orphans = Counter::default();
        let replies_refused = Counter::default();
        let dead_letter_retries = Counter::default();
        let reaped_runs = Counter::default();
        let reconnects = Counter::default();
        let outbox_backlog = Gauge::<f64, AtomicU64>::default();
        let outbox_oldest_age = Gauge::<f64, AtomicU64>::default();
        let consumer_running = Gauge::default();
        let dlq_depth = Family::<Unlabelled, Gauge>::default();
        let active_runs = Family::<TypeLabel, Gauge>::default();
        let idle_ratio = Family::<TypeLabel, Gauge<f64, AtomicU64>>::default();
        let processing = Histogram::new(LATENCY_BUCKETS);
        let dispatch_to_start: Family<TypeLabel, Histogram, HistogramOf> =
            Family::new_with_constructor(|| Histogram::new(DISPATCH_TO_START_BUCKETS));
        let run_duration: Family<TypeLabel, Histogram, HistogramOf> =
            Family::new_with_constructor(|| Histogram::new(RUN_DURATION_BUCKETS));
        let stage_family = Family::<StageLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            stage_histogram,
        );
        // Created up front: every stage is exposed from the start, and observing needs no lookup.
        let stages = Stage::ALL
            .iter()
            .map(|s| {
                stage_family
                    .get_or_create(&StageLabel {
                        stage: s.name().to_owned(),
                    })
                    .clone()
            })
            .collect();
        // Help texts without a final period: the encoder adds one.
        registry.register(
            "oprun_commands",
            "Commands consumed, by kind and result (applied, deduplicated, stale, unchanged, already_processed, refused:<code> (answered to the producer), dead_lettered:<code>)",
            commands.clone(),
        );
        registry.register(
            "oprun_runs_created",
            "Runs created by dispatches, by type",
            runs_created.clone(),
        );
        registry.register(
            "oprun_runs_deduplicated",
            "Dispatches answered with an existing run of their identity, by type",
            runs_deduplicated.clone(),
        );
        registry.register(
            "oprun_runs_completed",
            "Runs completed, by type and outcome (succeeded, partially_succeeded, failed, blocked, cancelled), reaped and unroutable runs included",
            runs_completed.clone(),
        );
        registry.register(
            "oprun_commands_refused",
            "Commands dead-lettered, by kind and reason code",
            commands_refused.clone(),
        );
        registry.register(
            "oprun_refusals_answered",
            "Commands refused and answered to their producer (reply confirmed), not dead-lettered, by kind and reason code",
            refusals_answered.clone(),
        );
        registry.register(
            "oprun_relay_published",
            "Messages the outbox relay settled, by kind (event, job, unroutable, rejected)",
            relay_published.clone(),
        );
        registry.register(
            "oprun_relay_nacked",
            "Publishes of the outbox relay the broker nacked, by kind (event, job)",
            relay_nacked.clone(),
        );
        registry.register(
            "oprun_relay_orphan_positions",
            "Event outbox positions the relay skipped because their event was gone (deleted unpublished: lost)",
            relay_orphans.clone(),
        );
        registry.register(
            "oprun_replies_refused",
            "Replies not sent because reply_to is neither direct reply-to nor a reply queue",
            replies_refused.clone(),
        );
        registry.register(
            "oprun_dead_letter_retries",
            "Times a batch waited because a dead letter or reply could not be published",
            dead_letter_retries.clone(),
        );
        registry.register(
            "oprun_reaped_runs",
            "Runs completed as failed by the stale-run reaper",
            reaped_runs.clone(),
        );
        registry.register(
            "oprun_reconnects",
            "Reconnections to the broker",
            reconnects.clone(),
        );
        registry.register(
            "oprun_outbox_backlog",
            "Events recorded but not yet published",
            outbox_backlog.clone(),
        );
        registry.register(
            "oprun_outbox_oldest_age_seconds",
            "Age of the oldest unpublished event: the relay lag",
            outbox_oldest_age.clone(),
        );
        registry.register(
            "oprun_consumer_running",
            "1 while the command consumer is running",
            consumer_running.clone(),
        );
        registry.register(
            "oprun_dlq_depth",
            "Dead letters held: messages in N.commands.dlq plus those oprun dlq moved into the dead_letters table (polled; absent until first read)",
            dlq_depth.clone(),
        );
        registry.register(
            "oprun_active_runs",
            "Queued or running runs, by type (polled; every catalog type, 0 included)",
            active_runs.clone(),
        );
        registry.register(
            "oprun_run_idle_ratio_max",
            "Longest time without a change of a running run, over its type's expected duration, by type (polled; 0 with no running run; the reaper fails runs past the stale factor)",
            idle_ratio.clone(),
        );
        registry.register(
            "oprun_command_processing_seconds",
            "Time from receiving a batch to settling it, per command",
            processing.clone(),
        );
        registry.register(
            "oprun_run_dispatch_to_start_seconds",
            "Time from a run's dispatch to its start, by type (observed when its started event is published)",
            dispatch_to_start.clone(),
        );
        registry.register(
            "oprun_run_duration_seconds",
            "Time from a run's start to its completion, by type (observed when its completed event is published; runs completed without starting are not observed)",
            run_duration.clone(),
        );
        registry.register(
            "oprun_stage_seconds",
            "Where a command's time goes, by stage (batch_window, transaction, commit, settle: per command; relay_pickup, relay_publish: per event)",
            stage_family,
        );
        Self {
            registry,
            commands,
            runs_created,
            runs_deduplicated,
            runs_completed,
            commands_refused,
            refusals_answered,
            relay_published,
            relay_nacked,
            relay_orphans,
            replies_refused,
            dead_letter_retries,
            reaped_runs,
            reconnects,
            outbox_backlog,
            outbox_oldest_age,
            consumer_running,
            dlq_depth,
            active_runs,
            idle_ratio,
            processing,
            dispatch_to_start,
            run_duration,
            stages,
            commits: Mutex::default(),
        }
    }
}

impl Metrics {
    /// Counts one command of `kind` with `result` (applied, deduplicated, stale, …, or
    /// `dead_lettered:<code>`).
    pub fn command(&self, kind: &str, result: &str) {
        self.commands
            .get_or_create(&CommandLabels {
                kind: kind.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    /// Counts a refused (dead-lettered) command of `kind` by reason `code`.
    pub fn refused(&self, kind: &str, code: &str) {
        self.commands_refused
            .get_or_create(&RefusedLabels {
                kind: kind.to_owned(),
                code: code.to_owned(),
            })
            .inc();
    }

    /// Counts a refused command of `kind` whose refusal (reason `code`) was answered to its
    /// producer instead of dead-lettered.
    pub fn refusal_answered(&self, kind: &str, code: &str) {
        self.refusals_answered
            .get_or_create(&RefusedLabels {
                kind: kind.to_owned(),
                code: code.to_owned(),
            })
            .inc();
    }

    /// Counts a run of `run_type` created by a dispatch.
    pub fn run_created(&self, run_type: &str) {
        self.runs_created.get_or_create(&type_label(run_type)).inc();
    }

    /// Counts a dispatch of `run_type` answered with an existing run.
    pub fn run_deduplicated(&self, run_type: &str) {
        self.runs_deduplicated
            .get_or_create(&type_label(run_type))
            .inc();
    }

    /// Counts a run of `run_type` completed with `outcome`.
    pub fn run_completed(&self, run_type: &str, outcome: &str) {
        self.runs_completed
            .get_or_create(&CompletedLabels {
                r#type: run_type.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Counts `n` messages the relay settled as `kind` (event, job, unroutable, rejected).
    pub fn relay_published(&self, kind: &str, n: u64) {
        self.relay_published
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc_by(n);
    }

    /// Counts `n` relay publishes of `kind` (event, job) the broker nacked.
    pub fn relay_nacked(&self, kind: &str, n: u64) {
        self.relay_nacked
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc_by(n);
    }

    /// Counts a reply not sent because its `reply_to` is not allowed.
    pub fn reply_refused(&self) {
        self.replies_refused.inc();
    }

    /// Counts `n` outbox positions the relay skipped because their event was gone.
    pub fn relay_orphans(&self, n: u64) {
        self.relay_orphans.inc_by(n);
    }

    /// Counts a batch waiting for a dead letter or reply to be stored.
    pub fn dead_letter_retry(&self) {
        self.dead_letter_retries.inc();
    }

    /// Counts `n` runs the reaper completed.
    pub fn reaped(&self, n: u64) {
        self.reaped_runs.inc_by(n);
    }

    /// Counts a reconnection to the broker.
    pub fn reconnected(&self) {
        self.reconnects.inc();
    }

    /// Sets the outbox gauges: unpublished events and the age of the oldest (relay lag).
    pub fn outbox(&self, backlog: u64, oldest_age_seconds: f64) {
        self.outbox_backlog.set(backlog as f64);
        self.outbox_oldest_age.set(oldest_age_seconds);
    }

    /// Sets whether the command consumer runs.
    pub fn consumer_running(&self, running: bool) {
        self.consumer_running.set(i64::from(running));
    }

    /// Sets the dead letters held (the queue's depth plus the stored letters). Until the first
    /// call the sample is absent: a 0 before the first read would look, to the dead-letter
    /// alert, like letters arriving at every restart.
    pub fn dlq_depth(&self, letters: i64) {
        self.dlq_depth.get_or_create(&Unlabelled).set(letters);
    }

    /// Sets the active runs per type; `counts` should name every catalog type (0 included) so
    /// a type whose runs all completed drops to 0 rather than keeping its last value.
    pub fn active_runs<'a>(&self, counts: impl IntoIterator<Item = (&'a str, i64)>) {
        for (run_type, n) in counts {
            self.active_runs.get_or_create(&type_label(run_type)).set(n);
        }
    }

    /// Sets, per type, the longest idle time of its running runs over the type's expected
    /// duration; `ratios` should name every catalog type (0 for none running), as for
    /// [`Self::active_runs`].
    pub fn idle_ratios<'a>(&self, ratios: impl IntoIterator<Item = (&'a str, f64)>) {
        for (run_type, ratio) in ratios {
            self.idle_ratio
                .get_or_create(&type_label(run_type))
                .set(ratio);
        }
    }

    /// Records how long a run of `run_type` waited from its dispatch to its start.
    pub fn observe_dispatch_to_start(&self, run_type: &str, waited: Duration) {
        self.dispatch_to_start
            .get_or_create(&type_label(run_type))
            .observe(waited.as_secs_f64());
    }

    /// Records how long a run of `run_type` took from its start to its completion.
    pub fn observe_run_duration(&self, run_type: &str, took: Duration) {
        self.run_duration
            .get_or_create(&type_label(run_type))
            .observe(took.as_secs_f64());
    }

    /// Records one processing latency.
    pub fn observe_latency(&self, latency: Duration) {
        self.processing.observe(latency.as_secs_f64());
    }

    /// Records `n` commands (or events) that spent `time` in `stage`.
    pub fn stage(&self, stage: Stage, time: Duration, n: usize) {
        let histogram = &self.stages[stage as usize];
        for _ in 0..n {
            histogram.observe(time.as_secs_f64());
        }
    }

    /// Remembers that the transaction whose clock (`now()`) was `clock` committed at `at`.
    pub fn committed(&self, clock: DateTime<Utc>, at: Instant) {
        self.commits.lock().expect("not poisoned").insert(clock, at);
    }

    /// Records the relay's pick-up of an event recorded at `clock` (its transaction's `now()`)
    /// and read at `read_at`, when this process committed it recently.
    pub fn picked_up(&self, clock: DateTime<Utc>, read_at: Instant) {
        let committed = self.commits.lock().expect("not poisoned").get(clock);
        if let Some(committed) = committed {
            self.stage(
                Stage::RelayPickup,
                read_at.saturating_duration_since(committed),
                1,
            );
        }
    }

    /// The value of a counter or gauge sample, read back from the exposition: `name` as
    /// exposed (`oprun_commands_total`) and `labels` as written there (`kind="dispatch",…`,
    /// empty for none); 0 when absent (tests).
    pub fn counter(&self, name: &str, labels: &str) -> u64 {
        let sample = if labels.is_empty() {
            format!("{name} ")
        } else {
            format!("{name}{{{labels}}} ")
        };
        self.render()
            .lines()
            .filter_map(|line| line.strip_prefix(&sample))
            .filter_map(|v| v.parse::<f64>().ok())
            .map(|v| v as u64)
            .sum()
    }

    /// Everything, in OpenMetrics text exposition format ([`CONTENT_TYPE`]; Prometheus' text
    /// parser reads it too).
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

fn type_label(run_type: &str) -> TypeLabel {
    TypeLabel {
        r#type: run_type.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_render_in_prometheus_format() {
        let m = Metrics::default();
        m.command("dispatch", "applied");
        m.command("dispatch", "applied");
        m.reconnected();
        m.observe_latency(Duration::from_millis(3));
        let text = m.render();
        for line in [
            "oprun_commands_total{kind=\"dispatch\",result=\"applied\"} 2",
            "oprun_reconnects_total 1",
            "oprun_command_processing_seconds_bucket{le=\"0.005\"} 1",
            "oprun_command_processing_seconds_bucket{le=\"0.002\"} 0",
            "oprun_command_processing_seconds_count 1",
            "oprun_consumer_running 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in {text}");
        }
        assert_eq!(
            m.counter(
                "oprun_commands_total",
                "kind=\"dispatch\",result=\"applied\""
            ),
            2
        );
        assert_eq!(m.counter("oprun_reconnects_total", ""), 1);
    }

    #[test]
    fn stages_render_as_one_histogram_each_and_the_pickup_follows_its_commit() {
        let m = Metrics::default();
        let t0 = Instant::now();
        let clock = Utc::now();
        m.stage(Stage::Commit, Duration::from_micros(1500), 3);
        m.committed(clock, t0);
        m.picked_up(clock, t0 + Duration::from_millis(4));
        // Committed by another process (not remembered): nothing to time.
        m.picked_up(clock + chrono::Duration::seconds(1), t0);
        let text = m.render();
        for line in [
            "oprun_stage_seconds_bucket{le=\"0.001\",stage=\"commit\"} 0",
            "oprun_stage_seconds_bucket{le=\"0.002\",stage=\"commit\"} 3",
            "oprun_stage_seconds_count{stage=\"relay_pickup\"} 1",
            "oprun_stage_seconds_bucket{le=\"0.005\",stage=\"relay_pickup\"} 1",
            "oprun_stage_seconds_count{stage=\"batch_window\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in {text}");
        }
    }

    #[test]
    fn run_metrics_carry_type_outcome_and_code() {
        let m = Metrics::default();
        m.run_created("policy.sync");
        m.run_deduplicated("policy.sync");
        m.run_completed("policy.sync", "failed");
        m.refused("dispatch", "unknown_type");
        m.refusal_answered("dispatch", "unknown_tenant");
        m.dlq_depth(3);
        m.active_runs([("policy.sync", 2), ("inventory.sync", 0)]);
        m.outbox(4, 1.5);
        let text = m.render();
        for line in [
            "oprun_runs_created_total{type=\"policy.sync\"} 1",
            "oprun_runs_deduplicated_total{type=\"policy.sync\"} 1",
            "oprun_runs_completed_total{type=\"policy.sync\",outcome=\"failed\"} 1",
            "oprun_commands_refused_total{kind=\"dispatch\",code=\"unknown_type\"} 1",
            "oprun_refusals_answered_total{kind=\"dispatch\",code=\"unknown_tenant\"} 1",
            "oprun_dlq_depth 3",
            "oprun_active_runs{type=\"policy.sync\"} 2",
            "oprun_active_runs{type=\"inventory.sync\"} 0",
            "oprun_outbox_backlog 4.0",
            "oprun_outbox_oldest_age_seconds 1.5",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in {text}");
        }
    }

    #[test]
    fn the_dlq_depth_is_absent_until_first_read_so_a_restart_is_no_jump_from_zero() {
        let m = Metrics::default();
        let sample = |text: &str| text.lines().any(|l| l.starts_with("oprun_dlq_depth "));
        assert!(!sample(&m.render()), "no sample before the first read");
        m.dlq_depth(0);
        assert!(m.render().lines().any(|l| l == "oprun_dlq_depth 0"));
    }

    #[test]
    fn idle_ratios_and_run_timings_are_by_type() {
        let m = Metrics::default();
        m.idle_ratios([("policy.sync", 1.25), ("inventory.sync", 0.0)]);
        m.observe_dispatch_to_start("policy.sync", Duration::from_millis(300));
        m.observe_run_duration("policy.sync", Duration::from_secs(200));
        m.observe_run_duration("policy.sync", Duration::from_secs(4000));
        let text = m.render();
        for line in [
            "oprun_run_idle_ratio_max{type=\"policy.sync\"} 1.25",
            "oprun_run_idle_ratio_max{type=\"inventory.sync\"} 0.0",
            "oprun_run_dispatch_to_start_seconds_bucket{le=\"0.25\",type=\"policy.sync\"} 0",
            "oprun_run_dispatch_to_start_seconds_bucket{le=\"0.5\",type=\"policy.sync\"} 1",
            "oprun_run_duration_seconds_bucket{le=\"300.0\",type=\"policy.sync\"} 1",
            "oprun_run_duration_seconds_bucket{le=\"7200.0\",type=\"policy.sync\"} 2",
            "oprun_run_duration_seconds_count{type=\"policy.sync\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in {text}");
        }
    }
}
