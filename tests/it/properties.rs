//! Property tests of the decoder and validator: any bytes and any JSON give either a valid
//! command or a typed rejection, never a panic.

use operation_runs::domain::{decode_command, CommandAction, ErrorCode};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
        prop::sample::select(vec![
            "dispatch",
            "update_run",
            "increment_summary_counts",
            "append_failures",
            "policy.sync",
            "inventory.sync",
            "running",
            "completed",
            "succeeded",
            "total"
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        let keys = prop::sample::select(vec![
            "kind",
            "command_id",
            "workspace_id",
            "tenant_id",
            "user_id",
            "type",
            "context",
            "run_id",
            "status",
            "outcome",
            "counts",
            "summary_counts",
            "failures",
            "policy_id",
            "selection",
            "code",
            "message",
            "x",
        ]);
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((keys, inner), 0..8).prop_map(|kv| Value::Object(
                kv.into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect::<Map<_, _>>()
            )),
        ]
    })
}

/// Valid-looking commands with one field replaced by an arbitrary value.
fn mutated_command() -> impl Strategy<Value = Value> {
    let base = prop::sample::select(vec![
        json!({"kind": "dispatch", "command_id": "c", "workspace_id": 1, "tenant_id": 2, "type": "backup_schedule.scheduled",
               "context": {"backup_schedule_id": 3, "scheduled_for": "2026-01-01T00:00:00Z"}}),
        json!({"kind": "update_run", "command_id": "c", "run_id": 1, "workspace_id": 1, "tenant_id": null,
               "status": "completed", "outcome": "failed", "summary_counts": {"total": 1}, "failures": [{"code": "a", "message": "b"}]}),
        json!({"kind": "increment_summary_counts", "command_id": "c", "run_id": 1, "workspace_id": 1, "tenant_id": 3, "counts": {"items": 2}}),
        json!({"kind": "append_failures", "command_id": "c", "run_id": 1, "workspace_id": 1, "tenant_id": 3, "failures": []}),
    ]);
    (base, any::<prop::sample::Index>(), arb_json()).prop_map(|(mut body, index, value)| {
        let keys: Vec<String> = body.as_object().unwrap().keys().cloned().collect();
        let key = index.get(&keys).clone();
        body[key] = value;
        body
    })
}

fn check(bytes: &[u8]) {
    match decode_command(bytes, Some("message-id")) {
        Ok(command) => {
            assert!(command.command_id.is_some());
            assert_eq!(command.body_hash.len(), 64);
            if let CommandAction::Dispatch(d) = command.action {
                assert_eq!(d.identity_hash.as_str().len(), 64);
            }
        }
        Err(rejection) => {
            assert!(ErrorCode::ALL.contains(&rejection.code));
            assert!(!rejection.message.is_empty());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check(&bytes);
    }

    #[test]
    fn arbitrary_json_never_panics(value in arb_json()) {
        check(value.to_string().as_bytes());
    }

    #[test]
    fn mutated_commands_decode_or_get_a_typed_rejection(body in mutated_command()) {
        check(body.to_string().as_bytes());
    }
}
