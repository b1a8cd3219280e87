//! An example executor: a worker that "runs" `inventory.sync` jobs handed off by `oprun serve`.
//!
//! It receives the jobs of type `inventory.sync` on its own durable queue `<namespace>.worker.inventory`
//! (bound to `<namespace>.jobs`), and simulates an inventory sync: it processes `items` items
//! (from the run's context, default 20) in a few chunks with short sleeps, reports the counts
//! (`total`, `processed`, `succeeded`, `failed`) as it goes, appends a failure for every simulated
//! failing item (every `fail_every`-th item, from the context, default 9; 0 for none), and
//! completes the run as `succeeded`, `partially_succeeded` or, when every item failed, `failed`.
//! A cancel (`oprun runs cancel ID`) stops it between chunks: the run completes `cancelled`.
//!
//! `docker compose up --build` runs it with the whole stack (service `worker`). From source, next
//! to a running service (RabbitMQ and Postgres up, e.g. `docker compose up -d rabbitmq postgres`;
//! `.cargo/config.toml` points `cargo run` at a password-less local Postgres, hence the export):
//!
//! ```text
//! export DATABASE_URL=postgres://postgres:postgres@localhost:5432/operation_runs
//! cargo run -- serve                       # terminal 1: the service (it migrates the database)
//! cargo run --example inventory_worker     # terminal 2: this worker
//! # terminal 3: a workspace and tenant to run in (compose's `seed` service does this), a run
//! psql "$DATABASE_URL" -c "INSERT INTO workspaces (id, name) VALUES (1, 'Demo') ON CONFLICT DO NOTHING" \
//!     -c "INSERT INTO tenants (id, workspace_id, name) VALUES (2, 1, 'Demo') ON CONFLICT DO NOTHING"
//! cargo run -- dispatch --type inventory.sync --workspace 1 --tenant 2 \
//!     --context '{"selection": "all", "items": 50}' --wait
//! cargo run -- runs list                   # the run, completed as partially_succeeded
//! ```
//!
//! Start the worker before dispatching: a job handed off while no queue is bound to its type is
//! unroutable, and the service fails the run.
//!
//! Environment: `AMQP_URL` (default `amqp://guest:guest@localhost:5672/%2f`), `OPRUN_NAMESPACE`
//! (default `operation_runs`), `RUST_LOG` (default `info`). Ctrl-C (SIGINT) stops it after the
//! job in hand is completed and acknowledged (or, if the service does not answer, leaves that job
//! unacked for redelivery). A lost broker connection is re-established with backoff.

use std::process::ExitCode;
use std::time::Duration;

use operation_runs::client::{ClientError, Job, JobContext, Worker};
use operation_runs::domain::failure::MAX_FAILURES_PER_COMMAND;
use operation_runs::domain::RunOutcome;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// The worker's name: it consumes queue `N.worker.inventory` (durable, quorum; declared by
/// `Worker::start`).
const QUEUE: &str = "inventory";
/// The run type it executes.
const INVENTORY_SYNC: &str = "inventory.sync";
/// Items per run when the context has no `items`.
const DEFAULT_ITEMS: u64 = 20;
/// The largest `items` this demo accepts.
const MAX_ITEMS: u64 = 1_000_000;
/// Every `fail_every`-th item fails when the context has no `fail_every`.
const DEFAULT_FAIL_EVERY: u64 = 9;
/// Chunks per run (fewer when there are fewer items).
const CHUNKS: u64 = 4;
/// Simulated work per chunk.
const CHUNK_DELAY: Duration = Duration::from_millis(250);

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    let amqp_url = env_or("AMQP_URL", "amqp://guest:guest@localhost:5672/%2f");
    let namespace = env_or("OPRUN_NAMESPACE", "operation_runs");

    // The worker handles one job at a time, so a prefetch of 1 leaves the other queued jobs to
    // other instances of this worker.
    let worker = match Worker::start(&amqp_url, &namespace, QUEUE, &[INVENTORY_SYNC], 1).await {
        Ok(worker) => worker,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the worker");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(queue = QUEUE, namespace = %namespace, "waiting for {INVENTORY_SYNC} jobs; Ctrl-C to stop");

    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_ctrl_c(shutdown.clone()));

    let result = worker.run(handle, shutdown).await;
    worker.close().await;
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "the worker failed");
            ExitCode::FAILURE
        }
    }
}

/// The environment variable `name`, or `default` when it is unset or empty.
fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// Cancels `token` on Ctrl-C (SIGINT).
async fn cancel_on_ctrl_c(token: CancellationToken) {
    match tokio::signal::ctrl_c().await {
        Ok(()) => {
            tracing::info!("Ctrl-C: finishing the job in hand, then stopping");
            token.cancel();
        }
        Err(e) => tracing::error!(error = %e, "cannot listen for Ctrl-C"),
    }
}

