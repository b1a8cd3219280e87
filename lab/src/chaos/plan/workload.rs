//! The workload: a seeded plan of commands, and what every run must end up as. Pure: no I/O.
//! How each part is worded lives next door: [`super::dispatches`] (phase 1),
//! [`super::steps`] (phase 2) and [`super::bad_messages`].
//!
//! Phase 1 dispatches every identity once or several times: about 30% of all dispatches are
//! duplicates (same identity, new command id, keys in another order, other non-identity context,
//! `scheduled_for` written in another time zone). Phase 2 drives each run: a start, 3 to 6 count
//! increments, 0 to 2 failure appends and a completion, each with its own command id, and for
//! one run in ten a start that comes after the completion (stale). About 5% of
//! all messages are published twice with the same command id and body. A few deliberately bad
//! messages are mixed in; they are the only ones allowed in the dead-letter queue.
//!
//! The injections add: identities of [`REJECTED_TYPE`] (each dispatched once, see
//! [`super::dispatches`]), whose jobs an executor queue refuses for a while; one run flooded
//! with failures (its steps arrive as one block; a run of [`HELD_FOREVER_TYPE`], so run
//! retention never deletes the run the viewers read); bursts of bad messages (each one block);
//! late counts and failures for [`LATE_SHARE`] of the runs of [`HELD_FOREVER_TYPE`], published
//! apart, [`crate::chaos::faults::retention::LATE_DELAY`] after their run's completion (see
//! [`Workload::late_messages`]); an operator's cancels, fails and retries of a few runs of the
//! other types, among their executors' progress (see [`super::operator`]).

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

use super::bad_messages::bad_messages;
use super::dispatches::{dispatch_body, dispatch_contexts, identity_for};
use super::injections::{Injection, Injections};
use super::model::{
    BadMessage, Identity, LateGroup, Message, PlannedDispatch, PlannedRun, RetryGroup, Step,
    StepAction, HELD_FOREVER_TYPE, LATE_SHARE, REJECTED_TYPE, TWICE,
};
use super::operator::{self, add_operator_actions};
use super::steps::{add_failure_flood, add_late_progress, plan_run, progress_message};
use operation_runs::domain::RunOutcome;

/// Runs driven at once in phase 2: runs start and complete all along the phase, not only at
/// its end.
const ACTIVE_RUNS: usize = 150;
/// How far (in messages) a second copy may trail its original.
const COPY_LAG: f64 = 800.0;

/// The whole plan.
#[derive(Debug, Clone)]
pub struct Workload {
    /// The identities; run `i` belongs to identity `i`.
    pub identities: Vec<Identity>,
    /// Every dispatch, grouped by identity.
    pub dispatches: Vec<PlannedDispatch>,
    /// One run per identity.
    pub runs: Vec<PlannedRun>,
    /// The deliberately bad messages.
    pub bad: Vec<BadMessage>,
}

impl Workload {
    /// A workload of at least `commands` distinct command ids, drawn from `rng`, with the
    /// bad messages and the failure flood `injections` ask for.
    pub fn generate(commands: u64, injections: &Injections, rng: &mut StdRng) -> Self {
        let mut workload = Workload {
            identities: Vec::new(),
            dispatches: Vec::new(),
            runs: Vec::new(),
            bad: Vec::new(),
        };
        workload.bad = bad_messages(rng, injections);
        let mut total = workload.bad.len() as u64;
        while total < commands {
            let i = workload.identities.len();
            let (run_type, contexts) = dispatch_contexts(i, rng);
            let identity = identity_for(i, run_type, &contexts[0], rng);
            for (k, context) in contexts.iter().enumerate() {
                let command_id = format!("d-{i}-{k}");
                let body = dispatch_body(&identity, &command_id, context, rng);
                workload.dispatches.push(PlannedDispatch {
                    identity: i,
                    command_id,
                    body,
                    twice: rng.random_bool(TWICE),
                });
            }
            let mut run = plan_run(i, rng);
            if injections.has(Injection::LateProgress)
                && run_type == HELD_FOREVER_TYPE
                && rng.random_bool(LATE_SHARE)
            {
                add_late_progress(i, &mut run, rng);
            }
            if injections.has(Injection::OperatorActions) && operator::eligible(run_type) {
                add_operator_actions(i, &mut run, rng);
            }
            total += (contexts.len() + run.steps.len()) as u64;
            workload.identities.push(identity);
            workload.runs.push(run);
        }
        if injections.has(Injection::FailureFlood) {
            // Not a run of the rejected type: the service may fail those before any progress.
            // One held for ever, if any, without late progress: the viewers read it throughout.
            let identities = &workload.identities;
            let flooded = (0..identities.len())
                .find(|i| {
                    identities[*i].run_type == HELD_FOREVER_TYPE
                        && workload.runs[*i].late_from.is_none()
                })
                .or_else(|| {
                    (0..identities.len()).find(|i| {
                        identities[*i].run_type != REJECTED_TYPE && !workload.runs[*i].acted_on()
                    })
                })
                .expect("not every identity is of the rejected type");
            add_failure_flood(flooded, &mut workload.runs[flooded]);
        }
        workload
    }

