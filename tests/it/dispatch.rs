//! Dispatch: a run per identity, deduplicated while active, replies and queued events.

use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{dispatch, dispatch_with_reply, json_properties, TestApp};

#[sqlx::test]
async fn a_dispatch_creates_a_queued_run_an_event_and_a_reply(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let mut subscriber = app.subscribe_events().await;
    let mut body = dispatch(
        "inventory.sync",
        1,
        Some(10),
        json!({"selection": {"b": 2, "a": 1}, "note": "x"}),
    );
    body["user_id"] = json!(5);
    body["initiator_name"] = json!("Ada");
    let reply = dispatch_with_reply(&app, &body).await;
    let run_id = reply["run_id"].as_i64().unwrap();
    assert_eq!(reply["status"], "queued");
    assert_eq!(reply["deduplicated"], false);
    assert_eq!(reply["run_identity_hash"].as_str().unwrap().len(), 64);

    type Row = (
        i64,
        Option<i64>,
        Option<i64>,
        Option<String>,
        String,
        String,
        String,
        Value,
    );
    let row: Row = sqlx::query_as(
        "SELECT workspace_id, tenant_id, user_id, initiator_name, type, status, outcome, context FROM operation_runs WHERE id = $1",
    )
    .bind(run_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        row,
        (
            1,
            Some(10),
            Some(5),
            Some("Ada".into()),
            "inventory.sync".into(),
            "queued".into(),
            "pending".into(),
            json!({"selection": {"a": 1, "b": 2}, "note": "x"})
        )
    );

    let events = subscriber.next_events(1).await;
    let (event, props) = &events[0];
    assert_eq!(event["specversion"], "1.0");
    assert_eq!(event["type"], "operation_run.queued");
    assert_eq!(event["data"]["sequence"], 1);
    assert_eq!(event["data"]["run"]["id"], run_id);
    assert_eq!(
        props.content_type().as_ref().unwrap().as_str(),
        "application/cloudevents+json"
    );
    assert_eq!(
        props.message_id().as_ref().unwrap().as_str(),
        event["id"].as_str().unwrap()
    );
    assert_eq!(
        crate::helpers::header(props, "event_type").as_deref(),
        Some("operation_run.queued")
    );
    app.shutdown().await;
}

#[sqlx::test]
async fn the_same_identity_in_another_key_order_is_deduplicated_to_the_same_run(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let first = dispatch_with_reply(
        &app,
        &dispatch(
            "backup_set.add_policies",
            1,
            Some(10),
            json!({"backup_set_id": 4, "selection": {"ids": [1, 2], "all": false}}),
        ),
    )
    .await;
    let second_body: Value = serde_json::from_str(
        r#"{"context": {"selection": {"all": false, "ids": [1, 2]}, "backup_set_id": 4.0}, "tenant_id": 10, "workspace_id": 1, "type": "backup_set.add_policies", "kind": "dispatch"}"#,
    )
    .unwrap();
    let second = dispatch_with_reply(&app, &second_body).await;
    assert_eq!(second["run_id"], first["run_id"]);
    assert_eq!(second["deduplicated"], true);
    assert_eq!(second["run_identity_hash"], first["run_identity_hash"]);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM operation_runs")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(count, 1);
    app.shutdown().await;
}

#[sqlx::test]
async fn after_completion_a_new_dispatch_gets_a_new_run(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ctx = json!({"policy_id": "p-1"});
    let first = dispatch_with_reply(&app, &dispatch("policy.sync", 1, Some(10), ctx.clone())).await;
    let run_id = first["run_id"].as_i64().unwrap();
    app.publish(&crate::helpers::progress(
        "update_run",
        run_id,
        json!({"status": "completed", "outcome": "succeeded"}),
    ))
    .await;
    app.wait_for_run(run_id, "completion", |r| r.status.as_str() == "completed")
        .await;
    let second = dispatch_with_reply(&app, &dispatch("policy.sync", 1, Some(10), ctx)).await;
    assert_ne!(second["run_id"], first["run_id"]);
    assert_eq!(second["deduplicated"], false);
    assert_eq!(second["run_identity_hash"], first["run_identity_hash"]);
    app.shutdown().await;
}

