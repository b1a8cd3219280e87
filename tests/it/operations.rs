//! Operator tools: the stale-run reaper, DLQ replay, events replay, and the metrics endpoint.

use std::process::Stdio;

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use crate::helpers::{
    database_url_for, dispatch, progress, test_settings, wait_for_active_run, TestApp, DEADLINE,
};

pub(crate) fn oprun(database: &str, namespace: &str, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_oprun"));
    c.args(args)
        .env("DATABASE_URL", database_url_for(database))
        .env("OPRUN_NAMESPACE", namespace)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    c
}

#[sqlx::test]
async fn a_stale_run_is_reaped_once_even_with_two_instances(
    _o: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = |n| {
        PgPoolOptions::new()
            .max_connections(n)
            .connect_lazy_with(connect.clone())
    };
    let mut app = TestApp::without_service(pool(2)).await;
    let mut settings = test_settings();
    app.start_instance(pool(3), settings.clone()).await;
    app.dispatch_policy(1).await;
    app.dispatch_policy(2).await;
    app.wait_for_count("SELECT count(*) FROM operation_runs", 2)
        .await;
    let stale = wait_for_active_run(&app, "policy.sync").await;
    app.publish(&progress("update_run", stale, json!({"status": "running"})))
        .await;
    app.wait_for_run(stale, "start", |r| r.status.as_str() == "running")
        .await;
    // Only `stale` looks idle: its last change was long ago.
    sqlx::query("UPDATE operation_runs SET updated_at = now() - interval '2 hours' WHERE id = $1")
        .bind(stale)
        .execute(&app.pool)
        .await
        .unwrap();
    app.stop_instance(0).await;
    settings.reaper.reaper_interval = std::time::Duration::from_secs(1);
    settings.reaper.stale_factor = 2.0; // policy.sync expects 5 min: 10 min deadline
    app.start_instance(pool(3), settings.clone()).await;
    app.start_instance(pool(3), settings).await;

    let run = app
        .wait_for_run(stale, "the reaper", |r| r.status.as_str() == "completed")
        .await;
    assert_eq!(run.outcome.as_str(), "failed");
    assert_eq!(run.failure_summary.entries.len(), 1);
    assert_eq!(run.failure_summary.entries[0].code, "run.stale");
    // Further rounds, as each instance's reaper would run them (the unit of work itself, at
    // once and concurrently): the completed run is not stale any more, nothing else is.
    let ctx = app.service().ctx.clone();
    let (a, b) = tokio::join!(
        operation_runs::service::reaper::reap_once(&app.pool, &ctx, 2.0, chrono::Utc::now()),
        operation_runs::service::reaper::reap_once(&app.pool, &ctx, 2.0, chrono::Utc::now()),
    );
    assert_eq!(
        (a.unwrap(), b.unwrap()),
        (vec![], vec![]),
        "nothing more to reap"
    );
    let (completed_events, active): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM operation_run_events WHERE run_id = $1 AND type = 'operation_run.completed'),
                (SELECT count(*) FROM operation_runs WHERE status <> 'completed')",
    )
    .bind(stale)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        (completed_events, active),
        (1, 1),
        "reaped once; the fresh run is left alone"
    );
    let reaped: u64 = app
        .instances_metrics()
        .iter()
        .map(|m| m.counter("oprun_reaped_runs_total", ""))
        .sum();
    assert_eq!(reaped, 1);
    app.shutdown().await;
}

