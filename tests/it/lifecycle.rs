//! Progress: transitions, counts, failures, the inbox, out-of-order delivery, and the events
//! they cause, in order.

use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{dispatch, event_types, header, progress, wait_for_active_run, TestApp};

#[sqlx::test]
async fn a_full_lifecycle_yields_events_with_sequence_one_to_n_in_order(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let mut subscriber = app.subscribe_events().await;
    app.publish(&dispatch(
        "inventory.sync",
        1,
        Some(10),
        json!({"selection": "all"}),
    ))
    .await;
    let run_id = wait_for_active_run(&app, "inventory.sync").await;
    app.publish(&progress(
        "update_run",
        run_id,
        json!({"status": "running"}),
    ))
    .await;
    app.publish(&progress(
        "increment_summary_counts",
        run_id,
        json!({"counts": {"total": 10, "processed": 4}}),
    ))
    .await;
    app.publish(&progress("append_failures", run_id, json!({"failures": [{"code": "graph.throttled", "message": "429 from upstream", "item": "dev-1"}]}))).await;
    app.publish(&progress(
        "increment_summary_counts",
        run_id,
        json!({"counts": {"processed": 6, "failed": 1}}),
    ))
    .await;
    app.publish(&progress("update_run", run_id, json!({"status": "completed", "outcome": "partially_succeeded", "summary_counts": {"succeeded": 9}}))).await;

    let events = subscriber.next_events(6).await;
    let types = event_types(&events);
    assert_eq!(
        types,
        [
            "operation_run.queued",
            "operation_run.started",
            "operation_run.progressed",
            "operation_run.progressed",
            "operation_run.progressed",
            "operation_run.completed",
        ]
    );
    let sequences: Vec<i64> = events
        .iter()
        .map(|(e, _)| e["data"]["sequence"].as_i64().unwrap())
        .collect();
    assert_eq!(sequences, [1, 2, 3, 4, 5, 6]);
    // One clock: an event's time is the transaction time that stamped the change it reports.
    let time = |v: &serde_json::Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_default()).unwrap()
    };
    for (event, _) in &events {
        let run = &event["data"]["run"];
        assert_eq!(
            time(&event["time"]),
            time(&run["updated_at"]),
            "{}",
            event["type"]
        );
    }
    assert_eq!(
        time(&events[1].0["time"]),
        time(&events[1].0["data"]["run"]["started_at"])
    );
    assert_eq!(
        time(&events[5].0["time"]),
        time(&events[5].0["data"]["run"]["completed_at"])
    );
    for (event, props) in &events {
        assert_eq!(
            header(props, "event_type").as_deref(),
            event["type"].as_str()
        );
    }
    let last = &events[5].0["data"]["run"];
    assert_eq!(last["status"], "completed");
    assert_eq!(last["outcome"], "partially_succeeded");
    assert_eq!(
        last["summary_counts"],
        json!({"total": 10, "processed": 10, "failed": 1, "succeeded": 9})
    );
    assert_eq!(last["failure_summary"][0]["code"], "graph.throttled");
    assert!(last["started_at"].is_string() && last["completed_at"].is_string());
    subscriber.assert_quiet(Duration::from_millis(300)).await;
    app.shutdown().await;
}

