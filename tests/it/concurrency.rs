//! Several instances on one queue: duplicated dispatches still give one active run per identity.

use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::helpers::{dispatch, test_settings, TestApp};

#[sqlx::test]
async fn two_instances_with_duplicated_dispatches_keep_one_active_run_per_identity(
    _opts: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = |n| {
        PgPoolOptions::new()
            .max_connections(n)
            .connect_lazy_with(connect.clone())
    };
    let mut app = TestApp::without_service(pool(2)).await;
    let mut settings = test_settings();
    settings.batch_size = 10;
    settings.prefetch = 20;
    app.start_instance(pool(3), settings.clone()).await;
    app.start_instance(pool(3), settings).await;

    let identities = 40;
    let copies = 5;
    let mut sent = 0;
    for copy in 0..copies {
        for i in 0..identities {
            // Keys in another order for each copy; same identity.
            let context = if copy % 2 == 0 {
                json!({"selection": {"id": i, "scope": "all"}, "copy": copy})
            } else {
                json!({"copy": copy, "selection": {"scope": "all", "id": i}})
            };
            app.publish(&dispatch("inventory.sync", 1, Some(10), context))
                .await;
            sent += 1;
        }
    }
    app.wait_for_count("SELECT count(*) FROM processed_commands", sent)
        .await;
    let (runs, distinct): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT run_identity_hash) FROM operation_runs WHERE status <> 'completed'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((runs, distinct), (identities, identities));
    let dedup: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM processed_commands WHERE (result->>'deduplicated')::boolean",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(dedup, sent - identities);
    let both_worked = app.instances_metrics().iter().all(|m| {
        m.counter(
            "oprun_commands_total",
            "kind=\"dispatch\",result=\"applied\"",
        ) + m.counter(
            "oprun_commands_total",
            "kind=\"dispatch\",result=\"deduplicated\"",
        ) > 0
    });
    assert!(both_worked, "both instances consumed");
    app.shutdown().await;
}
