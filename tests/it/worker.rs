//! The worker under hostile input and faults: provider-style failure codes, a
//! refused completion, no reply from the service, and the broker closing the worker's
//! connections or deleting its queue. A run must never be left for the reaper. And the worker
//! honours a cancel: it reaches a running handler, and a job whose cancel came before its
//! handler started is completed `cancelled` without running it.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use operation_runs::client::{DispatchRequest, Job, JobContext, Producer, Worker};
use operation_runs::domain::RunOutcome;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::actions::event_types_of;
use crate::helpers::{amqp_url, progress, test_settings, wait_until, TestApp, DEADLINE};

/// A worker running in a task of its own.
struct RunningWorker {
    queue: String,
    connection_name: String,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl RunningWorker {
    /// Starts worker `name` for `inventory.sync` with `handler`.
    async fn spawn<F, Fut>(app: &TestApp, name: &str, reply_timeout: Duration, handler: F) -> Self
    where
        F: Fn(Job, JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<RunOutcome, Value>> + Send + 'static,
    {
        let worker = Worker::start(
            &amqp_url(),
            app.topology.namespace(),
            name,
            &["inventory.sync"],
            5,
        )
        .await
        .unwrap()
        .with_reply_timeout(reply_timeout);
        let connection_name = worker.connection_name().to_owned();
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                worker.run(handler, stop).await.unwrap();
                worker.close().await;
            }
        });
        Self {
            queue: Worker::queue_name(app.topology.namespace(), name),
            connection_name,
            stop,
            task,
        }
    }

    /// Stops the worker and deletes its queue.
    async fn stop(self, app: &TestApp) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("the worker stops in time")
            .unwrap();
        let channel = app.connection.create_channel().await.unwrap();
        let _ = channel
            .queue_delete(self.queue.as_str().into(), Default::default())
            .await;
    }
}

fn inventory_request(selection: &str) -> DispatchRequest {
    DispatchRequest {
        run_type: "inventory.sync".into(),
        workspace_id: 1,
        tenant_id: Some(10),
        user_id: None,
        initiator_name: Some("hardening".into()),
        context: json!({ "selection": selection }),
    }
}

/// Dispatches an `inventory.sync` run and returns its id.
async fn dispatch(producer: &Producer, selection: &str) -> i64 {
    producer
        .dispatch_and_wait(&inventory_request(selection), Duration::from_secs(20))
        .await
        .unwrap()
        .run_id
}

/// Dispatches an `inventory.sync` run and waits for its worker to start it.
async fn dispatch_started(app: &TestApp, producer: &Producer, selection: &str) -> i64 {
    let run_id = dispatch(producer, selection).await;
    app.wait_for_run(run_id, "the run to start", |r| {
        r.status.as_str() == "running"
    })
    .await;
    run_id
}

async fn app_with_hand_off(pool: PgPool) -> TestApp {
    let mut settings = test_settings();
    settings.jobs.hand_off_jobs = true;
    TestApp::spawn_with(pool, settings).await
}

/// Runs `rabbitmqctl -q --formatter json ARGS` and parses its output.
async fn rabbitmqctl_json(args: &[&str]) -> Value {
    let output = tokio::process::Command::new("rabbitmqctl")
        .args(["-q", "--formatter", "json"])
        .args(args)
        .output()
        .await
        .expect("rabbitmqctl runs");
    assert!(output.status.success(), "rabbitmqctl {args:?}: {output:?}");
    serde_json::from_slice(&output.stdout).expect("rabbitmqctl prints JSON")
}

/// Unacknowledged messages of `queue` (what consumers hold), per the broker.
async fn unacked(queue: &str) -> u64 {
    let queues = rabbitmqctl_json(&["list_queues", "name", "messages_unacknowledged"]).await;
    queues
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == queue)
        .and_then(|q| q["messages_unacknowledged"].as_u64())
        .unwrap_or_else(|| panic!("queue {queue} not listed"))
}