#[sqlx::test]
async fn dlq_replay_with_filters_moves_exactly_the_matching_letters(
    _o: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let db = connect.get_database().unwrap().to_owned();
    let app = TestApp::spawn_on(&connect).await;
    let ns = app.topology.namespace().to_owned();
    for i in 0..4 {
        app.publish(&dispatch("policy.sync", 99, None, json!({"policy_id": i})))
            .await; // unknown_workspace
    }
    for _ in 0..3 {
        app.publish(&dispatch("nope.sync", 1, None, json!({})))
            .await; // unknown_type
    }
    for _ in 0..2 {
        app.publish(&progress("update_run", 4242, json!({"status": "running"})))
            .await; // run_not_found
    }
    crate::helpers::wait_until("9 dead letters", || async {
        (app.queue_depth(&app.topology.dead_letter_queue()).await == 9).then_some(())
    })
    .await;

    let out = oprun(&db, &ns, &["dlq", "list", "--limit", "50"])
        .output()
        .await
        .unwrap();
    let listed: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 9);
    assert!(listed
        .iter()
        .all(|l| l["code"].is_string() && l["age_seconds"].is_i64()));
    // Listing moved them into the dead-letter table, and removed none.
    assert_eq!(app.dead_letters_held().await, 9, "listing removed nothing");
    app.wait_for_recorded_settings().await;

    let out = oprun(
        &db,
        &ns,
        &["dlq", "replay", "--code", "unknown_type", "--dry-run"],
    )
    .output()
    .await
    .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"replayed\":3"));
    assert_eq!(
        app.dead_letters_held().await,
        9,
        "a dry run changes nothing"
    );

    // The workspace now exists: the replayed dispatches will succeed.
    sqlx::query("INSERT INTO workspaces (id, name) VALUES (99, 'late')")
        .execute(&app.pool)
        .await
        .unwrap();
    let out = oprun(
        &db,
        &ns,
        &[
            "dlq",
            "replay",
            "--code",
            "unknown_workspace",
            "--kind",
            "dispatch",
            "--limit",
            "3",
        ],
    )
    .output()
    .await
    .unwrap();
    let summary: Value = serde_json::from_str(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        (summary["replayed"].as_u64(), summary["failed"].as_u64()),
        (Some(3), Some(0))
    );
    app.wait_for_count(
        "SELECT count(*) FROM operation_runs WHERE workspace_id = 99",
        3,
    )
    .await;
    assert_eq!(app.dead_letters_held().await, 6, "6 letters left");
    let out = oprun(&db, &ns, &["dlq", "list", "--limit", "50"])
        .output()
        .await
        .unwrap();
    let mut codes: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["code"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    codes.sort();
    assert_eq!(
        codes,
        [
            "run_not_found",
            "run_not_found",
            "unknown_type",
            "unknown_type",
            "unknown_type",
            "unknown_workspace"
        ]
    );
    app.shutdown().await;
}

#[sqlx::test]
async fn a_dlq_replay_killed_midway_loses_nothing(_o: PgPoolOptions, connect: PgConnectOptions) {
    let db = connect.get_database().unwrap().to_owned();
    let app = TestApp::spawn_on(&connect).await;
    let ns = app.topology.namespace().to_owned();
    let letters = 300;
    for i in 0..letters {
        app.publish(&dispatch("policy.sync", 99, None, json!({"policy_id": i})))
            .await;
    }
    let dlq = app.topology.dead_letter_queue();
    crate::helpers::wait_until("the dead letters", || async {
        (app.queue_depth(&dlq).await == letters).then_some(())
    })
    .await;
    sqlx::query("INSERT INTO workspaces (id, name) VALUES (99, 'late')")
        .execute(&app.pool)
        .await
        .unwrap();
    app.wait_for_recorded_settings().await;

    let mut replay = oprun(&db, &ns, &["dlq", "replay"]).spawn().unwrap();
    crate::helpers::wait_until("the replay to be midway", || async {
        let held = app.dead_letters_held().await;
        (held < i64::from(letters) && held > 0).then_some(())
    })
    .await;
    replay.kill().await.unwrap();
    let out = oprun(&db, &ns, &["dlq", "replay"])
        .stderr(Stdio::piped())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    app.wait_for_count(
        "SELECT count(*) FROM operation_runs WHERE workspace_id = 99",
        i64::from(letters),
    )
    .await;
    assert_eq!(app.dead_letters_held().await, 0);
    app.shutdown().await;
}

