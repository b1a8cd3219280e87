//! The bench's workload, pre-built: runs planned ahead of time with their command bodies
//! built, so that building messages costs nothing while the clock runs. (The fault-injection
//! run's seeded plan, with what each run must end up as, is `chaos::plan::workload`.)
//!
//! Every run is: one dispatch; for 3 runs in 7 a duplicate dispatch of the same identity right
//! after it (so 30 % of dispatches are duplicates); then, once the dispatch's reply gives the run
//! id, `update_run` running, [`INCREMENTS_PER_RUN`] × `increment_summary_counts` and `update_run`
//! completed/succeeded. Types alternate between `inventory.sync` (identity `selection`) and
//! `policy.sync` (identity `policy_id`); runs are spread over 40 tenants in 4 workspaces, one run
//! in 8 workspace-scoped. A run therefore takes 6 or 7 commands.

use serde_json::{json, Value};

/// `increment_summary_counts` commands per run.
pub const INCREMENTS_PER_RUN: usize = 3;
/// Workspaces seeded by the sandbox: ids `1..=WORKSPACES`.
pub const WORKSPACES: i64 = 4;
/// Tenants seeded per workspace: tenant `100 + 10 (w - 1) + t` for `t` in `1..=10`.
pub const TENANTS_PER_WORKSPACE: i64 = 10;

/// The workspaces, tenants and users the workload refers to: what the bench's sandbox seeds.
pub fn scopes() -> crate::sandbox::Scopes {
    crate::sandbox::Scopes {
        workspaces: (1..=WORKSPACES).collect(),
        tenants: (1..=WORKSPACES)
            .flat_map(|w| {
                (1..=TENANTS_PER_WORKSPACE)
                    .map(move |t| (100 + TENANTS_PER_WORKSPACE * (w - 1) + t, w))
            })
            .collect(),
        users: vec![1],
    }
}

/// A pre-built command body.
#[derive(Debug, Clone)]
pub struct Prebuilt {
    /// Its `command_id` (also the AMQP `message_id`).
    pub command_id: String,
    /// The routing key: the command kind.
    pub routing_key: &'static str,
    /// The JSON body.
    pub body: Vec<u8>,
}

/// What a progress step asks for, and so which event it causes when applied in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `update_run` running → `operation_run.started`.
    Start,
    /// `increment_summary_counts` → `operation_run.progressed`.
    Increment,
    /// `update_run` completed/succeeded → `operation_run.completed`.
    Complete,
}

/// A progress command whose body lacks only the run id (known once the dispatch is answered).
#[derive(Debug, Clone)]
pub struct ProgressTemplate {
    /// The step.
    pub step: Step,
    /// Its `command_id`.
    pub command_id: String,
    /// The routing key.
    pub routing_key: &'static str,
    prefix: String,
    suffix: String,
}

impl ProgressTemplate {
    /// The body for `run_id`.
    pub fn body(&self, run_id: i64) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.prefix.len() + self.suffix.len() + 20);
        out.extend_from_slice(self.prefix.as_bytes());
        out.extend_from_slice(run_id.to_string().as_bytes());
        out.extend_from_slice(self.suffix.as_bytes());
        out
    }
}

/// One run of the workload.
#[derive(Debug, Clone)]
pub struct RunPlan {
    /// The dispatch and, for some runs, its duplicate (same identity, another command id).
    pub dispatches: Vec<Prebuilt>,
    /// start, increments, completion, in order.
    pub progress: Vec<ProgressTemplate>,
}

impl RunPlan {
    /// Commands of this run.
    pub fn commands(&self) -> usize {
        self.dispatches.len() + self.progress.len()
    }
}

/// Plans runs until they hold at least `commands` commands; `label` keeps identities of two
/// phases apart. The last run is whole, so the total may exceed `commands` by up to 6.
pub fn plan(label: &str, commands: usize) -> Vec<RunPlan> {
    let mut plans = Vec::new();
    let mut total = 0;
    let mut i = 0usize;
    while total < commands {
        let p = run_plan(label, i);
        total += p.commands();
        plans.push(p);
        i += 1;
    }
    plans
}

/// Total commands of `plans`.
pub fn total_commands(plans: &[RunPlan]) -> usize {
    plans.iter().map(RunPlan::commands).sum()
}

/// Mean dispatch body size in bytes (what the baseline publishes).
pub fn mean_dispatch_bytes(plans: &[RunPlan]) -> usize {
    let (n, bytes) = plans
        .iter()
        .flat_map(|p| &p.dispatches)
        .fold((0, 0), |(n, b), d| (n + 1, b + d.body.len()));
    bytes.checked_div(n).unwrap_or(0)
}

