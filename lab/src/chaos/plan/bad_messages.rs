//! The deliberately bad messages: the only ones the dead-letter queue may hold, each with the
//! reason it must carry. The first 50 are spread over phase 2; the bursts (oversized,
//! NUL-bearing, duplicate-key) each arrive as one block.

use rand::rngs::StdRng;
use rand::Rng;
use serde_json::json;

use super::injections::{Injection, Injections};
use super::model::{tenant_workspace, BadMessage, Message, FIRST_TENANT, TENANTS};
use super::shuffled_json::to_shuffled_string;
use operation_runs::domain::command::MAX_COMMAND_BYTES;

/// Invalid JSON bodies (accounted by their `message_id`).
const BAD_JSON: usize = 20;
/// Dispatches of an unregistered type.
const BAD_TYPE: usize = 20;
/// Increments of a run that does not exist.
const BAD_RUN: usize = 10;
/// Messages in each burst (oversized, NUL-bearing, duplicate-key).
pub const BURST: usize = 20;
/// Body size of the oversized burst: over the service's 256 KiB limit, far under the broker's
/// default `max_message_size` (128 MiB), so it reaches the service.
pub const OVERSIZED_BYTES: usize = 300 * 1024;

/// 20 invalid JSON bodies (accounted by `message_id`), 20 dispatches of an unknown type and 10
/// increments of a run that does not exist; then, as `injections` say, the bursts: 20 bodies of
/// 300 KiB, 20 commands with `\u0000` in a string, 20 with a key twice.
pub(super) fn bad_messages(rng: &mut StdRng, injections: &Injections) -> Vec<BadMessage> {
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
    if injections.has(Injection::Oversized) {
        bad.extend((0..BURST).map(oversized));
    }
    if injections.has(Injection::Nul) {
        bad.extend((0..BURST).map(|i| nul_bearing(i, rng)));
    }
    if injections.has(Injection::DuplicateKeys) {
        bad.extend((0..BURST).map(|i| duplicate_key(i, rng)));
    }
    bad
}

/// An increment padded past [`MAX_COMMAND_BYTES`]: `message_too_large`.
fn oversized(i: usize) -> BadMessage {
    let command_id = format!("bad-big-{i}");
    let head = format!(
        r#"{{"kind":"increment_summary_counts","command_id":"{command_id}","run_id":{},"workspace_id":1,"tenant_id":null,"counts":{{"total":1}},"padding":""#,
        9_100_000_000_i64 + i as i64
    );
    let mut body = head;
    body.push_str(&"x".repeat(OVERSIZED_BYTES.saturating_sub(body.len() + 2)));
    body.push_str(r#""}"#);
    debug_assert!(body.len() > MAX_COMMAND_BYTES);
    burst_message(
        command_id,
        "message_too_large",
        "increment_summary_counts",
        body,
        "oversized",
    )
}

/// `\u0000` in a string value, in turn: a dispatch's non-identity context value, a dispatch's
/// `initiator_name` (a text column), a failure message of a run that does not exist. Refused at
/// decode as `invalid_string`, before any lookup (not refused later by the database).
fn nul_bearing(i: usize, rng: &mut StdRng) -> BadMessage {
    let command_id = format!("bad-nul-{i}");
    let tenant = rng.random_range(FIRST_TENANT..FIRST_TENANT + TENANTS);
    let dispatch = |context: serde_json::Value, initiator: Option<&str>| {
        let mut body = json!({
            "kind": "dispatch", "command_id": command_id, "workspace_id": tenant_workspace(tenant),
            "tenant_id": tenant, "type": "inventory.sync", "context": context,
        });
        if let Some(name) = initiator {
            body["initiator_name"] = json!(name);
        }
        body
    };
    let (kind, body) = match i % 3 {
        0 => (
            "dispatch",
            dispatch(
                json!({"selection": {"nul": i}, "trigger": "man\u{0}ual"}),
                None,
            ),
        ),
        1 => (
            "dispatch",
            dispatch(json!({"selection": {"nul": i}}), Some("chaos\u{0}")),
        ),
        _ => (
            "append_failures",
            json!({
                "kind": "append_failures", "command_id": command_id,
                "run_id": 9_200_000_000_i64 + i as i64, "workspace_id": 1, "tenant_id": null,
                "failures": [{"code": "item.invalid", "message": "bad\u{0}byte", "item": "n"}],
            }),
        ),
    };
    let body = to_shuffled_string(&body, rng);
    debug_assert!(body.contains("\\u0000"));
    burst_message(command_id, "invalid_string", kind, body, "nul")
}

/// A key twice in one object, in turn: `tenant_id` of a dispatch (last-wins would make it
/// workspace-scoped), an identity key inside `context`, a count of a run that does not exist.
/// Refused at decode as `duplicate_key` (never applied last-wins). Written by hand: no JSON library
/// writes such text.
fn duplicate_key(i: usize, rng: &mut StdRng) -> BadMessage {
    let command_id = format!("bad-dupkey-{i}");
    let tenant = rng.random_range(FIRST_TENANT..FIRST_TENANT + TENANTS);
    let workspace = tenant_workspace(tenant);
    let (kind, body) = match i % 3 {
        0 => (
            "dispatch",
            format!(
                r#"{{"kind":"dispatch","command_id":"{command_id}","workspace_id":{workspace},"tenant_id":{tenant},"type":"policy.sync","context":{{"policy_id":"dupkey-{i}"}},"tenant_id":null}}"#
            ),
        ),
        1 => (
            "dispatch",
            format!(
                r#"{{"kind":"dispatch","command_id":"{command_id}","workspace_id":{workspace},"tenant_id":{tenant},"type":"policy.sync","context":{{"policy_id":"dupkey-{i}","reason":"manual","policy_id":"other-{i}"}}}}"#
            ),
        ),
        _ => (
            "increment_summary_counts",
            format!(
                r#"{{"kind":"increment_summary_counts","command_id":"{command_id}","run_id":{},"workspace_id":1,"tenant_id":null,"counts":{{"total":1,"total":2}}}}"#,
                9_300_000_000_i64 + i as i64
            ),
        ),
    };
    burst_message(command_id, "duplicate_key", kind, body, "duplicate-keys")
}

fn burst_message(
    command_id: String,
    expected_code: &'static str,
    routing_key: &'static str,
    body: String,
    burst: &'static str,
) -> BadMessage {
    BadMessage {
        burst: Some(burst),
        ..bad_message(command_id, expected_code, routing_key, body)
    }
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
            api: None,
        },
        command_id,
        expected_code,
        burst: None,
    }
}