#[sqlx::test]
async fn events_replay_resends_a_runs_history_in_order(
    _o: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let db = connect.get_database().unwrap().to_owned();
    let app = TestApp::spawn_on(&connect).await;
    let run_id = app.create_policy_run(1).await;
    app.publish(&progress(
        "update_run",
        run_id,
        json!({"status": "running"}),
    ))
    .await;
    app.publish(&progress(
        "increment_summary_counts",
        run_id,
        json!({"counts": {"items": 1}}),
    ))
    .await;
    app.publish(&progress(
        "update_run",
        run_id,
        json!({"status": "completed", "outcome": "succeeded"}),
    ))
    .await;
    app.wait_for_count(
        "SELECT count(*) FROM operation_run_events e WHERE NOT EXISTS
             (SELECT 1 FROM operation_run_event_outbox o WHERE o.position = e.position)",
        4,
    )
    .await;
    let stored: Vec<String> = sqlx::query_scalar(
        "SELECT id::text FROM operation_run_events WHERE run_id = $1 ORDER BY sequence",
    )
    .bind(run_id)
    .fetch_all(&app.pool)
    .await
    .unwrap();

    let channel = app.connection.create_channel().await.unwrap();
    let queue = format!("{}.late_subscriber", app.topology.namespace());
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let out = oprun(
        &db,
        app.topology.namespace(),
        &[
            "events",
            "replay",
            "--run",
            &run_id.to_string(),
            "--to-queue",
            &queue,
        ],
    )
    .output()
    .await
    .unwrap();
    assert!(out.status.success());
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 4 {
        let d = tokio::time::timeout(DEADLINE, consumer.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let event: Value = serde_json::from_slice(&d.data).unwrap();
        assert_eq!(
            d.properties.message_id().as_ref().unwrap().as_str(),
            event["id"].as_str().unwrap()
        );
        got.push((
            event["id"].as_str().unwrap().to_owned(),
            event["data"]["sequence"].as_i64().unwrap(),
        ));
    }
    assert_eq!(got.iter().map(|g| g.1).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert_eq!(got.into_iter().map(|g| g.0).collect::<Vec<_>>(), stored);
    channel
        .queue_delete(queue.as_str().into(), Default::default())
        .await
        .unwrap();
    app.shutdown().await;
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    out
}

#[sqlx::test]
async fn the_metrics_endpoint_shows_the_counters_moving(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let service = app.service();
    let stop = tokio_util::sync::CancellationToken::new();
    let addr = operation_runs::service::health::spawn_with(
        "127.0.0.1:0".parse().unwrap(),
        service.health.clone(),
        service.metrics.clone(),
        operation_runs::config::ServeSettings::defaults()
            .http
            .limits(),
        stop.clone(),
    )
    .await
    .unwrap()
    .addr;
    assert!(http_get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
    crate::helpers::wait_until("readiness", || async {
        http_get(addr, "/readyz")
            .await
            .starts_with("HTTP/1.1 200")
            .then_some(())
    })
    .await;
    let before = http_get(addr, "/metrics").await;
    assert!(!before.contains("kind=\"dispatch\",result=\"applied\""));
    app.dispatch_policy(1).await;
    app.dispatch_policy(1).await;
    app.publish(&dispatch(
        "policy.sync",
        1,
        Some(99),
        json!({"policy_id": 1}),
    ))
    .await;
    app.take_dead_letters(1).await;
    let metrics = crate::helpers::wait_until("the counters", || async {
        let m = http_get(addr, "/metrics").await;
        m.contains("oprun_relay_published_total{kind=\"event\"} 1")
            .then_some(m)
    })
    .await;
    for line in [
        "oprun_commands_total{kind=\"dispatch\",result=\"applied\"} 1",
        "oprun_commands_total{kind=\"dispatch\",result=\"deduplicated\"} 1",
        "oprun_commands_total{kind=\"dispatch\",result=\"dead_lettered:unknown_tenant\"} 1",
        "oprun_command_processing_seconds_count 3",
        "oprun_consumer_running 1",
        // Where each command's time went: one observation per command per stage, one per
        // event for the relay's publish.
        "oprun_stage_seconds_count{stage=\"batch_window\"} 3",
        "oprun_stage_seconds_count{stage=\"transaction\"} 3",
        "oprun_stage_seconds_count{stage=\"commit\"} 3",
        "oprun_stage_seconds_count{stage=\"settle\"} 3",
        "oprun_stage_seconds_count{stage=\"relay_publish\"} 1",
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    stop.cancel();
    app.shutdown().await;
}