    /// Distinct command ids in the plan (bad ones included).
    pub fn command_count(&self) -> u64 {
        let steps: usize = self.runs.iter().map(|r| r.steps.len()).sum();
        (self.dispatches.len() + steps + self.bad.len()) as u64
    }

    /// Distinct command ids the service should apply (all but the bad ones).
    pub fn good_count(&self) -> u64 {
        self.command_count() - self.bad.len() as u64
    }

    /// Phase 1: every dispatch in random order, second copies trailing their originals.
    pub fn dispatch_messages(&self, rng: &mut StdRng) -> Vec<Message> {
        let mut items: Vec<(Message, bool)> = self
            .dispatches
            .iter()
            .map(|d| {
                let message = Message {
                    routing_key: "dispatch",
                    body: d.body.clone().into_bytes(),
                    message_id: d.command_id.clone(),
                    fresh: true,
                    api: None,
                };
                (message, d.twice)
            })
            .collect();
        items.shuffle(rng);
        with_copies(items, rng)
    }

    /// Phase 2: the steps of every run that has an id (`run_ids[i]` for identity `i`), runs
    /// interleaved but each in its own order, bad messages mixed in (bursts and the flooded
    /// run each as one block), second copies trailing.
    pub fn progress_messages(&self, run_ids: &[Option<i64>], rng: &mut StdRng) -> Vec<Message> {
        let mut order: Vec<usize> = (0..self.runs.len())
            .filter(|i| run_ids[*i].is_some() && !self.runs[*i].flood)
            // A run cancelled while queued and then retried has all its steps held back.
            .filter(|i| !self.runs[*i].on_time_steps().is_empty())
            .collect();
        order.shuffle(rng);
        let mut waiting = order.into_iter();
        let mut active: Vec<(usize, usize)> =
            waiting.by_ref().take(ACTIVE_RUNS).map(|i| (i, 0)).collect();
        let mut items = Vec::new();
        while !active.is_empty() {
            let k = rng.random_range(0..active.len());
            let (i, s) = active[k];
            let step = &self.runs[i].steps[s];
            let run_id = run_ids[i].expect("only runs with ids are active");
            let message = progress_message(step, run_id, &self.identities[i], rng);
            items.push((message, step.twice));
            let mut next = s + 1;
            let steps = self.runs[i].on_time_steps();
            if matches!(step.action, StepAction::Complete { .. })
                && steps
                    .get(next)
                    .is_some_and(|n| matches!(n.action, StepAction::Start))
            {
                // A stale start comes right behind the completion (a slow executor thread):
                // later, run retention (20 s) could have deleted the run under a loaded
                // service, and the start would find no run.
                let late = &steps[next];
                items.push((
                    progress_message(late, run_id, &self.identities[i], rng),
                    late.twice,
                ));
                next += 1;
            }
            if next < steps.len() {
                active[k].1 = next;
            } else {
                active.swap_remove(k);
                active.extend(waiting.next().map(|next| (next, 0)));
            }
        }
        let mut blocks: Vec<Vec<(Message, bool)>> = Vec::new();
        for (i, run) in self.runs.iter().enumerate() {
            if let (true, Some(run_id)) = (run.flood, run_ids[i]) {
                let identity = &self.identities[i];
                blocks.push(
                    run.steps
                        .iter()
                        .map(|step| (progress_message(step, run_id, identity, rng), step.twice))
                        .collect(),
                );
            }
        }
        for bad in &self.bad {
            let message = (bad.message.clone(), false);
            match bad.burst {
                None => {
                    let at = rng.random_range(0..=items.len());
                    items.insert(at, message);
                }
                Some(burst) => match blocks.last_mut() {
                    Some(block) if block_burst(self, block) == Some(burst) => block.push(message),
                    _ => blocks.push(vec![message]),
                },
            }
        }
        // Positions drawn on the list without blocks and filled from the last: no block lands
        // inside another.
        let mut placed: Vec<(usize, Vec<(Message, bool)>)> = blocks
            .into_iter()
            .map(|block| (rng.random_range(0..=items.len()), block))
            .collect();
        placed.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
        for (at, block) in placed {
            items.splice(at..at, block);
        }
        with_copies(items, rng)
    }
}

