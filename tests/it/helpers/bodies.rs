//! Command bodies: dispatches built with the client's own [`DispatchRequest`], progress
//! commands as JSON (tests also need bodies the client would never build).

use operation_runs::client::producer::{new_command_id, DispatchRequest};
use serde_json::{json, Value};

use super::{json_properties, wait_for_active_run, TestApp};

impl TestApp {
    /// Publishes a `policy.sync` dispatch of workspace 1 / tenant 10.
    pub async fn dispatch_policy(&self, policy_id: i64) {
        self.publish(&dispatch(
            "policy.sync",
            1,
            Some(10),
            json!({ "policy_id": policy_id }),
        ))
        .await;
    }

    /// Dispatches a `policy.sync` run of workspace 1 / tenant 10 and returns its id once created.
    pub async fn create_policy_run(&self, policy_id: i64) -> i64 {
        self.dispatch_policy(policy_id).await;
        wait_for_active_run(self, "policy.sync").await
    }

    /// Publishes each `(routing key, body)` raw, followed by a good command (`total` + 1 on
    /// `run_id`), and returns how many good ones it sent.
    pub async fn publish_interleaved_with_good(
        &self,
        run_id: i64,
        bad: impl IntoIterator<Item = (String, Vec<u8>)>,
    ) -> u64 {
        let mut good = 0;
        for (routing_key, body) in bad {
            self.publish_raw(&routing_key, &body, json_properties())
                .await;
            self.publish(&progress(
                "increment_summary_counts",
                run_id,
                json!({"counts": {"total": 1}}),
            ))
            .await;
            good += 1;
        }
        good
    }
}

/// A dispatch body (a fresh command id), as the client's [`DispatchRequest`] builds it.
pub fn dispatch(run_type: &str, workspace: i64, tenant: Option<i64>, context: Value) -> Value {
    DispatchRequest {
        run_type: run_type.to_owned(),
        workspace_id: workspace,
        tenant_id: tenant,
        user_id: None,
        initiator_name: None,
        context,
    }
    .to_body(&new_command_id())
}

/// A progress command body of `kind` for run `run_id` in workspace 1 / tenant 10 with `fields`.
pub fn progress(kind: &str, run_id: i64, fields: Value) -> Value {
    let mut body = json!({"kind": kind, "command_id": uuid::Uuid::new_v4().to_string(), "run_id": run_id,
                          "workspace_id": 1, "tenant_id": 10});
    for (k, v) in fields.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}
