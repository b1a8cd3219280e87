//! Bulk actions: `oprun runs cancel|retry|fail` with a filter counts the matching runs and acts
//! only with `--yes` (`--dry-run` lists them and changes nothing), at most `--rate` actions a
//! second, and a bulk retry interrupted half-way and run again with its bulk id retries every
//! run exactly once.

use std::process::Stdio;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::dead_letters::{lines, run};
use crate::helpers::{dispatch, progress, TestApp, DEADLINE};

/// The `oprun` binary on database `db`, as the OS user `oncall` (the runs commands need no
/// namespace), stdout and stderr piped.
fn oprun(db: &str, args: &[&str]) -> Command {
    let mut c = crate::operations::oprun(db, "bulk", args);
    c.env("USER", "oncall").stderr(Stdio::piped());
    c
}

/// Runs `oprun` to the end (it must succeed) and returns its stdout as JSON lines.
async fn json_lines(db: &str, args: &[&str]) -> Vec<Value> {
    lines(&run(db, "bulk", args).await.0)
}

/// The next line of a running command's stdout.
async fn next_line(out: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> String {
    tokio::time::timeout(DEADLINE, out.next_line())
        .await
        .expect("a line in time")
        .unwrap()
        .expect("the bulk action still runs")
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&app.pool).await.unwrap()
}

/// Completes run `run_id` (workspace 1, tenant 10) as `outcome`, after a failure of `code`
/// when given, through the broker.
async fn complete(app: &TestApp, run_id: i64, outcome: &str, code: Option<&str>) {
    if let Some(code) = code {
        app.publish(&progress(
            "append_failures",
            run_id,
            json!({"failures": [{"code": code, "message": "device unreachable"}]}),
        ))
        .await;
    }
    app.publish(&progress(
        "update_run",
        run_id,
        json!({"status": "completed", "outcome": outcome}),
    ))
    .await;
}

/// Dispatches `policy.sync` runs for `policies` in tenant 10, completes each as `outcome` (with
/// a failure of `code` when given) and returns their ids, in order.
async fn completed_runs(
    app: &TestApp,
    policies: std::ops::Range<i64>,
    outcome: &str,
    code: Option<&str>,
) -> Vec<i64> {
    for policy in policies.clone() {
        app.dispatch_policy(policy).await;
    }
    let ids = crate::helpers::wait_until("the runs", || async {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM operation_runs
             WHERE (context ->> 'policy_id')::bigint >= $1 AND (context ->> 'policy_id')::bigint < $2
             ORDER BY id",
        )
        .bind(policies.start)
        .bind(policies.end)
        .fetch_all(&app.pool)
        .await
        .unwrap();
        (ids.len() == policies.clone().count()).then_some(ids)
    })
    .await;
    for &id in &ids {
        complete(app, id, outcome, code).await;
    }
    wait_completed(app, &ids).await;
    ids
}

async fn wait_completed(app: &TestApp, ids: &[i64]) {
    crate::helpers::wait_until("the runs to complete", || async {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM operation_runs WHERE id = ANY($1) AND status = 'completed'",
        )
        .bind(ids)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        (done == ids.len() as i64).then_some(())
    })
    .await;
}

/// What the database holds that a bulk action would change: runs, actions, events.
async fn state(app: &TestApp) -> (i64, i64, i64) {
    (
        count(app, "SELECT count(*) FROM operation_runs").await,
        count(app, "SELECT count(*) FROM operation_run_actions").await,
        count(app, "SELECT count(*) FROM operation_run_events").await,
    )
}

