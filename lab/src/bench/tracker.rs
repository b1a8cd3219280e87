//! Bookkeeping of one workload: which command caused which event, its latency, and when every
//! command is accounted for. Pure (instants are passed in), so the rules are unit-tested.
//!
//! Latency of a command = arrival of the event it caused − its publish time. An event is matched
//! to its cause by run and type, not by sequence number, because with several instances one
//! run's commands may be applied out of order: `queued` ← the dispatch whose reply created the
//! run; `started` ← the start; `progressed` ← the run's oldest unmatched increment; `completed` ←
//! the completion. Deduplicated dispatches cause no event: their reply settles them, and they
//! are left out of the latencies.
//!
//! A run is done once its `completed` event and one `progressed` per increment have arrived
//! (every increment changes the counts, so each causes an event, even after completion). A
//! start applied after the completion is stale and causes none; it is counted as settled when
//! the run is done, and reported as `no_event`. In-order application (one instance) never
//! produces one.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use operation_runs::domain::RunEventType;

use super::prebuilt::{Step, INCREMENTS_PER_RUN};

/// What the service answered to a dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// A new run.
    Created(i64),
    /// The active run of the identity.
    Deduplicated(i64),
    /// A refusal (never expected: the workload is valid).
    Rejected,
}

/// What the driver should do after a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterReply {
    /// Publish the progress commands of plan `run` for this run id.
    DriveRun(i64),
    /// Nothing.
    Nothing,
}

#[derive(Debug, Default)]
struct RunTrack {
    dispatch_sent: Vec<Option<Instant>>,
    run_id: Option<i64>,
    start_sent: Option<Instant>,
    increments_sent: VecDeque<Instant>,
    complete_sent: Option<Instant>,
    progress_published: usize,
    progress_events: usize,
    progressed_seen: usize,
    completed_seen: bool,
    done: bool,
}

#[derive(Debug, Clone, Copy)]
enum Owner {
    /// The run a plan drives.
    Planned(usize),
    /// A run created by a duplicate after its identity's run completed (only with several
    /// instances): its `queued` event is awaited, nothing more.
    Extra,
}

/// Counters for the report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Commands published.
    pub published: u64,
    /// Dispatch replies received.
    pub replies: u64,
    /// Dispatches that created a run.
    pub created: u64,
    /// Dispatches answered with an active run.
    pub deduplicated: u64,
    /// Duplicates that created a second run (identity already completed).
    pub extra_runs: u64,
    /// Refused dispatches.
    pub rejected: u64,
    /// Events received for this workload's runs.
    pub events: u64,
    /// Progress commands that caused no event (stale).
    pub no_event: u64,
}

/// The bookkeeping of one workload.
#[derive(Debug)]
pub struct Tracker {
    runs: Vec<RunTrack>,
    owners: HashMap<i64, (Owner, Instant)>,
    early: HashMap<i64, Vec<(RunEventType, Instant, Option<Instant>)>>,
    dispatches_expected: u64,
    queued_awaited: u64,
    open_runs: usize,
    settled: u64,
    last_activity: Option<Instant>,
    latencies: Latencies,
    counts: Counts,
}

/// The latencies of the commands that caused an event, and, where the event said when its
/// transaction began, the two parts around that instant.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Latencies {
    /// Publish → event at the subscriber.
    pub end_to_end: Vec<Duration>,
    /// Publish → the start of the transaction that applied the command (the event's `time`).
    pub to_transaction: Vec<Duration>,
    /// The start of that transaction → event at the subscriber.
    pub from_transaction: Vec<Duration>,
}

impl Latencies {
    fn push(&mut self, sent: Instant, recorded: Option<Instant>, at: Instant) {
        self.end_to_end.push(at.saturating_duration_since(sent));
        if let Some(recorded) = recorded {
            self.to_transaction
                .push(recorded.saturating_duration_since(sent));
            self.from_transaction
                .push(at.saturating_duration_since(recorded));
        }
    }
}

impl Tracker {
    /// Tracks runs whose plans have these numbers of dispatches.
    pub fn new(dispatches_per_run: impl IntoIterator<Item = usize>) -> Self {
        let runs: Vec<RunTrack> = dispatches_per_run
            .into_iter()
            .map(|n| RunTrack {
                dispatch_sent: vec![None; n],
                ..Default::default()
            })
            .collect();
        Self {
            dispatches_expected: runs.iter().map(|r| r.dispatch_sent.len() as u64).sum(),
            open_runs: runs.len(),
            runs,
            owners: HashMap::new(),
            early: HashMap::new(),
            queued_awaited: 0,
            settled: 0,
            last_activity: None,
            latencies: Latencies::default(),
            counts: Counts::default(),
        }
    }

    /// Dispatch `j` of `run` was published at `at`.
    pub fn dispatched(&mut self, run: usize, j: usize, at: Instant) {
        self.runs[run].dispatch_sent[j] = Some(at);
        self.counts.published += 1;
    }

