//! Identity, size and quota under hostile input: the dedupe window per type, identity lookups
//! that are index probes, bounded failure summaries and events, legacy links only where they
//! belong, the per-tenant quota and one code for foreign tenants.

use std::collections::BTreeMap;

use futures_util::StreamExt;
use operation_runs::domain::event_size::{MAX_CONTEXT_BYTES, MAX_EVENT_BYTES};
use operation_runs::domain::failure_cap::{MAX_STORED_FAILURES, MAX_STORED_FAILURE_BYTES};
use operation_runs::domain::DedupeWindow;
use operation_runs::store::runs;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{
    dispatch, dispatch_with_reply, header, progress, test_settings_with, TestApp, DEADLINE,
};

/// Completes run `run_id` (of `tenant`, workspace 1) as failed and waits for it.
async fn complete_failed(app: &TestApp, run_id: i64, tenant: Option<i64>) {
    let mut body = progress(
        "update_run",
        run_id,
        json!({"status": "completed", "outcome": "failed"}),
    );
    body["tenant_id"] = json!(tenant);
    app.publish(&body).await;
    app.wait_for_run(run_id, "the run to complete", |r| !r.is_active())
        .await;
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error().and_then(|d| d.code()).as_deref() == Some("23505")
}

#[sqlx::test]
async fn a_scheduled_fire_has_one_run_forever_even_after_it_completed(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    for tenant in [Some(10), None] {
        let fire = |minute: &str| {
            dispatch(
                "backup_schedule.scheduled",
                1,
                tenant,
                json!({"backup_schedule_id": 77, "scheduled_for": minute}),
            )
        };
        let first = dispatch_with_reply(&app, &fire("2026-11-26T10:00:07Z")).await;
        assert_eq!(first["deduplicated"], false, "{first}");
        let run_id = first["run_id"].as_i64().unwrap();
        complete_failed(&app, run_id, tenant).await;
        // The same schedule and minute, spelt with an offset, after the run completed.
        let again = dispatch_with_reply(&app, &fire("2026-11-26T11:00:59+01:00")).await;
        assert_eq!(
            (&again["run_id"], &again["deduplicated"], &again["status"]),
            (&json!(run_id), &json!(true), &json!("completed")),
            "{again}"
        );
        let next_minute = dispatch_with_reply(&app, &fire("2026-11-26T10:01:00Z")).await;
        assert_eq!(
            next_minute["deduplicated"], false,
            "another minute is another run"
        );
    }
    let scheduled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM operation_runs WHERE type = 'backup_schedule.scheduled'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(scheduled, 4, "two identities per scope, one run each");

    // The window is the database's rule, not only the service's lookup.
    for tenant in [Some(10), None] {
        let (hash,): (String,) = sqlx::query_as(
            "SELECT run_identity_hash FROM operation_runs
             WHERE type = 'backup_schedule.scheduled' AND tenant_id IS NOT DISTINCT FROM $1 LIMIT 1",
        )
        .bind(tenant)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        let err = sqlx::query(
            "INSERT INTO operation_runs (workspace_id, tenant_id, type, run_identity_hash, dedupe_window)
             VALUES (1, $1, 'backup_schedule.scheduled', $2, 'forever')",
        )
        .bind(tenant)
        .bind(&hash)
        .execute(&app.pool)
        .await
        .unwrap_err();
        assert!(is_unique_violation(&err), "{err}");
    }

    // An `active` type keeps today's rule: completion frees the identity.
    let policy = dispatch("policy.sync", 1, Some(10), json!({"policy_id": 5}));
    let first = dispatch_with_reply(&app, &policy).await;
    complete_failed(&app, first["run_id"].as_i64().unwrap(), Some(10)).await;
    let mut again = policy.clone();
    again["command_id"] = json!(uuid::Uuid::new_v4().to_string());
    let second = dispatch_with_reply(&app, &again).await;
    assert_eq!(second["deduplicated"], false);
    assert_ne!(second["run_id"], first["run_id"]);
    app.shutdown().await;
}

/// Every node of a JSON plan: (node type, index name).
fn plan_nodes(plan: &Value, out: &mut Vec<(String, Option<String>)>) {
    if let Some(node) = plan.get("Node Type").and_then(Value::as_str) {
        let index = plan
            .get("Index Name")
            .and_then(Value::as_str)
            .map(str::to_owned);
        out.push((node.to_owned(), index));
    }
    for child in plan
        .get("Plans")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        plan_nodes(child, out);
    }
}

