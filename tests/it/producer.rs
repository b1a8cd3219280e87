//! The producer library and the job hand-off: dispatch_and_wait, dispatchOrFail, the worker.

use std::time::Duration;

use operation_runs::client::{ClientError, DispatchRequest, Producer, Worker};
use operation_runs::domain::RunOutcome;
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::helpers::{amqp_url, test_settings, TestApp};

fn inventory_request(selection: serde_json::Value) -> DispatchRequest {
    DispatchRequest {
        run_type: "inventory.sync".into(),
        workspace_id: 1,
        tenant_id: Some(10),
        user_id: Some(5),
        initiator_name: Some("scheduler".into()),
        context: json!({"selection": selection}),
    }
}

#[sqlx::test]
async fn dispatch_and_wait_returns_the_run_and_then_the_same_run_deduplicated(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let producer = Producer::connect(&amqp_url(), app.topology.namespace())
        .await
        .unwrap();
    let request = inventory_request(json!({"all": true}));
    let first = producer
        .dispatch_and_wait(&request, Duration::from_secs(20))
        .await
        .unwrap();
    assert!(!first.deduplicated);
    assert_eq!(first.status, "queued");
    let second = producer
        .dispatch_and_wait(&request, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!((second.run_id, second.deduplicated), (first.run_id, true));

    let mut refused = request.clone();
    refused.tenant_id = Some(20);
    match producer
        .dispatch_and_wait(&refused, Duration::from_secs(20))
        .await
    {
        Err(ClientError::Rejected { code, .. }) => assert_eq!(code, "unknown_tenant"),
        other => panic!("expected a rejection, got {other:?}"),
    }
    producer.close().await;
    app.shutdown().await;
}

#[sqlx::test]
async fn a_dispatch_no_executor_is_bound_for_ends_failed_as_unroutable(pool: PgPool) {
    let mut settings = test_settings();
    settings.jobs.hand_off_jobs = true;
    let app = TestApp::spawn_with(pool, settings).await;
    let mut subscriber = app.subscribe_events().await;
    let producer = Producer::connect(&amqp_url(), app.topology.namespace())
        .await
        .unwrap();
    let reply = producer
        .dispatch_and_wait(&inventory_request(json!("x")), Duration::from_secs(20))
        .await
        .unwrap();
    let run = app
        .wait_for_run(reply.run_id, "the run to fail", |r| {
            r.status.as_str() == "completed"
        })
        .await;
    assert_eq!(run.outcome.as_str(), "failed");
    assert_eq!(run.failure_summary.entries[0].code, "dispatch.unroutable");
    let events = subscriber.next_events(2).await;
    assert_eq!(events[1].0["type"], "operation_run.completed");
    assert_eq!(
        events[1].0["data"]["run"]["failure_summary"][0]["code"],
        "dispatch.unroutable"
    );
    producer.close().await;
    app.shutdown().await;
}

#[sqlx::test]
async fn a_worker_drives_a_handed_off_run_to_succeeded_with_counts(pool: PgPool) {
    let mut settings = test_settings();
    settings.jobs.hand_off_jobs = true;
    let app = TestApp::spawn_with(pool, settings).await;
    let queue = Worker::queue_name(app.topology.namespace(), "test_worker");
    let worker = Worker::start(
        &amqp_url(),
        app.topology.namespace(),
        "test_worker",
        &["inventory.sync"],
        5,
    )
    .await
    .unwrap();
    let stop = CancellationToken::new();
    let running = tokio::spawn({
        let stop = stop.clone();
        async move {
            worker
                .run(
                    |job, ctx| async move {
                        assert_eq!(job.context["selection"], "all");
                        ctx.increment(json!({"total": 3, "processed": 3}))
                            .await
                            .unwrap();
                        ctx.increment(json!({"succeeded": 3})).await.unwrap();
                        Ok(RunOutcome::Succeeded)
                    },
                    stop,
                )
                .await
                .unwrap();
            worker.close().await;
        }
    });
    let producer = Producer::connect(&amqp_url(), app.topology.namespace())
        .await
        .unwrap();
    let reply = producer
        .dispatch_and_wait(&inventory_request(json!("all")), Duration::from_secs(20))
        .await
        .unwrap();
    let run = app
        .wait_for_run(reply.run_id, "the worker to finish", |r| {
            r.status.as_str() == "completed"
        })
        .await;
    assert_eq!(run.outcome.as_str(), "succeeded");
    assert_eq!(
        run.to_json()["summary_counts"],
        json!({"total": 3, "processed": 3, "succeeded": 3})
    );
    assert!(run.started_at.is_some());
    stop.cancel();
    running.await.unwrap();
    producer.close().await;
    let channel = app.connection.create_channel().await.unwrap();
    channel
        .queue_delete(queue.as_str().into(), Default::default())
        .await
        .unwrap();
    app.shutdown().await;
}
