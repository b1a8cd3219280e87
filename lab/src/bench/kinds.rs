//! The kinds phase: one command kind at a time, on runs of its own, so that what each kind costs
//! is measured apart and progress is measured as it arrives in production, each update of a
//! running run in a batch of its own.
//!
//! `runs` new runs go through four steps, each published as fast as an in-flight bound allows
//! and finished (every event received, the outbox empty) before the next: **dispatch** (one
//! dispatch per run, distinct identities), **start** (`update_run` running), **progress**
//! (`rounds` × `increment_summary_counts` per run, round robin: consecutive commands are for
//! different runs, so with more runs than `--batch-size` no batch holds two updates of one
//! run, and none changes a status) and **completion** (`update_run` completed/succeeded).
//!
//! Each step is a window on the WAL ([`super::writes`]): its row writes and index entries per
//! command, by table and index, and for the progress step the HOT ratio of the runs' updates
//! (the updates that wrote no index entry), the figure the main workload cannot show (there a
//! run's five progress commands mostly land in one batch with its status change).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::BasicCancelOptions;
use lapin::{BasicProperties, Connection};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::driver::consume_no_ack;
use super::percentiles::Percentiles;
use super::prebuilt::{TENANTS_PER_WORKSPACE, WORKSPACES};
use super::writes::{WalWindow, Writes};
use crate::publisher::Window;
use crate::sandbox::Sandbox;
use crate::LabError;
use operation_runs::broker::headers::{get_i64, get_str};
use operation_runs::broker::publisher::{consume_direct_replies, DIRECT_REPLY_TO};
use operation_runs::domain::RunEventType;

/// With nothing received for this long, a step is declared stalled.
const STALL: Duration = Duration::from_secs(60);
/// Longest a step waits for the relay to empty the outbox after its last event.
const OUTBOX_DEADLINE: Duration = Duration::from_secs(10);
/// The table whose updates the HOT ratio is about.
const RUNS_TABLE: &str = "operation_runs";

/// A command kind measured on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `dispatch` of a new identity.
    Dispatch,
    /// `update_run` running.
    Start,
    /// `increment_summary_counts` on a running run.
    Progress,
    /// `update_run` completed/succeeded.
    Completion,
}

impl Kind {
    /// The steps, in order.
    pub const ALL: [Kind; 4] = [
        Kind::Dispatch,
        Kind::Start,
        Kind::Progress,
        Kind::Completion,
    ];

    /// The name in the table and the JSON line.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Dispatch => "dispatch",
            Kind::Start => "start",
            Kind::Progress => "progress",
            Kind::Completion => "completion",
        }
    }

    fn event(self) -> RunEventType {
        match self {
            Kind::Dispatch => RunEventType::Queued,
            Kind::Start => RunEventType::Started,
            Kind::Progress => RunEventType::Progressed,
            Kind::Completion => RunEventType::Completed,
        }
    }
}

/// One measured step.
#[derive(Debug)]
pub struct KindStep {
    /// The kind.
    pub kind: Kind,
    /// Commands published.
    pub commands: u64,
    /// First publish to last event.
    pub elapsed: Duration,
    /// Publish → event latencies.
    pub latency: Percentiles,
    /// What the step wrote (`None`: the WAL could not be read).
    pub writes: Option<Writes>,
}

impl KindStep {
    /// Commands per second.
    pub fn rate(&self) -> f64 {
        self.commands as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// `n` per command of the step.
    pub fn per_command(&self, n: u64) -> f64 {
        n as f64 / (self.commands.max(1)) as f64
    }
}

/// The kinds phase.
#[derive(Debug)]
pub struct Kinds {
    /// Runs it created.
    pub runs: usize,
    /// Increments per run in the progress step.
    pub rounds: usize,
    /// The steps, in [`Kind::ALL`] order.
    pub steps: Vec<KindStep>,
}

impl Kinds {
    /// The step of `kind`.
    pub fn step(&self, kind: Kind) -> Option<&KindStep> {
        self.steps.iter().find(|s| s.kind == kind)
    }