#[sqlx::test]
async fn a_bulk_action_without_yes_only_counts_and_a_dry_run_lists_the_runs_changing_nothing(
    _o: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let db = connect.get_database().unwrap().to_owned();
    let app = TestApp::spawn_on(&connect).await;
    let failed = completed_runs(&app, 0..3, "failed", Some("device.unreachable")).await;
    completed_runs(&app, 3..4, "succeeded", None).await;
    completed_runs(&app, 4..5, "failed", Some("token.expired")).await;
    let before = state(&app).await;

    let filter = [
        "runs",
        "retry",
        "--type",
        "policy.sync",
        "--outcome",
        "failed",
        "--failure-code",
        "device.unreachable",
    ];
    let counted = json_lines(&db, &filter).await;
    assert_eq!(counted.len(), 1, "only the count: {counted:?}");
    assert_eq!(counted[0]["matching"], 3, "{counted:?}");
    assert_eq!(counted[0]["action"], "retry");
    let bulk_id = counted[0]["bulk_id"].as_str().unwrap();
    assert!(bulk_id.starts_with("retry-"), "{bulk_id}");

    let listed = json_lines(&db, &[&filter[..], &["--dry-run"]].concat()).await;
    assert_eq!(listed.len(), 5, "count, three runs, summary: {listed:?}");
    let ids: Vec<i64> = listed[1..4]
        .iter()
        .map(|r| r["run_id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, failed);
    assert!(listed[1..4]
        .iter()
        .all(|r| r["outcome"] == "failed" && r["type"] == "policy.sync"));
    assert_eq!(listed[4]["listed"], 3);
    assert_eq!(listed[4]["dry_run"], true);
    assert_eq!(
        state(&app).await,
        before,
        "counting and listing changed nothing"
    );

    // No filter, or ids and a filter together: refused.
    for args in [
        &["runs", "cancel", "--yes"][..],
        &["runs", "cancel", "1", "--status", "queued"],
        &["runs", "cancel", "1", "--dry-run"],
    ] {
        let out = oprun(&db, args).output().await.unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
    }
    assert_eq!(state(&app).await, before);
    app.shutdown().await;
}

#[sqlx::test]
async fn a_bulk_retry_with_yes_retries_each_matching_run_once_and_leaves_the_others(
    _o: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let db = connect.get_database().unwrap().to_owned();
    let app = TestApp::spawn_on(&connect).await;
    let failed = completed_runs(&app, 0..3, "failed", Some("device.unreachable")).await;
    let succeeded = completed_runs(&app, 3..4, "succeeded", None).await;
    let other_code = completed_runs(&app, 4..5, "failed", Some("token.expired")).await;

    let lines = json_lines(
        &db,
        &[
            "runs",
            "retry",
            "--tenant",
            "10",
            "--outcome",
            "failed",
            "--failure-code",
            "device.unreachable",
            "--yes",
            "--reason",
            "device back",
        ],
    )
    .await;
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert_eq!(lines[0]["matching"], 3);
    for (line, id) in lines[1..4].iter().zip(&failed) {
        assert_eq!(line["run_id"], *id, "{line}");
        assert_eq!(line["action"], "retry");
        assert_eq!(line["result"], "done", "{line}");
    }
    let summary = &lines[4];
    assert_eq!(
        (&summary["acted"], &summary["done"], &summary["refused"]),
        (&json!(3), &json!(3), &json!(0)),
        "{summary}"
    );
    let retried: Vec<i64> = sqlx::query_scalar(
        "SELECT (context ->> 'retry_of')::bigint FROM operation_runs
         WHERE context ? 'retry_of' ORDER BY 1",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(retried, failed, "each matching run retried once, no other");
    let recorded: Vec<(String, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT result, bulk_id, actor_name FROM operation_run_actions ORDER BY id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(recorded.len(), 3);
    assert!(recorded.iter().all(|(result, bulk, who)| result == "done"
        && bulk.as_deref() == summary["bulk_id"].as_str()
        && who.as_deref() == Some("oncall")));
    for untouched in succeeded.iter().chain(&other_code) {
        let actions = count(
            &app,
            &format!("SELECT count(*) FROM operation_run_actions WHERE run_id = {untouched}"),
        )
        .await;
        assert_eq!(actions, 0, "run {untouched} does not match");
    }
    app.shutdown().await;
}

#[sqlx::test]
async fn a_bulk_action_never_does_more_than_its_rate_of_actions_in_a_second(
    _o: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let db = connect.get_database().unwrap().to_owned();
    let app = TestApp::spawn_on(&connect).await;
    for policy in 0..12 {
        app.dispatch_policy(policy).await;
    }
    app.wait_for_count("SELECT count(*) FROM operation_runs", 12)
        .await;
    let lines = json_lines(
        &db,
        &[
            "runs", "cancel", "--status", "queued", "--yes", "--rate", "5",
        ],
    )
    .await;
    assert_eq!(lines.last().unwrap()["done"], 12, "{lines:?}");
    // Counted from the records' own times: within any 0.9 s (a second, less the jitter of a
    // local round trip), at most 5 actions started.
    let times: Vec<DateTime<Utc>> =
        sqlx::query_scalar("SELECT at FROM operation_run_actions ORDER BY at")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(times.len(), 12);
    let window = chrono::Duration::milliseconds(900);
    let busiest = times
        .iter()
        .map(|start| {
            times
                .iter()
                .filter(|t| *t >= start && **t < *start + window)
                .count()
        })
        .max()
        .unwrap();
    assert!(
        busiest <= 5,
        "{busiest} actions within 0.9 s at --rate 5: {times:?}"
    );
    app.shutdown().await;
}

#[sqlx::test]
async fn a_bulk_retry_interrupted_half_way_and_run_again_with_its_bulk_id_retries_each_run_once(
    _o: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let db = connect.get_database().unwrap().to_owned();
    let app = TestApp::spawn_on(&connect).await;
    let failed = completed_runs(&app, 0..8, "failed", Some("device.unreachable")).await;
    let filter = [
        "runs",
        "retry",
        "--type",
        "policy.sync",
        "--outcome",
        "failed",
        "--yes",
    ];

    // Interrupted after three retries.
    let mut first = oprun(&db, &[&filter[..], &["--rate", "4"]].concat())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(first.stdout.take().unwrap()).lines();
    let header: Value = serde_json::from_str(&next_line(&mut out).await).unwrap();
    assert_eq!(header["matching"], 8);
    let bulk_id = header["bulk_id"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        let line: Value = serde_json::from_str(&next_line(&mut out).await).unwrap();
        assert_eq!(line["result"], "done", "{line}");
    }
    first.kill().await.unwrap();
    let retries: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM operation_runs WHERE context ? 'retry_of' ORDER BY id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert!(
        (3..8).contains(&retries.len()),
        "interrupted half-way: {retries:?}"
    );
    // Meanwhile the retries failed too: they match the filter now, but are this bulk action's
    // own and are not retried by it.
    for &id in &retries {
        complete(&app, id, "failed", Some("device.unreachable")).await;
    }
    wait_completed(&app, &retries).await;

    let lines = json_lines(&db, &[&filter[..], &["--bulk-id", &bulk_id]].concat()).await;
    let summary = lines.last().unwrap();
    assert_eq!(summary["bulk_id"], bulk_id.as_str());
    assert_eq!(
        summary["unchanged"],
        json!(retries.len()),
        "the runs already retried are skipped: {lines:?}"
    );
    assert_eq!(summary["done"], json!(8 - retries.len()), "{lines:?}");
    let per_run: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT (context ->> 'retry_of')::bigint, count(*) FROM operation_runs
         WHERE context ? 'retry_of' GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        per_run,
        failed.iter().map(|&id| (id, 1)).collect::<Vec<_>>(),
        "every failed run retried exactly once, no retry retried"
    );
    assert_eq!(count(&app, "SELECT count(*) FROM operation_runs").await, 16);
    app.shutdown().await;
}

#[sqlx::test]
async fn a_bulk_fail_completes_only_the_runs_of_its_type_and_tenant(
    _o: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let db = connect.get_database().unwrap().to_owned();
    let app = TestApp::spawn_on(&connect).await;
    for policy in 0..3 {
        app.dispatch_policy(policy).await;
    }
    app.publish(&dispatch(
        "policy.sync",
        1,
        Some(11),
        json!({"policy_id": 9}),
    ))
    .await;
    app.wait_for_count("SELECT count(*) FROM operation_runs", 4)
        .await;
    let queued_of_tenant_10 = [
        "runs",
        "fail",
        "--workspace",
        "1",
        "--tenant",
        "10",
        "--status",
        "queued",
        "--yes",
    ];
    // Created within the last day: none is older.
    let old = json_lines(
        &db,
        &[&queued_of_tenant_10[..], &["--created-before", "1d"]].concat(),
    )
    .await;
    assert_eq!(old[0]["matching"], 0, "{old:?}");
    assert_eq!(old.last().unwrap()["acted"], 0, "{old:?}");
    let before = [
        "--created-before",
        "2999-01-01T00:00:00Z",
        "--reason",
        "executor gone",
    ];
    let lines = json_lines(&db, &[&queued_of_tenant_10[..], &before].concat()).await;
    assert_eq!(lines[0]["matching"], 3, "{lines:?}");
    assert_eq!(lines.last().unwrap()["done"], 3, "{lines:?}");
    let failed = count(
        &app,
        "SELECT count(*) FROM operation_runs WHERE tenant_id = 10 AND outcome = 'failed'
           AND failure_summary @> '[{\"code\": \"run.failed_by_operator\", \"message\": \"executor gone\"}]'",
    )
    .await;
    assert_eq!(failed, 3);
    let other_tenant = count(
        &app,
        "SELECT count(*) FROM operation_runs WHERE tenant_id = 11 AND status = 'queued'",
    )
    .await;
    assert_eq!(other_tenant, 1, "another tenant's run is left alone");
    app.shutdown().await;
}

/// Every node of a JSON plan: (node type, index name).
fn plan_nodes(plan: &Value, out: &mut Vec<(String, Option<String>)>) {
    if let Some(node) = plan.get("Node Type").and_then(Value::as_str) {
        let index = plan["Index Name"].as_str().map(str::to_owned);
        out.push((node.to_owned(), index));
    }
    for child in plan["Plans"].as_array().into_iter().flatten() {
        plan_nodes(child, out);
    }
}

#[sqlx::test]
async fn every_page_of_a_bulk_action_is_read_through_an_index(pool: sqlx::PgPool) {
    use operation_runs::domain::selection::RunSelection;
    use operation_runs::domain::{OperationRunType, RunOutcome, RunStatus};
    use operation_runs::store::bulk;

    crate::helpers::seed_scopes(&pool).await;
    // 60,000 runs: a tenth active, the rest completed, a third of those failed with one of 50
    // failure codes.
    sqlx::raw_sql(
        "INSERT INTO operation_runs (workspace_id, tenant_id, type, run_identity_hash, status,
                                     outcome, failure_summary, created_at, updated_at)
         SELECT 1, (ARRAY[10, 11, NULL])[1 + i % 3]::bigint,
                CASE WHEN i % 7 = 0 THEN 'inventory.sync' ELSE 'policy.sync' END,
                encode(sha256(i::text::bytea), 'hex'),
                CASE WHEN i % 10 = 0 THEN 'running' ELSE 'completed' END,
                CASE WHEN i % 10 = 0 THEN 'pending' WHEN i % 3 = 0 THEN 'failed' ELSE 'succeeded' END,
                CASE WHEN i % 10 <> 0 AND i % 3 = 0
                     THEN jsonb_build_array(jsonb_build_object('code', 'code.' || (i % 50), 'message', 'x'))
                     ELSE '[]' END,
                now() - make_interval(secs => 60000 - i), now() - make_interval(secs => 60000 - i)
         FROM generate_series(1, 60000) AS i;
         ANALYZE operation_runs;",
    )
    .execute(&pool)
    .await
    .unwrap();
    let policy = OperationRunType::parse("policy.sync").unwrap();
    let selections = [
        RunSelection {
            status: Some(RunStatus::Running),
            run_type: Some(policy),
            ..Default::default()
        },
        RunSelection {
            outcome: Some(RunOutcome::Failed),
            failure_code: Some("code.7".into()),
            ..Default::default()
        },
        RunSelection {
            workspace_id: Some(1),
            tenant_id: Some(10),
            outcome: Some(RunOutcome::Failed),
            run_type: Some(policy),
            ..Default::default()
        },
        RunSelection {
            updated_before: Some(Utc::now() - chrono::Duration::hours(1)),
            status: Some(RunStatus::Running),
            ..Default::default()
        },
    ];
    let mut conn = pool.acquire().await.unwrap();
    for mode in ["force_generic_plan", "force_custom_plan"] {
        sqlx::query(&format!("SET plan_cache_mode = {mode}"))
            .execute(&mut *conn)
            .await
            .unwrap();
        for selection in &selections {
            for after in [0, 30_000] {
                let (plan,): (Value,) = bulk::page_query(
                    "EXPLAIN (FORMAT JSON) ",
                    selection,
                    "retry-x",
                    after,
                    60_000,
                    bulk::PAGE,
                )
                .build_query_as()
                .fetch_one(&mut *conn)
                .await
                .unwrap();
                let mut nodes = Vec::new();
                plan_nodes(&plan[0]["Plan"], &mut nodes);
                let runs_read: Vec<_> = nodes
                    .iter()
                    .filter(|(n, i)| {
                        n.contains("Scan")
                            && i.as_deref().is_none_or(|i| i.starts_with("operation_runs"))
                    })
                    .collect();
                assert!(
                    nodes.iter().all(|(n, _)| n != "Seq Scan"),
                    "{mode} {selection:?}: {nodes:?}"
                );
                assert!(!runs_read.is_empty(), "{mode} {selection:?}: {nodes:?}");
                if selection.active_only() {
                    assert!(
                        runs_read
                            .iter()
                            .any(|(_, i)| i.as_deref() == Some("operation_runs_active_idx")),
                        "active runs are read from their own index: {mode} {selection:?}: {nodes:?}"
                    );
                }
            }
        }
    }
}
