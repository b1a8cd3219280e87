//! Poison messages: each lands in the dead-letter queue with its reason code, original body and
//! routing key, while the good messages around it are applied and the consumer keeps running.

use std::collections::BTreeMap;

use operation_runs::store::{runs, StoreError};
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{dispatch, header, progress, wait_for_active_run, TestApp};

#[sqlx::test]
async fn every_kind_of_poison_message_is_dead_lettered_with_its_code(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.publish(&dispatch(
        "policy.sync",
        1,
        Some(10),
        json!({"policy_id": "base"}),
    ))
    .await;
    let run_id = wait_for_active_run(&app, "policy.sync").await;

    let mut deep = json!("leaf");
    for _ in 0..40 {
        deep = json!({"d": deep});
    }
    let reused = progress(
        "increment_summary_counts",
        run_id,
        json!({"counts": {"items": 1}}),
    );
    let mut reused_other_body = reused.clone();
    reused_other_body["counts"] = json!({"items": 2});
    let poison: Vec<(&str, Vec<u8>)> = vec![
        ("invalid_json", b"{\"kind\": \"dispatch\",".to_vec()),
        ("invalid_utf8", vec![b'{', 0xc3, 0x28, b'}']),
        ("not_an_object", b"[\"dispatch\"]".to_vec()),
        ("invalid_field", json!({"kind": "dispatch", "workspace_id": "one", "type": "policy.sync", "context": {"policy_id": 1}}).to_string().into_bytes()),
        ("unknown_kind", json!({"kind": "explode", "command_id": "x"}).to_string().into_bytes()),
        ("unknown_type", dispatch("coffee.brew", 1, Some(10), json!({})).to_string().into_bytes()),
        ("missing_identity_key", dispatch("policy.sync", 1, Some(10), json!({"other": 1})).to_string().into_bytes()),
        ("unknown_workspace", dispatch("policy.sync", 99, None, json!({"policy_id": 1})).to_string().into_bytes()),
        ("unknown_tenant", dispatch("policy.sync", 1, Some(99), json!({"policy_id": 1})).to_string().into_bytes()),
        ("unknown_tenant", dispatch("policy.sync", 1, Some(20), json!({"policy_id": 1})).to_string().into_bytes()),
        ("invalid_summary_value", progress("increment_summary_counts", run_id, json!({"counts": {"total": -3}})).to_string().into_bytes()),
        ("invalid_summary_key", progress("increment_summary_counts", run_id, json!({"counts": {"bananas": 3}})).to_string().into_bytes()),
        ("invalid_failure", progress("append_failures", run_id, json!({"failures": [{"code": "Not Valid!", "message": "x"}]})).to_string().into_bytes()),
        ("run_not_found", progress("update_run", run_id + 500, json!({"status": "running"})).to_string().into_bytes()),
        ("invalid_transition", progress("update_run", run_id, json!({"status": "completed"})).to_string().into_bytes()),
        ("message_too_large", {
            let mut big = dispatch("policy.sync", 1, Some(10), json!({"policy_id": 1}));
            big["context"]["blob"] = json!("x".repeat(300 * 1024));
            big.to_string().into_bytes()
        }),
        ("context_too_deep", dispatch("policy.sync", 1, Some(10), json!({"policy_id": 1, "deep": deep})).to_string().into_bytes()),
        ("missing_command_id", json!({"kind": "append_failures", "run_id": run_id, "workspace_id": 1, "tenant_id": 10, "failures": []}).to_string().into_bytes()),
        ("command_id_conflict", reused_other_body.to_string().into_bytes()),
    ];

    app.publish(&reused).await;
    // A good command between every two bad ones.
    let bodies = poison
        .iter()
        .enumerate()
        .map(|(i, (_, body))| (format!("poison.{i}"), body.clone()));
    let good = app.publish_interleaved_with_good(run_id, bodies).await;

    let letters = app.take_dead_letters(poison.len()).await;
    let mut got: BTreeMap<String, String> = BTreeMap::new();
    for letter in &letters {
        let rk = header(&letter.properties, "x-oprun-routing-key").unwrap();
        let code = header(&letter.properties, "x-oprun-error-code").unwrap();
        assert!(header(&letter.properties, "x-oprun-error-message").is_some_and(|m| !m.is_empty()));
        assert!(header(&letter.properties, "x-oprun-failed-at").is_some());
        let i: usize = rk.strip_prefix("poison.").unwrap().parse().unwrap();
        assert_eq!(letter.data, poison[i].1, "the original body is kept");
        got.insert(rk, code);
    }
    for (i, (code, _)) in poison.iter().enumerate() {
        assert_eq!(
            got.get(&format!("poison.{i}")).map(String::as_str),
            Some(*code),
            "poison #{i}"
        );
    }
    let run = app
        .wait_for_run(run_id, "every good command", |r| {
            r.summary_counts.get("total") == good
        })
        .await;
    assert_eq!(
        run.summary_counts.get("items"),
        1,
        "the reused command id had no second effect"
    );
    assert_eq!(app.queue_depth(&app.topology.commands_queue()).await, 0);
    app.shutdown().await;
}

/// A stored row this version cannot read (here a type outside the catalog, as a newer version or
/// a hand-made fix could leave) is a typed store error naming its column, never a panic: a
/// command on that run is dead-lettered as `database_rejected`, and the consumer goes on.
#[sqlx::test]
async fn a_run_row_that_does_not_parse_is_a_store_error_and_its_command_is_dead_lettered(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    let unreadable = app.create_policy_run(1).await;
    app.publish(&dispatch(
        "inventory.sync",
        1,
        Some(10),
        json!({"selection": "all"}),
    ))
    .await;
    let readable = wait_for_active_run(&app, "inventory.sync").await;
    sqlx::query("UPDATE operation_runs SET type = 'coffee.brew' WHERE id = $1")
        .bind(unreadable)
        .execute(&app.pool)
        .await
        .unwrap();
    let error = StoreError::from(runs::get(&app.pool, unreadable).await.unwrap_err());
    assert!(
        matches!(&error, StoreError::InvalidRow { column, .. } if column == "type"),
        "{error:?}"
    );
    assert!(error.to_string().contains("coffee.brew"), "{error}");

    app.publish(&progress(
        "update_run",
        unreadable,
        json!({"status": "running"}),
    ))
    .await;
    app.publish(&progress(
        "update_run",
        readable,
        json!({"status": "running"}),
    ))
    .await;
    let letters = app.take_dead_letters(1).await;
    assert_eq!(
        header(&letters[0].properties, "x-oprun-error-code").as_deref(),
        Some("database_rejected")
    );
    app.wait_for_run(readable, "the readable run to start", |r| {
        r.status.as_str() == "running"
    })
    .await;
    app.shutdown().await;
}
