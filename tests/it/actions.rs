//! Operator actions on runs: cancel, retry and fail, each done once, never over a completion,
//! in the run's scope only, and recorded with who asked, why and what came of it.

use std::time::Duration;

use chrono::Utc;
use futures_util::StreamExt;
use operation_runs::domain::action::{Actor, RunAction};
use operation_runs::domain::{ErrorCode, RunOutcome, RunScope, RunStatus};
use operation_runs::service::actions::{act, ActionRequest};
use operation_runs::service::apply::{ApplyError, ApplySettings};
use operation_runs::service::reaper;
use operation_runs::service::tx_buffer::TxBuffer;
use operation_runs::store::actions as recorded;
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::helpers::{database_url_for, header, progress, TestApp, DEADLINE};

fn ctx(app: &TestApp) -> ApplySettings {
    ApplySettings {
        event_source: format!("/operation-runs/{}", app.config.namespace),
        hand_off_jobs: false,
        max_active_runs_per_tenant: 0,
    }
}

fn operator() -> Actor {
    Actor {
        name: Some("ada".into()),
        user_id: Some(5),
        via: "cli",
    }
}

/// Does `action` on `run_id` as the operator, in `scope` (None: any), in one transaction.
async fn act_in(
    app: &TestApp,
    action: RunAction,
    run_id: i64,
    scope: Option<RunScope>,
    reason: Option<&str>,
) -> Result<Value, ApplyError> {
    let actor = operator();
    let req = ActionRequest {
        action,
        run_id,
        scope,
        actor: &actor,
        reason,
        bulk_id: None,
        command_id: None,
    };
    let mut tx = app.pool.begin().await.unwrap();
    let mut buf = TxBuffer::default();
    let done = act(&mut tx, &mut buf, &req, &ctx(app)).await?;
    buf.flush(&mut tx).await.unwrap();
    tx.commit().await.unwrap();
    Ok(done.reply)
}

async fn act_on(app: &TestApp, action: RunAction, run_id: i64) -> Value {
    act_in(app, action, run_id, None, Some("on-call"))
        .await
        .unwrap()
}

async fn start(app: &TestApp, run_id: i64) {
    app.publish(&progress(
        "update_run",
        run_id,
        json!({"status": "running"}),
    ))
    .await;
    app.wait_for_run(run_id, "running", |r| r.status == RunStatus::Running)
        .await;
}

async fn complete(app: &TestApp, run_id: i64, outcome: &str) {
    app.publish(&progress(
        "update_run",
        run_id,
        json!({"status": "completed", "outcome": outcome}),
    ))
    .await;
    app.wait_for_run(run_id, "completed", |r| r.status == RunStatus::Completed)
        .await;
}

/// The types of run `run_id`'s events, in order.
pub(crate) async fn event_types_of(pool: &PgPool, run_id: i64) -> Vec<String> {
    sqlx::query_scalar("SELECT type FROM operation_run_events WHERE run_id = $1 ORDER BY sequence")
        .bind(run_id)
        .fetch_all(pool)
        .await
        .unwrap()
}

