//! Property tests of the decoder and validator: any bytes and any JSON give either a valid
//! command or a typed rejection, never a panic; a repeated key or a NUL anywhere is refused.

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

/// Every string of `value` (keys and values) and every object, by a path of keys and indices.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

fn objects(value: &Value, path: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    match value {
        Value::Object(o) => {
            if !o.is_empty() {
                out.push(path.clone());
            }
            for (k, v) in o {
                path.push(Step::Key(k.clone()));
                objects(v, path, out);
                path.pop();
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                path.push(Step::Index(i));
                objects(v, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

/// `value` as JSON text, the object at `at` writing its key number `key` a second time with `dup`.
fn write_with_duplicate(value: &Value, at: &[Step], key: usize, dup: &Value, out: &mut String) {
    match value {
        Value::Object(o) => {
            out.push('{');
            for (i, (k, v)) in o.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::from(k.as_str()).to_string());
                out.push(':');
                match at.split_first() {
                    Some((Step::Key(next), rest)) if next == k => {
                        write_with_duplicate(v, rest, key, dup, out)
                    }
                    _ => out.push_str(&v.to_string()),
                }
            }
            if at.is_empty() {
                let k = o.keys().nth(key % o.len()).unwrap();
                out.push_str(&format!(",{}:{}", Value::from(k.as_str()), dup));
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                match at.split_first() {
                    Some((Step::Index(next), rest)) if *next == i => {
                        write_with_duplicate(v, rest, key, dup, out)
                    }
                    _ => out.push_str(&v.to_string()),
                }
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// `value` with a NUL inserted into its `n`-th string (keys and values, in walk order), if any.
fn with_nul(value: &Value, n: &mut usize) -> Value {
    let poison = |s: &str, n: &mut usize| {
        let hit = *n == 0;
        *n = n.wrapping_sub(1);
        if hit {
            let at = s.chars().count() / 2;
            let (a, b): (String, String) =
                (s.chars().take(at).collect(), s.chars().skip(at).collect());
            format!("{a}\0{b}")
        } else {
            s.to_owned()
        }
    };
    match value {
        Value::String(s) => Value::String(poison(s, n)),
        Value::Array(a) => Value::Array(a.iter().map(|v| with_nul(v, n)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| {
                    let k = poison(k, n);
                    (k, with_nul(v, n))
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

fn count_strings(value: &Value) -> usize {
    match value {
        Value::String(_) => 1,
        Value::Array(a) => a.iter().map(count_strings).sum(),
        Value::Object(o) => o.len() + o.values().map(count_strings).sum::<usize>(),
        _ => 0,
    }
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

    #[test]
    fn a_key_written_twice_anywhere_is_refused(
        body in mutated_command(),
        which in any::<prop::sample::Index>(),
        key in any::<usize>(),
        dup in arb_json(),
    ) {
        let mut found = Vec::new();
        objects(&body, &mut Vec::new(), &mut found);
        let at = which.get(&found);
        let mut text = String::new();
        write_with_duplicate(&body, at, key, &dup, &mut text);
        let rejection = decode_command(text.as_bytes(), Some("m")).unwrap_err();
        // A NUL generated inside a string before the repeated key is found first.
        if text.contains("\\u0000") {
            prop_assert!(matches!(rejection.code, ErrorCode::DuplicateKey | ErrorCode::InvalidString));
        } else {
            prop_assert_eq!(rejection.code, ErrorCode::DuplicateKey, "{}", text);
        }
    }

    #[test]
    fn a_nul_in_any_string_is_refused(body in mutated_command(), which in any::<prop::sample::Index>()) {
        let strings = count_strings(&body);
        prop_assume!(strings > 0);
        let poisoned = with_nul(&body, &mut which.index(strings));
        let rejection = decode_command(poisoned.to_string().as_bytes(), Some("m")).unwrap_err();
        prop_assert_eq!(rejection.code, ErrorCode::InvalidString, "{}", poisoned);
    }
}