    /// A progress `step` of `run` was published at `at`.
    pub fn progressed(&mut self, run: usize, step: Step, at: Instant) {
        let r = &mut self.runs[run];
        match step {
            Step::Start => r.start_sent = Some(at),
            Step::Increment => r.increments_sent.push_back(at),
            Step::Complete => r.complete_sent = Some(at),
        }
        r.progress_published += 1;
        self.counts.published += 1;
    }

    /// The reply to dispatch `j` of `run` arrived at `at`.
    pub fn replied(&mut self, run: usize, j: usize, reply: Reply, at: Instant) -> AfterReply {
        self.counts.replies += 1;
        self.settle(1, at);
        let sent = self.runs[run].dispatch_sent[j].unwrap_or(at);
        match reply {
            Reply::Rejected => {
                self.counts.rejected += 1;
                // The run will never be driven: stop waiting for it.
                if self.runs[run].run_id.is_none() && j + 1 == self.runs[run].dispatch_sent.len() {
                    self.finish_run(run, at);
                }
                AfterReply::Nothing
            }
            Reply::Deduplicated(_) => {
                self.counts.deduplicated += 1;
                AfterReply::Nothing
            }
            Reply::Created(run_id) => {
                self.counts.created += 1;
                self.queued_awaited += 1;
                let owner = if self.runs[run].run_id.is_none() {
                    self.runs[run].run_id = Some(run_id);
                    Owner::Planned(run)
                } else {
                    self.counts.extra_runs += 1;
                    Owner::Extra
                };
                self.owners.insert(run_id, (owner, sent));
                for (kind, seen, recorded) in self.early.remove(&run_id).unwrap_or_default() {
                    self.event(run_id, kind, seen, recorded);
                }
                match owner {
                    Owner::Planned(_) => AfterReply::DriveRun(run_id),
                    Owner::Extra => AfterReply::Nothing,
                }
            }
        }
    }

    /// An event of `kind` about `run_id` arrived at `at`; its transaction began at `recorded`
    /// (the event's `time`), when known.
    pub fn event(
        &mut self,
        run_id: i64,
        kind: RunEventType,
        at: Instant,
        recorded: Option<Instant>,
    ) {
        let Some(&(owner, dispatch_sent)) = self.owners.get(&run_id) else {
            // A `queued` event can overtake the reply that tells us whose run it is.
            self.early
                .entry(run_id)
                .or_default()
                .push((kind, at, recorded));
            return;
        };
        self.counts.events += 1;
        self.last_activity = Some(self.last_activity.map_or(at, |l| l.max(at)));
        if kind == RunEventType::Queued {
            self.queued_awaited = self.queued_awaited.saturating_sub(1);
            self.latencies.push(dispatch_sent, recorded, at);
            return;
        }
        let Owner::Planned(run) = owner else { return };
        let r = &mut self.runs[run];
        let sent = match kind {
            RunEventType::Started => r.start_sent,
            RunEventType::Progressed => {
                r.progressed_seen += 1;
                r.increments_sent.pop_front()
            }
            RunEventType::Completed => {
                r.completed_seen = true;
                r.complete_sent
            }
            RunEventType::Queued => unreachable!("handled above"),
        };
        r.progress_events += 1;
        if let Some(sent) = sent {
            self.latencies.push(sent, recorded, at);
        }
        self.settle(1, at);
        let r = &self.runs[run];
        if !r.done && r.completed_seen && r.progressed_seen >= INCREMENTS_PER_RUN {
            self.finish_run(run, at);
        }
    }

    fn finish_run(&mut self, run: usize, at: Instant) {
        let r = &mut self.runs[run];
        r.done = true;
        let silent = r.progress_published.saturating_sub(r.progress_events) as u64;
        self.counts.no_event += silent;
        self.open_runs -= 1;
        self.settle(silent, at);
    }

    fn settle(&mut self, n: u64, at: Instant) {
        self.settled += n;
        self.last_activity = Some(self.last_activity.map_or(at, |l| l.max(at)));
    }

    /// Commands published and not yet accounted for.
    pub fn in_flight(&self) -> u64 {
        self.counts.published.saturating_sub(self.settled)
    }

    /// True when every dispatch is answered, every created run's `queued` event arrived and
    /// every planned run is done.
    pub fn finished(&self) -> bool {
        self.open_runs == 0
            && self.counts.replies == self.dispatches_expected
            && self.queued_awaited == 0
    }

    /// The last reply or event that settled something.
    pub fn last_activity(&self) -> Option<Instant> {
        self.last_activity
    }

    /// The counters.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// What is still missing, for a stall message.
    pub fn missing(&self) -> String {
        format!(
            "{} of {} dispatch replies, {} runs not completed, {} queued events awaited",
            self.dispatches_expected - self.counts.replies,
            self.dispatches_expected,
            self.open_runs,
            self.queued_awaited
        )
    }

