//! Crash and restart: `oprun serve` killed with SIGKILL mid-stream and started again loses
//! nothing and applies nothing twice.

use std::process::Stdio;

use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::process::Child;

use crate::helpers::{progress, serve_command, wait_until, TestApp};

/// Starts the real binary against the test database and namespace.
fn spawn_serve(database: &str, namespace: &str) -> Child {
    serve_command(database, namespace)
        .args(["--batch-size", "20"])
        .stderr(Stdio::null())
        .spawn()
        .expect("the oprun binary starts")
}

#[sqlx::test]
async fn a_service_killed_mid_stream_loses_nothing_and_applies_nothing_twice(
    _opts: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let database = connect.get_database().expect("test database").to_owned();
    let app = TestApp::without_service(
        PgPoolOptions::new()
            .max_connections(2)
            .connect_lazy_with(connect),
    )
    .await;
    let namespace = app.topology.namespace().to_owned();
    let mut subscriber = app.subscribe_events().await;
    let mut serve = spawn_serve(&database, &namespace);

    let run_id = app.create_policy_run(1).await;
    let increments = 600;
    for i in 0..increments {
        app.publish(&progress(
            "increment_summary_counts",
            run_id,
            json!({"counts": {"items": 1}}),
        ))
        .await;
        if i == increments / 3 {
            serve.kill().await.unwrap();
            serve = spawn_serve(&database, &namespace);
        }
    }
    // Kill the second instance once it is applying (a commit after the last publish), so that
    // it dies mid-stream, not before it started.
    let applied = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM processed_commands")
            .fetch_one(&app.pool)
            .await
            .unwrap()
    };
    let before = applied().await;
    wait_until("the second instance to apply commands", || async {
        let n = applied().await;
        (n > before || n == increments + 1).then_some(())
    })
    .await;
    serve.kill().await.unwrap();
    let mut serve = spawn_serve(&database, &namespace);

    app.wait_for_count("SELECT count(*) FROM processed_commands", increments + 1)
        .await;
    let run = operation_runs::store::runs::get(&app.pool, run_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        run.summary_counts.get("items"),
        increments as u64,
        "every increment counted exactly once"
    );

    // Every recorded event reaches the subscriber, in order per run (duplicates allowed).
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM operation_run_events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(recorded, increments + 1);
    let mut seen = std::collections::BTreeSet::new();
    let mut last = 0;
    while seen.len() < recorded as usize {
        for (event, _) in subscriber.next_events(1).await {
            let seq = event["data"]["sequence"].as_i64().unwrap();
            assert!(seq <= last + 1, "no gap: got {seq} after {last}");
            last = last.max(seq);
            seen.insert(seq);
        }
    }
    serve.kill().await.unwrap();
    app.shutdown().await;
}
