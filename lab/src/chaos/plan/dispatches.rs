//! Phase 1 wording: the identities and their dispatches. Duplicates keep the identity values
//! and change everything else they may: key order (at every depth, see
//! [`super::shuffled_json`]), non-identity context, `scheduled_for` in another time zone,
//! `tenant_id: null` or absent, optional fields. Identities of [`REJECTED_TYPE`] are
//! dispatched once each (see there why).

use chrono::{DateTime, Duration, FixedOffset, SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::Rng;
use serde_json::{json, Map, Value};

use super::model::{
    tenant_workspace, Identity, FIRST_TENANT, REJECTED_TYPE, TENANTS, USERS, WORKSPACES,
};
use super::shuffled_json::to_shuffled_string;
use operation_runs::domain::{OperationRunType, RunIdentityHash};

/// The contexts of an identity's dispatches: the first, then its duplicates (about 30% of all
/// dispatches), each with the same identity values but other extras.
pub(super) fn dispatch_contexts(
    i: usize,
    rng: &mut StdRng,
) -> (OperationRunType, Vec<Map<String, Value>>) {
    let mut duplicates = match rng.random_range(0..100) {
        0..70 => 0,
        70..88 => 1,
        88..96 => 2,
        _ => 3,
    };
    let kind = match rng.random_range(0..100) {
        0..50 => OperationRunType::InventorySync,
        50..78 => OperationRunType::PolicySync,
        78..92 => OperationRunType::BackupScheduleScheduled,
        _ => REJECTED_TYPE,
    };
    if kind == REJECTED_TYPE {
        duplicates = 0;
    }
    let type_count = rng.random_range(1..=4);
    let types: Vec<&str> = ["policy", "app", "device", "group"]
        .choose_multiple(rng, type_count)
        .copied()
        .collect();
    let scope = *["tenant", "all"].choose(rng).expect("not empty");
    let platform = *["windows", "macos", "ios"].choose(rng).expect("not empty");
    let selection = json!({
        "scope": scope,
        "types": types,
        "filters": {"platform": platform, "since_days": rng.random_range(1..30)},
        "batch": i,
    });
    let policy_id = if rng.random_bool(0.5) {
        json!(format!("pol-{i:05}"))
    } else {
        json!(i)
    };
    // Identity values of scheduled backups are cut to the UTC minute: every duplicate writes
    // the same minute another way.
    let minute = DateTime::<Utc>::from_timestamp(1_772_323_200, 0).expect("a valid time")
        + Duration::minutes(i as i64);
    let contexts = (0..=duplicates)
        .map(|_| {
            let context = match kind {
                OperationRunType::InventorySync => json!({
                    "selection": selection,
                    "trigger": *["manual", "schedule", "api"].choose(rng).expect("not empty"),
                    "requested_at_ms": rng.random_range(0..1_000_000),
                }),
                OperationRunType::PolicySync => json!({
                    "policy_id": policy_id,
                    "reason": *["drift", "manual", "assignment_changed"].choose(rng).expect("not empty"),
                }),
                t if t == REJECTED_TYPE => json!({
                    "selection_key": format!("groups-{i:05}"),
                    "page_size": rng.random_range(50..500),
                }),
                _ => json!({
                    "backup_schedule_id": i,
                    "scheduled_for": same_minute_elsewhere(minute, rng),
                    "attempt": rng.random_range(1..4),
                }),
            };
            match context {
                Value::Object(map) => map,
                _ => unreachable!("contexts are objects"),
            }
        })
        .collect();
    (kind, contexts)
}

/// `minute` plus up to 59.999 s, written in one of several time zones.
fn same_minute_elsewhere(minute: DateTime<Utc>, rng: &mut StdRng) -> String {
    let offset_secs = *[0, 3600, -5 * 3600, 5 * 3600 + 1800]
        .choose(rng)
        .expect("not empty");
    let zone = FixedOffset::east_opt(offset_secs).expect("a valid offset");
    let at = minute + Duration::milliseconds(rng.random_range(0..60_000));
    at.with_timezone(&zone)
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The identity of identity `i`'s dispatches, in a random scope (a third of policy syncs are
/// workspace-scoped).
pub(super) fn identity_for(
    i: usize,
    run_type: OperationRunType,
    context: &Map<String, Value>,
    rng: &mut StdRng,
) -> Identity {
    let workspace_scoped = run_type == OperationRunType::PolicySync && rng.random_bool(0.3);
    let (workspace_id, tenant_id) = if workspace_scoped {
        (rng.random_range(1..=WORKSPACES), None)
    } else {
        let tenant = rng.random_range(FIRST_TENANT..FIRST_TENANT + TENANTS);
        (tenant_workspace(tenant), Some(tenant))
    };
    let hash = RunIdentityHash::compute(run_type, workspace_id, tenant_id, context)
        .unwrap_or_else(|e| panic!("identity {i}: the generator built an invalid context: {e:?}"));
    Identity {
        run_type,
        workspace_id,
        tenant_id,
        hash,
    }
}

pub(super) fn dispatch_body(
    identity: &Identity,
    command_id: &str,
    context: &Map<String, Value>,
    rng: &mut StdRng,
) -> String {
    let same = RunIdentityHash::compute(
        identity.run_type,
        identity.workspace_id,
        identity.tenant_id,
        context,
    )
    .ok();
    assert_eq!(
        same.as_ref(),
        Some(&identity.hash),
        "a duplicate must keep its identity"
    );
    let mut body = Map::new();
    body.insert("kind".into(), json!("dispatch"));
    body.insert("command_id".into(), json!(command_id));
    body.insert("workspace_id".into(), json!(identity.workspace_id));
    match identity.tenant_id {
        Some(t) => {
            body.insert("tenant_id".into(), json!(t));
        }
        // A workspace-scoped dispatch may say so with null or by leaving the field out.
        None if rng.random_bool(0.5) => {
            body.insert("tenant_id".into(), Value::Null);
        }
        None => {}
    }
    if rng.random_bool(0.5) {
        body.insert("user_id".into(), json!(rng.random_range(1..=USERS)));
    }
    if rng.random_bool(0.3) {
        body.insert("initiator_name".into(), json!("chaos"));
    }
    body.insert("type".into(), json!(identity.run_type.as_str()));
    body.insert("context".into(), Value::Object(context.clone()));
    to_shuffled_string(&Value::Object(body), rng)
}