    /// The latencies measured (one per command that caused an event).
    pub fn into_latencies(self) -> Latencies {
        self.latencies
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    fn publish_progress(t: &mut Tracker, run: usize, at: Instant) {
        t.progressed(run, Step::Start, at);
        for _ in 0..INCREMENTS_PER_RUN {
            t.progressed(run, Step::Increment, at);
        }
        t.progressed(run, Step::Complete, at);
    }

    #[test]
    fn an_in_order_run_has_one_latency_per_event_and_finishes() {
        let t0 = Instant::now();
        let mut t = Tracker::new([2]);
        t.dispatched(0, 0, t0);
        t.dispatched(0, 1, t0);
        assert_eq!(
            t.replied(0, 0, Reply::Created(7), ms(t0, 5)),
            AfterReply::DriveRun(7)
        );
        assert_eq!(
            t.replied(0, 1, Reply::Deduplicated(7), ms(t0, 5)),
            AfterReply::Nothing
        );
        t.event(7, RunEventType::Queued, ms(t0, 10), None);
        publish_progress(&mut t, 0, ms(t0, 10));
        t.event(7, RunEventType::Started, ms(t0, 20), None);
        for _ in 0..INCREMENTS_PER_RUN {
            assert!(!t.finished());
            t.event(7, RunEventType::Progressed, ms(t0, 20), None);
        }
        t.event(7, RunEventType::Completed, ms(t0, 30), None);
        assert!(t.finished());
        assert_eq!(t.in_flight(), 0);
        assert_eq!(t.counts().no_event, 0);
        assert_eq!(t.last_activity(), Some(ms(t0, 30)));
        let l = t.into_latencies().end_to_end;
        assert_eq!(l.len(), 3 + INCREMENTS_PER_RUN);
        assert_eq!(l[0], Duration::from_millis(10));
        assert_eq!(*l.last().unwrap(), Duration::from_millis(20));
    }

    #[test]
    fn a_queued_event_before_the_reply_is_kept_until_the_reply() {
        let t0 = Instant::now();
        let mut t = Tracker::new([1]);
        t.dispatched(0, 0, t0);
        t.event(9, RunEventType::Queued, ms(t0, 4), None);
        t.replied(0, 0, Reply::Created(9), ms(t0, 6));
        assert_eq!(t.counts().events, 1);
        assert_eq!(
            t.into_latencies().end_to_end,
            vec![Duration::from_millis(4)]
        );
    }

    #[test]
    fn the_events_time_splits_a_latency_at_the_start_of_its_transaction() {
        let t0 = Instant::now();
        let mut t = Tracker::new([1]);
        t.dispatched(0, 0, t0);
        t.replied(0, 0, Reply::Created(5), ms(t0, 3));
        t.event(5, RunEventType::Queued, ms(t0, 10), Some(ms(t0, 2)));
        publish_progress(&mut t, 0, ms(t0, 10));
        t.event(5, RunEventType::Started, ms(t0, 30), None);
        let l = t.into_latencies();
        assert_eq!(l.end_to_end, [10, 20].map(Duration::from_millis));
        assert_eq!(l.to_transaction, [Duration::from_millis(2)]);
        assert_eq!(l.from_transaction, [Duration::from_millis(8)]);
    }

    #[test]
    fn a_start_after_the_completion_is_counted_without_an_event() {
        let t0 = Instant::now();
        let mut t = Tracker::new([1]);
        t.dispatched(0, 0, t0);
        t.replied(0, 0, Reply::Created(3), ms(t0, 1));
        t.event(3, RunEventType::Queued, ms(t0, 2), None);
        publish_progress(&mut t, 0, ms(t0, 2));
        t.event(3, RunEventType::Completed, ms(t0, 5), None);
        for _ in 0..INCREMENTS_PER_RUN {
            t.event(3, RunEventType::Progressed, ms(t0, 6), None);
        }
        assert!(t.finished());
        assert_eq!(t.counts().no_event, 1);
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn a_duplicate_that_creates_a_second_run_waits_for_its_queued_event_only() {
        let t0 = Instant::now();
        let mut t = Tracker::new([2]);
        t.dispatched(0, 0, t0);
        t.dispatched(0, 1, t0);
        t.replied(0, 0, Reply::Created(1), ms(t0, 1));
        assert_eq!(
            t.replied(0, 1, Reply::Created(2), ms(t0, 1)),
            AfterReply::Nothing
        );
        t.event(1, RunEventType::Queued, ms(t0, 2), None);
        publish_progress(&mut t, 0, ms(t0, 2));
        t.event(1, RunEventType::Started, ms(t0, 3), None);
        for _ in 0..INCREMENTS_PER_RUN {
            t.event(1, RunEventType::Progressed, ms(t0, 3), None);
        }
        t.event(1, RunEventType::Completed, ms(t0, 3), None);
        assert!(!t.finished(), "run 2's queued event is still awaited");
        t.event(2, RunEventType::Queued, ms(t0, 4), None);
        assert!(t.finished());
        assert_eq!(t.counts().extra_runs, 1);
    }
}
