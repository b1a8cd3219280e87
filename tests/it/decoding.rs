//! Decoding end to end: a repeated key or a NUL character is dead-lettered
//! with its own code and changes nothing; an integer id and its decimal string are one identity.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{dispatch, dispatch_with_reply, header, json_properties, progress, TestApp};

#[sqlx::test]
async fn duplicate_keys_and_nul_characters_are_dead_lettered_and_change_nothing(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let run_id = app.create_policy_run(1).await;
    let bad: Vec<(&str, String)> = vec![
        // Last-wins would make a workspace-scoped run of workspace 1.
        ("duplicate_key", r#"{"kind": "dispatch", "workspace_id": 1, "tenant_id": 10, "type": "policy.sync", "context": {"policy_id": "dup-top"}, "tenant_id": null}"#.to_owned()),
        ("duplicate_key", r#"{"kind": "dispatch", "workspace_id": 1, "tenant_id": 10, "type": "policy.sync", "context": {"policy_id": "dup-ctx", "policy_id": "other"}}"#.to_owned()),
        ("duplicate_key", format!(r#"{{"kind": "append_failures", "command_id": "dup-failure", "run_id": {run_id}, "workspace_id": 1, "tenant_id": 10, "failures": [{{"code": "x", "message": "a", "message": "b"}}]}}"#)),
        ("invalid_string", dispatch("policy.sync", 1, Some(10), json!({"policy_id": "nul-value", "note": "a\u{0}b"})).to_string()),
        ("invalid_string", dispatch("policy.sync", 1, Some(10), json!({"policy_id": "nul-key", "k\u{0}": 1})).to_string()),
        ("invalid_string", {
            let mut body = dispatch("policy.sync", 1, Some(10), json!({"policy_id": "nul-initiator"}));
            body["initiator_name"] = json!("Ada\u{0}");
            body.to_string()
        }),
        ("invalid_string", progress("append_failures", run_id, json!({"failures": [{"code": "x", "message": "bad\u{0}byte"}]})).to_string()),
    ];
    for (i, (_, body)) in bad.iter().enumerate() {
        app.publish_raw(
            &format!("hardening.{i}"),
            body.as_bytes(),
            json_properties(),
        )
        .await;
    }

    let letters = app.take_dead_letters(bad.len()).await;
    let mut got = BTreeMap::new();
    for letter in &letters {
        let rk = header(&letter.properties, "x-oprun-routing-key").unwrap();
        let i: usize = rk.strip_prefix("hardening.").unwrap().parse().unwrap();
        let message = header(&letter.properties, "x-oprun-error-message").unwrap();
        assert!(!message.is_empty());
        assert_eq!(
            letter.data,
            bad[i].1.as_bytes(),
            "the original body is kept"
        );
        got.insert(i, header(&letter.properties, "x-oprun-error-code").unwrap());
    }
    for (i, (code, body)) in bad.iter().enumerate() {
        assert_eq!(got.get(&i).map(String::as_str), Some(*code), "{body}");
    }
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM operation_runs")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(runs, 1, "no run was created, workspace-scoped or other");
    let run = app.wait_for_run(run_id, "the base run", |_| true).await;
    assert_eq!(
        run.failure_summary.total(),
        0,
        "no failure was appended to the run"
    );
    app.shutdown().await;
}

#[sqlx::test]
async fn an_integer_id_and_its_decimal_string_are_one_run(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let run_now = |id: Value| {
        dispatch(
            "backup_schedule.run_now",
            1,
            Some(10),
            json!({ "backup_schedule_id": id }),
        )
    };
    let number = dispatch_with_reply(&app, &run_now(json!(77))).await;
    let string = dispatch_with_reply(&app, &run_now(json!("77"))).await;
    assert_eq!(number["deduplicated"], false, "{number}");
    assert_eq!(string["run_id"], number["run_id"], "{string}");
    assert_eq!(string["deduplicated"], true, "{string}");
    // Beyond 2^53 every digit counts: 2^53 + 1 is its string, and not 2^53.
    let big = dispatch_with_reply(&app, &run_now(json!(9_007_199_254_740_993_u64))).await;
    let big_string = dispatch_with_reply(&app, &run_now(json!("9007199254740993"))).await;
    let next = dispatch_with_reply(&app, &run_now(json!(9_007_199_254_740_992_u64))).await;
    assert_eq!(big_string["run_id"], big["run_id"]);
    assert_eq!(big_string["deduplicated"], true);
    assert_ne!(next["run_id"], big["run_id"]);
    // "077" is not a canonical decimal integer: another identity.
    let padded = dispatch_with_reply(&app, &run_now(json!("077"))).await;
    assert_ne!(padded["run_id"], number["run_id"]);
    assert_eq!(padded["deduplicated"], false);

    let runs: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM operation_runs WHERE type = 'backup_schedule.run_now'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(runs, 4, "77, 2^53+1, 2^53 and \"077\"");
    let stored: Value = sqlx::query_scalar("SELECT context FROM operation_runs WHERE id = $1")
        .bind(number["run_id"].as_i64().unwrap())
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        stored["backup_schedule_id"],
        json!(77),
        "the context is stored as the first dispatch sent it"
    );
    app.shutdown().await;
}
