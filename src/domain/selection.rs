//! The runs a bulk action acts on (`oprun runs cancel|retry|fail` with a filter instead of ids),
//! and the bulk action's default id.
//!
//! The id is derived from the action, the filter and the minute the action started in: the same
//! command run again within the minute, or later with the `--bulk-id` the first run printed,
//! is the same bulk action, and an action it already did on a run is not done again (the
//! record's unique index, `service::actions`).

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::action::RunAction;
use super::operation_type::OperationRunType;
use super::status::{RunOutcome, RunStatus};

/// Which runs a bulk action takes: every set field must match (an empty selection matches
/// nothing: [`RunSelection::is_empty`] is refused by the CLI).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSelection {
    /// Only this workspace.
    pub workspace_id: Option<i64>,
    /// Only this tenant.
    pub tenant_id: Option<i64>,
    /// Only this type.
    pub run_type: Option<OperationRunType>,
    /// Only this status.
    pub status: Option<RunStatus>,
    /// Only this outcome.
    pub outcome: Option<RunOutcome>,
    /// Only runs with a failure of this code (a stored entry or an overflow count).
    pub failure_code: Option<String>,
    /// Only runs created before this time.
    pub created_before: Option<DateTime<Utc>>,
    /// Only runs whose last change is before this time.
    pub updated_before: Option<DateTime<Utc>>,
}

impl RunSelection {
    /// Whether no field is set (it would select every run).
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// Whether every run it selects is completed (an outcome other than `pending` implies it),
    /// so that the query can say so with a literal the completed runs' partial indexes match.
    pub fn completed_only(&self) -> bool {
        self.status == Some(RunStatus::Completed)
            || self.outcome.is_some_and(|o| o != RunOutcome::Pending)
    }

    /// Whether every run it selects is queued or running.
    pub fn active_only(&self) -> bool {
        matches!(self.status, Some(RunStatus::Queued | RunStatus::Running))
            || self.outcome == Some(RunOutcome::Pending)
    }

    /// The set fields as JSON (times in RFC 3339 UTC), keys in a fixed order.
    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        let mut set = |key: &str, value: Option<Value>| {
            if let Some(v) = value {
                out.insert(key.to_owned(), v);
            }
        };
        set("workspace_id", self.workspace_id.map(|v| json!(v)));
        set("tenant_id", self.tenant_id.map(|v| json!(v)));
        set("type", self.run_type.map(|t| json!(t.as_str())));
        set("status", self.status.map(|s| json!(s.as_str())));
        set("outcome", self.outcome.map(|o| json!(o.as_str())));
        set("failure_code", self.failure_code.as_ref().map(|c| json!(c)));
        set("created_before", self.created_before.map(|t| json!(t)));
        set("updated_before", self.updated_before.map(|t| json!(t)));
        Value::Object(out)
    }

    /// The default id of bulk `action` on this selection started at `now`:
    /// `<action>-<UTC minute>-<16 hex digits of the SHA-256 of action and filter>`, e.g.
    /// `retry-20261203T1015Z-3f9a1c2b0d4e5f61`.
    pub fn bulk_id(&self, action: RunAction, now: DateTime<Utc>) -> String {
        let minute = now.duration_trunc(TimeDelta::minutes(1)).unwrap_or(now);
        let document = json!({"action": action.as_str(), "filter": self.to_json()});
        let canonical =
            serde_json_canonicalizer::to_vec(&document).expect("a JSON value canonicalises");
        let digest = hex::encode(Sha256::digest(&canonical));
        format!(
            "{}-{}-{}",
            action.as_str(),
            minute.format("%Y%m%dT%H%MZ"),
            &digest[..16]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    fn failed_syncs() -> RunSelection {
        RunSelection {
            run_type: Some(OperationRunType::parse("policy.sync").unwrap()),
            outcome: Some(RunOutcome::Failed),
            ..Default::default()
        }
    }

    #[test]
    fn the_bulk_id_is_the_same_within_a_minute_and_differs_by_minute_filter_and_action() {
        let s = failed_syncs();
        let id = s.bulk_id(RunAction::Retry, at("2026-12-03T10:15:02Z"));
        assert!(id.starts_with("retry-20261203T1015Z-"), "{id}");
        assert_eq!(id.len(), "retry-20261203T1015Z-".len() + 16);
        assert_eq!(id, s.bulk_id(RunAction::Retry, at("2026-12-03T10:15:59Z")));
        assert_ne!(id, s.bulk_id(RunAction::Retry, at("2026-12-03T10:16:00Z")));
        assert_ne!(id, s.bulk_id(RunAction::Cancel, at("2026-12-03T10:15:02Z")));
        let mut other = s.clone();
        other.tenant_id = Some(10);
        assert_ne!(
            id,
            other.bulk_id(RunAction::Retry, at("2026-12-03T10:15:02Z"))
        );
    }

    #[test]
    fn an_outcome_implies_completed_runs_and_an_active_status_implies_active_ones() {
        assert!(failed_syncs().completed_only());
        assert!(!failed_syncs().active_only());
        let running = RunSelection {
            status: Some(RunStatus::Running),
            ..Default::default()
        };
        assert!(running.active_only() && !running.completed_only());
        assert!(RunSelection::default().is_empty());
        assert!(!running.is_empty());
        assert_eq!(
            failed_syncs().to_json(),
            json!({"type": "policy.sync", "outcome": "failed"})
        );
    }
}