impl Workload {
    /// The end of every retried run that has an id, held back from the stream (see
    /// [`RetryGroup`]).
    pub fn retry_groups(&self, run_ids: &[Option<i64>], rng: &mut StdRng) -> Vec<RetryGroup> {
        let mut groups = Vec::new();
        for (i, run) in self.runs.iter().enumerate() {
            let (Some(run_id), Some(_)) = (run_ids[i], run.held_from) else {
                continue;
            };
            let (done, _) = run.completion().expect("every planned run completes");
            groups.push(RetryGroup {
                after: run.steps[done].command_id.clone(),
                tail: self.apart(run.held_steps(), i, run_id, rng),
                retries: self.apart(run.retries(), i, run_id, rng),
            });
        }
        groups
    }

    /// The late steps of every run that has an id (`run_ids[i]` for identity `i`), one group
    /// per run, each to be published after the run's completion.
    pub fn late_messages(&self, run_ids: &[Option<i64>], rng: &mut StdRng) -> Vec<LateGroup> {
        let mut groups = Vec::new();
        for (i, run) in self.runs.iter().enumerate() {
            let (Some(run_id), false) = (run_ids[i], run.late_steps().is_empty()) else {
                continue;
            };
            let after = run
                .steps
                .iter()
                .find(|s| matches!(s.action, StepAction::Complete { .. }))
                .expect("every planned run completes")
                .command_id
                .clone();
            let messages = self.apart(run.late_steps(), i, run_id, rng);
            groups.push(LateGroup { after, messages });
        }
        groups
    }
}

impl Workload {
    /// The messages of `steps` of identity `i`'s run `run_id`, published apart from the stream:
    /// each second copy right after its original.
    fn apart<'s>(
        &self,
        steps: impl IntoIterator<Item = &'s Step>,
        i: usize,
        run_id: i64,
        rng: &mut StdRng,
    ) -> Vec<Message> {
        let mut messages = Vec::new();
        for step in steps {
            let message = progress_message(step, run_id, &self.identities[i], rng);
            let copy = step.twice.then(|| Message {
                fresh: false,
                ..message.clone()
            });
            messages.push(message);
            messages.extend(copy);
        }
        messages
    }
}

impl PlannedRun {
    /// The sum of every count increment sent (each command once).
    pub fn expected_counts(&self) -> BTreeMap<String, u64> {
        let mut sum = BTreeMap::new();
        for step in &self.steps {
            let counts = match &step.action {
                StepAction::Increment(c) | StepAction::Complete { counts: c, .. } => c,
                _ => continue,
            };
            for (k, v) in counts {
                *sum.entry((*k).to_owned()).or_insert(0) += v;
            }
        }
        sum
    }

    /// The item of every failure sent (each must be stored exactly once).
    pub fn expected_failure_items(&self) -> Vec<&str> {
        self.steps
            .iter()
            .flat_map(|step| match &step.action {
                StepAction::AppendFailures(f) | StepAction::Complete { failures: f, .. } => {
                    f.as_slice()
                }
                _ => &[],
            })
            .map(|f| f.item.as_str())
            .collect()
    }