    /// HOT updates ÷ updates of `operation_runs` during the progress step.
    pub fn progress_hot_ratio(&self) -> Option<f64> {
        self.step(Kind::Progress)?
            .writes
            .as_ref()?
            .hot_ratio(RUNS_TABLE)
    }
}

/// A run of the phase: its id and scope, once dispatched.
#[derive(Debug, Clone, Copy)]
struct Run {
    id: i64,
    workspace_id: i64,
    tenant_id: i64,
}

/// A command ready to publish.
struct Outgoing {
    routing_key: &'static str,
    command_id: String,
    body: Vec<u8>,
    /// The run it is about (`None`: a dispatch, answered with its run).
    run: Option<i64>,
}

enum Incoming {
    Reply {
        correlation: usize,
        run_id: i64,
    },
    Event {
        run_id: i64,
        kind: RunEventType,
        at: Instant,
    },
}

/// Runs the four steps on `runs` new runs (`rounds` increments each) through the service on
/// `sandbox`, reading events from `events_queue`, at most `in_flight` commands unaccounted for.
pub async fn run(
    connection: &Connection,
    sandbox: &Sandbox,
    events_queue: &str,
    runs: usize,
    rounds: usize,
    in_flight: u64,
) -> Result<Kinds, LabError> {
    let window = Window::open(connection, 1_000).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let replies = consume_direct_replies(window.channel()).await?;
    tokio::spawn(forward_replies(replies, tx.clone()));
    let events_channel = connection.create_channel().await?;
    let tag = format!("bench-kinds-{}", uuid::Uuid::new_v4().simple());
    let events = consume_no_ack(&events_channel, events_queue, &tag).await?;
    tokio::spawn(forward_events(events, tx));

    let exchange = sandbox.topology.commands_exchange();
    let label = uuid::Uuid::new_v4().simple().to_string();
    let mut planned: Vec<Option<Run>> = vec![None; runs];
    let mut steps = Vec::with_capacity(Kind::ALL.len());
    for kind in Kind::ALL {
        let outgoing = match kind {
            Kind::Dispatch => (0..runs).map(|i| dispatch(&label, i)).collect(),
            _ => {
                let known: Vec<Run> = planned.iter().flatten().copied().collect();
                let repeat = if kind == Kind::Progress { rounds } else { 1 };
                (0..repeat)
                    .flat_map(|_| known.iter().map(|run| progress(kind, run)))
                    .collect::<Vec<_>>()
            }
        };
        eprintln!("bench: kinds, {} × {}", outgoing.len(), kind.name());
        let wal = WalWindow::open(&sandbox.database_url).await?;
        let (elapsed, latencies) = step(
            &window,
            &exchange,
            &mut rx,
            &outgoing,
            kind,
            in_flight,
            &mut planned,
        )
        .await?;
        wait_for_empty_outbox(sandbox).await;
        let writes = match wal {
            Some(w) => Some(w.close().await?),
            None => None,
        };
        steps.push(KindStep {
            kind,
            commands: outgoing.len() as u64,
            elapsed,
            latency: Percentiles::of(&latencies),
            writes,
        });
    }
    let _ = events_channel
        .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
        .await;
    let _ = events_channel.close(200, "bench done".into()).await;
    window.close().await;
    Ok(Kinds {
        runs,
        rounds,
        steps,
    })
}

/// The scope of run `i`: spread over the sandbox's tenants like the main workload's.
fn scope_of(i: usize) -> (i64, i64) {
    let workspace_id = 1 + (i as i64 % WORKSPACES);
    let tenant_id = 100
        + TENANTS_PER_WORKSPACE * (workspace_id - 1)
        + 1
        + (i as i64 / WORKSPACES) % TENANTS_PER_WORKSPACE;
    (workspace_id, tenant_id)
}

fn dispatch(label: &str, i: usize) -> Outgoing {
    let (workspace_id, tenant_id) = scope_of(i);
    let command_id = uuid::Uuid::new_v4().to_string();
    let body = json!({
        "kind": "dispatch", "command_id": command_id, "type": "policy.sync",
        "workspace_id": workspace_id, "tenant_id": tenant_id,
        "context": {"policy_id": format!("kinds-{label}-{i}")},
    });
    Outgoing {
        routing_key: "dispatch",
        command_id,
        body: serde_json::to_vec(&body).expect("JSON values serialise"),
        run: None,
    }
}

fn progress(kind: Kind, run: &Run) -> Outgoing {
    let command_id = uuid::Uuid::new_v4().to_string();
    let (routing_key, fields) = match kind {
        Kind::Start => ("update_run", json!({"status": "running"})),
        Kind::Completion => (
            "update_run",
            json!({"status": "completed", "outcome": "succeeded"}),
        ),
        _ => (
            "increment_summary_counts",
            json!({"counts": {"processed": 10}}),
        ),
    };
    let mut body = json!({
        "kind": routing_key, "command_id": command_id, "run_id": run.id,
        "workspace_id": run.workspace_id, "tenant_id": run.tenant_id,
    });
    for (k, v) in fields.as_object().expect("an object") {
        body[k] = v.clone();
    }
    Outgoing {
        routing_key,
        command_id,
        body: serde_json::to_vec(&body).expect("JSON values serialise"),
        run: Some(run.id),
    }
}

/// Publishes `outgoing` and waits until each has caused its event (and, for dispatches, its
/// reply, which tells the run id: stored in `planned`). Returns first publish → last event and
/// the latencies.
async fn step(
    window: &Window,
    exchange: &str,
    rx: &mut mpsc::UnboundedReceiver<Incoming>,
    outgoing: &[Outgoing],
    kind: Kind,
    in_flight: u64,
    planned: &mut [Option<Run>],
) -> Result<(Duration, Vec<Duration>), LabError> {
    let expected = kind.event();
    let total = outgoing.len() as u64;
    let mut sent_for_run: HashMap<i64, VecDeque<Instant>> = HashMap::new();
    let mut dispatch_sent: Vec<Option<Instant>> = vec![None; outgoing.len()];
    // Queued events that arrived before the reply naming their run.
    let mut early: HashMap<i64, Instant> = HashMap::new();
    let mut latencies = Vec::with_capacity(outgoing.len());
    let (mut published, mut events, mut replies) = (0u64, 0u64, 0u64);
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let mut last_received = Instant::now();
    let mut next = 0usize;
    let replies_expected = if kind == Kind::Dispatch { total } else { 0 };
    while events < total || replies < replies_expected {
        if next < outgoing.len() && published - events < in_flight {
            let o = &outgoing[next];
            let mut props = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2)
                .with_message_id(o.command_id.as_str().into());
            if o.run.is_none() {
                props = props
                    .with_reply_to(DIRECT_REPLY_TO.into())
                    .with_correlation_id(next.to_string().into());
            }
            let at = window
                .publish(exchange, o.routing_key, &o.body, props)
                .await?;
            first.get_or_insert(at);
            match o.run {
                Some(run) => sent_for_run.entry(run).or_default().push_back(at),
                None => dispatch_sent[next] = Some(at),
            }
            published += 1;
            next += 1;
            // Take what has arrived without waiting, then publish on.
            while let Ok(m) = rx.try_recv() {
                last_received = Instant::now();
                receive(
                    m,
                    expected,
                    planned,
                    &dispatch_sent,
                    &mut sent_for_run,
                    &mut early,
                    &mut latencies,
                    &mut events,
                    &mut replies,
                    &mut last,
                );
            }
            continue;
        }
        let stall_at = last_received + STALL;
        tokio::select! {
            m = rx.recv() => match m {
                Some(m) => {
                    last_received = Instant::now();
                    receive(m, expected, planned, &dispatch_sent, &mut sent_for_run, &mut early, &mut latencies, &mut events, &mut replies, &mut last);
                }
                None => return Err(LabError::Invalid("the bench lost its broker consumers (did the broker restart?)".into())),
            },
            _ = tokio::time::sleep_until(stall_at.into()) => {
                return Err(LabError::Invalid(format!(
                    "the {} step stalled (nothing received for {}s): {events} of {total} events, {replies} of {replies_expected} replies",
                    kind.name(),
                    STALL.as_secs()
                )));
            }
        }
    }
    let elapsed = first.map_or(Duration::ZERO, |f| last.saturating_duration_since(f));
    Ok((elapsed, latencies))
}