fn run_plan(label: &str, i: usize) -> RunPlan {
    let workspace_id = 1 + (i as i64 % WORKSPACES);
    let tenant_id = (i % 8 != 7)
        .then(|| 100 + 10 * (workspace_id - 1) + 1 + (i as i64 / 4) % TENANTS_PER_WORKSPACE);
    let (run_type, context) = if i % 2 == 0 {
        (
            "inventory.sync",
            json!({"selection": {"bench": label, "run": i, "scope": "all_devices"}}),
        )
    } else {
        ("policy.sync", json!({"policy_id": format!("{label}-{i}")}))
    };
    let duplicated = i % 7 < 3;
    let dispatches = (0..1 + usize::from(duplicated))
        .map(|_| {
            let command_id = uuid::Uuid::new_v4().to_string();
            let body = json!({
                "kind": "dispatch", "command_id": command_id, "type": run_type,
                "workspace_id": workspace_id, "tenant_id": tenant_id, "context": context,
            });
            Prebuilt {
                command_id,
                routing_key: "dispatch",
                body: serde_json::to_vec(&body).expect("JSON values serialise"),
            }
        })
        .collect();
    let scope = json!({"workspace_id": workspace_id, "tenant_id": tenant_id});
    let mut progress = vec![template(
        Step::Start,
        "update_run",
        &scope,
        json!({"status": "running"}),
    )];
    for _ in 0..INCREMENTS_PER_RUN {
        progress.push(template(
            Step::Increment,
            "increment_summary_counts",
            &scope,
            json!({"counts": {"processed": 10}}),
        ));
    }
    progress.push(template(
        Step::Complete,
        "update_run",
        &scope,
        json!({"status": "completed", "outcome": "succeeded"}),
    ));
    RunPlan {
        dispatches,
        progress,
    }
}

fn template(step: Step, kind: &'static str, scope: &Value, fields: Value) -> ProgressTemplate {
    let command_id = uuid::Uuid::new_v4().to_string();
    let head = json!({"kind": kind, "command_id": command_id});
    let mut tail = scope.clone();
    for (k, v) in fields.as_object().expect("an object") {
        tail[k] = v.clone();
    }
    // `{"kind":…,"command_id":…` + `,"run_id":` <id> `,` + the rest without its `{`.
    let head = serde_json::to_string(&head).expect("JSON values serialise");
    let tail = serde_json::to_string(&tail).expect("JSON values serialise");
    ProgressTemplate {
        step,
        command_id,
        routing_key: kind,
        prefix: format!("{},\"run_id\":", &head[..head.len() - 1]),
        suffix: format!(",{}", &tail[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use operation_runs::domain::{decode_command, CommandAction, CommandKind};

    #[test]
    fn every_planned_body_is_a_valid_command() {
        for p in plan("t", 200) {
            for d in &p.dispatches {
                let c = decode_command(&d.body, Some(&d.command_id)).unwrap();
                assert_eq!(c.kind, CommandKind::Dispatch);
            }
            for t in &p.progress {
                let body = t.body(42);
                let c = decode_command(&body, Some(&t.command_id)).unwrap();
                assert_eq!(c.kind.as_str(), t.routing_key);
                assert_eq!(c.run_id(), Some(42));
            }
        }
    }

    #[test]
    fn three_dispatches_in_ten_are_duplicates() {
        let plans = plan("t", 7_000);
        let dispatches: usize = plans.iter().map(|p| p.dispatches.len()).sum();
        let duplicates = dispatches - plans.len();
        let share = duplicates as f64 / dispatches as f64;
        assert!((0.29..0.31).contains(&share), "{share}");
        assert!(total_commands(&plans) >= 7_000);
    }

    #[test]
    fn duplicates_share_an_identity_and_runs_do_not() {
        let plans = plan("t", 100);
        let hash = |d: &Prebuilt| match decode_command(&d.body, None).unwrap().action {
            CommandAction::Dispatch(d) => d.identity_hash.as_str().to_owned(),
            CommandAction::Progress(_) => panic!("a dispatch"),
        };
        let mut seen = std::collections::HashSet::new();
        for p in &plans {
            let first = hash(&p.dispatches[0]);
            assert!(p.dispatches.iter().all(|d| hash(d) == first));
            assert!(seen.insert(first));
        }
    }
}