#[sqlx::test]
async fn a_queued_run_cancelled_completes_at_once_and_frees_its_identity(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let run_id = app.create_policy_run(1).await;
    let reply = act_on(&app, RunAction::Cancel, run_id).await;
    assert_eq!(
        reply,
        json!({"run_id": run_id, "action": "cancel", "result": "done"})
    );
    let run = app
        .wait_for_run(run_id, "cancelled", |r| r.status == RunStatus::Completed)
        .await;
    assert_eq!(run.outcome, RunOutcome::Cancelled);
    let completed: Value = sqlx::query_scalar(
        "SELECT cloud_event FROM operation_run_events WHERE run_id = $1 AND type = 'operation_run.completed'",
    )
    .bind(run_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(completed["data"]["action"]["actor"]["name"], "ada");
    assert_eq!(completed["data"]["action"]["reason"], "on-call");
    // The identity is free: the same dispatch creates a new run.
    app.dispatch_policy(1).await;
    let again = crate::helpers::wait_for_active_run(&app, "policy.sync").await;
    assert_ne!(again, run_id);
    app.shutdown().await;
}

#[sqlx::test]
async fn a_running_run_asked_to_cancel_tells_its_executor_whose_cancelled_completion_applies(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    let (_channel, _queue, mut cancels) = app
        .consume_new_queue(
            "",
            Some((&app.topology.jobs_exchange(), "cancel.policy.sync")),
        )
        .await;
    let run_id = app.create_policy_run(1).await;
    start(&app, run_id).await;
    let reply = act_on(&app, RunAction::Cancel, run_id).await;
    assert_eq!(reply["result"], "requested", "{reply}");
    let message = tokio::time::timeout(DEADLINE, cancels.next())
        .await
        .expect("the cancel reaches the executor's queue")
        .unwrap()
        .unwrap();
    let body: Value = serde_json::from_slice(&message.data).unwrap();
    assert_eq!(body["run_id"], run_id);
    assert_eq!(body["type"], "policy.sync");
    assert_eq!(body["cancel"], true);
    assert_eq!(body["context"]["policy_id"], 1);
    assert_eq!(
        message.properties.message_id().as_ref().map(|m| m.as_str()),
        Some(format!("cancel-{run_id}").as_str())
    );
    // A second request changes nothing and sends nothing.
    let again = act_on(&app, RunAction::Cancel, run_id).await;
    assert_eq!(again["result"], "unchanged", "{again}");
    let run = app.wait_for_run(run_id, "still running", |_| true).await;
    assert_eq!(run.status, RunStatus::Running);
    complete(&app, run_id, "cancelled").await;
    let run = app.wait_for_run(run_id, "cancelled", |_| true).await;
    assert_eq!(run.outcome, RunOutcome::Cancelled);
    assert_eq!(
        event_types_of(&app.pool, run_id).await,
        [
            "operation_run.queued",
            "operation_run.started",
            "operation_run.cancel_requested",
            "operation_run.completed"
        ]
    );
    let requested: Value = sqlx::query_scalar(
        "SELECT cloud_event FROM operation_run_events WHERE run_id = $1 AND type = 'operation_run.cancel_requested'",
    )
    .bind(run_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(requested["data"]["action"]["actor"]["user_id"], 5);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), cancels.next())
            .await
            .is_err()
    );
    app.shutdown().await;
}

#[sqlx::test]
async fn a_completion_committed_first_is_never_overwritten_by_a_cancel_or_a_fail(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let run_id = app.create_policy_run(1).await;
    start(&app, run_id).await;
    complete(&app, run_id, "succeeded").await;
    for action in [RunAction::Cancel, RunAction::Fail] {
        let reply = act_on(&app, action, run_id).await;
        assert_eq!(reply["result"], "refused", "{reply}");
        assert!(reply["error"]
            .as_str()
            .unwrap()
            .contains("already completed as succeeded"));
    }
    let run = app.wait_for_run(run_id, "unchanged", |_| true).await;
    assert_eq!(run.outcome, RunOutcome::Succeeded);
    assert_eq!(
        event_types_of(&app.pool, run_id).await.len(),
        3,
        "no event for a refused action"
    );
    app.shutdown().await;
}

#[sqlx::test]
async fn a_late_completion_after_a_cancel_completed_the_run_is_refused(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let run_id = app.create_policy_run(1).await;
    act_on(&app, RunAction::Cancel, run_id).await;
    app.publish(&progress(
        "update_run",
        run_id,
        json!({"status": "completed", "outcome": "succeeded"}),
    ))
    .await;
    let letter = &app.take_dead_letters(1).await[0];
    assert_eq!(
        header(&letter.properties, "x-oprun-error-code").as_deref(),
        Some("invalid_transition")
    );
    assert!(header(&letter.properties, "x-oprun-error-message")
        .unwrap()
        .contains("cancelled"));
    let run = app.wait_for_run(run_id, "still cancelled", |_| true).await;
    assert_eq!(run.outcome, RunOutcome::Cancelled);
    app.shutdown().await;
}

#[sqlx::test]
async fn a_retry_creates_one_run_linked_back_and_a_second_retry_while_it_is_active_dedupes(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    let run_id = app.create_policy_run(1).await;
    complete(&app, run_id, "failed").await;
    let first = act_on(&app, RunAction::Retry, run_id).await;
    assert_eq!(first["result"], "done", "{first}");
    assert_eq!(first["deduplicated"], false);
    let new_id = first["new_run_id"].as_i64().unwrap();
    let retry = app.wait_for_run(new_id, "the retry", |_| true).await;
    assert_eq!(retry.status, RunStatus::Queued);
    assert_eq!(retry.context["retry_of"], run_id);
    assert_eq!(retry.context["policy_id"], 1);
    assert_eq!((retry.workspace_id, retry.tenant_id), (1, Some(10)));
    let second = act_on(&app, RunAction::Retry, run_id).await;
    assert_eq!(second["result"], "done", "{second}");
    assert_eq!(second["new_run_id"], new_id);
    assert_eq!(second["deduplicated"], true);
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM operation_runs")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(runs, 2, "a retry request never creates a second run");
    let mut conn = app.pool.acquire().await.unwrap();
    assert_eq!(
        recorded::retries_of(&mut conn, run_id).await.unwrap(),
        [new_id]
    );
    let types = event_types_of(&app.pool, run_id).await;
    assert_eq!(
        types
            .iter()
            .filter(|t| *t == "operation_run.retried")
            .count(),
        2
    );
    app.shutdown().await;
}

