//! What the fault-injection run's plan is made of: the seeded scopes, the messages, the
//! identities, the planned runs with their steps and failures, the bad messages, and the
//! constants the plan and its checks share. Pure: no I/O. [`super::workload`] plans them,
//! worded by [`super::dispatches`], [`super::steps`] and [`super::bad_messages`].

use std::collections::BTreeMap;

use operation_runs::domain::action::RunAction;
use operation_runs::domain::{OperationRunType, RunIdentityHash, RunOutcome};

/// The run type whose jobs the rejecting executor queue refuses (`--without reject-jobs` keeps
/// the type, without the queue). Its identities are dispatched once each: a run the service
/// fails (`dispatch.rejected`) while a duplicate dispatch is still on its way would rightly get
/// a second run, which the checks could not tell from a real duplicate.
pub const REJECTED_TYPE: OperationRunType = OperationRunType::EntraGroupSync;

/// The run type whose identities are held for ever (dedupe window `forever`): run retention
/// never deletes its runs, so late progress always finds them.
pub const HELD_FOREVER_TYPE: OperationRunType = OperationRunType::BackupScheduleScheduled;
/// Share of the runs of [`HELD_FOREVER_TYPE`] that get late progress (`late-progress`).
pub const LATE_SHARE: f64 = 0.3;

/// Workspaces `1..=WORKSPACES` are seeded.
pub const WORKSPACES: i64 = 4;
/// Tenants `FIRST_TENANT..FIRST_TENANT + TENANTS` are seeded, spread over the workspaces.
pub const FIRST_TENANT: i64 = 101;
/// How many tenants are seeded.
pub const TENANTS: i64 = 16;
/// Users `1..=USERS` are seeded.
pub const USERS: i64 = 3;

/// The operator's name on every operator action (`initiator_name`).
pub const OPERATOR: &str = "chaos-operator";
/// The operator's platform user (`user_id`; seeded).
pub const OPERATOR_USER: i64 = 1;

/// Share of messages published a second time, same command id and body.
pub const TWICE: f64 = 0.05;

/// The workspaces, tenants and users the workload refers to: what its sandbox seeds.
pub fn scopes() -> crate::sandbox::Scopes {
    crate::sandbox::Scopes {
        workspaces: (1..=WORKSPACES).collect(),
        tenants: (FIRST_TENANT..FIRST_TENANT + TENANTS)
            .map(|t| (t, tenant_workspace(t)))
            .collect(),
        users: (1..=USERS).collect(),
    }
}

/// The workspace tenant `tenant_id` belongs to.
pub fn tenant_workspace(tenant_id: i64) -> i64 {
    (tenant_id - FIRST_TENANT) % WORKSPACES + 1
}

/// A message to publish to `N.commands`.
#[derive(Debug, Clone)]
pub struct Message {
    /// The routing key (the command kind).
    pub routing_key: &'static str,
    /// The body, as sent.
    pub body: Vec<u8>,
    /// The AMQP `message_id` (the command id).
    pub message_id: String,
    /// False for a deliberate second copy and for bad messages: only fresh messages count as
    /// new work for the service.
    pub fresh: bool,
    /// An operator action sent over the API instead (`message_id` its `Idempotency-Key`;
    /// the routing key and body unused).
    pub api: Option<ApiAction>,
}

/// An operator action sent as `POST /v1/runs/{run_id}/{action}` with an operate token of the
/// run's workspace and tenant.
#[derive(Debug, Clone)]
pub struct ApiAction {
    /// The run.
    pub run_id: i64,
    /// What to do.
    pub action: RunAction,
    /// Why (a fail's reason).
    pub reason: Option<String>,
    /// The run's workspace, for the token.
    pub workspace_id: i64,
    /// The run's tenant, for the token.
    pub tenant_id: Option<i64>,
}

/// One run identity: what the dispatches of it have in common.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The operation type.
    pub run_type: OperationRunType,
    /// The workspace.
    pub workspace_id: i64,
    /// The tenant, `None` for a workspace-scoped run.
    pub tenant_id: Option<i64>,
    /// Its hash, as the service computes it.
    pub hash: RunIdentityHash,
}

/// One dispatch command of an identity, already worded.
#[derive(Debug, Clone)]
pub struct PlannedDispatch {
    /// Index into [`Workload::identities`] (the tests check the plan against it).
    #[cfg_attr(not(test), allow(dead_code))]
    pub identity: usize,
    /// Its command id.
    pub command_id: String,
    /// The body text.
    pub body: String,
    /// Published twice.
    pub twice: bool,
}