#[sqlx::test]
async fn the_same_command_id_twice_counts_once(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let run_id = app.create_policy_run(1).await;
    let increment = progress(
        "increment_summary_counts",
        run_id,
        json!({"counts": {"items": 5}}),
    );
    app.publish(&increment).await;
    app.publish(&increment).await;
    // A marker after the duplicates: once it is applied, both duplicates were processed.
    app.publish(&progress(
        "increment_summary_counts",
        run_id,
        json!({"counts": {"total": 1}}),
    ))
    .await;
    let run = app
        .wait_for_run(run_id, "the marker", |r| r.summary_counts.get("total") == 1)
        .await;
    assert_eq!(run.summary_counts.get("items"), 5);
    let events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM operation_run_events WHERE run_id = $1")
            .bind(run_id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(events, 3, "queued + two progressed, none for the duplicate");
    app.shutdown().await;
}

#[sqlx::test]
async fn another_tenants_run_is_not_found(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let run_id = app.create_policy_run(1).await;
    let mut foreign = progress("update_run", run_id, json!({"status": "running"}));
    foreign["tenant_id"] = json!(11);
    app.publish(&foreign).await;
    let mut workspace_scope = progress(
        "increment_summary_counts",
        run_id,
        json!({"counts": {"total": 1}}),
    );
    workspace_scope["tenant_id"] = json!(null);
    app.publish(&workspace_scope).await;
    let mut missing = progress("update_run", run_id + 1000, json!({"status": "running"}));
    missing["tenant_id"] = json!(10);
    app.publish(&missing).await;
    let letters = app.take_dead_letters(3).await;
    let messages: Vec<String> = letters
        .iter()
        .map(|d| {
            assert_eq!(
                header(&d.properties, "x-oprun-error-code").as_deref(),
                Some("run_not_found")
            );
            header(&d.properties, "x-oprun-error-message").unwrap()
        })
        .collect();
    assert!(
        messages
            .iter()
            .all(|m| m.starts_with("run ") && m.contains("not found")),
        "{messages:?}"
    );
    let run = operation_runs::store::runs::get(&app.pool, run_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (run.status.as_str(), run.to_json()["summary_counts"].clone()),
        ("queued", json!({}))
    );
    app.shutdown().await;
}

#[sqlx::test]
async fn out_of_order_messages_are_stale_no_ops_or_refused_as_listed(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let mut subscriber = app.subscribe_events().await;
    let run_id = app.create_policy_run(1).await;
    app.publish(&progress(
        "update_run",
        run_id,
        json!({"status": "completed", "outcome": "succeeded"}),
    ))
    .await;
    // Start after completion: stale, ignored, no event.
    app.publish(&progress(
        "update_run",
        run_id,
        json!({"status": "running"}),
    ))
    .await;
    // Completing again with the same outcome: no-op.
    app.publish(&progress(
        "update_run",
        run_id,
        json!({"status": "completed", "outcome": "succeeded"}),
    ))
    .await;
    // Counts after completion: still applied.
    app.publish(&progress(
        "increment_summary_counts",
        run_id,
        json!({"counts": {"processed": 2}}),
    ))
    .await;
    // Another outcome: refused.
    app.publish(&progress(
        "update_run",
        run_id,
        json!({"status": "completed", "outcome": "failed"}),
    ))
    .await;

    let letters = app.take_dead_letters(1).await;
    assert_eq!(
        header(&letters[0].properties, "x-oprun-error-code").as_deref(),
        Some("invalid_transition")
    );
    let events = subscriber.next_events(3).await;
    let types = event_types(&events);
    assert_eq!(
        types,
        [
            "operation_run.queued",
            "operation_run.completed",
            "operation_run.progressed"
        ]
    );
    subscriber.assert_quiet(Duration::from_millis(300)).await;
    let run = operation_runs::store::runs::get(&app.pool, run_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (run.status.as_str(), run.outcome.as_str()),
        ("completed", "succeeded")
    );
    assert_eq!(run.to_json()["summary_counts"], json!({"processed": 2}));
    assert_eq!(
        app.service().metrics.counter(
            "oprun_commands_total",
            "kind=\"update_run\",result=\"stale\""
        ),
        1
    );
    assert_eq!(
        app.service().metrics.counter(
            "oprun_commands_total",
            "kind=\"update_run\",result=\"unchanged\""
        ),
        1
    );
    app.shutdown().await;
}

#[sqlx::test]
async fn secrets_in_failure_messages_are_stored_and_published_redacted(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let mut subscriber = app.subscribe_events().await;
    let run_id = app.create_policy_run(1).await;
    let secrets = [
        "Authorization: Bearer abc123.def456-secret",
        "token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl",
        "login failed: password=hunter2",
        "config {\"client_secret\": \"cs-777\"}",
    ];
    let failures: Vec<_> = secrets
        .iter()
        .map(|m| json!({"code": "auth.failed", "message": m}))
        .collect();
    app.publish(&progress(
        "append_failures",
        run_id,
        json!({"failures": failures}),
    ))
    .await;
    let events = subscriber.next_events(2).await;
    let run = app
        .wait_for_run(run_id, "failures", |r| r.failure_summary.entries.len() == 4)
        .await;
    let stored = run.to_json()["failure_summary"].to_string();
    let published = events[1].0.to_string();
    for needle in [
        "abc123.def456-secret",
        "eyJhbGciOiJIUzI1NiJ9",
        "hunter2",
        "cs-777",
    ] {
        assert!(!stored.contains(needle), "stored: {stored}");
        assert!(!published.contains(needle), "published: {published}");
    }
    assert!(stored.contains("[REDACTED]"));
    app.shutdown().await;
}

/// Entries on the leaf pages of every B-tree index of `operation_runs`: a non-HOT update adds one
/// to each index whose predicate the new version meets, a HOT update none.
async fn index_entries_of_runs(pool: &PgPool) -> Vec<(String, i64)> {
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pageinspect")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query_as(
        "SELECT i.indexrelid::regclass::text,
                (SELECT coalesce(sum(s.live_items), 0)::bigint
                 FROM generate_series(1, pg_relation_size(i.indexrelid) / 8192 - 1) AS b,
                      LATERAL bt_page_stats(i.indexrelid::regclass::text, b::int) AS s
                 WHERE s.type = 'l')
         FROM pg_index i
         JOIN pg_class c ON c.oid = i.indexrelid
         JOIN pg_am a ON a.oid = c.relam AND a.amname = 'btree'
         WHERE i.indrelid = 'operation_runs'::regclass
         ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[sqlx::test]
async fn count_increments_on_a_running_run_write_no_index_entry(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let run_id = app.create_policy_run(1).await;
    app.publish(&progress(
        "update_run",
        run_id,
        json!({"status": "running"}),
    ))
    .await;
    app.wait_for_run(run_id, "running", |r| r.started_at.is_some())
        .await;
    let before = index_entries_of_runs(&app.pool).await;
    for _ in 0..40 {
        app.publish(&progress(
            "increment_summary_counts",
            run_id,
            json!({"counts": {"processed": 1}}),
        ))
        .await;
    }
    app.wait_for_run(run_id, "40 processed", |r| {
        r.summary_counts.get("processed") == 40
    })
    .await;
    let after = index_entries_of_runs(&app.pool).await;
    assert_eq!(
        after, before,
        "a count increment changes only the counts and updated_at: no index holds them, so \
         each is a HOT update and writes no index entry"
    );
    app.shutdown().await;
}