#[sqlx::test]
async fn a_succeeded_or_active_run_is_not_retried(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let active = app.create_policy_run(1).await;
    let reply = act_on(&app, RunAction::Retry, active).await;
    assert_eq!(reply["result"], "refused", "{reply}");
    complete(&app, active, "succeeded").await;
    let reply = act_on(&app, RunAction::Retry, active).await;
    assert_eq!(reply["result"], "refused", "{reply}");
    assert!(reply.get("new_run_id").is_none());
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM operation_runs")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(runs, 1);
    app.shutdown().await;
}

#[sqlx::test]
async fn an_operator_fails_a_queued_or_running_run_with_the_reason_as_message(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let queued = app.create_policy_run(1).await;
    let reply = act_in(&app, RunAction::Fail, queued, None, Some("executor gone"))
        .await
        .unwrap();
    assert_eq!(reply["result"], "done", "{reply}");
    let running = app.create_policy_run(2).await;
    start(&app, running).await;
    act_in(&app, RunAction::Fail, running, None, Some("executor gone"))
        .await
        .unwrap();
    for id in [queued, running] {
        let run = app.wait_for_run(id, "failed", |_| true).await;
        assert_eq!(
            (run.status, run.outcome),
            (RunStatus::Completed, RunOutcome::Failed)
        );
        let entries = &run.failure_summary.entries;
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].code, "run.failed_by_operator");
        assert_eq!(entries[0].message, "executor gone");
    }
    app.shutdown().await;
}

#[sqlx::test]
async fn an_action_in_another_workspace_or_tenant_finds_no_run(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let run_id = app.create_policy_run(1).await;
    for scope in [
        RunScope {
            workspace_id: 2,
            tenant_id: Some(10),
        },
        RunScope {
            workspace_id: 1,
            tenant_id: Some(11),
        },
        RunScope {
            workspace_id: 1,
            tenant_id: None,
        },
    ] {
        for action in [RunAction::Cancel, RunAction::Fail, RunAction::Retry] {
            match act_in(&app, action, run_id, Some(scope), None).await {
                Err(ApplyError::DeadLetter(r)) => {
                    assert_eq!(r.code, ErrorCode::RunNotFound);
                    assert_eq!(r.message, format!("run {run_id} not found"));
                }
                other => panic!("{scope:?} {action:?}: {other:?}"),
            }
        }
    }
    let run = app.wait_for_run(run_id, "untouched", |_| true).await;
    assert_eq!(run.status, RunStatus::Queued);
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM operation_run_actions")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(recorded, 0);
    app.shutdown().await;
}