/// Summary count increments.
pub type Counts = BTreeMap<&'static str, u64>;

/// One failure entry sent; `item` is unique, so the stored summary shows whether it was
/// appended once.
#[derive(Debug, Clone)]
pub struct PlannedFailure {
    /// Its code.
    pub code: &'static str,
    /// Its message.
    pub message: String,
    /// Its unique item reference.
    pub item: String,
}

/// What a progress command asks for.
#[derive(Debug, Clone)]
pub enum StepAction {
    /// `update_run` to running.
    Start,
    /// `increment_summary_counts`.
    Increment(Counts),
    /// `append_failures`.
    AppendFailures(Vec<PlannedFailure>),
    /// `update_run` to completed, with some counts and failures of its own.
    Complete {
        /// The outcome.
        outcome: RunOutcome,
        /// Increments carried by the completion.
        counts: Counts,
        /// Failures carried by the completion.
        failures: Vec<PlannedFailure>,
    },
    /// `cancel_run` by an operator: a queued run completes `cancelled`, a running one's
    /// executor is asked to stop (see [`super::operator`]).
    Cancel,
    /// `fail_run` by an operator: the run completes `failed` with failure
    /// `run.failed_by_operator` and this reason as its message.
    Fail {
        /// The reason given.
        reason: String,
    },
    /// `retry_run` by an operator: the completed run is dispatched again (`context.retry_of`).
    Retry,
}

/// One progress command of a run.
#[derive(Debug, Clone)]
pub struct Step {
    /// Its command id.
    pub command_id: String,
    /// What it asks for.
    pub action: StepAction,
    /// Published twice.
    pub twice: bool,
    /// An operator action sent over the API, not the broker (see [`super::operator`]).
    pub over_api: bool,
}

/// The progress commands of one run, in the order an executor would send them.
#[derive(Debug, Clone)]
pub struct PlannedRun {
    /// The steps.
    pub steps: Vec<Step>,
    /// The run of the failure flood: its steps are published as one block, and the service may
    /// keep only the first of its failure entries (a documented cap).
    pub flood: bool,
    /// The index of its first late step, if it has late progress: those steps are published
    /// apart, after the completion (see [`Workload::late_messages`]).
    pub late_from: Option<usize>,
    /// The index of its first held step, if an operator retries it (its completion, or the
    /// operator's cancel before it): the steps from there are published apart (see
    /// [`Workload::retry_groups`]).
    pub held_from: Option<usize>,
}

impl PlannedRun {
    /// The steps published in the interleaved stream of phase 2 (all but the late and the
    /// held ones).
    pub fn on_time_steps(&self) -> &[Step] {
        let end = self.late_from.or(self.held_from);
        &self.steps[..end.unwrap_or(self.steps.len())]
    }

    /// The late steps.
    pub fn late_steps(&self) -> &[Step] {
        &self.steps[self.late_from.unwrap_or(self.steps.len())..]
    }

    /// The held steps but the retries: the completion and what follows it.
    pub fn held_steps(&self) -> impl Iterator<Item = &Step> {
        self.steps[self.held_from.unwrap_or(self.steps.len())..]
            .iter()
            .filter(|s| !matches!(s.action, StepAction::Retry))
    }
}

/// A retried run's end, published apart: its completion and what follows it once the
/// interleaved stream is out, its retries once that completion is applied. So a retry never
/// overtakes the completion (two instances may apply a run's commands out of order), and it
/// reaches a short queue, long before run retention could delete the completed run.
#[derive(Debug, Clone)]
pub struct RetryGroup {
    /// The command id of the run's completion.
    pub after: String,
    /// The completion and the steps after it, second copies right after their originals.
    pub tail: Vec<Message>,
    /// The retries, likewise.
    pub retries: Vec<Message>,
}

/// The late messages of one run, to be published apart, after its completion.
#[derive(Debug, Clone)]
pub struct LateGroup {
    /// The command id of the run's completion: the group is published
    /// [`crate::chaos::faults::retention::LATE_DELAY`] after it.
    pub after: String,
    /// The messages, second copies right after their originals.
    pub messages: Vec<Message>,
}

/// A message that must be dead-lettered, with the reason it must carry.
#[derive(Debug, Clone)]
pub struct BadMessage {
    /// Its command id (body field or `message_id`).
    pub command_id: String,
    /// The error code the dead letter must carry.
    pub expected_code: &'static str,
    /// The message.
    pub message: Message,
    /// The burst it belongs to (published together, as one block), if any.
    pub burst: Option<&'static str>,
}