    /// The step that completes the run and the outcome it completes it with: the executor's
    /// completion, an operator's fail, or an operator's cancel before the start (a cancel
    /// after it only asks the executor to stop).
    pub fn completion(&self) -> Option<(usize, RunOutcome)> {
        let mut started = false;
        for (at, step) in self.steps.iter().enumerate() {
            match &step.action {
                StepAction::Start => started = true,
                StepAction::Complete { outcome, .. } => return Some((at, *outcome)),
                StepAction::Fail { .. } => return Some((at, RunOutcome::Failed)),
                StepAction::Cancel if !started => return Some((at, RunOutcome::Cancelled)),
                _ => {}
            }
        }
        None
    }

    /// The outcome it completes with.
    pub fn outcome(&self) -> RunOutcome {
        self.completion().expect("every planned run completes").1
    }

    /// The reason of the operator's `fail_run`, if the operator failed the run.
    pub fn operator_failure(&self) -> Option<&str> {
        self.steps.iter().find_map(|step| match &step.action {
            StepAction::Fail { reason } => Some(reason.as_str()),
            _ => None,
        })
    }

    /// True when an operator acts on the run.
    pub fn acted_on(&self) -> bool {
        self.steps.iter().any(|s| {
            matches!(
                s.action,
                StepAction::Cancel | StepAction::Fail { .. } | StepAction::Retry
            )
        })
    }

    /// True when the run gets a `cancel_run`.
    pub fn cancel_asked(&self) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s.action, StepAction::Cancel))
    }

    /// The `retry_run` commands of the run (the first retries it, any other must find the
    /// retry holding the identity).
    pub fn retries(&self) -> impl Iterator<Item = &Step> {
        self.steps
            .iter()
            .filter(|s| matches!(s.action, StepAction::Retry))
    }
}

/// The burst the first message of `block` belongs to.
fn block_burst(workload: &Workload, block: &[(Message, bool)]) -> Option<&'static str> {
    let first = &block.first()?.0.message_id;
    workload
        .bad
        .iter()
        .find(|b| &b.command_id == first)
        .and_then(|b| b.burst)
}