#[sqlx::test]
async fn every_action_is_recorded_with_who_why_and_what_came_of_it(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let run_id = app.create_policy_run(1).await;
    act_on(&app, RunAction::Retry, run_id).await;
    act_on(&app, RunAction::Cancel, run_id).await;
    let retry = act_on(&app, RunAction::Retry, run_id).await;
    let mut conn = app.pool.acquire().await.unwrap();
    let actions = recorded::for_run(&mut conn, run_id).await.unwrap();
    let summary: Vec<(String, String)> = actions
        .iter()
        .map(|a| {
            (
                a["action"].as_str().unwrap().to_owned(),
                a["result"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("retry".into(), "refused".into()),
            ("cancel".into(), "done".into()),
            ("retry".into(), "done".into())
        ]
    );
    for a in &actions {
        assert_eq!(
            a["actor"],
            json!({"name": "ada", "user_id": 5, "via": "cli"})
        );
        assert_eq!(a["reason"], "on-call");
    }
    assert_eq!(actions[2]["new_run_id"], retry["new_run_id"]);
    assert!(actions[0]["error"].as_str().unwrap().contains("queued"));
    app.shutdown().await;
}

#[sqlx::test]
async fn the_reaper_cancels_a_run_whose_executor_does_not_answer_a_cancel_in_time(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let run_id = app.create_policy_run(1).await;
    start(&app, run_id).await;
    act_on(&app, RunAction::Cancel, run_id).await;
    // Not yet due: nothing happens.
    assert!(reaper::reap_once(&app.pool, &ctx(&app), 1000.0, Utc::now())
        .await
        .unwrap()
        .is_empty());
    // The request is older than the type's expected duration (the run itself is not stale).
    sqlx::query(
        "UPDATE operation_runs SET cancel_requested_at = now() - interval '1 day' WHERE id = $1",
    )
    .bind(run_id)
    .execute(&app.pool)
    .await
    .unwrap();
    let reaped = reaper::reap_once(&app.pool, &ctx(&app), 1000.0, Utc::now())
        .await
        .unwrap();
    assert_eq!(reaped, [run_id]);
    let run = app.wait_for_run(run_id, "cancelled", |_| true).await;
    assert_eq!(run.outcome, RunOutcome::Cancelled);
    assert_eq!(run.failure_summary.entries[0].code, "run.cancel_timeout");
    app.shutdown().await;
}

fn oprun(database: &str, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_oprun"))
        .args(args)
        .env("DATABASE_URL", database_url_for(database))
        .env("USER", "oncall")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[sqlx::test]
async fn the_cli_acts_on_each_run_printing_one_result_line_and_runs_show_lists_the_actions(
    _o: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = TestApp::spawn_on(&connect).await;
    let db = connect.get_database().unwrap().to_owned();
    let a = app.create_policy_run(1).await;
    app.dispatch_policy(2).await;
    app.wait_for_count("SELECT count(*) FROM operation_runs", 2)
        .await;
    let b: i64 = sqlx::query_scalar("SELECT max(id) FROM operation_runs")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let (code, out, err) = oprun(
        &db,
        &[
            "runs",
            "cancel",
            &a.to_string(),
            &b.to_string(),
            "999999",
            "--reason",
            "maintenance",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(
        lines[0],
        json!({"run_id": a, "action": "cancel", "result": "done"})
    );
    assert_eq!(lines[1]["result"], "done");
    assert_eq!(lines[2]["result"], "refused");
    assert_eq!(lines[2]["error"], "run 999999 not found");
    let (code, out, err) = oprun(
        &db,
        &["runs", "retry", &a.to_string(), "--initiator", "grace"],
    );
    assert_eq!(code, 0, "{err}");
    let retried: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(retried["result"], "done", "{out}");
    let (_, show, _) = oprun(&db, &["runs", "show", &a.to_string()]);
    let shown: Value = serde_json::from_str(&show).unwrap();
    let actions = shown["actions"].as_array().unwrap();
    assert_eq!(actions.len(), 2);
    assert_eq!(
        actions[0]["actor"]["name"], "oncall",
        "the OS user by default"
    );
    assert_eq!(actions[0]["reason"], "maintenance");
    assert_eq!(actions[1]["actor"]["name"], "grace");
    assert_eq!(shown["retries"], json!([retried["new_run_id"]]));
    app.shutdown().await;
}

#[sqlx::test]
async fn a_broker_cancel_is_applied_once_and_a_command_of_another_workspace_is_not_found(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    let run_id = app.create_policy_run(1).await;
    start(&app, run_id).await;
    let cancel = json!({"kind": "cancel_run", "command_id": "cancel-1", "run_id": run_id,
                        "workspace_id": 1, "tenant_id": 10, "reason": "stuck", "initiator_name": "platform"});
    app.publish(&cancel).await;
    app.publish(&cancel).await;
    app.publish(
        &json!({"kind": "cancel_run", "command_id": "cancel-2", "run_id": run_id,
                        "workspace_id": 2, "tenant_id": 20}),
    )
    .await;
    let letter = &app.take_dead_letters(1).await[0];
    assert_eq!(
        header(&letter.properties, "x-oprun-error-code").as_deref(),
        Some("run_not_found")
    );
    let mut conn = app.pool.acquire().await.unwrap();
    let actions = recorded::for_run(&mut conn, run_id).await.unwrap();
    assert_eq!(
        actions.len(),
        1,
        "a redelivered command has no second effect: {actions:?}"
    );
    assert_eq!(actions[0]["result"], "requested");
    assert_eq!(actions[0]["actor"]["via"], "broker");
    assert_eq!(actions[0]["command_id"], "cancel-1");
    let jobs: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM operation_run_jobs WHERE run_id = $1 AND type = 'cancel.policy.sync'",
    )
    .bind(run_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(jobs, 1);
    app.shutdown().await;
}
