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
    settings.batch.batch_size = 10;
    settings.batch.prefetch = 20;
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

/// Two consumers holding the same command id at once (a redelivery, a producer's duplicate
/// publish): the one that loses the race replays the first result; it must not dead-letter a
/// command that was applied.
#[sqlx::test]
async fn a_command_applied_meanwhile_by_another_consumer_is_replayed_not_refused(
    pool: sqlx::PgPool,
) {
    use operation_runs::domain::decode_command;
    use operation_runs::service::apply::{ApplySettings, Disposition};
    use operation_runs::service::command::apply_command;
    use operation_runs::service::handler::apply_batch;
    use operation_runs::service::tx_buffer::TxBuffer;
    use tokio_util::sync::CancellationToken;

    crate::helpers::seed_scopes(&pool).await;
    let body = dispatch("policy.sync", 1, Some(10), json!({"policy_id": 7}));
    let command = decode_command(body.to_string().as_bytes(), None).unwrap();
    let ctx = ApplySettings {
        event_source: "/test".into(),
        hand_off_jobs: false,
        max_active_runs_per_tenant: 0,
    };
    // The first consumer applies it and has not committed yet...
    let mut first = pool.begin().await.unwrap();
    let mut buf = TxBuffer::default();
    apply_command(&mut first, &mut buf, &command, &ctx)
        .await
        .unwrap();
    buf.flush(&mut first).await.unwrap();
    // ...when the second starts on it: its inbox check misses, its insert waits for the first.
    let second = tokio::spawn({
        let (pool, command, ctx) = (pool.clone(), command.clone(), ctx.clone());
        async move { apply_batch(&pool, &[&command], &ctx, &CancellationToken::new()).await }
    });
    wait_for_a_lock_wait(&pool).await;
    first.commit().await.unwrap();

    let results = second.await.unwrap().expect("not shut down");
    match &results[0] {
        Ok(r) => assert_eq!(r.disposition, Disposition::AlreadyProcessed),
        Err(rejection) => panic!("refused (would be dead-lettered): {rejection:?}"),
    }
}

/// Two consumers reporting on one run at once: the second waits for the first's row lock and
/// must then number its event after the first's, not reuse the number it would have seen
/// before the wait.
#[sqlx::test]
async fn a_progress_command_that_waited_for_a_runs_lock_numbers_its_event_after_the_first(
    pool: sqlx::PgPool,
) {
    use operation_runs::domain::decode_command;
    use operation_runs::service::apply::{ApplySettings, Disposition};
    use operation_runs::service::command::apply_command;
    use operation_runs::service::handler::apply_batch;
    use operation_runs::service::tx_buffer::TxBuffer;
    use tokio_util::sync::CancellationToken;

    crate::helpers::seed_scopes(&pool).await;
    let ctx = ApplySettings {
        event_source: "/test".into(),
        hand_off_jobs: false,
        max_active_runs_per_tenant: 0,
    };
    let dispatch = decode_command(
        dispatch("policy.sync", 1, Some(10), json!({"policy_id": 9}))
            .to_string()
            .as_bytes(),
        None,
    )
    .unwrap();
    let created = apply_batch(&pool, &[&dispatch], &ctx, &CancellationToken::new())
        .await
        .unwrap();
    let run_id = created[0].as_ref().unwrap().run_id.unwrap();
    let increment = |n: i64| {
        let body = crate::helpers::progress(
            "increment_summary_counts",
            run_id,
            json!({"counts": {"items": n}}),
        );
        decode_command(body.to_string().as_bytes(), None).unwrap()
    };
    let (first_command, second_command) = (increment(1), increment(2));

    let mut first = pool.begin().await.unwrap();
    let mut buf = TxBuffer::default();
    buf.lock_runs(&mut first, &[run_id]).await.unwrap();
    apply_command(&mut first, &mut buf, &first_command, &ctx)
        .await
        .unwrap();
    buf.flush(&mut first).await.unwrap();
    let second = tokio::spawn({
        let (pool, ctx) = (pool.clone(), ctx.clone());
        async move { apply_batch(&pool, &[&second_command], &ctx, &CancellationToken::new()).await }
    });
    wait_for_a_lock_wait(&pool).await;
    first.commit().await.unwrap();
    let results = second.await.unwrap().expect("not shut down");
    match &results[0] {
        Ok(r) => assert_eq!(r.disposition, Disposition::Applied),
        Err(rejection) => panic!("refused (would be dead-lettered): {rejection:?}"),
    }
    let sequences: Vec<i64> = sqlx::query_scalar(
        "SELECT sequence FROM operation_run_events WHERE run_id = $1 ORDER BY sequence",
    )
    .bind(run_id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(sequences, [1, 2, 3]);
    let counts: serde_json::Value =
        sqlx::query_scalar("SELECT summary_counts FROM operation_runs WHERE id = $1")
            .bind(run_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(counts, json!({"items": 3}));
}

/// Waits until a session of this test's database waits for a lock (the second consumer is
/// blocked behind the first).
async fn wait_for_a_lock_wait(pool: &sqlx::PgPool) {
    crate::helpers::wait_until("a session to wait for a lock", || {
        let pool = pool.clone();
        async move {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks WHERE NOT granted
                 AND pid IN (SELECT pid FROM pg_stat_activity WHERE datname = current_database())",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            (waiting > 0).then_some(())
        }
    })
    .await;
}