#[sqlx::test]
async fn two_scheduled_backups_in_the_same_minute_give_one_run(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let a = dispatch_with_reply(
        &app,
        &dispatch(
            "backup_schedule.scheduled",
            1,
            Some(10),
            json!({"backup_schedule_id": 9, "scheduled_for": "2026-11-26T10:00:03Z"}),
        ),
    )
    .await;
    let b = dispatch_with_reply(
        &app,
        &dispatch(
            "backup_schedule.scheduled",
            1,
            Some(10),
            json!({"backup_schedule_id": 9, "scheduled_for": "2026-11-26T12:00:58.5+02:00"}),
        ),
    )
    .await;
    assert_eq!(a["run_id"], b["run_id"]);
    assert_eq!(b["deduplicated"], true);
    let stored: Value = sqlx::query_scalar("SELECT context FROM operation_runs WHERE id = $1")
        .bind(a["run_id"].as_i64().unwrap())
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored["scheduled_for"], "2026-11-26T10:00:00Z");
    let c = dispatch_with_reply(
        &app,
        &dispatch(
            "backup_schedule.scheduled",
            1,
            Some(10),
            json!({"backup_schedule_id": 9, "scheduled_for": "2026-11-26T10:01:00Z"}),
        ),
    )
    .await;
    assert_ne!(c["run_id"], a["run_id"], "the next minute is another run");
    app.shutdown().await;
}

#[sqlx::test]
async fn a_retry_dispatch_links_its_legacy_backup_schedule_run(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL operation_runs.legacy_import = 'on'")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO backup_schedule_runs (id, backup_schedule_id, tenant_id, scheduled_for, status)
         VALUES (70, 3, 10, now(), 'failed'), (71, 3, 20, now(), 'failed')",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let reply = dispatch_with_reply(
        &app,
        &dispatch(
            "backup_schedule.retry",
            1,
            Some(10),
            json!({"backup_schedule_id": 3, "backup_schedule_run_id": 70}),
        ),
    )
    .await;
    let linked: Option<i64> =
        sqlx::query_scalar("SELECT operation_run_id FROM backup_schedule_runs WHERE id = 70")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(linked, reply["run_id"].as_i64());
    // A legacy row of another tenant is never linked.
    dispatch_with_reply(
        &app,
        &dispatch(
            "backup_schedule.retry",
            1,
            Some(10),
            json!({"backup_schedule_id": 3, "backup_schedule_run_id": 71}),
        ),
    )
    .await;
    let other: Option<i64> =
        sqlx::query_scalar("SELECT operation_run_id FROM backup_schedule_runs WHERE id = 71")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(other, None);
    app.shutdown().await;
}

#[sqlx::test]
async fn a_refused_dispatch_replies_with_its_error_and_is_not_dead_lettered(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let reply = dispatch_with_reply(
        &app,
        &dispatch("policy.sync", 1, Some(20), json!({"policy_id": 1})),
    )
    .await;
    assert_eq!(reply["error"]["code"], "unknown_tenant");
    assert!(reply["error"]["message"]
        .as_str()
        .unwrap()
        .contains("tenant 20"));
    let letters = app.dead_letters_through_marker(0).await;
    assert!(letters.is_empty(), "the producer was told: {letters:?}");
    app.shutdown().await;
}

#[sqlx::test]
async fn replies_are_never_sent_into_the_services_own_queues(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let properties = json_properties()
        .with_reply_to(app.topology.commands_queue().into())
        .with_correlation_id("c".into());
    let body = dispatch("policy.sync", 1, Some(10), json!({"policy_id": 7}));
    app.publish_raw("dispatch", &serde_json::to_vec(&body).unwrap(), properties)
        .await;
    app.wait_for_count("SELECT count(*) FROM processed_commands", 1)
        .await;
    // A marker command after it: once applied, any reply would already be in the queue.
    app.dispatch_policy(8).await;
    app.wait_for_count("SELECT count(*) FROM processed_commands", 2)
        .await;
    assert_eq!(app.queue_depth(&app.topology.commands_queue()).await, 0);
    assert_eq!(app.queue_depth(&app.topology.dead_letter_queue()).await, 0);
    let dead: u64 = app.service().metrics.counter(
        "oprun_commands_total",
        "kind=\"undecodable\",result=\"dead_lettered:invalid_field\"",
    );
    assert_eq!(dead, 0, "no reply came back as a command");
    app.shutdown().await;
}