/// The plan of `EXECUTE` of `sql` prepared with `types`, run with `args` (SQL literals), in
/// `plan_cache_mode` (the service's prepared statements may get either plan).
async fn plan_of(
    conn: &mut sqlx::PgConnection,
    mode: &str,
    sql: &str,
    types: &str,
    args: &str,
) -> Vec<(String, Option<String>)> {
    sqlx::query(&format!("SET plan_cache_mode = {mode}"))
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query(&format!("PREPARE lookup ({types}) AS {sql}"))
        .execute(&mut *conn)
        .await
        .unwrap();
    let (plan,): (Value,) =
        sqlx::query_as(&format!("EXPLAIN (FORMAT JSON) EXECUTE lookup ({args})"))
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    sqlx::query("DEALLOCATE lookup")
        .execute(&mut *conn)
        .await
        .unwrap();
    let mut nodes = Vec::new();
    plan_nodes(&plan[0]["Plan"], &mut nodes);
    nodes
}

#[sqlx::test]
async fn every_identity_lookup_is_an_index_scan_on_its_unique_index(pool: PgPool) {
    crate::helpers::seed_scopes(&pool).await;
    // 60,000 runs over two tenants and the workspace scope; a third of them active, a few
    // `forever` (completed scheduled fires).
    sqlx::raw_sql(
        "INSERT INTO operation_runs (workspace_id, tenant_id, type, run_identity_hash, status, outcome, dedupe_window)
         SELECT 1, (ARRAY[10, 11, NULL])[1 + i % 3]::bigint,
                CASE WHEN i % 10 = 0 THEN 'backup_schedule.scheduled' ELSE 'policy.sync' END,
                encode(sha256(i::text::bytea), 'hex'),
                CASE WHEN i % 3 = 0 THEN 'queued' ELSE 'completed' END,
                CASE WHEN i % 3 = 0 THEN 'pending' ELSE 'failed' END,
                CASE WHEN i % 10 = 0 THEN 'forever' ELSE 'active' END
         FROM generate_series(1, 60000) AS i;
         ANALYZE operation_runs;",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let hash = "'0000000000000000000000000000000000000000000000000000000000000000'";
    for mode in ["force_generic_plan", "force_custom_plan"] {
        for (tenant_scoped, tenant) in [(true, "10"), (false, "NULL")] {
            for window in [DedupeWindow::Active, DedupeWindow::Forever] {
                let index = match (tenant_scoped, window) {
                    (true, DedupeWindow::Active) => "operation_runs_active_tenant_identity_idx",
                    (false, DedupeWindow::Active) => "operation_runs_active_workspace_identity_idx",
                    (true, DedupeWindow::Forever) => "operation_runs_forever_tenant_identity_idx",
                    (false, DedupeWindow::Forever) => {
                        "operation_runs_forever_workspace_identity_idx"
                    }
                };
                let lookups = [
                    plan_of(
                        &mut conn,
                        mode,
                        &runs::find_by_identity_sql(tenant_scoped, window),
                        "bigint, bigint, text",
                        &format!("1, {tenant}, {hash}"),
                    )
                    .await,
                    plan_of(
                        &mut conn,
                        mode,
                        &runs::insert_or_find_sql(tenant_scoped, window),
                        "bigint, bigint, bigint, text, text, text, jsonb, text, text, text",
                        &format!(
                            "1, {tenant}, NULL, NULL, 'policy.sync', {hash}, '{{}}', '{}', NULL, NULL",
                            window.as_str()
                        ),
                    )
                    .await,
                ];
                for nodes in lookups {
                    let what = format!("{mode} tenant={tenant_scoped} {window}: {nodes:?}");
                    assert!(nodes.iter().all(|(n, _)| !n.contains("Seq Scan")), "{what}");
                    assert!(
                        nodes.iter().any(|(n, i)| n.starts_with("Index")
                            && n.ends_with("Scan")
                            && i.as_deref() == Some(index)),
                        "{what}"
                    );
                }
            }
        }
        let quota = plan_of(
            &mut conn,
            mode,
            runs::COUNT_ACTIVE_BY_TENANT_SQL,
            "bigint[]",
            "ARRAY[10]::bigint[]",
        )
        .await;
        assert!(
            quota.iter().all(|(n, _)| !n.contains("Seq Scan")),
            "{quota:?}"
        );
    }
}

#[sqlx::test]
async fn failure_summary_is_capped_and_every_event_stays_under_64_kib(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let (_events_channel, _, mut events) = app
        .temporary_queue(Some(&app.topology.events_exchange()))
        .await;
    // The largest context a dispatch may carry, so every event carries it too.
    let blob = "c".repeat(MAX_CONTEXT_BYTES - 40);
    let created = dispatch_with_reply(
        &app,
        &dispatch(
            "policy.sync",
            1,
            Some(10),
            json!({"policy_id": 1, "blob": blob}),
        ),
    )
    .await;
    let run_id = created["run_id"].as_i64().unwrap();
    let codes = ["graph.throttled", "item.missing", "permission.denied"];
    let mut sent: BTreeMap<&str, u64> = BTreeMap::new();
    let mut order = Vec::new();
    for command in 0..300 {
        let failures: Vec<Value> = (0..50)
            .map(|i| {
                let n = command * 50 + i;
                let code = codes[n % codes.len()];
                *sent.entry(code).or_default() += 1;
                order.push(format!("item-{n}"));
                // Random hex: entries that do not compress, so the stored summary lives in TOAST.
                let noise: String = (0..6).map(|_| uuid::Uuid::new_v4().simple().to_string()).collect();
                json!({"code": code, "message": format!("{n}: {noise}"), "item": format!("item-{n}")})
            })
            .collect();
        app.publish(&progress(
            "append_failures",
            run_id,
            json!({"failures": failures}),
        ))
        .await;
    }
    let mut sizes = Vec::new();
    let mut last = Value::Null;
    while sizes.len() < 301 {
        let delivery = tokio::time::timeout(DEADLINE, events.next())
            .await
            .unwrap_or_else(|_| panic!("expected 301 events, got {}", sizes.len()))
            .unwrap()
            .unwrap();
        sizes.push(delivery.data.len());
        last = serde_json::from_slice(&delivery.data).unwrap();
    }
    let run = app
        .wait_for_run(run_id, "every failure counted", |r| {
            r.failure_summary.total() == 15_000
        })
        .await;
    let run_json = run.to_json();
    let stored = run_json["failure_summary"].as_array().unwrap();
    assert_eq!(stored.len(), MAX_STORED_FAILURES);
    assert!(serde_json::to_vec(stored).unwrap().len() <= MAX_STORED_FAILURE_BYTES);
    let kept: Vec<&str> = stored.iter().map(|f| f["item"].as_str().unwrap()).collect();
    assert_eq!(
        kept,
        order[..MAX_STORED_FAILURES],
        "the first ones are kept"
    );
    let mut expected_overflow = sent.clone();
    for f in stored {
        *expected_overflow
            .get_mut(f["code"].as_str().unwrap())
            .unwrap() -= 1;
    }
    let expected_overflow: Value = expected_overflow
        .into_iter()
        .map(|(code, n)| (code.to_owned(), json!(n)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    assert_eq!(run_json["failure_overflow"], expected_overflow);

    let largest = sizes.iter().max().unwrap();
    assert!(*largest <= MAX_EVENT_BYTES, "an event of {largest} bytes");
    assert_eq!(last["data"]["run"]["failure_overflow"], expected_overflow);
    assert_eq!(
        last["data"]["run"]["failure_summary"]
            .as_array()
            .unwrap()
            .len(),
        MAX_STORED_FAILURES
    );

    // Appending to a full summary does not rewrite it: one transaction per append, and the
    // table's TOAST (where the ~25 KB summary lives) does not grow with them.
    let toast_bytes = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT pg_relation_size(reltoastrelid) FROM pg_class WHERE relname = 'operation_runs'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap()
    };
    let before = toast_bytes().await;
    for k in 1..=30 {
        app.publish(&progress(
            "append_failures",
            run_id,
            json!({"failures": [{"code": "late.one", "message": "late"}]}),
        ))
        .await;
        app.wait_for_run(run_id, "the late failure", |r| {
            r.failure_summary.overflow.get("late.one") == Some(&k)
        })
        .await;
    }
    let grown = toast_bytes().await - before;
    assert!(
        grown < 64 * 1024,
        "TOAST grew by {grown} bytes over 30 appends"
    );
    app.shutdown().await;
}

#[sqlx::test]
async fn a_context_larger_than_its_bound_is_refused(pool: PgPool) {
    // Answered refusals dead-lettered too, so the letter's code can be read.
    let settings = test_settings_with(&["--dead-letter-answered-refusals"]);
    let app = TestApp::spawn_with(pool, settings).await;
    let reply = dispatch_with_reply(
        &app,
        &dispatch(
            "policy.sync",
            1,
            Some(10),
            json!({"policy_id": 1, "blob": "x".repeat(MAX_CONTEXT_BYTES)}),
        ),
    )
    .await;
    assert_eq!(reply["error"]["code"], "context_too_large", "{reply}");
    let letters = app.take_dead_letters(1).await;
    assert_eq!(
        header(&letters[0].properties, "x-oprun-error-code").as_deref(),
        Some("context_too_large")
    );
    app.shutdown().await;
}

/// Imports legacy backup schedule runs `(id, schedule, tenant)`.
async fn import_backup_schedule_runs(pool: &PgPool, rows: &[(i64, i64, i64)]) {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL operation_runs.legacy_import = 'on'")
        .execute(&mut *tx)
        .await
        .unwrap();
    for (id, schedule, tenant) in rows {
        sqlx::query(
            "INSERT INTO backup_schedule_runs (id, backup_schedule_id, tenant_id, scheduled_for, status)
             VALUES ($1, $2, $3, now(), 'failed')",
        )
        .bind(id)
        .bind(schedule)
        .bind(tenant)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
}

async fn legacy_link(pool: &PgPool, id: i64) -> Option<i64> {
    sqlx::query_scalar("SELECT operation_run_id FROM backup_schedule_runs WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test]
async fn only_backup_schedule_runs_of_the_same_tenant_and_schedule_link_a_legacy_row(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    import_backup_schedule_runs(&app.pool, &[(80, 3, 10)]).await;
    let mut subscriber = app.subscribe_events().await;

    // Another type carrying the key: never a link, and nothing to refuse.
    let policy = dispatch_with_reply(
        &app,
        &dispatch(
            "policy.sync",
            1,
            Some(10),
            json!({"policy_id": 1, "backup_schedule_run_id": 80}),
        ),
    )
    .await;
    assert_eq!(policy["deduplicated"], false, "{policy}");
    assert_eq!(
        legacy_link(&app.pool, 80).await,
        None,
        "policy.sync took the redirect"
    );

    // A retry of another schedule: refused, and the run says why from its first event on.
    let wrong = dispatch_with_reply(
        &app,
        &dispatch(
            "backup_schedule.retry",
            1,
            Some(10),
            json!({"backup_schedule_id": 4, "backup_schedule_run_id": 80}),
        ),
    )
    .await;
    assert_eq!(legacy_link(&app.pool, 80).await, None);
    let wrong_run = app
        .wait_for_run(wrong["run_id"].as_i64().unwrap(), "the wrong retry", |_| {
            true
        })
        .await;
    let entries = &wrong_run.failure_summary.entries;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].code, "legacy_link.refused");
    let message = &entries[0].message;
    assert!(message.contains("backup schedule 3"), "{message}");
    let queued = subscriber.next_events(2).await;
    let (event, _) = queued
        .iter()
        .find(|(e, _)| e["data"]["run"]["id"] == wrong["run_id"])
        .unwrap();
    assert_eq!(
        event["data"]["run"]["failure_summary"],
        wrong_run.to_json()["failure_summary"]
    );

    // The right retry links it.
    let right = dispatch_with_reply(
        &app,
        &dispatch(
            "backup_schedule.retry",
            1,
            Some(10),
            json!({"backup_schedule_id": "3", "backup_schedule_run_id": 80}),
        ),
    )
    .await;
    assert_eq!(legacy_link(&app.pool, 80).await, right["run_id"].as_i64());
    let right_run = app
        .wait_for_run(right["run_id"].as_i64().unwrap(), "the right retry", |_| {
            true
        })
        .await;
    assert_eq!(right_run.failure_summary.total(), 0);
    app.shutdown().await;
}

#[sqlx::test]
async fn a_tenant_over_its_quota_is_refused_but_duplicates_are_not(pool: PgPool) {
    // Answered refusals dead-lettered too, so the letter's code can be read.
    let settings = test_settings_with(&[
        "--max-active-runs-per-tenant",
        "3",
        "--dead-letter-answered-refusals",
    ]);
    let app = TestApp::spawn_with(pool, settings).await;
    let policy = |id: i64, tenant: Option<i64>| {
        dispatch("policy.sync", 1, tenant, json!({ "policy_id": id }))
    };
    let mut created = Vec::new();
    for id in 1..=3 {
        let reply = dispatch_with_reply(&app, &policy(id, Some(10))).await;
        assert_eq!(reply["deduplicated"], false, "{reply}");
        created.push(reply["run_id"].as_i64().unwrap());
    }
    let over = dispatch_with_reply(&app, &policy(4, Some(10))).await;
    assert_eq!(over["error"]["code"], "tenant_quota_exceeded", "{over}");
    let letters = app.take_dead_letters(1).await;
    assert_eq!(
        header(&letters[0].properties, "x-oprun-error-code").as_deref(),
        Some("tenant_quota_exceeded")
    );
    let duplicate = dispatch_with_reply(&app, &policy(1, Some(10))).await;
    assert_eq!(
        (&duplicate["run_id"], &duplicate["deduplicated"]),
        (&json!(created[0]), &json!(true)),
        "a duplicate at the quota is deduplicated, not refused"
    );
    let other_tenant = dispatch_with_reply(&app, &policy(4, Some(11))).await;
    assert_eq!(other_tenant["deduplicated"], false, "{other_tenant}");
    let workspace = dispatch_with_reply(&app, &policy(4, None)).await;
    assert_eq!(workspace["deduplicated"], false, "{workspace}");
    complete_failed(&app, created[0], Some(10)).await;
    let freed = dispatch_with_reply(&app, &policy(4, Some(10))).await;
    assert_eq!(
        freed["deduplicated"], false,
        "completion frees quota: {freed}"
    );
    app.shutdown().await;
}

#[sqlx::test]
async fn the_tenant_quota_holds_across_instances_and_lanes(pool: PgPool) {
    let settings = test_settings_with(&[
        "--max-active-runs-per-tenant",
        "5",
        "--lanes",
        "4",
        "--batch-size",
        "8",
    ]);
    let mut app = TestApp::spawn_with(pool.clone(), settings.clone()).await;
    app.start_instance(pool, settings).await;
    for id in 0..40 {
        app.publish(&dispatch(
            "policy.sync",
            1,
            Some(11),
            json!({ "policy_id": id }),
        ))
        .await;
    }
    let letters = app.take_dead_letters(35).await;
    assert!(letters
        .iter()
        .all(|l| header(&l.properties, "x-oprun-error-code").as_deref()
            == Some("tenant_quota_exceeded")));
    app.wait_for_count(
        "SELECT count(*) FROM processed_commands WHERE kind = 'dispatch'",
        5,
    )
    .await;
    let active: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM operation_runs WHERE tenant_id = 11 AND status <> 'completed'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(active, 5);
    app.shutdown().await;
}

#[sqlx::test]
async fn a_tenant_of_another_workspace_is_refused_like_an_unknown_one(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let elsewhere = dispatch_with_reply(
        &app,
        &dispatch("policy.sync", 1, Some(20), json!({"policy_id": 1})),
    )
    .await;
    let missing = dispatch_with_reply(
        &app,
        &dispatch("policy.sync", 1, Some(99), json!({"policy_id": 1})),
    )
    .await;
    assert_eq!(elsewhere["error"]["code"], "unknown_tenant", "{elsewhere}");
    assert_eq!(missing["error"]["code"], "unknown_tenant", "{missing}");
    let shape = |reply: &Value, tenant: &str| {
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .replace(tenant, "T")
    };
    assert_eq!(shape(&elsewhere, "20"), shape(&missing, "99"));
    let letters = app.dead_letters_through_marker(0).await;
    assert!(
        letters.is_empty(),
        "both refusals were answered: {letters:?}"
    );
    app.shutdown().await;
}