fn failure_codes(failures: &Value) -> Vec<(String, Option<String>)> {
    failures
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["code"].as_str().unwrap().to_owned(),
                f["reason_code"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

#[sqlx::test]
async fn provider_style_failure_codes_complete_the_run_failed_with_those_codes(pool: PgPool) {
    let app = app_with_hand_off(pool).await;
    let worker = RunningWorker::spawn(
        &app,
        "provider_codes",
        Duration::from_secs(20),
        |_, _| async {
            Err(json!([
                {"code": "Graph.Throttled", "reason_code": "Request_ResourceNotFound", "message": "429 from Graph"},
                {"code": "HTTP-429", "message": "slow down"},
            ]))
        },
    )
    .await;
    let producer = Producer::connect(&amqp_url(), app.topology.namespace())
        .await
        .unwrap();
    let run_id = dispatch(&producer, "all").await;
    let run = app
        .wait_for_run(run_id, "the run to complete", |r| {
            r.status.as_str() == "completed"
        })
        .await;
    assert_eq!(run.outcome.as_str(), "failed");
    assert_eq!(
        failure_codes(&run.to_json()["failure_summary"]),
        vec![
            (
                "Graph.Throttled".to_owned(),
                Some("Request_ResourceNotFound".to_owned())
            ),
            ("HTTP-429".to_owned(), None),
        ]
    );
    producer.close().await;
    worker.stop(&app).await;
    app.shutdown().await;
}

#[sqlx::test]
async fn a_refused_completion_still_completes_the_run_failed_with_the_reason(pool: PgPool) {
    let app = app_with_hand_off(pool).await;
    let handled = Arc::new(AtomicUsize::new(0));
    let worker = RunningWorker::spawn(&app, "refused", Duration::from_secs(20), {
        let handled = handled.clone();
        move |job: Job, _| {
            let handled = handled.clone();
            async move {
                handled.fetch_add(1, Ordering::SeqCst);
                if job.context["selection"] == "bad" {
                    // Refused by the service: a code with a space and punctuation.
                    Err(json!([{"code": "bad code!", "message": "x"}]))
                } else {
                    Ok(RunOutcome::Succeeded)
                }
            }
        }
    })
    .await;
    let producer = Producer::connect(&amqp_url(), app.topology.namespace())
        .await
        .unwrap();
    let refused = dispatch(&producer, "bad").await;
    let run = app
        .wait_for_run(refused, "the refused run to complete", |r| {
            r.status.as_str() == "completed"
        })
        .await;
    assert_eq!(run.outcome.as_str(), "failed");
    let run_json = run.to_json();
    let failures = run_json["failure_summary"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0]["code"], "worker.completion_refused");
    assert_eq!(failures[0]["reason_code"], "invalid_failure");
    let message = failures[0]["message"].as_str().unwrap();
    assert!(
        message.starts_with("invalid_failure: ") && message.contains("bad code!"),
        "{message}"
    );

    // The job was acked, not requeued: the worker goes on with the next one, and the refused
    // job's handler ran once.
    let next = dispatch(&producer, "good").await;
    let run = app
        .wait_for_run(next, "the next run to complete", |r| {
            r.status.as_str() == "completed"
        })
        .await;
    assert_eq!(run.outcome.as_str(), "succeeded");
    assert_eq!(handled.load(Ordering::SeqCst), 2);
    assert_eq!(app.queue_depth(&worker.queue).await, 0);
    producer.close().await;
    worker.stop(&app).await;
    app.shutdown().await;
}

#[sqlx::test]
async fn a_completion_without_reply_is_sent_again_and_its_job_stays_unacked_until_applied(
    pool: PgPool,
) {
    let mut app = app_with_hand_off(pool).await;
    let release = Arc::new(Notify::new());
    let handled = Arc::new(AtomicUsize::new(0));
    let worker = RunningWorker::spawn(&app, "no_reply", Duration::from_millis(1000), {
        let (release, handled) = (release.clone(), handled.clone());
        move |_, _| {
            let (release, handled) = (release.clone(), handled.clone());
            async move {
                handled.fetch_add(1, Ordering::SeqCst);
                release.notified().await;
                Ok(RunOutcome::Succeeded)
            }
        }
    })
    .await;
    let producer = Producer::connect(&amqp_url(), app.topology.namespace())
        .await
        .unwrap();
    let run_id = dispatch_started(&app, &producer, "all").await;

    // The service goes away while the handler works; then the handler finishes.
    app.stop_instance(0).await;
    release.notify_one();
    let commands = app.topology.commands_queue();
    wait_until("the completion to be sent again", || {
        let (app, commands) = (&app, &commands);
        async move { (app.queue_depth(commands).await >= 2).then_some(()) }
    })
    .await;
    // The broker's figure for a quorum queue lags by a few seconds: wait for it.
    let queue = worker.queue.clone();
    wait_until("the job to be held unacked by the worker", || {
        let queue = queue.clone();
        async move { (unacked(&queue).await == 1).then_some(()) }
    })
    .await;

    // The service comes back: the completion is applied once, the job acked, the handler not
    // run again.
    app.start_instance(app.pool.clone(), {
        let mut settings = test_settings();
        settings.jobs.hand_off_jobs = true;
        settings
    })
    .await;
    let run = app
        .wait_for_run(run_id, "the run to complete", |r| {
            r.status.as_str() == "completed"
        })
        .await;
    assert_eq!(run.outcome.as_str(), "succeeded");
    wait_until("the job to be acked", || {
        let queue = queue.clone();
        async move { (unacked(&queue).await == 0).then_some(()) }
    })
    .await;
    assert_eq!(handled.load(Ordering::SeqCst), 1);
    let events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM operation_run_events WHERE run_id = $1")
            .bind(run_id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(events, 3, "queued, started, completed: applied once");
    producer.close().await;
    worker.stop(&app).await;
    app.shutdown().await;
}

#[sqlx::test]
async fn a_worker_reconnects_after_the_broker_closes_its_connections(pool: PgPool) {
    let app = app_with_hand_off(pool).await;
    let worker = RunningWorker::spawn(&app, "reconnect", Duration::from_secs(20), |_, _| async {
        Ok(RunOutcome::Succeeded)
    })
    .await;
    let producer = Producer::connect(&amqp_url(), app.topology.namespace())
        .await
        .unwrap();
    let first = dispatch(&producer, "first").await;
    app.wait_for_run(first, "the first run to complete", |r| {
        r.status.as_str() == "completed"
    })
    .await;

    // Close this worker's connections (and only these: other tests share the broker). The
    // table output prints pids in the form close_connection takes (the JSON one does not).
    let listed = tokio::process::Command::new("rabbitmqctl")
        .args([
            "-q",
            "--no-table-headers",
            "list_connections",
            "pid",
            "client_properties",
        ])
        .output()
        .await
        .unwrap();
    assert!(listed.status.success(), "{listed:?}");
    let pids: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|line| line.contains(&worker.connection_name))
        .map(|line| line.split_whitespace().next().unwrap().to_owned())
        .collect();
    assert_eq!(pids.len(), 2, "the consuming and the producer connection");
    for pid in &pids {
        let status = tokio::process::Command::new("rabbitmqctl")
            .args(["-q", "close_connection", pid, "test: broker goes away"])
            .status()
            .await
            .unwrap();
        assert!(status.success());
    }

    let second = dispatch(&producer, "second").await;
    let run = app
        .wait_for_run(second, "the run after the reconnect to complete", |r| {
            r.status.as_str() == "completed"
        })
        .await;
    assert_eq!(run.outcome.as_str(), "succeeded");
    producer.close().await;
    worker.stop(&app).await;
    app.shutdown().await;
}

#[sqlx::test]
async fn a_worker_whose_queue_is_deleted_declares_it_again_and_consumes(pool: PgPool) {
    let app = app_with_hand_off(pool).await;
    let worker = RunningWorker::spawn(&app, "redeclare", Duration::from_secs(20), |_, _| async {
        Ok(RunOutcome::Succeeded)
    })
    .await;
    let channel = app.connection.create_channel().await.unwrap();
    channel
        .queue_delete(worker.queue.as_str().into(), Default::default())
        .await
        .unwrap();

    // The broker cancelled the consumer; the worker declares its queue again and consumes.
    let queue = worker.queue.clone();
    let connection = &app.connection;
    wait_until("the queue to be declared and consumed again", || {
        let queue = queue.clone();
        async move {
            // A passive declare of a missing queue closes its channel: one channel per probe.
            let channel = connection.create_channel().await.unwrap();
            let options = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            let declared = channel
                .queue_declare(queue.as_str().into(), options, FieldTable::default())
                .await
                .ok()?;
            (declared.consumer_count() >= 1).then_some(())
        }
    })
    .await;
    let producer = Producer::connect(&amqp_url(), app.topology.namespace())
        .await
        .unwrap();
    let run_id = dispatch(&producer, "after").await;
    let run = app
        .wait_for_run(run_id, "the run to complete", |r| {
            r.status.as_str() == "completed"
        })
        .await;
    assert_eq!(run.outcome.as_str(), "succeeded");
    producer.close().await;
    worker.stop(&app).await;
    app.shutdown().await;
}

/// A `cancel_run` command for a run of workspace 1, tenant 10, as the platform sends it.
fn cancel_command(run_id: i64) -> Value {
    json!({"kind": "cancel_run", "command_id": uuid::Uuid::new_v4().to_string(), "run_id": run_id,
           "workspace_id": 1, "tenant_id": 10, "reason": "stop it", "initiator_name": "ops"})
}

#[sqlx::test]
async fn a_cancel_reaches_the_running_handler_and_the_run_completes_cancelled(pool: PgPool) {
    let app = app_with_hand_off(pool).await;
    let started = Arc::new(Notify::new());
    let worker = RunningWorker::spawn(&app, "cancel", Duration::from_secs(20), {
        let started = started.clone();
        move |_, ctx: JobContext| {
            let started = started.clone();
            async move {
                assert!(!ctx.cancel_requested());
                started.notify_one();
                // Work that outlasts the test unless the cancel stops it.
                let work = async {
                    tokio::time::sleep(DEADLINE * 3).await;
                    Ok(RunOutcome::Succeeded)
                };
                let outcome = ctx.or_cancelled(work).await;
                assert!(ctx.cancel_requested());
                outcome
            }
        }
    })
    .await;
    let producer = Producer::connect(&amqp_url(), app.topology.namespace())
        .await
        .unwrap();
    let run_id = dispatch(&producer, "cancel-me").await;
    tokio::time::timeout(DEADLINE, started.notified())
        .await
        .expect("the handler starts");
    app.publish(&cancel_command(run_id)).await;
    let run = app
        .wait_for_run(run_id, "the run to complete", |r| {
            r.status.as_str() == "completed"
        })
        .await;
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
    let queue = worker.queue.clone();
    wait_until("the job to be acked", || {
        let queue = queue.clone();
        async move { (unacked(&queue).await == 0).then_some(()) }
    })
    .await;
    producer.close().await;
    worker.stop(&app).await;
    app.shutdown().await;
}

#[sqlx::test]
async fn a_job_whose_cancel_came_before_its_handler_started_completes_cancelled_without_running_it(
    pool: PgPool,
) {
    let app = app_with_hand_off(pool).await;
    let release = Arc::new(Notify::new());
    let handled = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let worker = RunningWorker::spawn(&app, "cancel_early", Duration::from_secs(20), {
        let (release, handled) = (release.clone(), handled.clone());
        move |job: Job, _| {
            let (release, handled) = (release.clone(), handled.clone());
            async move {
                let selection = job.context["selection"].as_str().unwrap().to_owned();
                handled.lock().unwrap().push(selection.clone());
                if selection == "first" {
                    release.notified().await;
                }
                Ok(RunOutcome::Succeeded)
            }
        }
    })
    .await;
    let producer = Producer::connect(&amqp_url(), app.topology.namespace())
        .await
        .unwrap();
    let first = dispatch_started(&app, &producer, "first").await;
    // The second job waits behind the first. Its run was started by an executor that went away
    // (its job back in the queue), and then its cancel was requested: the worker hears it while
    // the first job is in hand.
    let second = dispatch(&producer, "second").await;
    app.publish(&progress(
        "update_run",
        second,
        json!({"status": "running"}),
    ))
    .await;
    app.wait_for_run(second, "the second run to be running", |r| {
        r.status.as_str() == "running"
    })
    .await;
    app.publish(&cancel_command(second)).await;
    let pool = app.pool.clone();
    wait_until("the cancel to be handed off", || {
        let pool = pool.clone();
        async move {
            let published: Option<bool> = sqlx::query_scalar(
                "SELECT published_at IS NOT NULL FROM operation_run_jobs
                 WHERE run_id = $1 AND type = 'cancel.inventory.sync'",
            )
            .bind(second)
            .fetch_optional(&pool)
            .await
            .unwrap();
            (published == Some(true)).then_some(())
        }
    })
    .await;
    release.notify_one();
    let run = app
        .wait_for_run(second, "the second run to complete", |r| {
            r.status.as_str() == "completed"
        })
        .await;
    assert_eq!(run.outcome, RunOutcome::Cancelled);
    let first_run = app.wait_for_run(first, "the first run", |_| true).await;
    assert_eq!(first_run.outcome, RunOutcome::Succeeded);
    assert_eq!(
        *handled.lock().unwrap(),
        ["first"],
        "the cancelled run's handler never ran"
    );
    producer.close().await;
    worker.stop(&app).await;
    app.shutdown().await;
}