#[allow(clippy::too_many_arguments)]
fn receive(
    m: Incoming,
    expected: RunEventType,
    planned: &mut [Option<Run>],
    dispatch_sent: &[Option<Instant>],
    sent_for_run: &mut HashMap<i64, VecDeque<Instant>>,
    early: &mut HashMap<i64, Instant>,
    latencies: &mut Vec<Duration>,
    events: &mut u64,
    replies: &mut u64,
    last: &mut Instant,
) {
    match m {
        Incoming::Reply {
            correlation,
            run_id,
        } => {
            let Some(sent) = dispatch_sent.get(correlation).copied().flatten() else {
                return;
            };
            *replies += 1;
            let (workspace_id, tenant_id) = scope_of(correlation);
            planned[correlation] = Some(Run {
                id: run_id,
                workspace_id,
                tenant_id,
            });
            // A dispatch is accounted for once both its reply and its event are in.
            match early.remove(&run_id) {
                Some(at) => {
                    *events += 1;
                    latencies.push(at.saturating_duration_since(sent));
                }
                None => sent_for_run.entry(run_id).or_default().push_back(sent),
            }
        }
        Incoming::Event { run_id, kind, at } => {
            if kind != expected {
                return;
            }
            // Only this step's runs: anything else on the queue is an earlier phase's.
            match sent_for_run.get_mut(&run_id).and_then(VecDeque::pop_front) {
                Some(sent) => {
                    *events += 1;
                    *last = (*last).max(at);
                    latencies.push(at.saturating_duration_since(sent));
                }
                None if expected == RunEventType::Queued => {
                    *last = (*last).max(at);
                    early.insert(run_id, at);
                }
                None => {}
            }
        }
    }
}

