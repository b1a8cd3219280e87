//! The operation type registry and its catalog: which types exist, what people call them, how long
//! they are expected to take, which context keys make up a run's identity, and how long that
//! identity stays taken (the dedupe window).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::error::{ErrorCode, Rejection};

/// A registered operation type. The wire form (`inventory.sync`, …) is the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OperationRunType {
    /// `inventory.sync`
    InventorySync,
    /// `entra_group.sync`
    EntraGroupSync,
    /// `directory_role_definitions.sync`
    DirectoryRoleDefinitionsSync,
    /// `policy.sync`
    PolicySync,
    /// `backup_schedule.run_now`
    BackupScheduleRunNow,
    /// `backup_schedule.retry`
    BackupScheduleRetry,
    /// `backup_schedule.scheduled`
    BackupScheduleScheduled,
    /// `backup_set.add_policies`
    BackupSetAddPolicies,
    /// `restore.execute`
    RestoreExecute,
}

/// How long a run's identity stays taken, i.e. how long a dispatch of the same identity returns
/// that run (`"deduplicated": true`) instead of creating a new one. Enforced by partial unique
/// indexes on `operation_runs` (see the migrations), not only by a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DedupeWindow {
    /// While the run is queued or running; completion frees the identity (a later dispatch
    /// creates a new run).
    Active,
    /// Forever: an identity has at most one run, ever (e.g. one scheduled fire per schedule and
    /// minute, even after that run completed).
    Forever,
}

impl DedupeWindow {
    /// The stored form (`operation_runs.dedupe_window`) and the name the docs use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Forever => "forever",
        }
    }
}

impl fmt::Display for DedupeWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the catalog knows about one type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatalogEntry {
    /// The type itself.
    pub run_type: OperationRunType,
    /// The wire name, e.g. `inventory.sync`.
    pub name: &'static str,
    /// A label for people, e.g. `Inventory sync`.
    pub label: &'static str,
    /// The context keys whose values form the run identity, in catalog order.
    pub identity_keys: &'static [&'static str],
    /// How long a run of this type is expected to take; the stale-run reaper scales it.
    pub expected_duration: Duration,
    /// How long a run's identity stays taken.
    pub dedupe_window: DedupeWindow,
}

const fn minutes(m: u64) -> Duration {
    Duration::from_secs(m * 60)
}

/// The catalog: one entry per registered type.
pub const OPERATION_CATALOG: [CatalogEntry; 9] = [
    entry(
        OperationRunType::InventorySync,
        "inventory.sync",
        "Inventory sync",
        &["selection"],
        10,
    ),
    entry(
        OperationRunType::EntraGroupSync,
        "entra_group.sync",
        "Directory groups sync",
        &["selection_key"],
        10,
    ),
    entry(
        OperationRunType::DirectoryRoleDefinitionsSync,
        "directory_role_definitions.sync",
        "Directory role definitions sync",
        &["provider_connection_id"],
        5,
    ),
    entry(
        OperationRunType::PolicySync,
        "policy.sync",
        "Policy sync",
        &["policy_id"],
        5,
    ),
    entry(
        OperationRunType::BackupScheduleRunNow,
        "backup_schedule.run_now",
        "Backup (run now)",
        &["backup_schedule_id"],
        30,
    ),
    entry(
        OperationRunType::BackupScheduleRetry,
        "backup_schedule.retry",
        "Backup (retry)",
        &["backup_schedule_id", "backup_schedule_run_id"],
        30,
    ),
    entry(
        OperationRunType::BackupScheduleScheduled,
        "backup_schedule.scheduled",
        "Backup (scheduled)",
        &["backup_schedule_id", "scheduled_for"],
        30,
    )
    .forever(),
    entry(
        OperationRunType::BackupSetAddPolicies,
        "backup_set.add_policies",
        "Add policies to backup set",
        &["backup_set_id", "selection"],
        15,
    ),
    entry(
        OperationRunType::RestoreExecute,
        "restore.execute",
        "Restore",
        &["restore_run_id"],
        60,
    ),
];

const fn entry(
    run_type: OperationRunType,
    name: &'static str,
    label: &'static str,
    identity_keys: &'static [&'static str],
    expected_minutes: u64,
) -> CatalogEntry {
    CatalogEntry {
        run_type,
        name,
        label,
        identity_keys,
        expected_duration: minutes(expected_minutes),
        dedupe_window: DedupeWindow::Active,
    }
}

impl CatalogEntry {
    /// The same entry with the `forever` dedupe window.
    const fn forever(self) -> Self {
        Self {
            dedupe_window: DedupeWindow::Forever,
            ..self
        }
    }
}

impl OperationRunType {
    /// The catalog entry of this type.
    pub fn catalog(self) -> &'static CatalogEntry {
        OPERATION_CATALOG
            .iter()
            .find(|e| e.run_type == self)
            .expect("every type has a catalog entry")
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        self.catalog().name
    }

    /// Parses a wire name; an unregistered name is `unknown_type`.
    pub fn parse(name: &str) -> Result<Self, Rejection> {
        OPERATION_CATALOG
            .iter()
            .find(|e| e.name == name)
            .map(|e| e.run_type)
            .ok_or_else(|| {
                Rejection::new(
                    ErrorCode::UnknownType,
                    format!("unknown operation type {name:?}"),
                )
            })
    }
}

impl FromStr for OperationRunType {
    type Err = Rejection;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for OperationRunType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_catalog_name_parses_to_its_own_type() {
        for e in OPERATION_CATALOG {
            assert_eq!(OperationRunType::parse(e.name).unwrap(), e.run_type);
            assert_eq!(e.run_type.as_str(), e.name);
        }
    }

    #[test]
    fn unregistered_names_are_unknown_type() {
        let err = OperationRunType::parse("inventory.Sync").unwrap_err();
        assert_eq!(err.code, ErrorCode::UnknownType);
    }

    #[test]
    fn scheduled_backups_are_identified_by_schedule_and_minute() {
        let e = OperationRunType::BackupScheduleScheduled.catalog();
        assert_eq!(e.identity_keys, ["backup_schedule_id", "scheduled_for"]);
        assert_eq!(e.expected_duration, Duration::from_secs(1800));
    }

    #[test]
    fn only_scheduled_backups_are_deduplicated_forever() {
        for e in OPERATION_CATALOG {
            let expected = if e.run_type == OperationRunType::BackupScheduleScheduled {
                DedupeWindow::Forever
            } else {
                DedupeWindow::Active
            };
            assert_eq!(e.dedupe_window, expected, "{}", e.name);
        }
    }
}