/// Appends a copy of every flagged message at a random later position.
fn with_copies(items: Vec<(Message, bool)>, rng: &mut StdRng) -> Vec<Message> {
    let mut keyed: Vec<(f64, Message)> = Vec::with_capacity(items.len() * 21 / 20);
    for (i, (message, twice)) in items.into_iter().enumerate() {
        if twice {
            let copy = Message {
                fresh: false,
                ..message.clone()
            };
            keyed.push((i as f64 + rng.random_range(0.5..COPY_LAG), copy));
        }
        keyed.push((i as f64, message));
    }
    keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
    keyed.into_iter().map(|(_, m)| m).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use operation_runs::domain::{decode_command, CommandAction, ErrorCode};
    use rand::SeedableRng;
    use std::collections::{HashMap, HashSet};

    fn workload(seed: u64) -> Workload {
        Workload::generate(3000, &Injections::all(), &mut StdRng::seed_from_u64(seed))
    }

    #[test]
    fn the_plan_has_the_requested_size_and_about_30_percent_duplicate_dispatches() {
        let w = workload(1);
        // The failure flood's commands come on top.
        let flood = crate::chaos::plan::steps::FLOOD_COMMANDS as u64;
        assert!(w.command_count() >= 3000 + flood && w.command_count() < 3020 + flood);
        let duplicates = w.dispatches.len() - w.identities.len();
        let share = duplicates as f64 / w.dispatches.len() as f64;
        assert!((0.2..0.4).contains(&share), "duplicate share {share}");
    }

    #[test]
    fn every_dispatch_decodes_to_its_identity_and_every_command_id_is_unique() {
        let w = workload(2);
        let mut ids = HashSet::new();
        for d in &w.dispatches {
            assert!(ids.insert(d.command_id.clone()));
            let c = decode_command(d.body.as_bytes(), None).unwrap();
            let CommandAction::Dispatch(decoded) = c.action else {
                panic!("not a dispatch")
            };
            assert_eq!(decoded.identity_hash, w.identities[d.identity].hash);
        }
        for step in w.runs.iter().flat_map(|r| &r.steps) {
            assert!(ids.insert(step.command_id.clone()));
        }
        for bad in &w.bad {
            assert!(ids.insert(bad.command_id.clone()));
        }
        assert_eq!(ids.len() as u64, w.command_count());
    }

    #[test]
    fn progress_messages_decode_keep_each_runs_order_and_bad_ones_are_refused() {
        let w = workload(3);
        let run_ids: Vec<Option<i64>> = (0..w.runs.len()).map(|i| Some(i as i64 + 1)).collect();
        let messages = w.progress_messages(&run_ids, &mut StdRng::seed_from_u64(4));
        let bad: HashMap<&str, &str> = w
            .bad
            .iter()
            .map(|b| (b.command_id.as_str(), b.expected_code))
            .collect();
        let mut last_step: HashMap<i64, usize> = HashMap::new();
        let mut seen = HashSet::new();
        let mut over_api = 0;
        for m in &messages {
            let step: usize = m.message_id.rsplit('-').next().unwrap().parse().unwrap();
            // An operator action over the API: the run it names, the action as its "kind".
            if let Some(api) = &m.api {
                assert_eq!(m.routing_key, api.action.as_str());
                over_api += 1;
                if seen.insert(m.message_id.clone()) {
                    let previous = last_step.insert(api.run_id, step);
                    assert!(
                        previous.is_none_or(|p| p + 1 == step),
                        "order of {}",
                        api.run_id
                    );
                }
                continue;
            }
            let decoded = decode_command(&m.body, Some(&m.message_id));
            if let Some(code) = bad.get(m.message_id.as_str()) {
                // Only the codes the decoder knows are checked here (`run_not_found` is
                // decided later, by the database).
                if *code != "run_not_found" && ErrorCode::parse(code).is_some() {
                    assert_eq!(
                        decoded.unwrap_err().code.as_str(),
                        *code,
                        "{}",
                        m.message_id
                    );
                }
                continue;
            }
            let c = decoded.unwrap();
            assert_eq!(c.kind.as_str(), m.routing_key);
            if seen.insert(m.message_id.clone()) {
                let run = c.run_id().unwrap();
                let previous = last_step.insert(run, step);
                assert!(previous.is_none_or(|p| p + 1 == step), "order of run {run}");
            }
        }
        let steps: usize = w.runs.iter().map(|r| r.on_time_steps().len()).sum();
        assert_eq!(seen.len(), steps);
        assert!(over_api > 0, "some actions go over the API");
        // A retried run's completion, what follows it and its retries are published apart.
        let retried: Vec<&PlannedRun> = w.runs.iter().filter(|r| r.held_from.is_some()).collect();
        assert!(!retried.is_empty());
        for run in retried {
            // Held from the completion, or from the operator's cancel before it.
            let (done, _) = run.completion().unwrap();
            let held = run.steps[..done]
                .iter()
                .position(|s| matches!(s.action, StepAction::Cancel))
                .unwrap_or(done);
            assert_eq!(run.on_time_steps().len(), held);
            assert_eq!(
                run.held_steps().count() + run.retries().count(),
                run.steps.len() - held
            );
        }
        assert!(messages.len() > steps + w.bad.len(), "some are sent twice");
    }

    #[test]
    fn the_flooded_run_and_each_burst_arrive_as_one_block_and_the_rejected_type_is_dispatched_once()
    {
        let w = workload(6);
        let run_ids: Vec<Option<i64>> = (0..w.runs.len()).map(|i| Some(i as i64 + 1)).collect();
        let messages = w.progress_messages(&run_ids, &mut StdRng::seed_from_u64(7));
        let flooded = w.runs.iter().position(|r| r.flood).unwrap();
        assert_ne!(w.identities[flooded].run_type, REJECTED_TYPE);
        let appends = w.runs[flooded]
            .steps
            .iter()
            .filter(|s| matches!(&s.action, StepAction::AppendFailures(f) if f.len() == 50))
            .count();
        assert_eq!(appends, crate::chaos::plan::steps::FLOOD_COMMANDS);
        // Only second copies (which trail their originals) may come between a block's messages.
        let fresh: Vec<&Message> = messages
            .iter()
            .filter(|m| m.fresh || !m.message_id.starts_with("p-"))
            .collect();
        let block = |wanted: &dyn Fn(&Message) -> bool| {
            let at: Vec<usize> = fresh
                .iter()
                .enumerate()
                .filter(|(_, m)| wanted(m))
                .map(|(i, _)| i)
                .collect();
            (at.len(), at.last().unwrap() - at.first().unwrap() + 1)
        };
        let prefix = format!("p-{flooded}-");
        let (n, span) = block(&|m: &Message| m.fresh && m.message_id.starts_with(&prefix));
        assert_eq!(n, w.runs[flooded].steps.len());
        assert_eq!(span, n, "the flooded run is one block");
        for burst in ["bad-big-", "bad-nul-", "bad-dupkey-"] {
            let (n, span) = block(&|m: &Message| m.message_id.starts_with(burst));
            assert_eq!((n, span), (20, 20), "{burst}");
        }
        let big = messages
            .iter()
            .find(|m| m.message_id == "bad-big-0")
            .unwrap();
        assert!(big.body.len() > operation_runs::domain::command::MAX_COMMAND_BYTES);
        let mut per_identity: HashMap<usize, usize> = HashMap::new();
        for d in &w.dispatches {
            *per_identity.entry(d.identity).or_default() += 1;
        }
        let rejected: Vec<usize> = (0..w.identities.len())
            .filter(|i| w.identities[*i].run_type == REJECTED_TYPE)
            .collect();
        assert!(!rejected.is_empty());
        assert!(rejected.iter().all(|i| per_identity[i] == 1));
    }

    #[test]
    fn late_progress_goes_only_to_runs_held_for_ever_apart_from_the_stream_after_the_completion() {
        let w = workload(8);
        let run_ids: Vec<Option<i64>> = (0..w.runs.len()).map(|i| Some(i as i64 + 1)).collect();
        let late = w.late_messages(&run_ids, &mut StdRng::seed_from_u64(9));
        assert!(!late.is_empty());
        let with_late: Vec<usize> = (0..w.runs.len())
            .filter(|i| !w.runs[*i].late_steps().is_empty())
            .collect();
        assert_eq!(late.len(), with_late.len());
        for i in &with_late {
            let run = &w.runs[*i];
            assert_eq!(w.identities[*i].run_type, HELD_FOREVER_TYPE);
            assert!(!run.flood, "the viewers' run gets no late progress");
            let complete = run
                .steps
                .iter()
                .position(|s| matches!(s.action, StepAction::Complete { .. }))
                .unwrap();
            assert!(run.late_from.unwrap() > complete);
            assert!(run.late_steps().iter().all(|s| matches!(
                s.action,
                StepAction::Increment(_) | StepAction::AppendFailures(_)
            )));
        }
        let stream = w.progress_messages(&run_ids, &mut StdRng::seed_from_u64(9));
        for group in &late {
            assert!(stream
                .iter()
                .any(|m| m.message_id == group.after && m.fresh));
            for m in &group.messages {
                assert!(!stream.iter().any(|s| s.message_id == m.message_id));
                let c = decode_command(&m.body, Some(&m.message_id)).unwrap();
                assert_eq!(c.kind.as_str(), m.routing_key);
            }
        }
        let flooded = w.runs.iter().position(|r| r.flood).unwrap();
        assert_eq!(w.identities[flooded].run_type, HELD_FOREVER_TYPE);
    }

    #[test]
    fn without_injections_there_is_no_flood_and_no_burst() {
        let w = Workload::generate(3000, &Injections::none(), &mut StdRng::seed_from_u64(1));
        assert!(w.runs.iter().all(|r| !r.flood && r.late_from.is_none()));
        assert_eq!(w.bad.len(), 50);
        assert!(w.bad.iter().all(|b| b.burst.is_none()));
    }

    #[test]
    fn the_same_seed_gives_the_same_plan() {
        let (a, b) = (workload(9), workload(9));
        let bodies = |w: &Workload| {
            w.dispatches
                .iter()
                .map(|d| d.body.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(bodies(&a), bodies(&b));
        assert_eq!(
            a.runs
                .iter()
                .map(|r| r.expected_counts())
                .collect::<Vec<_>>(),
            b.runs
                .iter()
                .map(|r| r.expected_counts())
                .collect::<Vec<_>>()
        );
    }
}