/// Waits (up to [`OUTBOX_DEADLINE`]) until the relay has deleted every outbox position, so that
/// a step's window holds its deletes too.
async fn wait_for_empty_outbox(sandbox: &Sandbox) {
    let deadline = Instant::now() + OUTBOX_DEADLINE;
    while Instant::now() < deadline {
        let empty: Result<bool, _> =
            sqlx::query_scalar("SELECT NOT EXISTS (SELECT 1 FROM operation_run_event_outbox)")
                .fetch_one(&sandbox.pool)
                .await;
        if matches!(empty, Ok(true)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn forward_replies(mut replies: lapin::Consumer, tx: mpsc::UnboundedSender<Incoming>) {
    while let Some(Ok(d)) = replies.next().await {
        let correlation = d
            .properties
            .correlation_id()
            .as_ref()
            .and_then(|c| c.as_str().parse().ok());
        let run_id = serde_json::from_slice::<Value>(&d.data)
            .ok()
            .and_then(|v| v.get("run_id").and_then(Value::as_i64));
        if let (Some(correlation), Some(run_id)) = (correlation, run_id) {
            if tx
                .send(Incoming::Reply {
                    correlation,
                    run_id,
                })
                .is_err()
            {
                return;
            }
        }
    }
}

async fn forward_events(mut events: lapin::Consumer, tx: mpsc::UnboundedSender<Incoming>) {
    while let Some(Ok(d)) = events.next().await {
        let at = Instant::now();
        let headers = d.properties.headers().as_ref();
        let run_id = get_i64(headers, "run_id");
        let kind = get_str(headers, "event_type").and_then(|k| RunEventType::parse(&k));
        if let (Some(run_id), Some(kind)) = (run_id, kind) {
            if tx.send(Incoming::Event { run_id, kind, at }).is_err() {
                return;
            }
        }
    }
}
