//! The operation run as stored in `operation_runs` and carried in events: typed, parsed once when
//! its row is read (`store::runs`), so the rules work on types, never on JSON or strings.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use super::failure_cap::FailureSummary;
use super::identity::RunIdentityHash;
use super::operation_type::OperationRunType;
use super::status::{RunOutcome, RunState, RunStatus};
use super::summary_counts::SummaryCounts;
use super::trace_context::TraceContext;

/// One row of `operation_runs`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OperationRun {
    /// The run id.
    pub id: i64,
    /// The owning workspace.
    pub workspace_id: i64,
    /// The tenant; `None` for a workspace-scoped run.
    pub tenant_id: Option<i64>,
    /// Who dispatched it.
    pub user_id: Option<i64>,
    /// Display name of the initiator.
    pub initiator_name: Option<String>,
    /// The operation type (its wire name in the row and the JSON form).
    #[serde(rename = "type", serialize_with = "as_wire")]
    pub run_type: OperationRunType,
    /// queued | running | completed.
    #[serde(serialize_with = "as_wire")]
    pub status: RunStatus,
    /// pending until completion.
    #[serde(serialize_with = "as_wire")]
    pub outcome: RunOutcome,
    /// The identity hash (64 hex chars).
    #[serde(serialize_with = "as_wire")]
    pub run_identity_hash: RunIdentityHash,
    /// Summary counts.
    pub summary_counts: SummaryCounts,
    /// The failure summary: the first entries (`failure_summary`, up to the cap of
    /// [`crate::domain::failure_cap`]) and the counts per code of the rest
    /// (`failure_overflow`).
    #[serde(flatten)]
    pub failure_summary: FailureSummary,
    /// The dispatch context, identity values normalised.
    pub context: Value,
    /// When it started running.
    pub started_at: Option<DateTime<Utc>>,
    /// When it completed.
    pub completed_at: Option<DateTime<Utc>>,
    /// When it was dispatched.
    pub created_at: DateTime<Utc>,
    /// Last change (any progress counts as a heartbeat).
    pub updated_at: DateTime<Utc>,
    /// The trace its dispatch carried (or started): stamped on its job and on events no command
    /// with a trace of its own caused. Not part of the JSON form (events carry it as the
    /// CloudEvents `traceparent` attribute instead).
    #[serde(skip)]
    pub trace: Option<TraceContext>,
}

fn as_wire<S: serde::Serializer, T: std::fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

impl OperationRun {
    /// Status and outcome together.
    pub fn state(&self) -> RunState {
        RunState {
            status: self.status,
            outcome: self.outcome,
        }
    }

    /// True while queued or running (the identity is taken).
    pub fn is_active(&self) -> bool {
        self.status != RunStatus::Completed
    }

    /// The JSON form carried in events and printed by the CLI.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("a run always serialises")
    }
}

/// Context keys that point at related records, shown as links by `oprun runs show`.
pub const RELATED_CONTEXT_KEYS: [&str; 6] = [
    "provider_connection_id",
    "backup_schedule_id",
    "backup_schedule_run_id",
    "backup_set_id",
    "policy_id",
    "restore_run_id",
];