/// Runs one job. `Err(failures)` completes the run as `failed` with those failures.
async fn handle(job: Job, ctx: JobContext) -> Result<RunOutcome, Value> {
    if job.run_type != INVENTORY_SYNC {
        // Not bound to other types, so only a misrouted job lands here.
        return Err(json!([{
            "code": "worker.unsupported_type",
            "message": format!("{QUEUE} does not execute {}", job.run_type),
        }]));
    }
    inventory_sync(&job, &ctx).await
}

/// The simulated inventory sync.
async fn inventory_sync(job: &Job, ctx: &JobContext) -> Result<RunOutcome, Value> {
    let items = context_u64(&job.context, "items")?.unwrap_or(DEFAULT_ITEMS);
    if items > MAX_ITEMS {
        return Err(json!([{
            "code": "inventory.invalid_context",
            "message": format!("context.items is {items}, this demo accepts at most {MAX_ITEMS}"),
        }]));
    }
    let fail_every = context_u64(&job.context, "fail_every")?.unwrap_or(DEFAULT_FAIL_EVERY);
    tracing::info!(run_id = job.run_id, workspace_id = job.workspace_id, tenant_id = ?job.tenant_id, items, "inventory sync started");

    reported(ctx.increment(json!({"total": items})).await)?;

    let chunk_size = items.div_ceil(CHUNKS).max(1);
    let (mut succeeded, mut failed) = (0u64, 0u64);
    let mut next = 1u64;
    while next <= items {
        // Between chunks is a safe place to stop: what was done so far is reported.
        if ctx.cancel_requested() {
            tracing::info!(
                run_id = job.run_id,
                processed = next - 1,
                "cancel requested: stopping"
            );
            return Ok(RunOutcome::Cancelled);
        }
        let last = (next + chunk_size - 1).min(items);
        tokio::time::sleep(CHUNK_DELAY).await;

        let mut failures = Vec::new();
        for item in next..=last {
            if fail_every > 0 && item % fail_every == 0 {
                failures.push(json!({
                    "code": "inventory.item_failed",
                    "reason_code": "simulated",
                    "message": format!("device-{item:05} did not answer (simulated failure)"),
                    "item": {"index": item, "device_id": format!("device-{item:05}")},
                }));
            }
        }
        let chunk_failed = failures.len() as u64;
        let chunk_succeeded = last - next + 1 - chunk_failed;
        for batch in failures.chunks(MAX_FAILURES_PER_COMMAND) {
            reported(ctx.fail_items(Value::Array(batch.to_vec())).await)?;
        }
        reported(
            ctx.increment(counts(last - next + 1, chunk_succeeded, chunk_failed))
                .await,
        )?;

        succeeded += chunk_succeeded;
        failed += chunk_failed;
        tracing::info!(
            run_id = job.run_id,
            processed = last,
            of = items,
            failed,
            "chunk done"
        );
        next = last + 1;
    }

    let outcome = match (succeeded, failed) {
        (_, 0) => RunOutcome::Succeeded,
        (0, _) => RunOutcome::Failed,
        _ => RunOutcome::PartiallySucceeded,
    };
    tracing::info!(run_id = job.run_id, succeeded, failed, outcome = %outcome, "inventory sync finished");
    Ok(outcome)
}

/// The count increments of one chunk, without zero entries.
fn counts(processed: u64, succeeded: u64, failed: u64) -> Value {
    let mut counts = serde_json::Map::new();
    for (key, n) in [
        ("processed", processed),
        ("succeeded", succeeded),
        ("failed", failed),
    ] {
        if n > 0 {
            counts.insert(key.to_owned(), json!(n));
        }
    }
    Value::Object(counts)
}

/// A non-negative integer from the context, if present.
fn context_u64(context: &Value, key: &str) -> Result<Option<u64>, Value> {
    match context.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            json!([{
                "code": "inventory.invalid_context",
                "message": format!("context.{key} must be a non-negative integer, got {v}"),
            }])
        }),
    }
}

/// A progress report that could not be published fails the job with that reason. (If the broker
/// is gone, the completion cannot be sent either: the worker reconnects and the job is
/// redelivered, so the run is not completed with this failure.)
fn reported(result: Result<(), ClientError>) -> Result<(), Value> {
    result.map_err(|e| {
        tracing::warn!(error = %e, "cannot report progress");
        json!([{"code": "worker.report_failed", "message": e.to_string()}])
    })
}
