//! Cancel requests as one worker instance hears them.
//!
//! The service tells a running run's executor to stop with a message on `N.jobs`, routing key
//! `cancel.<type>` (the job's body plus `"cancel": true`). Each worker instance receives every
//! such message of its types on a queue of its own, exclusive to its connection and consumed
//! beside the job queue, so a cancel reaches the instance that holds the run even while a job
//! is in hand (a cancel queued behind that job on the job queue would wait for it to finish) and
//! even when several instances share the job queue (one shared queue would give it to one of
//! them, maybe another). An instance that does not hold the run remembers it (the last
//! [`HEARD_CANCELS`]), so a job of that run it takes later (redelivered from an instance that
//! went away) is completed `cancelled` without running its handler. While no instance is
//! connected, a cancel reaches nobody: the reaper then cancels the run (`run.cancel_timeout`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;
use lapin::Channel;
use tokio_util::sync::CancellationToken;

use super::producer::ClientError;
use crate::broker::topology::declare_exclusive_queue;

/// How many cancels of runs it does not hold an instance remembers (newest kept): a few
/// kilobytes, far more than the runs redelivered to it in the time a cancel stays relevant.
pub const HEARD_CANCELS: usize = 1024;

/// The body of a cancel message, as far as a worker needs it.
#[derive(serde::Deserialize)]
struct CancelNotice {
    run_id: i64,
    #[serde(default)]
    cancel: bool,
}

#[derive(Default)]
struct Registry {
    /// Runs whose job is in hand, with the token that tells their handler.
    in_hand: HashMap<i64, CancellationToken>,
    /// Runs not in hand whose cancel came, oldest first, at most [`HEARD_CANCELS`].
    heard: VecDeque<i64>,
}

/// The cancels one worker instance has heard, shared by its sessions (a reconnect keeps them).
#[derive(Clone, Default)]
pub(crate) struct Cancels(Arc<Mutex<Registry>>);

impl Cancels {
    /// Marks `run_id` as in hand until the returned guard drops; its token is already
    /// cancelled when the run's cancel was heard before.
    pub(crate) fn hold(&self, run_id: i64) -> Held {
        let token = CancellationToken::new();
        let mut registry = self.0.lock().unwrap();
        if let Some(at) = registry.heard.iter().position(|&id| id == run_id) {
            registry.heard.remove(at);
            token.cancel();
        }
        registry.in_hand.insert(run_id, token.clone());
        Held {
            cancels: self.clone(),
            run_id,
            token,
        }
    }

    /// A cancel of `run_id` came: tell its handler, or remember it.
    fn heard(&self, run_id: i64) {
        let mut registry = self.0.lock().unwrap();
        if let Some(token) = registry.in_hand.get(&run_id) {
            token.cancel();
            return;
        }
        if !registry.heard.contains(&run_id) {
            if registry.heard.len() == HEARD_CANCELS {
                registry.heard.pop_front();
            }
            registry.heard.push_back(run_id);
        }
    }
}

/// A run in hand; dropping it forgets the run.
pub(crate) struct Held {
    cancels: Cancels,
    run_id: i64,
    token: CancellationToken,
}

impl Held {
    /// Cancelled once the run's cancel is heard.
    pub(crate) fn token(&self) -> CancellationToken {
        self.token.clone()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.cancels.0.lock().unwrap().in_hand.remove(&self.run_id);
    }
}

/// Declares `queue` (exclusive to the channel's connection, deleted with it, at most
/// [`HEARD_CANCELS`] messages) bound to `exchange` with `cancel.<type>` for each of `types`, and
/// hears its messages in a task of its own until the consumer ends (connection closed, queue
/// deleted); the returned token is cancelled then, so the worker reconnects rather than miss
/// cancels.
pub(crate) async fn listen(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    types: &[String],
    cancels: Cancels,
) -> Result<CancellationToken, ClientError> {
    // Bounded like every queue a producer can fill: the newest cancels are kept.
    let keys: Vec<String> = types.iter().map(|t| format!("cancel.{t}")).collect();
    declare_exclusive_queue(channel, queue, exchange, &keys, HEARD_CANCELS as i64).await?;
    // No acks: a cancel is a notice to whoever is connected now, not work to hand on.
    let options = BasicConsumeOptions {
        no_ack: true,
        exclusive: true,
        ..Default::default()
    };
    let mut consumer = channel
        .basic_consume(queue.into(), "".into(), options, FieldTable::default())
        .await?;
    let lost = CancellationToken::new();
    let ended = lost.clone();
    let queue = queue.to_owned();
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            match serde_json::from_slice::<CancelNotice>(&delivery.data) {
                Ok(notice) if notice.cancel => {
                    tracing::info!(run_id = notice.run_id, "cancel requested");
                    cancels.heard(notice.run_id);
                }
                _ => tracing::warn!(%queue, "ignoring a message that is not a cancel"),
            }
        }
        ended.cancel();
    });
    Ok(lost)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_tells_the_run_in_hand_and_is_remembered_for_a_run_taken_later() {
        let cancels = Cancels::default();
        let held = cancels.hold(1);
        assert!(!held.token().is_cancelled());
        cancels.heard(1);
        assert!(held.token().is_cancelled());
        drop(held);
        cancels.heard(2);
        assert!(cancels.hold(2).token().is_cancelled());
        // Heard once, used once: a later job of the run starts clean.
        assert!(!cancels.hold(2).token().is_cancelled());
        assert!(!cancels.hold(3).token().is_cancelled());
    }

    #[test]
    fn only_the_newest_cancels_of_runs_not_in_hand_are_remembered() {
        let cancels = Cancels::default();
        for run_id in 0..=HEARD_CANCELS as i64 {
            cancels.heard(run_id);
        }
        assert!(!cancels.hold(0).token().is_cancelled());
        assert!(cancels.hold(HEARD_CANCELS as i64).token().is_cancelled());
    }
}
