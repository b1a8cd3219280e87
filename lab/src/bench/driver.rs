//! Drives a workload through the running service: publishes commands (as fast as an in-flight
//! bound allows, or at a fixed rate), receives dispatch replies over direct reply-to and events
//! from a queue bound to `N.events`, and hands both to the [`Tracker`].
//!
//! Scheduling: progress commands that became publishable (their run's dispatch was answered) go
//! first; otherwise the next run's dispatch, with its duplicate right behind it (a duplicate
//! published later could arrive after its run completed and create a second run).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};
use serde_json::Value;
use tokio::sync::mpsc;

use super::prebuilt::RunPlan;
use super::tracker::{AfterReply, Counts, Latencies, Reply, Tracker};
use crate::publisher::Window;
use crate::LabError;
use operation_runs::broker::headers::{get_i64, get_str};
use operation_runs::broker::publisher::{consume_direct_replies, DIRECT_REPLY_TO};
use operation_runs::broker::Topology;
use operation_runs::domain::RunEventType;

/// Unconfirmed publishes the bench keeps in flight.
const CONFIRM_WINDOW: u32 = 1_000;
/// With nothing received for this long, the workload is declared stalled.
const STALL: Duration = Duration::from_secs(60);

/// How to pace the workload.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// As fast as the service takes it, with at most this many commands unaccounted for
    /// (published, but neither replied to nor seen as an event).
    Max {
        /// The in-flight bound.
        in_flight: u64,
    },
    /// This many commands per second, whatever the service does (open loop).
    Rate(f64),
}

/// What a drive measured.
#[derive(Debug)]
pub struct DriveResult {
    /// Commands published.
    pub commands: u64,
    /// From the first publish to the last reply or event.
    pub elapsed: Duration,
    /// Publish → event latencies of the commands that caused an event, and their parts before
    /// and after the start of the transaction that applied them.
    pub latencies: Latencies,
    /// The counters.
    pub counts: Counts,
    /// Largest delay of a publish behind its schedule (fixed rate only).
    pub max_publish_lag: Duration,
    /// Publishes the broker nacked.
    pub nacks: u64,
}

