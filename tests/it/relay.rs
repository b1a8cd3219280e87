//! The relay under a refusing executor queue, dead letters while the DLQ is missing, where
//! replies may go, and the kind label of refusals.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{
    dispatch, dispatch_with_reply, header, json_properties, progress, test_settings,
    test_settings_with, wait_until, TestApp,
};

/// Declares `queue` (exclusive) bound to `N.jobs` for `policy.sync`, holding one message and
/// refusing (nacking) every publish beyond it: an executor that fell behind.
async fn declare_refusing_executor_queue(app: &TestApp, queue: &str) -> lapin::Channel {
    let channel = app.connection.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString(LongString::from("reject-publish")),
    );
    let options = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.into(), options, args)
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.into(),
            app.topology.jobs_exchange().as_str().into(),
            "policy.sync".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
}

#[sqlx::test]
async fn a_refused_job_is_retried_then_fails_its_run_without_republishing_events_or_stopping_commands(
    pool: PgPool,
) {
    let mut app = TestApp::without_service(pool).await;
    let executor = format!("{}.executor.policy", app.topology.namespace());
    let _executor_channel = declare_refusing_executor_queue(&app, &executor).await;
    let mut subscriber = app.subscribe_events().await;
    let settings = test_settings_with(&[
        "--hand-off-jobs",
        "true",
        "--job-publish-attempts",
        "3",
        "--job-retry-base",
        "50ms",
    ]);
    app.start_instance(app.pool.clone(), settings).await;

    let runs = 6;
    for policy in 1..=runs {
        app.dispatch_policy(policy).await;
    }
    // The executor queue takes one job; every other one is nacked, retried, and its run failed.
    app.wait_for_count(
        "SELECT count(*) FROM operation_runs WHERE status = 'completed' AND outcome = 'failed'
           AND failure_summary @> '[{\"code\": \"dispatch.rejected\"}]'",
        runs - 1,
    )
    .await;
    app.wait_for_count(
        "SELECT count(*) FROM operation_run_jobs WHERE published_at IS NULL",
        0,
    )
    .await;
    let queued: Vec<i64> = sqlx::query_scalar(
        "SELECT r.id FROM operation_runs r JOIN operation_run_jobs j ON j.run_id = r.id
         WHERE r.status = 'queued' AND j.attempts = 0",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(queued.len(), 1, "one run's job reached the executor");
    assert_eq!(app.queue_depth(&executor).await, 1);
    let attempts: Vec<i32> = sqlx::query_scalar(
        "SELECT j.attempts FROM operation_run_jobs j JOIN operation_runs r ON r.id = j.run_id
         WHERE r.status = 'completed'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(
        attempts.iter().all(|a| *a == 2),
        "each rejected run failed on its third nack (two recorded retries): {attempts:?}"
    );

    // Every event exactly once: a queued event per run, a completed event per failed run.
    let expected = (runs + runs - 1) as usize;
    let events = subscriber.next_events(expected).await;
    let ids: HashSet<String> = events
        .iter()
        .map(|(e, _)| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), expected, "no event was delivered twice");
    subscriber.assert_quiet(Duration::from_millis(800)).await;

    // Command consumption never stopped: a later command is applied.
    let run_id = queued[0];
    app.publish(&progress(
        "increment_summary_counts",
        run_id,
        json!({"counts": {"total": 1}}),
    ))
    .await;
    app.wait_for_run(run_id, "the later command to apply", |r| {
        r.summary_counts.get("total") == 1
    })
    .await;
    let metrics = app.service().metrics.clone();
    assert_eq!(
        metrics.counter("oprun_relay_published_total", "kind=\"rejected\""),
        (runs - 1) as u64
    );
    assert_eq!(metrics.counter("oprun_reconnects_total", ""), 0);
    app.shutdown().await;
}

#[sqlx::test]
async fn a_relay_channel_closed_by_the_broker_is_reopened_without_stopping_commands(pool: PgPool) {
    let settings = test_settings_with(&["--hand-off-jobs", "true"]);
    let app = TestApp::spawn_with(pool, settings).await;
    let mut subscriber = app.subscribe_events().await;
    // Publishing a job to a deleted exchange makes the broker close the relay's channel.
    let channel = app.connection.create_channel().await.unwrap();
    channel
        .exchange_delete(
            app.topology.jobs_exchange().as_str().into(),
            lapin::options::ExchangeDeleteOptions::default(),
        )
        .await
        .unwrap();
    app.dispatch_policy(1).await;
    // The relay reopens its channel and re-declares N.jobs; with no executor bound, the job is
    // unroutable and the run fails, as dispatchOrFail says.
    app.wait_for_count(
        "SELECT count(*) FROM operation_runs
         WHERE failure_summary @> '[{\"code\": \"dispatch.unroutable\"}]'",
        1,
    )
    .await;
    let events = subscriber.next_events(2).await;
    assert_eq!(events[1].0["type"], json!("operation_run.completed"));
    app.dispatch_policy(2).await;
    app.wait_for_count("SELECT count(*) FROM processed_commands", 2)
        .await;
    let metrics = app.service().metrics.clone();
    assert_eq!(
        metrics.counter("oprun_reconnects_total", ""),
        0,
        "the command consumer's connection was never torn down"
    );
    app.shutdown().await;
}

/// Replaces `N.commands.dlq` with a classic queue bound to nothing: dead letters come back
/// unroutable, and the service cannot re-declare the real DLQ over it.
async fn block_the_dlq(app: &TestApp) -> lapin::Channel {
    let channel = app.connection.create_channel().await.unwrap();
    let dlq = app.topology.dead_letter_queue();
    channel
        .queue_delete(dlq.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    channel
        .queue_declare(
            dlq.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
}

fn unknown_type_dispatch() -> Value {
    dispatch("coffee.brew", 1, Some(10), json!({}))
}

/// Waits until the service has re-declared `N.commands.dlq` (a passive declare succeeds).
async fn wait_for_the_dlq(app: &TestApp) {
    wait_until("the service to re-declare the DLQ", || async {
        let channel = app.connection.create_channel().await.unwrap();
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let found = channel
            .queue_declare(
                app.topology.dead_letter_queue().as_str().into(),
                passive,
                FieldTable::default(),
            )
            .await
            .is_ok();
        if found {
            let _ = channel.close(200, "checked".into()).await;
        }
        found.then_some(())
    })
    .await;
}

async fn wait_ready(app: &TestApp, ready: bool) {
    let health = app.service().health.clone();
    wait_until("readiness to change", || {
        let health = health.clone();
        async move { (health.ready() == ready).then_some(()) }
    })
    .await;
}

#[sqlx::test]
async fn a_refused_command_is_not_acked_while_its_dead_letter_cannot_be_stored(pool: PgPool) {
    let mut app = TestApp::spawn(pool).await;
    let channel = block_the_dlq(&app).await;
    app.publish(&unknown_type_dispatch()).await;

    // The dead letter came back: the batch waits unacked and the service says it is not ready.
    wait_ready(&app, false).await;
    assert!(app
        .service()
        .health
        .dead_letters_blocked
        .load(Ordering::Relaxed));
    assert_eq!(app.queue_depth(&app.topology.dead_letter_queue()).await, 0);

    // Stopped meanwhile, the service acked nothing: the command is back in N.commands.
    app.stop_instance(0).await;
    wait_until("the unacked command to return to N.commands", || async {
        (app.queue_depth(&app.topology.commands_queue()).await == 1).then_some(())
    })
    .await;

    // With the obstacle gone, a new instance declares the real DLQ and the dead letter lands.
    channel
        .queue_delete(
            app.topology.dead_letter_queue().as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
    app.start_instance(app.pool.clone(), test_settings()).await;
    let letters = app.take_dead_letters(1).await;
    assert_eq!(
        header(&letters[0].properties, "x-oprun-error-code").as_deref(),
        Some("unknown_type")
    );
    assert_eq!(app.queue_depth(&app.topology.commands_queue()).await, 0);
    app.shutdown().await;
}

#[sqlx::test]
async fn a_dead_letter_returned_by_an_unbound_dlq_waits_until_the_service_rebinds_it(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let channel = block_the_dlq(&app).await;
    app.publish(&unknown_type_dispatch()).await;
    wait_ready(&app, false).await;
    // A good command behind the refused one waits too (nothing past it is acked), then the
    // obstacle goes: the service's own retry re-declares the topology, which re-creates and
    // re-binds the DLQ, without a restart.
    app.dispatch_policy(1).await;
    channel
        .queue_delete(
            app.topology.dead_letter_queue().as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
    wait_for_the_dlq(&app).await;
    let letters = app.take_dead_letters(1).await;
    assert_eq!(
        header(&letters[0].properties, "x-oprun-error-code").as_deref(),
        Some("unknown_type")
    );
    wait_ready(&app, true).await;
    crate::helpers::wait_for_active_run(&app, "policy.sync").await;

    // A plain unbind is repaired the same way.
    channel
        .queue_unbind(
            app.topology.dead_letter_queue().as_str().into(),
            app.topology.dead_letter_exchange().as_str().into(),
            "".into(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    app.publish(&unknown_type_dispatch()).await;
    let letters = app.take_dead_letters(1).await;
    assert_eq!(
        header(&letters[0].properties, "x-oprun-error-code").as_deref(),
        Some("unknown_type")
    );
    let retries = app
        .service()
        .metrics
        .counter("oprun_dead_letter_retries_total", "");
    assert!(retries >= 2, "each blocked dead letter waited: {retries}");
    assert_eq!(app.queue_depth(&app.topology.commands_queue()).await, 0);
    app.shutdown().await;
}

#[sqlx::test]
async fn replies_go_only_to_direct_reply_to_and_reply_queues(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    // Another application's queue: the dispatch applies, but nothing is written there.
    let (_victim_channel, victim, mut victim_consumer) = app.temporary_queue(None).await;
    let to_victim = json_properties()
        .with_reply_to(victim.as_str().into())
        .with_correlation_id("c-victim".into());
    let body = dispatch("policy.sync", 1, Some(10), json!({"policy_id": 1}));
    app.publish_raw("dispatch", &serde_json::to_vec(&body).unwrap(), to_victim)
        .await;

    // A reply queue (`N.reply.*`): the reply arrives with its correlation id.
    let body = dispatch("policy.sync", 1, Some(10), json!({"policy_id": 2}));
    let reply = dispatch_with_reply(&app, &body).await;
    assert_eq!(reply["deduplicated"], json!(false));

    app.wait_for_count(
        "SELECT count(*) FROM operation_runs WHERE type = 'policy.sync'",
        2,
    )
    .await;
    if let Ok(Some(Ok(d))) =
        tokio::time::timeout(Duration::from_millis(500), victim_consumer.next()).await
    {
        panic!(
            "a reply reached another application's queue: {}",
            String::from_utf8_lossy(&d.data)
        );
    }
    assert_eq!(
        app.service()
            .metrics
            .counter("oprun_replies_refused_total", ""),
        1
    );
    app.shutdown().await;
}

#[sqlx::test]
async fn refused_but_decodable_commands_are_counted_under_their_kind(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.publish(&unknown_type_dispatch()).await;
    app.publish_raw("dispatch", b"{\"kind\": \"dispatch\",", json_properties())
        .await;
    app.take_dead_letters(2).await;
    let metrics = app.service().metrics.clone();
    assert_eq!(
        metrics.counter(
            "oprun_commands_total",
            "kind=\"dispatch\",result=\"dead_lettered:unknown_type\""
        ),
        1
    );
    assert_eq!(
        metrics.counter(
            "oprun_commands_total",
            "kind=\"undecodable\",result=\"dead_lettered:invalid_json\""
        ),
        1
    );
    assert!(metrics.render().contains(
        "oprun_commands_total{kind=\"dispatch\",result=\"dead_lettered:unknown_type\"} 1"
    ));
    app.shutdown().await;
}
