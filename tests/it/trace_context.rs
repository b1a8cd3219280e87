//! W3C trace context end to end: a command's `traceparent` / `tracestate` AMQP headers are kept
//! with its run and set on the run's events (CloudEvents distributed-tracing extension) and on
//! its job (AMQP headers); a dispatch without a valid one starts a new trace and is applied as
//! usual.

use futures_util::StreamExt;
use lapin::{BasicProperties, Channel, Consumer};
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{
    dispatch, header, json_properties, progress, test_settings_with, traced_properties, TestApp,
    DEADLINE,
};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const DISPATCH_PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const OTHER_TRACE: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

async fn publish(app: &TestApp, body: &Value, properties: BasicProperties) {
    app.publish_raw(
        body["kind"].as_str().unwrap(),
        &serde_json::to_vec(body).unwrap(),
        properties,
    )
    .await;
}

/// An executor's queue for `run_type` jobs.
async fn jobs_of(app: &TestApp, run_type: &str) -> (Channel, Consumer) {
    let jobs = app.topology.jobs_exchange();
    let (channel, _, consumer) = app.consume_new_queue("", Some((&jobs, run_type))).await;
    (channel, consumer)
}

async fn next_job(jobs: &mut Consumer) -> (Value, BasicProperties) {
    let job = tokio::time::timeout(DEADLINE, jobs.next())
        .await
        .expect("the job in time")
        .unwrap()
        .unwrap();
    (serde_json::from_slice(&job.data).unwrap(), job.properties)
}

async fn spawn_with_jobs(pool: PgPool) -> TestApp {
    TestApp::spawn_with(pool, test_settings_with(&["--hand-off-jobs", "true"])).await
}

fn is_valid_traceparent(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 4
        && parts[0] == "00"
        && parts[1].len() == 32
        && parts[2].len() == 16
        && parts[3] == "01"
        && parts[1..].iter().all(|p| {
            p.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        })
        && parts[1].bytes().any(|b| b != b'0')
}

#[sqlx::test]
async fn one_trace_id_follows_a_command_through_its_events_and_its_job(pool: PgPool) {
    let app = spawn_with_jobs(pool).await;
    let mut events = app.subscribe_events().await;
    let (_channel, mut jobs) = jobs_of(&app, "policy.sync").await;

    let body = dispatch("policy.sync", 1, Some(10), json!({"policy_id": "traced"}));
    publish(
        &app,
        &body,
        traced_properties(DISPATCH_PARENT, Some("congo=t61rcWkgMzE")),
    )
    .await;
    let (job, job_properties) = next_job(&mut jobs).await;
    let run_id = job["run_id"].as_i64().unwrap();
    assert_eq!(
        header(&job_properties, "traceparent").as_deref(),
        Some(DISPATCH_PARENT)
    );
    assert_eq!(
        header(&job_properties, "tracestate").as_deref(),
        Some("congo=t61rcWkgMzE")
    );

    // Progress without a trace of its own: its event is in the run's trace. With one: in the
    // causing command's trace (W3C: the context of the message that caused the work).
    publish(
        &app,
        &progress("update_run", run_id, json!({"status": "running"})),
        json_properties(),
    )
    .await;
    publish(
        &app,
        &progress(
            "increment_summary_counts",
            run_id,
            json!({"counts": {"total": 1}}),
        ),
        traced_properties(OTHER_TRACE, None),
    )
    .await;
    publish(
        &app,
        &progress(
            "update_run",
            run_id,
            json!({"status": "completed", "outcome": "succeeded"}),
        ),
        json_properties(),
    )
    .await;

    let received = events.next_events(4).await;
    let seen: Vec<(&str, &str, Option<&str>)> = received
        .iter()
        .map(|(e, _)| {
            (
                e["type"].as_str().unwrap(),
                e["traceparent"].as_str().unwrap_or("none"),
                e["tracestate"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (
                "operation_run.queued",
                DISPATCH_PARENT,
                Some("congo=t61rcWkgMzE")
            ),
            (
                "operation_run.started",
                DISPATCH_PARENT,
                Some("congo=t61rcWkgMzE")
            ),
            ("operation_run.progressed", OTHER_TRACE, None),
            (
                "operation_run.completed",
                DISPATCH_PARENT,
                Some("congo=t61rcWkgMzE")
            ),
        ]
    );
    assert!(received
        .iter()
        .filter(|(e, _)| e["type"] != "operation_run.progressed")
        .all(|(e, _)| e["traceparent"].as_str().unwrap()[3..35] == *TRACE_ID));
    let stored: (Option<String>, Option<String>) =
        sqlx::query_as("SELECT traceparent, tracestate FROM operation_runs WHERE id = $1")
            .bind(run_id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        stored,
        (
            Some(DISPATCH_PARENT.to_owned()),
            Some("congo=t61rcWkgMzE".to_owned())
        )
    );
    app.shutdown().await;
}

#[sqlx::test]
async fn a_dispatch_without_a_valid_traceparent_starts_a_new_trace_and_is_applied(pool: PgPool) {
    let app = spawn_with_jobs(pool).await;
    let mut events = app.subscribe_events().await;
    let (_channel, mut jobs) = jobs_of(&app, "policy.sync").await;

    // No header; an invalid one (upper-case hex) with a tracestate, which is ignored with it.
    let invalid = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01";
    publish(
        &app,
        &dispatch("policy.sync", 1, Some(10), json!({"policy_id": "a"})),
        json_properties(),
    )
    .await;
    publish(
        &app,
        &dispatch("policy.sync", 1, Some(10), json!({"policy_id": "b"})),
        traced_properties(invalid, Some("vendor=x")),
    )
    .await;

    let received = events.next_events(2).await;
    let mut traces = Vec::new();
    for (event, _) in &received {
        assert_eq!(event["type"], "operation_run.queued");
        let traceparent = event["traceparent"].as_str().unwrap().to_owned();
        assert!(is_valid_traceparent(&traceparent), "{traceparent}");
        assert!(event.get("tracestate").is_none(), "{event}");
        traces.push((event["data"]["run"]["id"].as_i64().unwrap(), traceparent));
    }
    assert_ne!(traces[0].1[3..35], traces[1].1[3..35], "two new traces");
    for _ in 0..2 {
        let (job, properties) = next_job(&mut jobs).await;
        let run_id = job["run_id"].as_i64().unwrap();
        let (_, expected) = traces.iter().find(|(id, _)| *id == run_id).unwrap();
        assert_eq!(
            header(&properties, "traceparent").as_deref(),
            Some(expected.as_str())
        );
        assert_eq!(header(&properties, "tracestate"), None);
    }
    app.shutdown().await;
}
