//! The deliberately bad messages: the only ones the dead-letter queue may hold, each with the
//! reason it must carry.

use rand::rngs::StdRng;
use rand::Rng;
use serde_json::json;

use super::shuffled_json::to_shuffled_string;
use super::workload::{tenant_workspace, BadMessage, Message, FIRST_TENANT, TENANTS};

/// Invalid JSON bodies (accounted by their `message_id`).
const BAD_JSON: usize = 20;
/// Dispatches of an unregistered type.
const BAD_TYPE: usize = 20;
/// Increments of a run that does not exist.
const BAD_RUN: usize = 10;

/// 20 invalid JSON bodies (accounted by `message_id`), 20 dispatches of an unknown type and 10
/// increments of a run that does not exist.
pub(super) fn bad_messages(rng: &mut StdRng) -> Vec<BadMessage> {
    let mut bad = Vec::new();
    for i in 0..BAD_JSON {
        let command_id = format!("bad-json-{i}");
        let body = format!(
            r#"{{"kind":"increment_summary_counts","command_id":"{command_id}","counts":{{"total":"#
        );
        bad.push(bad_message(
            command_id,
            "invalid_json",
            "increment_summary_counts",
            body,
        ));
    }
    for i in 0..BAD_TYPE {
        let command_id = format!("bad-type-{i}");
        let tenant = rng.random_range(FIRST_TENANT..FIRST_TENANT + TENANTS);
        let body = json!({
            "kind": "dispatch", "command_id": command_id, "workspace_id": tenant_workspace(tenant),
            "tenant_id": tenant, "type": "chaos.unknown_type", "context": {"n": i},
        });
        let body = to_shuffled_string(&body, rng);
        bad.push(bad_message(command_id, "unknown_type", "dispatch", body));
    }
    for i in 0..BAD_RUN {
        let command_id = format!("bad-run-{i}");
        let body = json!({
            "kind": "increment_summary_counts", "command_id": command_id,
            "run_id": 9_000_000_000_i64 + i as i64, "workspace_id": 1, "tenant_id": null,
            "counts": {"total": 1},
        });
        let body = to_shuffled_string(&body, rng);
        bad.push(bad_message(
            command_id,
            "run_not_found",
            "increment_summary_counts",
            body,
        ));
    }
    bad
}

fn bad_message(
    command_id: String,
    expected_code: &'static str,
    routing_key: &'static str,
    body: String,
) -> BadMessage {
    BadMessage {
        message: Message {
            routing_key,
            body: body.into_bytes(),
            message_id: command_id.clone(),
            fresh: false,
        },
        command_id,
        expected_code,
    }
}