impl DriveResult {
    /// Commands per second.
    pub fn rate(&self) -> f64 {
        self.commands as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

enum Incoming {
    Reply {
        correlation: String,
        body: Vec<u8>,
        at: Instant,
    },
    Event {
        run_id: i64,
        kind: RunEventType,
        at: Instant,
        /// The event's `time`: when its transaction began, on this machine's clock.
        recorded: Option<Instant>,
    },
}

#[derive(Debug, Clone, Copy)]
struct Ready {
    run: usize,
    run_id: i64,
    step: usize,
}

/// Runs `plans` through the service listening on `topology`, reading events from
/// `events_queue` (bound to `N.events`, empty of this workload's events).
pub async fn drive(
    connection: &Connection,
    topology: &Topology,
    events_queue: &str,
    plans: &[RunPlan],
    pace: Pace,
) -> Result<DriveResult, LabError> {
    let window = Window::open(connection, CONFIRM_WINDOW).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let replies = consume_direct_replies(window.channel()).await?;
    tokio::spawn(forward_replies(replies, tx.clone()));
    let events_channel = connection.create_channel().await?;
    let events_tag = format!("bench-events-{}", uuid::Uuid::new_v4().simple());
    let events = consume_no_ack(&events_channel, events_queue, &events_tag).await?;
    tokio::spawn(forward_events(events, tx));

    let mut tracker = Tracker::new(plans.iter().map(|p| p.dispatches.len()));
    let exchange = topology.commands_exchange();
    let mut ready: VecDeque<Ready> = VecDeque::new();
    let mut next_run = 0usize;
    let mut first_publish: Option<Instant> = None;
    let mut last_received = Instant::now();
    let mut max_lag = Duration::ZERO;
    let mut due = 0f64; // publishes scheduled so far (fixed rate)
    let started = Instant::now();

    loop {
        while let Ok(m) = rx.try_recv() {
            last_received = Instant::now();
            receive(m, &mut tracker, &mut ready);
        }
        if tracker.finished() {
            break;
        }
        let has_work = !ready.is_empty() || next_run < plans.len();
        let (may_publish, wait_until) = match pace {
            Pace::Max { in_flight } => (has_work && tracker.in_flight() < in_flight, None),
            Pace::Rate(r) => {
                let at = started + Duration::from_secs_f64(due / r);
                (has_work && Instant::now() >= at, has_work.then_some(at))
            }
        };
        if may_publish {
            if let Pace::Rate(r) = pace {
                let scheduled = started + Duration::from_secs_f64(due / r);
                max_lag = max_lag.max(Instant::now().saturating_duration_since(scheduled));
            }
            let published = if let Some(item) = ready.pop_front() {
                let t = &plans[item.run].progress[item.step];
                let body = t.body(item.run_id);
                let at = window
                    .publish(&exchange, t.routing_key, &body, properties(&t.command_id))
                    .await?;
                tracker.progressed(item.run, t.step, at);
                1
            } else {
                let run = next_run;
                next_run += 1;
                for (j, d) in plans[run].dispatches.iter().enumerate() {
                    let props = properties(&d.command_id)
                        .with_reply_to(DIRECT_REPLY_TO.into())
                        .with_correlation_id(format!("{run}:{j}").into());
                    let at = window
                        .publish(&exchange, d.routing_key, &d.body, props)
                        .await?;
                    first_publish.get_or_insert(at);
                    tracker.dispatched(run, j, at);
                }
                plans[run].dispatches.len()
            };
            due += published as f64;
            continue;
        }
        let stall_at = last_received + STALL;
        let wake = wait_until.map_or(stall_at, |w| w.min(stall_at));
        tokio::select! {
            m = rx.recv() => match m {
                Some(m) => {
                    last_received = Instant::now();
                    receive(m, &mut tracker, &mut ready);
                }
                None => return Err(LabError::Invalid("the bench lost its broker consumers (did the broker restart?)".into())),
            },
            _ = tokio::time::sleep_until(wake.into()) => {
                if Instant::now() >= stall_at {
                    return Err(LabError::Invalid(format!(
                        "the workload stalled (nothing received for {}s): {}",
                        STALL.as_secs(),
                        tracker.missing()
                    )));
                }
            }
        }
    }

    window.drain().await;
    let nacks = window.nacks();
    let _ = events_channel
        .basic_cancel(events_tag.as_str().into(), BasicCancelOptions::default())
        .await;
    let _ = events_channel.close(200, "bench done".into()).await;
    window.close().await;
    let counts = tracker.counts();
    let elapsed = match (first_publish, tracker.last_activity()) {
        (Some(first), Some(last)) => last.saturating_duration_since(first),
        _ => Duration::ZERO,
    };
    Ok(DriveResult {
        commands: counts.published,
        elapsed,
        latencies: tracker.into_latencies(),
        counts,
        max_publish_lag: max_lag,
        nacks,
    })
}

/// Consumes `queue` on `channel` without acks (the bench's subscribers), tagged `tag`.
pub async fn consume_no_ack(
    channel: &lapin::Channel,
    queue: &str,
    tag: &str,
) -> Result<lapin::Consumer, LabError> {
    Ok(channel
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?)
}

fn properties(command_id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(command_id.into())
}

fn receive(m: Incoming, tracker: &mut Tracker, ready: &mut VecDeque<Ready>) {
    match m {
        Incoming::Event {
            run_id,
            kind,
            at,
            recorded,
        } => tracker.event(run_id, kind, at, recorded),
        Incoming::Reply {
            correlation,
            body,
            at,
        } => {
            let Some((run, j)) = correlation
                .split_once(':')
                .and_then(|(r, j)| Some((r.parse().ok()?, j.parse().ok()?)))
            else {
                return;
            };
            if let AfterReply::DriveRun(run_id) = tracker.replied(run, j, parse_reply(&body), at) {
                // Start, increments and completion become publishable together, in order.
                let steps = super::prebuilt::INCREMENTS_PER_RUN + 2;
                ready.extend((0..steps).map(|step| Ready { run, run_id, step }));
            }
        }
    }
}

fn parse_reply(body: &[u8]) -> Reply {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Reply::Rejected;
    };
    match (
        v.get("run_id").and_then(Value::as_i64),
        v.get("deduplicated").and_then(Value::as_bool),
    ) {
        (Some(id), Some(false)) => Reply::Created(id),
        (Some(id), Some(true)) => Reply::Deduplicated(id),
        _ => {
            tracing::warn!(reply = %v, "the service refused a bench dispatch");
            Reply::Rejected
        }
    }
}

async fn forward_replies(mut replies: lapin::Consumer, tx: mpsc::UnboundedSender<Incoming>) {
    while let Some(Ok(d)) = replies.next().await {
        let at = Instant::now();
        let Some(correlation) = d
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.to_string())
        else {
            continue;
        };
        if tx
            .send(Incoming::Reply {
                correlation,
                body: d.data,
                at,
            })
            .is_err()
        {
            return;
        }
    }
}

async fn forward_events(mut events: lapin::Consumer, tx: mpsc::UnboundedSender<Incoming>) {
    // The events' `time` is the database's clock; the same machine's, so one reading of both
    // clocks converts it.
    let (anchor, anchor_wall) = (Instant::now(), chrono::Utc::now());
    while let Some(Ok(d)) = events.next().await {
        let at = Instant::now();
        let headers = d.properties.headers().as_ref();
        let run_id = get_i64(headers, "run_id");
        let kind = get_str(headers, "event_type").and_then(|k| RunEventType::parse(&k));
        let recorded = event_time(&d.data).and_then(|t| {
            let offset = (t - anchor_wall).to_std().ok()?;
            anchor.checked_add(offset)
        });
        if let (Some(run_id), Some(kind)) = (run_id, kind) {
            let event = Incoming::Event {
                run_id,
                kind,
                at,
                recorded,
            };
            if tx.send(event).is_err() {
                return;
            }
        }
    }
}

/// The CloudEvents `time` of an event body.
fn event_time(body: &[u8]) -> Option<chrono::DateTime<chrono::Utc>> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        time: chrono::DateTime<chrono::Utc>,
    }
    serde_json::from_slice::<Envelope>(body)
        .ok()
        .map(|e| e.time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_events_time_is_read_from_its_envelope() {
        let body = br#"{"id": "x", "data": {"run": {"updated_at": "2020-01-01T00:00:00Z"}}, "time": "2026-12-03T07:04:50.123456Z"}"#;
        let t = event_time(body).unwrap();
        assert_eq!(t.timestamp_subsec_micros(), 123_456);
        assert_eq!(event_time(b"{}"), None);
    }
}
